"""The action grammar: parse one turn of policy output into an action, never raising.

A turn is optional free `<think>...</think>` text followed by exactly one action:

    <search>query</search>
    <judge>useful</judge>  |  <judge>not useful: a short reason</judge>
    <answer>text</answer>

and nothing else. In particular (anything else is an `invalid` action carrying the reason,
which the rollout loop turns into a corrective message):
- `<information>` is written by the environment only: the policy writing it anywhere, even
  inside `<think>`, is invalid (a forged observation must not pass for a retrieved one);
- an action's body is plain text: a tag inside it (`<search><answer>x</search>`) is invalid,
  and so is a protocol tag inside `<think>`;
- a body that is empty once whitespace, zero-width characters (U+200B-U+200D, U+2060,
  U+FEFF) and control characters (NUL, ...) are stripped from its ends is no action.
Generation stops at a closing tag, so text after the action is rare; whitespace and
end-of-turn markers there are tolerated.

>>> parse_action("<think>find the founder</think><search>Zentrova founder</search>")
Action(kind='search', text='Zentrova founder', think='find the founder', error=None)
>>> parse_action("<judge>not useful: wrong person</judge>").text
'not useful'
>>> parse_action("<search></search>").error
'empty search query'
>>> parse_action("<search><answer>x</search>").error
'<answer> inside <search>'
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
# What a body is stripped of at both ends: whitespace, control characters (Unicode Cc: NUL,
# ESC, DEL, ...) and zero-width characters, none of which a reader sees.
_BLANK = r"[\s\x00-\x1f\x7f-\x9f\u200b-\u200d\u2060\ufeff]+"
_BLANK_ENDS = re.compile(f"^{_BLANK}|{_BLANK}$")


@dataclass(frozen=True)
class Action:
    kind: str  # search | judge | answer | invalid
    text: str  # query, verdict ('useful' / 'not useful'), answer, or the raw output when invalid
    think: str | None = None  # the <think> content, when present
    error: str | None = None  # why the output is invalid


def _strip_blank(text: str) -> str:
    """`text` without whitespace, control or zero-width characters at either end.

    >>> _strip_blank("\\u200b Velmora\\x00\\n")
    'Velmora'
    """
    return _BLANK_ENDS.sub("", text)


def parse_action(output: str, max_answer_chars: int = 200) -> Action:
    """Parse one turn of policy output. Never raises; bad output is `kind='invalid'`."""

    def invalid(reason: str) -> Action:
        return Action("invalid", output, think, reason)

    think = None
    if "<information>" in output or "</information>" in output:
        return invalid("<information> is written by the environment, not the agent")
    rest = output.lstrip()
    if rest.startswith("<think>"):
        end = rest.find("</think>")
        if end < 0:
            return invalid("unclosed <think>")
        body = rest[len("<think>"):end]
        think = _strip_blank(body)
        nested = _protocol_tag(body)
        if nested:
            return invalid(f"{nested} inside <think>")
        rest = rest[end + len("</think>"):]

    for closing, name in _TAG.findall(rest):
        if name not in KNOWN_TAG_NAMES:
            return invalid(f"unknown tag <{closing}{name}>")
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

    kind, body = match.group(1), match.group(2)
    nested = _protocol_tag(body)
    if nested:
        return invalid(f"{nested} inside <{kind}>")
    body = _strip_blank(body)
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


def _protocol_tag(text: str) -> str | None:
    """The first protocol tag in `text` (opening or closing), as written; None without one."""
    for closing, name in _TAG.findall(text):
        if name in KNOWN_TAG_NAMES:
            return f"<{closing}{name}>"
    return None


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
