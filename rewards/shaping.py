"""Shaping wrappers: Preference-As-Reward centring, and trust-weighted, annealed process rewards.

* Preference-As-Reward (PAR): `sigmoid((r - r_ref) / tau)`. The sigmoid bounds the reward
  and flattens it far from the reference, so a policy gains little by pushing a hackable
  reward ever higher; centring on the group mean keeps the steep part where the group is.
* Trust weight (after Trust-GRPO): a process reward is only worth adding when it agrees
  with the outcome. Per batch, measure how well the process value separates correct from
  incorrect trajectories (pairwise AUC, or a range-normalised mean difference), map it to
  [0, 1] (chance or worse -> 0), and scale the process part by it.
* Annealing: the process weight moves from w0 to w1 over N training steps (linear or
  cosine), e.g. dense step rewards early, outcome only later. The trainer calls
  `set_step(step)` on the reward before scoring each batch.
"""

from __future__ import annotations

import math
from collections import defaultdict
from collections.abc import Hashable, Sequence

from agent.types import Example, Trajectory
from rewards.base import Reward, Score, check_batch, check_scores, choice, from_function, number, set_step
from rewards.outcome import answer_em

__all__ = [
    "preference_as_reward",
    "group_means",
    "pairwise_auc",
    "trust_weight",
    "anneal",
    "PreferenceAsReward",
    "TrustWeighted",
    "REFERENCES",
    "TRUST_METHODS",
    "SCHEDULES",
]

REFERENCES = ("group_mean", "batch_mean")
TRUST_METHODS = ("auc", "mean_diff")
SCHEDULES = ("linear", "cosine")


def preference_as_reward(value: float, reference: float, tau: float = 1.0) -> float:
    """sigmoid((value - reference) / tau), in (0, 1); 0.5 at the reference.

    >>> preference_as_reward(1.0, 1.0)
    0.5
    >>> round(preference_as_reward(1.0, 0.0, tau=0.5), 4)  # 1 / (1 + e^-2)
    0.8808
    """
    x = (value - reference) / tau
    if x >= 0:  # the two branches keep exp() from overflowing on large |x|
        return 1.0 / (1.0 + math.exp(-x))
    z = math.exp(x)
    return z / (1.0 + z)


def group_means(values: Sequence[float], groups: Sequence[Hashable]) -> list[float]:
    """For each value, the mean over every value of its group (itself included).

    >>> group_means([1.0, 0.0, 0.5], ["a", "a", "b"])
    [0.5, 0.5, 0.5]
    """
    members: dict[Hashable, list[float]] = defaultdict(list)
    for v, g in zip(values, groups):
        members[g].append(v)
    means = {g: math.fsum(vs) / len(vs) for g, vs in members.items()}
    return [means[g] for g in groups]


def pairwise_auc(values: Sequence[float], correct: Sequence[bool],
                 groups: Sequence[Hashable] | None = None) -> float | None:
    """P(value of a correct trajectory > value of an incorrect one), ties counting 1/2.

    With `groups`, only pairs from the same group are compared (questions differ in how
    much process reward they allow). None when there is no correct/incorrect pair.

    >>> pairwise_auc([0.9, 0.2, 0.4, 0.4], [True, False, True, False])  # pairs: 1, 1, 1, 1/2
    0.875
    """
    keys = groups if groups is not None else [None] * len(values)
    rows_by_group: dict[Hashable, list[int]] = defaultdict(list)
    for i, key in enumerate(keys):
        rows_by_group[key].append(i)
    wins, pairs = 0.0, 0
    for rows in rows_by_group.values():
        right = [values[i] for i in rows if correct[i]]
        wrong = [values[i] for i in rows if not correct[i]]
        if right and wrong:
            # Mann-Whitney U from tie-averaged ranks: the pairs won, ties counting 1/2.
            from scipy.stats import rankdata  # here: scipy.stats takes seconds to import, and most runs never get here

            rank_sum = float(rankdata(right + wrong)[: len(right)].sum())
            wins += rank_sum - len(right) * (len(right) + 1) / 2
            pairs += len(right) * len(wrong)
    return wins / pairs if pairs else None


