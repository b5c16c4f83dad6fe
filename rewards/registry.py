"""Build a reward from a config: a list of weighted, named components.

    rewards:
      - {name: f1, weight: 1.0}
      - {name: judge, weight: 0.2, r_match: 0.5}
      - {name: info_gain, weight: 0.3}
      - {name: mypkg.rewards.my_fn, weight: 0.1}   # a user's own function or Reward class

Each spec has `name` (a known component, or a dotted import path), an optional `weight`
(default 1.0) and an optional `label` (the name it is logged under; default: the name, or
the last part of a dotted path); every other key is a parameter of the component. The
result scores a trajectory with

    value    = sum_c weight_c * value_c
    per_step = sum_c weight_c * per_step_c      (components without per-step values add nothing)
    parts    = {label_c: value_c, label_c/part: ..., "total": value}

so every component is logged on its own. Bad specs are refused when the reward is built,
never mid-training: an unknown name or parameter, a weight that is not a number, an import
path that does not resolve, a parameter value the component rejects.

Wrappers take reward specs as parameters, e.g.
`{name: par, reward: [{name: f1}], tau: 0.5}`,
`{name: trust, process: [{name: judge}, {name: info_gain}], w0: 1.0, w1: 0.0, anneal_steps: 200}`,
`{name: ensemble, mode: mean_std, lam: 0.5, members: [{name: f1}, {name: cover_em}]}`.

A dotted path may name: a function `fn(traj, example, **params) -> float | Score`
(wrapped per trajectory, parameters passed by keyword); a class, built with the
parameters, whose instances are batch rewards; or a ready batch reward object.

>>> from agent.types import Example, Trajectory
>>> reward = build_reward([{"name": "em", "weight": 2.0}, {"name": "f1", "weight": 0.5}])
>>> reward([Trajectory("q", "q", 0, [], answer="Orin Kael")], [Example("q", "Who?", ["Orin Kael"])])[0].parts
{'em': 1.0, 'f1': 1.0, 'total': 2.5}
>>> try:
...     build_reward([{"name": "f2"}])
... except ValueError as err:
...     print(str(err)[:64])
rewards[0]: unknown reward 'f2'; known: em, f1, cover_em, format
"""

from __future__ import annotations

import importlib
import inspect
from collections.abc import Callable, Mapping, Sequence
from dataclasses import dataclass

from agent.types import Example, Trajectory
from rewards.base import Reward, Score, check_batch, check_scores, from_function, number, set_step
from rewards.ensemble import Ensemble
from rewards.grounding import GroundingReward
from rewards.judge import CorrectnessReward, JudgeReward, UtilityReward
from rewards.outcome import (
    FormatReward,
    LengthPenalty,
    SearchPenalty,
    answer_cover_em,
    answer_em,
    answer_f1,
)
from rewards.shaping import PreferenceAsReward, TrustWeighted
from rewards.steps import InfoGainReward

__all__ = ["RewardSpecError", "WeightedSum", "build_reward", "COMPONENTS", "known_rewards"]

RESERVED_KEYS = ("name", "weight", "label")
TOTAL = "total"


class RewardSpecError(ValueError):
    """A reward spec that cannot be built, with where it is and what exists."""


@dataclass(frozen=True)
class Component:
    factory: Callable[..., Reward]
    summary: str
    specs: tuple[str, ...] = ()  # parameters that hold a reward spec
    maybe_specs: tuple[str, ...] = ()  # parameters that hold a reward spec when given a dict or list
    members: tuple[str, ...] = ()  # parameters that hold a list of separately named reward specs


def _em() -> Reward:
    return from_function(answer_em, "em")


def _cover_em() -> Reward:
    return from_function(answer_cover_em, "cover_em")


def _f1() -> Reward:
    return from_function(answer_f1, "f1")


