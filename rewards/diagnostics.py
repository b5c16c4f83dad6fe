"""Compare two rewards on the same trajectories: do they prefer the same things?

* Spearman rank correlation of the two value vectors: 1 when they order the
  trajectories the same way, -1 when exactly reversed.
* A STARC-style distance: canonicalise each value vector by centring it (a constant
  shift changes no preference, and no GRPO advantage), normalise it to unit L2 norm (a
  positive scale changes no preference), then take the L2 distance between the two, in
  [0, 2]: 0 for the same preferences, 2 for reversed ones. (STARC proper canonicalises
  reward *functions* over states and actions; on a fixed batch centring plays that part.)
* GRPO only compares trajectories within a group, so the mean within-group Spearman is
  reported too.

A vector that is constant has no preferences: it canonicalises to zero, its distance to
a non-constant vector is 1 and to another constant one 0, and its rank correlation is
undefined (nan).
"""

from __future__ import annotations

import math
from collections import defaultdict
from collections.abc import Mapping, Sequence
from dataclasses import dataclass

import numpy as np
from scipy.stats import rankdata

from agent.types import Example, Trajectory
from rewards.base import Reward, check_batch

__all__ = ["spearman", "starc_distance", "RewardComparison", "compare_rewards"]


def spearman(a: Sequence[float], b: Sequence[float]) -> float:
    """Pearson correlation of the ranks; nan when either side is constant.

    >>> spearman([1, 2, 3], [10, 20, 30]), spearman([1, 2, 3], [3, 2, 1])
    (1.0, -1.0)
    """
    _same_length(a, b)
    ra, rb = rankdata(a) - (len(a) + 1) / 2, rankdata(b) - (len(b) + 1) / 2
    denominator = math.sqrt(float(ra @ ra) * float(rb @ rb))
    return float(ra @ rb) / denominator if denominator > 0 else math.nan


def starc_distance(a: Sequence[float], b: Sequence[float]) -> float:
    """||c(a) - c(b)||_2 with c(x) = (x - mean x) / ||x - mean x||, in [0, 2].

    >>> round(starc_distance([0.0, 1.0], [5.0, 7.0]), 9), round(starc_distance([0.0, 1.0], [1.0, 0.0]), 9)
    (0.0, 2.0)
    """
    _same_length(a, b)
    return float(np.linalg.norm(_canonical(a) - _canonical(b)))


def _canonical(values: Sequence[float]) -> np.ndarray:
    centred = np.asarray(values, dtype=float) - (np.mean(values) if len(values) else 0.0)
    norm = float(np.linalg.norm(centred))
    # Relative tolerance: centring a constant vector leaves rounding noise, not preferences.
    if norm <= 1e-12 * max(1.0, float(np.max(np.abs(values))) if len(values) else 1.0):
        return np.zeros_like(centred)
    return centred / norm


def _same_length(a: Sequence[float], b: Sequence[float]) -> None:
    if len(a) != len(b):
        raise ValueError(f"reward vectors differ in length: {len(a)} and {len(b)}")


@dataclass(frozen=True)
class RewardComparison:
    n: int  # trajectories compared
    spearman: float  # over the whole batch (nan when either reward is constant)
    distance: float  # STARC-style, in [0, 2]
    group_spearman: float  # mean over groups where both rewards vary (nan when none does)
    values_a: list[float]
    values_b: list[float]

    def __str__(self) -> str:
        return (f"{self.n} trajectories: spearman {self.spearman:.3f}, within-group spearman "
                f"{self.group_spearman:.3f}, STARC distance {self.distance:.3f}")


def compare_rewards(a: Reward | Sequence | Mapping | str, b: Reward | Sequence | Mapping | str,
                    trajectories: list[Trajectory], examples: list[Example]) -> RewardComparison:
    """Score the same trajectories with two rewards (objects or specs) and compare them."""
    check_batch(trajectories, examples)
    values_a = [s.value for s in _as_reward(a)(trajectories, examples)]
    values_b = [s.value for s in _as_reward(b)(trajectories, examples)]
    by_group: dict[str, list[int]] = defaultdict(list)
    for i, traj in enumerate(trajectories):
        by_group[traj.group_id].append(i)
    within = [spearman([values_a[i] for i in rows], [values_b[i] for i in rows]) for rows in by_group.values()]
    within = [r for r in within if not math.isnan(r)]
    return RewardComparison(
        n=len(trajectories),
        spearman=spearman(values_a, values_b),
        distance=starc_distance(values_a, values_b),
        group_spearman=math.fsum(within) / len(within) if within else math.nan,
        values_a=values_a,
        values_b=values_b,
    )


def _as_reward(reward_or_spec) -> Reward:
    if callable(reward_or_spec):
        return reward_or_spec
    from rewards.registry import build_reward  # the registry imports every component; only specs need it

    return build_reward(reward_or_spec)