def trust_weight(values: Sequence[float], correct: Sequence[bool], *, method: str = "auc",
                 groups: Sequence[Hashable] | None = None, undetermined: float = 0.5) -> float:
    """How far a process reward separates correct from incorrect trajectories, in [0, 1].

    auc: 2 * AUC - 1, clipped at 0 (chance or anti-correlated gives 0, perfect gives 1).
    mean_diff: (mean over correct - mean over incorrect) / (max - min of all values),
    clipped at 0 (per group then averaged when `groups` is given).
    `undetermined` when the batch has no correct/incorrect pair to compare.

    >>> trust_weight([0.9, 0.2, 0.4, 0.4], [True, False, True, False])  # AUC 0.875
    0.75
    >>> trust_weight([0.9, 0.2, 0.4, 0.4], [True, False, True, False], method="mean_diff")  # (0.65-0.3)/0.7
    0.5
    >>> trust_weight([0.3, 0.1], [True, True])
    0.5
    """
    choice("method", method, TRUST_METHODS)
    if method == "auc":
        auc = pairwise_auc(values, correct, groups)
        return undetermined if auc is None else max(0.0, 2.0 * auc - 1.0)
    keys = groups if groups is not None else [None] * len(values)
    by_group: dict[Hashable, tuple[list[float], list[float]]] = defaultdict(lambda: ([], []))
    for v, c, g in zip(values, correct, keys):
        by_group[g][0 if c else 1].append(v)
    differences = [math.fsum(r) / len(r) - math.fsum(w) / len(w) for r, w in by_group.values() if r and w]
    if not differences:
        return undetermined
    spread = max(values) - min(values)
    if spread <= 0:
        return 0.0  # every trajectory got the same process value: it separates nothing
    return min(1.0, max(0.0, math.fsum(differences) / len(differences) / spread))


def anneal(step: int, w0: float, w1: float, steps: int, schedule: str = "linear") -> float:
    """The weight at training `step`, moving from w0 (step 0) to w1 (step >= `steps`).

    `steps` <= 0 means no annealing: w1 throughout.

    >>> [anneal(s, 1.0, 0.0, 4) for s in (0, 1, 4, 9)]
    [1.0, 0.75, 0.0, 0.0]
    >>> [round(anneal(s, 1.0, 0.0, 4, "cosine"), 4) for s in (0, 1, 2, 4)]  # (1 + cos(pi s/4)) / 2
    [1.0, 0.8536, 0.5, 0.0]
    """
    choice("schedule", schedule, SCHEDULES)
    progress = 1.0 if steps <= 0 else min(max(step, 0) / steps, 1.0)
    if schedule == "cosine":
        progress = 0.5 * (1.0 - math.cos(math.pi * progress))
    return w0 + (w1 - w0) * progress


