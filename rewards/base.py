"""The reward interface: a `Score` per trajectory and the `Reward` protocol.

A reward takes a batch of finished trajectories and their questions
(`examples[i]` is the question of `trajectories[i]`) and returns one `Score` each.
Rewards read steps, passages and answers; they never see tensors. Placing a step's
reward on the tokens that end the step is the trainer's job.

How `value` and `per_step` relate, so that the trainer neither drops nor double-counts:
`value` is the trajectory's whole reward; `per_step`, when present, says where part of it
was earned (entry i belongs to `traj.steps[i]`), and `value - sum(per_step)` is earned
at the end of the trajectory. A pure step reward has `value == sum(per_step)`; a pure
outcome reward has `per_step=None`. Weighted sums keep this, because it is linear.

>>> class Answered:
...     def __call__(self, trajectories, examples):
...         return [Score(float(t.answer is not None)) for t in trajectories]
>>> isinstance(Answered(), Reward)
True
>>> em = from_function(lambda traj, example: float(traj.answer in example.answers), name="em")
>>> from agent.types import Example, Trajectory
>>> em([Trajectory("q1", "q1", 0, [], answer="Velmora")], [Example("q1", "Where?", ["Velmora"])])
[Score(value=1.0, per_step=None, parts={})]
"""

from __future__ import annotations

import inspect
import math
from abc import ABC, abstractmethod
from collections.abc import Callable, Sequence
from dataclasses import dataclass, field
from typing import Protocol, runtime_checkable

from agent.types import Example, Trajectory

__all__ = [
    "Score",
    "Reward",
    "StepRuleReward",
    "FunctionReward",
    "from_function",
    "check_batch",
    "check_scores",
    "set_step",
    "number",
    "choice",
]


@dataclass(frozen=True)
class Score:
    """The reward of one trajectory."""

    value: float  # the whole reward of the trajectory
    per_step: list[float] | None = None  # one entry per `Trajectory.steps` element, or None
    parts: dict[str, float] = field(default_factory=dict)  # named sub-values, for logging


@runtime_checkable
class Reward(Protocol):
    """Scores a batch: `examples[i]` is the question of `trajectories[i]`."""

    def __call__(self, trajectories: list[Trajectory], examples: list[Example]) -> list[Score]: ...


class StepRuleReward(ABC):
    """A reward whose value is the sum of per-step values from one rule (`_per_step`)."""

    @abstractmethod
    def _per_step(self, traj: Trajectory, example: Example) -> list[float]: ...

    def __call__(self, trajectories: list[Trajectory], examples: list[Example]) -> list[Score]:
        check_batch(trajectories, examples)
        scores = []
        for traj, example in zip(trajectories, examples):
            per_step = self._per_step(traj, example)
            scores.append(Score(sum(per_step) + 0.0, per_step))
        return scores


def check_batch(trajectories: Sequence[Trajectory], examples: Sequence[Example]) -> None:
    if len(trajectories) != len(examples):
        raise ValueError(
            f"{len(trajectories)} trajectories but {len(examples)} examples; "
            "examples[i] must be the question of trajectories[i]"
        )


def check_scores(scores: Sequence[Score], trajectories: Sequence[Trajectory], who: str) -> list[Score]:
    """The scores of reward `who`, refused when they do not line up with the trajectories."""
    scores = list(scores)
    if len(scores) != len(trajectories):
        raise ValueError(f"reward {who!r} returned {len(scores)} scores for {len(trajectories)} trajectories")
    for i, (score, traj) in enumerate(zip(scores, trajectories)):
        if not isinstance(score, Score):
            raise TypeError(f"reward {who!r} returned {type(score).__name__} for trajectory {i}; expected a Score")
        if score.per_step is not None and len(score.per_step) != len(traj.steps):
            raise ValueError(
                f"reward {who!r} gave {len(score.per_step)} per-step values for trajectory {i}, "
                f"which has {len(traj.steps)} steps"
            )
    return scores