COMPONENTS: dict[str, Component] = {
    "em": Component(_em, "exact match of the answer against any gold alias"),
    "f1": Component(_f1, "token F1 of the answer against the best gold alias"),
    "cover_em": Component(_cover_em, "a gold alias appears inside the answer"),
    "format": Component(FormatReward, "answered without invalid actions, with partial credit"),
    "length_penalty": Component(LengthPenalty, "-per_token for each sampled token over budget"),
    "search_penalty": Component(SearchPenalty, "-per_search on each search over budget"),
    "judge": Component(JudgeReward, "ReSeek: +r_match / -r_mismatch per JUDGE vs its ideal label"),
    "correctness": Component(CorrectnessReward, "ReSeek: searches that first retrieve gold support"),
    "utility": Component(UtilityReward, "ReSeek: kept observations that fed a correct answer"),
    "grounding": Component(GroundingReward, "queries and answers copied exactly from the context"),
    "info_gain": Component(InfoGainReward, "StepSearch: TF-IDF information gain minus redundancy"),
    "par": Component(PreferenceAsReward, "Preference-As-Reward sigmoid around a reference",
                     specs=("reward",), maybe_specs=("reference",)),
    "trust": Component(TrustWeighted, "outcome + annealed, trust-weighted process reward",
                       specs=("process", "outcome")),
    "ensemble": Component(Ensemble, "mean / min / mean - lam * std of member rewards", members=("members",)),
}


def known_rewards() -> dict[str, list[str]]:
    """Each known component name with its parameters (for help texts)."""
    return {name: list(_parameters(c.factory)) for name, c in COMPONENTS.items()}


class WeightedSum:
    """The weighted sum of named components (what `build_reward` returns)."""

    def __init__(self, components: Sequence[tuple[str, float, Reward]]):
        self.components = list(components)

    @property
    def labels(self) -> list[str]:
        return [label for label, _, _ in self.components]

    def set_step(self, step: int) -> None:
        set_step([reward for _, _, reward in self.components], step)

    def __call__(self, trajectories: list[Trajectory], examples: list[Example]) -> list[Score]:
        check_batch(trajectories, examples)
        results = [(label, weight, check_scores(reward(trajectories, examples), trajectories, label))
                   for label, weight, reward in self.components]
        scores = []
        for i, traj in enumerate(trajectories):
            value, per_step, parts = 0.0, None, {}
            for label, weight, component_scores in results:
                score = component_scores[i]
                value += weight * score.value
                if score.per_step is not None:
                    per_step = per_step or [0.0] * len(traj.steps)
                    per_step = [a + weight * b for a, b in zip(per_step, score.per_step)]
                parts[label] = score.value
                parts.update({f"{label}/{key}": v for key, v in score.parts.items()})
            parts[TOTAL] = value
            scores.append(Score(value, per_step, parts))
        return scores

    def __repr__(self) -> str:
        return "WeightedSum(" + ", ".join(f"{w:g}*{label}" for label, w, _ in self.components) + ")"


def build_reward(specs: Sequence[Mapping | str] | Mapping | str, where: str = "rewards") -> WeightedSum:
    """A `WeightedSum` from spec dicts (or bare names); see the module docstring."""
    if isinstance(specs, (str, Mapping)):
        specs = [specs]
    if not isinstance(specs, Sequence) or not specs:
        raise RewardSpecError(f"{where}: expected a non-empty list of reward specs such as [{{name: f1}}], "
                              f"got {specs!r}; known: {_known()}")
    components, labels = [], set()
    for i, spec in enumerate(specs):
        label, weight, reward = _build_one(spec, f"{where}[{i}]")
        if label in labels:
            raise RewardSpecError(f"{where}[{i}]: a second component labelled {label!r}; "
                                  f"give it a distinct label, e.g. {{name: ..., label: {label}_2}}")
        labels.add(label)
        components.append((label, weight, reward))
    return WeightedSum(components)


def _build_one(spec: Mapping | str, where: str) -> tuple[str, float, Reward]:
    if isinstance(spec, str):
        spec = {"name": spec}
    if not isinstance(spec, Mapping):
        raise RewardSpecError(f"{where}: expected a reward spec such as {{name: f1, weight: 1.0}}, got {spec!r}")
    name = spec.get("name")
    if not isinstance(name, str) or not name:
        raise RewardSpecError(f"{where}: a reward spec needs a 'name'; got {dict(spec)!r}; known: {_known()}")
    try:
        weight = number("weight", spec.get("weight", 1.0))
    except ValueError as err:
        raise RewardSpecError(f"{where} ({name}): {err}") from None
    label = spec.get("label", name.rpartition(".")[2])
    if not isinstance(label, str) or not label or label == TOTAL or "/" in label:
        raise RewardSpecError(f"{where} ({name}): label must be a non-empty string other than "
                              f"{TOTAL!r} and without '/'; got {label!r}")
    params = {k: v for k, v in spec.items() if k not in RESERVED_KEYS}
    if name in COMPONENTS:
        reward = _build_known(name, COMPONENTS[name], params, where)
    elif "." in name:
        reward = _build_imported(name, label, params, where)
    else:
        raise RewardSpecError(f"{where}: unknown reward {name!r}; known: {_known()}")
    return label, weight, reward


