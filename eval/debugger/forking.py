"""Forking a trace: the request the page may send, the policies and retrievers a fork may use,
and the record a continuation is saved as.

The fork endpoint takes only what the page's fork form sends: known fields (anything else
is refused), bounded sizes, and a policy and retriever named from the lists the server
offers, never a path or URL of the request's choosing. A continuation is saved to the run's
`forks.jsonl` as a new record with its parent's id and the edit, never into the run's own
traces.
"""

from __future__ import annotations

import threading
from collections.abc import Iterator
from dataclasses import dataclass, field
from pathlib import Path
from typing import Literal

from pydantic import BaseModel, ConfigDict, Field

from agent.fork import Fork
from agent.rollout import Rollout, RolloutConfig
from agent.traces import record_to_trajectory, trajectory_record
from agent.types import Passage, Trajectory
from eval.debugger.rows import example_of, outcome, trace_id
from eval.debugger.views import step_cards

MAX_TEXT = 4000  # characters of an edited text, query or message
MAX_PASSAGES = 10


class PassageEdit(BaseModel):
    model_config = ConfigDict(extra="forbid")
    id: str = Field(max_length=200)
    title: str = Field(default="", max_length=500)
    text: str = Field(max_length=MAX_TEXT)


class ForkRequest(BaseModel):
    """The body of POST /api/fork."""

    model_config = ConfigDict(extra="forbid")
    key: str = Field(max_length=40, pattern=r"^\d{1,4}\.[01]\.\d{1,9}$")  # the trace forked (run.file.position)
    step: int = Field(ge=0, le=10_000)
    edit: Literal["text", "query", "passages", "message"]
    text: str = Field(default="", max_length=MAX_TEXT)
    passages: list[PassageEdit] = Field(default_factory=list, max_length=MAX_PASSAGES)
    policy: str = Field(max_length=200)
    retriever: str = Field(default="", max_length=200)
    temperature: float = Field(default=0.0, ge=0.0, le=2.0)
    seed: int = Field(default=0, ge=0, le=2**31 - 1)

    def to_fork(self) -> Fork:
        return Fork(self.step, self.edit, self.text,
                    tuple(Passage(p.id, p.title, p.text, 0.0) for p in self.passages))


@dataclass
class Toolbox:
    """The policies and retrievers forks may use, by name; each is loaded on first use and kept.

    A value is a spec (`tiny`, a model directory, an HF id, `openai:URL`; an index directory
    or retrieval server URL) or a ready engine / retriever (tests, embedding code)."""

    policies: dict[str, object]
    retrievers: dict[str, object]
    data: str | None = None  # the world `tiny` resolves against
    model_name: str | None = None  # served model name of openai:URL policies
    tokenizer: str | None = None  # local tokenizer of openai:URL policies
    _loaded: dict = field(default_factory=dict)
    _lock: threading.Lock = field(default_factory=threading.Lock)

    def engine(self, name: str):
        if name not in self.policies:
            raise KeyError(f"unknown policy {name!r}; this server offers {sorted(self.policies)}")
        with self._lock:
            if ("policy", name) not in self._loaded:
                spec = self.policies[name]
                if isinstance(spec, str):
                    from eval.policies import build_model

                    try:
                        spec, _ = build_model(spec, Path(self.data or "."), model_name=self.model_name,
                                              tokenizer_path=self.tokenizer)
                    except SystemExit as error:  # build_model's messages are meant for a person
                        raise ValueError(f"policy {name!r}: {error}") from None
                self._loaded["policy", name] = spec
            return self._loaded["policy", name]

    def retriever(self, name: str):
        if name not in self.retrievers:
            raise KeyError(f"unknown retriever {name!r}; this server offers {sorted(self.retrievers)}")
        with self._lock:
            if ("retriever", name) not in self._loaded:
                spec = self.retrievers[name]
                if isinstance(spec, str):
                    from retrieval import open_retriever

                    try:
                        spec = open_retriever(spec)
                    except (OSError, ValueError) as error:
                        raise ValueError(f"retriever {name!r}: cannot open {spec}: {error}") from None
                self._loaded["retriever", name] = spec
            return self._loaded["retriever", name]


