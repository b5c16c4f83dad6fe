"""Rewards onto tokens: where each step's reward and a trajectory's outcome land among its
sampled tokens, and response-aligned values laid into the rows `collate_segments` builds.

The one place of the trainer's math that reads trajectories; `train.advantages` works on
the tensors this produces. Only sampled tokens (`loss_mask` 1) carry reward.
"""

from __future__ import annotations

from collections.abc import Sequence
from typing import NamedTuple

import torch

from agent.types import Trajectory
from rewards.base import Score

__all__ = ["PlacedRewards", "place_step_rewards", "response_values_to_rows"]


class PlacedRewards(NamedTuple):
    rewards: list[list[float]]  # per segment, (T_seg,) aligned to response_ids; 0.0 where nothing lands
    step_index: list[list[int]]  # per segment, (T_seg,) index into traj.steps of the step ending there, else -1
    outcome: float  # score.value - sum(score.per_step): the part earned at the end
    n_dropped: int  # non-zero rewards that had no sampled token to land on, so were placed nowhere


def place_step_rewards(traj: Trajectory, score: Score, include_outcome: bool = True) -> PlacedRewards:
    """Put a trajectory's reward on the tokens that earned it.

    - step i's reward (`score.per_step[i]`) lands on the last token of `traj.steps[i].span`
      in segment `steps[i].segment`; when that token was injected, on the last sampled token
      of the span; when the span has no sampled token, it is dropped and counted.
    - the outcome part, `score.value - sum(per_step)`, lands on the last sampled token of the
      last segment that has one (`include_outcome=False` leaves it off, for estimators that
      take it as `outcome_rewards_N`).
    Every step that has a sampled token is marked in `step_index`, with or without a reward,
    so group statistics count steps that earned 0 too.
    """
    who = f"trajectory {traj.example_id!r} sample {traj.sample}"
    if score.per_step is not None and len(score.per_step) != len(traj.steps):
        raise ValueError(f"{who}: {len(score.per_step)} per-step rewards for {len(traj.steps)} steps")
    rewards = [[0.0] * len(seg.response_ids) for seg in traj.segments]
    step_index = [[-1] * len(seg.response_ids) for seg in traj.segments]
    per_step = list(score.per_step) if score.per_step is not None else [0.0] * len(traj.steps)
    n_dropped = 0
    for i, (step, reward) in enumerate(zip(traj.steps, per_step)):
        if not 0 <= step.segment < len(traj.segments):
            raise ValueError(f"{who}: step {i} is in segment {step.segment}, but there are {len(traj.segments)}")
        seg = traj.segments[step.segment]
        start, end = step.span
        if not 0 <= start <= end <= len(seg.response_ids):
            raise ValueError(
                f"{who}: step {i} has span {step.span}, outside segment {step.segment}'s "
                f"{len(seg.response_ids)} response tokens"
            )
        pos = _last_sampled(seg.loss_mask, start, end)
        if pos is None:
            n_dropped += reward != 0
            continue
        rewards[step.segment][pos] += reward
        step_index[step.segment][pos] = i
    outcome = score.value - sum(per_step)
    if include_outcome:
        for s in reversed(range(len(traj.segments))):
            pos = _last_sampled(traj.segments[s].loss_mask, 0, len(traj.segments[s].loss_mask))
            if pos is not None:
                rewards[s][pos] += outcome
                break
        else:
            n_dropped += outcome != 0
    return PlacedRewards(rewards, step_index, outcome, int(n_dropped))


def _last_sampled(loss_mask: Sequence[int], start: int, end: int) -> int | None:
    return next((t for t in range(end - 1, start - 1, -1) if loss_mask[t]), None)


def response_values_to_rows(
    values: Sequence[Sequence[float]], attention_mask_B_L: torch.Tensor, fill: float = 0,
    dtype: torch.dtype = torch.float32,
) -> torch.Tensor:
    """(B, L) tensor with row b's response-aligned `values[b]` where `collate_segments` put
    that segment's response: the last len(values[b]) real tokens of the row (true also when
    `max_len` cut the context). `fill` everywhere else."""
    B, L = attention_mask_B_L.shape
    if len(values) != B:
        raise ValueError(f"{len(values)} rows of values for a batch of {B} rows")
    out_B_L = torch.full((B, L), fill, dtype=dtype)
    lengths_B = attention_mask_B_L.sum(dim=1).tolist()
    for b, (row, n) in enumerate(zip(values, lengths_B)):
        if len(row) > n:
            raise ValueError(f"row {b}: {len(row)} response values but only {n} real tokens")
        if row:
            out_B_L[b, n - len(row) : n] = torch.tensor(row, dtype=dtype)
    return out_B_L
