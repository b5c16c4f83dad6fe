"""Rewards: score finished trajectories, per trajectory and per step; never tensors.

    base.py         Score, the Reward protocol, from_function (per-trajectory fn -> Reward)
    outcome.py      EM / cover-EM / F1 against gold aliases, format, length and search budgets
    judge.py        ReSeek: ideal JUDGE labels, JUDGE / correctness / utility step rewards
    steps.py        StepSearch: TF-IDF information gain minus redundancy, per search
    grounding.py    queries and answers copied exactly from the context, per step
    shaping.py      Preference-As-Reward, trust weight of a process reward, annealing
    ensemble.py     mean / worst-case / uncertainty-weighted ensembles
    diagnostics.py  do two rewards prefer the same trajectories? (Spearman, STARC distance)
    registry.py     build_reward([{name: f1, weight: 1.0}, ...]) from a config
"""

from rewards.base import Reward, Score, from_function
from rewards.registry import build_reward

__all__ = ["Reward", "Score", "from_function", "build_reward"]