def _build_known(name: str, component: Component, params: dict, where: str) -> Reward:
    accepted = _parameters(component.factory)
    for key in params:
        if key not in accepted:
            raise RewardSpecError(f"{where}: reward {name!r} has no parameter {key!r}; "
                                  f"its parameters: {', '.join(accepted) or 'none'}")
    for key, default in accepted.items():
        if default is inspect.Parameter.empty and key not in params:
            raise RewardSpecError(f"{where}: reward {name!r} needs parameter {key!r}, "
                                  f"e.g. {{name: {name}, {key}: [{{name: em}}]}}")
    for key in list(params):
        value, at = params[key], f"{where}.{key}"
        if key in component.specs or (key in component.maybe_specs and isinstance(value, (Mapping, list))):
            params[key] = build_reward(value, at)
        elif key in component.members:
            params[key] = _build_members(value, at)
    return _construct(component.factory, params, f"{where} ({name})")


def _build_members(value, where: str) -> dict[str, Reward]:
    if isinstance(value, (str, Mapping)) or not isinstance(value, Sequence) or not value:
        raise RewardSpecError(f"{where}: expected a non-empty list of reward specs, got {value!r}")
    members = {}
    for i, spec in enumerate(value):
        label, weight, reward = _build_one(spec, f"{where}[{i}]")
        if label in members:
            raise RewardSpecError(f"{where}[{i}]: a second member labelled {label!r}; give it a distinct label")
        members[label] = WeightedSum([(label, weight, reward)])
    return members


def _build_imported(path: str, label: str, params: dict, where: str) -> Reward:
    module_name, _, attr = path.rpartition(".")
    try:
        module = importlib.import_module(module_name)
    except ImportError as err:
        raise RewardSpecError(f"{where}: cannot import {path!r} ({err}); known: {_known()}") from None
    if not hasattr(module, attr):
        names = getattr(module, "__all__", None) or sorted(
            n for n, v in vars(module).items()
            if not n.startswith("_") and callable(v) and getattr(v, "__module__", None) == module_name)
        raise RewardSpecError(f"{where}: module {module_name!r} has no {attr!r}; it defines: "
                              f"{', '.join(names) or 'nothing public'}")
    target = getattr(module, attr)
    if inspect.isclass(target):
        reward = _construct(target, params, f"{where} ({path})")
    elif inspect.isfunction(target) or inspect.ismethod(target) or inspect.isbuiltin(target):
        reward = _construct(lambda **kw: from_function(target, label, **kw), params, f"{where} ({path})")
    elif callable(target):
        if params:
            raise RewardSpecError(f"{where}: {path!r} is a ready reward object; it takes no parameters, "
                                  f"got {', '.join(params)}")
        reward = target
    else:
        raise RewardSpecError(f"{where}: {path!r} is a {type(target).__name__}, not a reward function or class")
    if not callable(reward):
        raise RewardSpecError(f"{where}: {path!r} built a {type(reward).__name__}, which is not callable as a reward")
    return reward


def _construct(factory: Callable, params: dict, where: str) -> Reward:
    try:
        return factory(**params)
    except RewardSpecError:
        raise
    except (ValueError, TypeError, KeyError, OSError) as err:
        raise RewardSpecError(f"{where}: {err}") from err


def _parameters(factory: Callable) -> dict[str, object]:
    """Parameter name -> default (`inspect.Parameter.empty` when required)."""
    return {p.name: p.default for p in inspect.signature(factory).parameters.values()
            if p.kind in (p.POSITIONAL_OR_KEYWORD, p.KEYWORD_ONLY)}


def _known() -> str:
    return ", ".join(COMPONENTS) + ", or a dotted import path such as mypkg.rewards.my_fn"
