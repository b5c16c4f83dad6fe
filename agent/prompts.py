"""Prompts and the text the environment injects (observations, corrections).

Two prompt styles:
- `chat`: a system message that explains the protocol, rendered with the model's chat
  template (or a plain text layout when the model has none). For real models.
- `compact`: only the question, in the chat template. For the embedded tiny model, which
  learns the protocol from demonstrations and should not spend its context on rules.
`auto` picks `compact` when the tokenizer has every protocol tag as a single token (the
embedded tokenizer does; general-purpose tokenizers do not), else `chat`.
"""

from __future__ import annotations

from retrieval.types import Passage

from agent.actions import PROTOCOL_TAGS

SYSTEM_PROMPT = """You answer questions by searching a knowledge base. Each turn, you may think inside <think> and </think>, then take exactly one action:
- <search> query </search> searches the knowledge base; the results come back inside <information> and </information>.
- <judge> useful </judge> or <judge> not useful </judge> judges the latest results; results judged not useful are removed from your context.
- <answer> text </answer> gives the final answer: a short phrase, without explanation.
Search as often as you need, then answer."""

PROMPT_STYLES = ("auto", "chat", "compact")


def has_protocol_tokens(tokenizer) -> bool:
    """True when every protocol tag is a token of the vocabulary (looked up one by one:
    building the whole vocabulary dict costs milliseconds, once per prompt)."""
    ids = tokenizer.convert_tokens_to_ids(list(PROTOCOL_TAGS))
    return all(i is not None and i != tokenizer.unk_token_id for i in ids)


def resolve_style(tokenizer, style: str = "auto") -> str:
    if style not in PROMPT_STYLES:
        raise ValueError(f"unknown prompt style {style!r}; expected one of {PROMPT_STYLES}")
    if style != "auto":
        return style
    return "compact" if has_protocol_tokens(tokenizer) else "chat"


def build_messages(question: str, style: str) -> list[dict[str, str]]:
    """The opening messages of a conversation in OpenAI chat format."""
    if style == "compact":
        return [{"role": "user", "content": question}]
    return [{"role": "system", "content": SYSTEM_PROMPT}, {"role": "user", "content": f"Question: {question}"}]


def render_prompt_ids(tokenizer, question: str, style: str = "auto") -> list[int]:
    """Token ids of the prompt the policy starts generating after."""
    messages = build_messages(question, resolve_style(tokenizer, style))
    if getattr(tokenizer, "chat_template", None):
        ids = tokenizer.apply_chat_template(messages, add_generation_prompt=True, tokenize=True)
        if isinstance(ids, dict) or hasattr(ids, "keys"):  # some versions return a BatchEncoding
            ids = ids["input_ids"]
        return list(ids)
    text = "\n\n".join(m["content"] for m in messages) + "\n\nAnswer:\n"
    return tokenizer(text, add_special_tokens=False)["input_ids"]


def passage_header(rank: int, passage: Passage) -> str:
    """What precedes a passage's text in an observation (Search-R1's layout)."""
    return f"Doc {rank} (Title: {passage.title}) "


OBSERVATION_OPEN = "\n\n<information>"
OBSERVATION_CLOSE = "</information>\n\n"
NO_RESULTS = "No results."  # the observation of a search that matched nothing
SEARCH_FAILED = "Search failed."  # the observation of a search the retriever did not answer (the trace says why)


def user_message(text: str) -> str:
    """A person's message injected into a conversation forked in the debugger or `eval.chat`."""
    return f"\n\nUser: {text.strip()}\n\n"


def corrective_message(error: str) -> str:
    return (
        f"\n\nInvalid action ({error}). Take exactly one action: <search> query </search>, "
        "<judge> useful </judge>, <judge> not useful </judge> or <answer> text </answer>.\n\n"
    )

