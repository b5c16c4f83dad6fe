"""The one small interface every generation engine implements.

An engine turns token-id prompts into sampled token ids with their logprobs. It never
sees text it did not produce: the rollout loop hands it ids and keeps what comes back
verbatim (token in, token out).

Logprob convention (shared by every engine and by the trainer): the logprob of a sampled
token is log softmax(logits / T) at that token, where T is the sampling temperature
(T = 1 when decoding greedily), before any top-p / top-k truncation. The trainer
recomputes exactly this quantity, so ratios start at 1 when sampler and trainer agree.
"""

from __future__ import annotations

from dataclasses import dataclass, field
from typing import Protocol, runtime_checkable


@dataclass(frozen=True)
class SamplingParams:
    max_new_tokens: int = 128
    temperature: float = 1.0  # 0 = greedy
    top_p: float = 1.0
    top_k: int = 0  # 0 = off
    stop_token_ids: tuple[int, ...] = ()  # generation ends after emitting one of these (kept in the output)
    stop_strings: tuple[str, ...] = ()  # ends once the decoded new text contains one (the completing token is kept)
    seed: int | None = None  # same seed + same prompts -> same samples

    def __post_init__(self) -> None:
        if self.max_new_tokens < 1:
            raise ValueError(f"max_new_tokens must be >= 1, got {self.max_new_tokens}")
        if self.temperature < 0:
            raise ValueError(f"temperature must be >= 0, got {self.temperature}")
        if not 0 < self.top_p <= 1:
            raise ValueError(f"top_p must be in (0, 1], got {self.top_p}")

    @property
    def greedy(self) -> bool:
        return self.temperature == 0


@dataclass
class Generation:
    token_ids: list[int]  # (T,) new ids exactly as sampled, stop token / string included
    logprobs: list[float]  # (T,) see the module docstring; zeros when the engine cannot report them
    finish: str  # "stop" (stop token, stop string or EOS) | "length" (max_new_tokens reached)
    meta: dict = field(default_factory=dict)


@runtime_checkable
class Engine(Protocol):
    """Generates continuations for a batch of token-id prompts.

    `exact_tokens` is False for engines that only see text (e.g. a remote OpenAI-style
    endpoint without token ids): their trajectories are fine for evaluation and chat
    but must not be trained on.
    """

    tokenizer: object
    exact_tokens: bool

    def generate(self, prompts: list[list[int]], params: SamplingParams) -> list[Generation]: ...