def set_step(rewards: Sequence[object], step: int) -> None:
    """Tell every reward that anneals (has `set_step`) the current training step."""
    for reward in rewards:
        setter = getattr(reward, "set_step", None)
        if callable(setter):
            setter(step)


class FunctionReward:
    """A `Reward` from a per-trajectory function `fn(traj, example, **params)`.

    `fn` returns a float, or a `Score` when it has per-step values or parts. `params`
    are checked against `fn`'s signature now, not at the first batch: a name `fn` does
    not take is refused, and so is a non-number where the default is a number.
    """

    def __init__(self, fn: Callable, name: str | None = None, **params):
        self.fn, self.params = fn, params
        self.name = name or getattr(fn, "__name__", type(fn).__name__)
        _check_params(fn, self.name, params)

    def __call__(self, trajectories: list[Trajectory], examples: list[Example]) -> list[Score]:
        check_batch(trajectories, examples)
        scores = []
        for traj, example in zip(trajectories, examples):
            out = self.fn(traj, example, **self.params)
            if isinstance(out, Score):
                scores.append(out)
            elif isinstance(out, (int, float)) and not isinstance(out, bool):
                scores.append(Score(float(out)))
            else:
                raise TypeError(f"reward function {self.name!r} returned {out!r}; expected a float or a Score")
        return check_scores(scores, trajectories, self.name)

    def __repr__(self) -> str:
        return f"FunctionReward({self.name}, {self.params})" if self.params else f"FunctionReward({self.name})"


def from_function(fn: Callable, name: str | None = None, **params) -> FunctionReward:
    """Turn `fn(traj, example) -> float | Score` into a batch `Reward`."""
    return FunctionReward(fn, name, **params)


def _check_params(fn: Callable, name: str, params: dict) -> None:
    try:
        signature = inspect.signature(fn)
    except (TypeError, ValueError):  # builtins without a signature: nothing to check against
        return
    accepted = list(signature.parameters.values())[2:]  # after (traj, example)
    if any(p.kind is p.VAR_KEYWORD for p in accepted):
        return
    by_name = {p.name: p for p in accepted if p.kind in (p.KEYWORD_ONLY, p.POSITIONAL_OR_KEYWORD)}
    for key, value in params.items():
        if key not in by_name:
            known = ", ".join(by_name) or "none"
            raise ValueError(f"reward {name!r} has no parameter {key!r}; its parameters: {known}")
        default = by_name[key].default
        if isinstance(default, (int, float)) and not isinstance(default, bool):
            number(f"{name}.{key}", value)


def number(name: str, value: object, *, minimum: float | None = None, maximum: float | None = None,
           integer: bool = False) -> float:
    """`value` as a finite float, or a ValueError naming the parameter and what it got.

    >>> number("tau", 0.5, minimum=0.0)
    0.5
    >>> number("weight", "high")
    Traceback (most recent call last):
    ...
    ValueError: weight must be a number, got 'high'
    """
    if isinstance(value, bool) or not isinstance(value, (int, float)):
        raise ValueError(f"{name} must be a number, got {value!r}")
    if integer and float(value) != int(value):
        raise ValueError(f"{name} must be a whole number, got {value!r}")
    if not math.isfinite(value):
        raise ValueError(f"{name} must be finite, got {value!r}")
    if minimum is not None and value < minimum:
        raise ValueError(f"{name} must be >= {minimum}, got {value!r}")
    if maximum is not None and value > maximum:
        raise ValueError(f"{name} must be <= {maximum}, got {value!r}")
    return float(value)


def choice(name: str, value: object, options: Sequence[str]) -> str:
    """`value` when it is one of `options`, else a ValueError listing them."""
    if value not in options:
        raise ValueError(f"{name} must be one of {', '.join(map(repr, options))}; got {value!r}")
    return value  # type: ignore[return-value]