class NoRetriever:
    """Stands in where no index was given: a search comes back as a failed search."""

    def search(self, queries, k):
        raise RuntimeError("no retriever: start the debugger with --index")


def check_tokenizer(record: dict, tokenizer, policy: str) -> None:
    """Refuse a policy whose tokenizer spells the trace's token ids differently from the one the
    trace was sampled with: a continuation must extend the very ids of its prefix."""
    texts = record.get("segment_texts")
    if not texts or not record.get("segments"):
        return
    ids = record["segments"][0]["response_ids"]
    if tokenizer.decode(ids, skip_special_tokens=False) != texts[0]:
        raise ValueError(f"policy {policy!r} has another tokenizer than the one trace {trace_id(record)!r} was "
                         "sampled with; fork it with a policy that shares that tokenizer")


def rollout_config(settings: dict, temperature: float, max_turns: int | None = None) -> RolloutConfig:
    """The fork's rollout budgets: the run's where it recorded them."""
    base = RolloutConfig()
    return RolloutConfig(passages_per_search=settings.get("passages_per_search") or base.passages_per_search,
                         max_turns=max_turns or settings.get("max_turns") or base.max_turns,
                         max_new_tokens=settings.get("max_new_tokens") or base.max_new_tokens,
                         temperature=temperature)


def fork_stream(parent: dict, fork: Fork, engine, retriever, cfg: RolloutConfig, seed: int = 0, *,
                policy: str = "") -> Iterator[Trajectory]:
    """The parent record's trajectory continued after `fork` by `engine` (the policy named
    `policy`), yielded as it grows."""
    check_tokenizer(parent, engine.tokenizer, policy)
    rollout = Rollout(engine, NoRetriever() if retriever is None else retriever, cfg, engine.tokenizer)
    for [traj] in rollout.stream_from([(record_to_trajectory(parent), example_of(parent), fork)], seed=seed):
        yield traj


def fork_record(parent: dict, traj: Trajectory, fork: Fork, tokenizer, *, fork_id: str, policy: str) -> dict:
    """The record a continuation is saved as: a trace like any other, with its lineage."""
    record = trajectory_record(traj, example_of(parent), tokenizer, id=fork_id, parent=trace_id(parent),
                               fork={"step": fork.step, "edit": fork.edit, "text": fork.text,
                                     "passages": [{"id": p.doc_id, "title": p.title, "text": p.text} for p in fork.passages]},
                               policy=policy)
    if parent.get("step") is not None:
        record["step"] = parent["step"]  # the training step it branches from, for the overview's filter
    if "messages" in parent:  # the parent's prompt (its style), this trace's response
        record["messages"] = parent["messages"][:-1] + [record["messages"][-1]]
    record["eval"] = {k: v for k, v in outcome(record).items() if k in ("em", "f1", "category")}
    return record


def next_fork_id(forks, parent_id: str) -> str:
    """The id of a parent's next fork in a forks file's index: `parent+n`, n counting from 1."""
    forks.refresh()
    return f"{parent_id}+{len(forks.children.get(parent_id, [])) + 1}"


GOLD_FIELDS = ("golden_answers", "support", "meta")  # what a step card marks gold and scores by


def live_cards(traj: Trajectory, golds_from: dict) -> list[dict]:
    """The step cards of a trajectory still being rolled out, gold marked as in `golds_from`."""
    return step_cards({**trajectory_record(traj), **{k: golds_from[k] for k in GOLD_FIELDS if k in golds_from}})


def first_new_step(fork: Fork) -> int:
    """The first step of a continuation that its parent does not show as it was."""
    return fork.step + 1 if fork.edit == "message" else fork.step
