"""The action grammar: parse one turn of policy output into an action, never raising.

A turn is optional free `<think>...</think>` text followed by exactly one action:

    <search>query</search>
    <judge>useful</judge>  |  <judge>not useful: a short reason</judge>
    <answer>text</answer>

Anything else is an `invalid` action carrying the reason, which the rollout loop turns
into a corrective message. Generation stops at a closing tag, so text after the action
is rare; whitespace and end-of-turn markers there are tolerated.

>>> parse_action("<think>find the founder</think><search>Zentrova founder</search>")
Action(kind='search', text='Zentrova founder', think='find the founder', error=None)
>>> parse_action("<judge>not useful: wrong person</judge>").text
'not useful'
>>> parse_action("<search></search>").error
'empty search query'
"""

from __future__ import annotations

import re
from dataclasses import dataclass

ACTIONS = ("search", "judge", "answer")
PROTOCOL_TAGS = (
    "<think>", "</think>",
    "<search>", "</search>",
    "<information>", "</information>",
    "<judge>", "</judge>",
    "<answer>", "</answer>",
)
STOP_TAGS = ("</search>", "</judge>", "</answer>")
KNOWN_TAG_NAMES = frozenset(t.strip("</>") for t in PROTOCOL_TAGS)
USEFUL, NOT_USEFUL = "useful", "not useful"

_TAG = re.compile(r"<(/?)([A-Za-z_][A-Za-z0-9_\-]*)>")
_ACTION = re.compile(r"<(search|judge|answer)>(.*?)</\1>", re.DOTALL)
# End-of-turn markers a chat model may emit after its action.
_TRAILING_OK = re.compile(r"^(\s|<\|im_end\|>|<\|endoftext\|>|<\|eot_id\|>|</s>)*$")


@dataclass(frozen=True)
class Action:
    kind: str  # search | judge | answer | invalid
    text: str  # query, verdict ('useful' / 'not useful'), answer, or the raw output when invalid
    think: str | None = None  # the <think> content, when present
    error: str | None = None  # why the output is invalid


def parse_action(output: str, max_answer_chars: int = 200) -> Action:
    """Parse one turn of policy output. Never raises; bad output is `kind='invalid'`."""

    def invalid(reason: str) -> Action:
        return Action("invalid", output, think, reason)

    think = None
    rest = output.lstrip()
    if rest.startswith("<think>"):
        end = rest.find("</think>")
        if end < 0:
            return invalid("unclosed <think>")
        think = rest[len("<think>"):end].strip()
        rest = rest[end + len("</think>"):]

    for closing, name in _TAG.findall(rest):
        if name not in KNOWN_TAG_NAMES:
            return invalid(f"unknown tag <{closing}{name}>")
    if "<information>" in rest or "</information>" in rest:
        return invalid("<information> is written by the environment, not the agent")
    if "<think>" in rest:
        return invalid("<think> must come before the action")

    actions = list(_ACTION.finditer(rest))
    if not actions:
        opened = [name for closing, name in _TAG.findall(rest) if not closing and name in ACTIONS]
        return invalid(f"unclosed <{opened[0]}>" if opened else "no action: expected <search>, <judge> or <answer>")
    if len(actions) > 1:
        return invalid("more than one action in a turn")
    match = actions[0]
    if rest[: match.start()].strip():
        return invalid("text outside <think> before the action")
    if not _TRAILING_OK.match(rest[match.end():]):
        return invalid("text after the action")

    kind, body = match.group(1), match.group(2).strip()
    if kind == "search":
        if not body:
            return invalid("empty search query")
        return Action("search", body, think)
    if kind == "answer":
        if not body:
            return invalid("empty answer")
        if len(body) > max_answer_chars:
            return invalid(f"answer longer than {max_answer_chars} characters")
        return Action("answer", body, think)
    verdict = parse_verdict(body)
    if verdict is None:
        return invalid("judge must be 'useful' or 'not useful'")
    return Action("judge", verdict, think)


def parse_verdict(body: str) -> str | None:
    """'useful' / 'not useful' from a judge body that may carry a short reason."""
    low = body.strip().lower()
    for verdict in (NOT_USEFUL, USEFUL):  # 'not useful' first: 'useful' is its suffix
        if low == verdict or (low.startswith(verdict) and not low[len(verdict)].isalnum()):
            return verdict
    return None


def format_action(kind: str, text: str, think: str | None = None) -> str:
    """The text of an action, as the oracle and demonstrations write it: `<search> query </search>`.

    The body sits between spaces (Search-R1's layout), so a name in it starts with a space
    as it does mid-sentence in the question and the passages, and a BPE tokenizer spells it
    with the same tokens there and here: a small model can copy it token for token
    (without the space, the first word of `<search>Acur Grei mentor` tokenizes differently
    from ` Acur` in the question, and copying becomes a spelling task).
    """
    if kind not in ACTIONS:
        raise ValueError(f"unknown action kind {kind!r}; expected one of {ACTIONS}")
    prefix = f"<think> {think} </think>" if think else ""
    return f"{prefix}<{kind}> {text} </{kind}>"
