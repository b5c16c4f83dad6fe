"""The shared vocabulary of the project: every other module speaks these types.

Token layout of a trajectory (see `Segment`): the policy generates in one or more
contiguous contexts. Each segment holds the prompt ids it started from (`context_ids`)
and everything appended after it (`response_ids`), sampled tokens with `loss_mask` 1
and injected tokens (observations, corrective messages) with `loss_mask` 0.
"""

from __future__ import annotations

from dataclasses import dataclass, field
from typing import Any

from retrieval.types import Passage, Retriever

__all__ = ["Example", "Passage", "Retriever", "Step", "Segment", "Trajectory", "TrajectoryGroup", "STEP_KINDS",
           "FINISH_REASONS"]

STEP_KINDS = ("think", "search", "judge", "answer", "invalid")
FINISH_REASONS = ("answered", "max_turns", "max_tokens", "invalid")


@dataclass(frozen=True)
class Example:
    """One question with its gold answers (first is canonical, the rest are aliases)."""

    id: str
    question: str
    answers: tuple[str, ...] | list[str]
    support: tuple[str, ...] | list[str] = ()  # gold supporting passage ids, when known
    meta: dict[str, Any] = field(default_factory=dict)  # hops, type, chain, split, ...


@dataclass
class Step:
    """One action of the agent and what came back."""

    kind: str  # one of STEP_KINDS
    text: str  # the query, the verdict, the answer, or the bad output
    span: tuple[int, int]  # [start, end) token span of the action in the segment's response_ids
    passages: list[Passage] = field(default_factory=list)  # for search
    dropped: bool = False  # observation removed after a 'not useful' judge
    segment: int = 0  # index of the segment this step's tokens live in
    error: str | None = None  # for invalid steps: why the output was rejected


@dataclass
class Segment:
    """One contiguous context the policy generated in."""

    context_ids: list[int]  # (C,) prompt ids the segment starts from
    response_ids: list[int] = field(default_factory=list)  # (T,) sampled and injected ids
    loss_mask: list[int] = field(default_factory=list)  # (T,) 1 = sampled by the policy, 0 = injected
    logprobs: list[float] = field(default_factory=list)  # (T,) sampler logprobs, 0.0 where masked

    def append(self, ids: list[int], *, sampled: bool, logprobs: list[float] | None = None) -> None:
        if sampled and (logprobs is None or len(logprobs) != len(ids)):
            raise ValueError("sampled tokens need one logprob each")
        self.response_ids.extend(ids)
        self.loss_mask.extend([1 if sampled else 0] * len(ids))
        self.logprobs.extend(logprobs if sampled else [0.0] * len(ids))

    @property
    def full_ids(self) -> list[int]:
        return self.context_ids + self.response_ids


@dataclass
class Trajectory:
    example_id: str
    group_id: str
    sample: int
    segments: list[Segment]
    steps: list[Step] = field(default_factory=list)
    answer: str | None = None
    finish: str = ""  # one of FINISH_REASONS once finished
    policy_version: int = 0

    @property
    def n_response_tokens(self) -> int:
        return sum(len(s.response_ids) for s in self.segments)

    @property
    def n_sampled_tokens(self) -> int:
        return sum(sum(s.loss_mask) for s in self.segments)


@dataclass
class TrajectoryGroup:
    """The samples of one question in one rollout (a GRPO group): what group-relative
    advantages compare, and what the trainer keeps or leaves out as a whole."""

    example: Example
    trajectories: list[Trajectory]  # (G,) in sample order
    scores: list[Any] = field(default_factory=list)  # (G,) the reward's `rewards.base.Score` of each, once scored

    @property
    def rewards(self) -> list[float]:
        """(G,) total reward of each sample."""
        return [s.value for s in self.scores]

    @property
    def settled(self) -> bool:
        """Every sample scored the same total reward: the outcome tells the samples nothing apart."""
        return len(set(self.rewards)) <= 1

    @staticmethod
    def of(trajectories: list[Trajectory], examples: list[Example]) -> list[TrajectoryGroup]:
        """Rollout output (example-major: each group's samples in a row) -> its groups, in order."""
        if len(trajectories) != len(examples):
            raise ValueError(f"{len(trajectories)} trajectories for {len(examples)} examples")
        groups: list[TrajectoryGroup] = []
        for traj, example in zip(trajectories, examples):
            if groups and groups[-1].trajectories[0].group_id == traj.group_id:
                groups[-1].trajectories.append(traj)
            else:
                groups.append(TrajectoryGroup(example, [traj]))
        return groups