class PreferenceAsReward:
    """PAR around a wrapped reward: `sigmoid((r - r_ref) / tau)` per trajectory.

    `reference`: 'group_mean' (the mean of `reward` over the trajectory's GRPO group in
    the batch), 'batch_mean', a number, or another Reward whose value on the same
    trajectory is the reference. The result is outcome-level (`per_step=None`): the
    sigmoid of a sum does not split over steps.
    """

    def __init__(self, reward: Reward, reference: str | float | Reward = "group_mean", tau: float = 1.0):
        if not callable(reward):
            raise ValueError(f"par.reward must be a reward (a spec such as [{{name: f1}}]); got {reward!r}")
        if isinstance(reference, str) and reference not in REFERENCES:
            raise ValueError(f"par.reference must be 'group_mean', 'batch_mean', a number or a reward spec "
                             f"such as {{name: f1}}; got {reference!r}")
        if not isinstance(reference, str) and not callable(reference):
            number("par.reference", reference)
        self.reward, self.reference = reward, reference
        self.tau = number("par.tau", tau)
        if self.tau <= 0:
            raise ValueError(f"par.tau must be > 0, got {tau!r}")

    def set_step(self, step: int) -> None:
        set_step([self.reward, self.reference], step)

    def __call__(self, trajectories: list[Trajectory], examples: list[Example]) -> list[Score]:
        check_batch(trajectories, examples)
        raw = [s.value for s in check_scores(self.reward(trajectories, examples), trajectories, "par.reward")]
        if self.reference == "group_mean":
            refs = group_means(raw, [t.group_id for t in trajectories])
        elif self.reference == "batch_mean":
            refs = [math.fsum(raw) / len(raw)] * len(raw) if raw else []
        elif callable(self.reference):
            ref_scores = check_scores(self.reference(trajectories, examples), trajectories, "par.reference")
            refs = [s.value for s in ref_scores]
        else:
            refs = [float(self.reference)] * len(raw)
        return [Score(preference_as_reward(r, ref, self.tau), None, {"raw": r, "reference": ref})
                for r, ref in zip(raw, refs)]


class TrustWeighted:
    """outcome + w(step) * trust * process, with the trust weight measured on each batch.

    A trajectory is correct when its outcome value >= `correct_threshold`. `scope`
    'group' compares only trajectories of the same GRPO group. The process weight w
    anneals from `w0` to `w1` over `anneal_steps` training steps (`set_step`).
    """

    def __init__(self, process: Reward, outcome: Reward | None = None, correct_threshold: float = 1.0,
                 method: str = "auc", scope: str = "batch", w0: float = 1.0, w1: float = 1.0,
                 anneal_steps: int = 0, schedule: str = "linear", undetermined: float = 0.5):
        if not callable(process):
            raise ValueError(f"trust.process must be a reward (a spec such as [{{name: judge}}]); got {process!r}")
        self.process = process
        self.outcome = outcome if outcome is not None else from_function(answer_em, "em")
        self.correct_threshold = number("trust.correct_threshold", correct_threshold)
        self.method = choice("trust.method", method, TRUST_METHODS)
        self.scope = choice("trust.scope", scope, ("batch", "group"))
        self.w0, self.w1 = number("trust.w0", w0), number("trust.w1", w1)
        self.anneal_steps = int(number("trust.anneal_steps", anneal_steps, minimum=0, integer=True))
        self.schedule = choice("trust.schedule", schedule, SCHEDULES)
        self.undetermined = number("trust.undetermined", undetermined, minimum=0.0, maximum=1.0)
        self.step = 0

    def set_step(self, step: int) -> None:
        self.step = step
        set_step([self.process, self.outcome], step)

    @property
    def process_weight(self) -> float:
        return anneal(self.step, self.w0, self.w1, self.anneal_steps, self.schedule)

    def __call__(self, trajectories: list[Trajectory], examples: list[Example]) -> list[Score]:
        check_batch(trajectories, examples)
        outcome = check_scores(self.outcome(trajectories, examples), trajectories, "trust.outcome")
        process = check_scores(self.process(trajectories, examples), trajectories, "trust.process")
        correct = [s.value >= self.correct_threshold for s in outcome]
        groups = [t.group_id for t in trajectories] if self.scope == "group" else None
        trust = trust_weight([s.value for s in process], correct, method=self.method, groups=groups,
                             undetermined=self.undetermined)
        scale = self.process_weight * trust
        scores = []
        for o, p in zip(outcome, process):
            per_step = None
            if o.per_step is not None or p.per_step is not None:
                n = len(o.per_step if o.per_step is not None else p.per_step)
                base = o.per_step or [0.0] * n
                extra = p.per_step or [0.0] * n
                per_step = [a + scale * b for a, b in zip(base, extra)]
            parts = {"outcome": o.value, "process": p.value, "trust": trust, "process_weight": self.process_weight}
            scores.append(Score(o.value + scale * p.value, per_step, parts))
        return scores
