"""Outcome credit from the prefixes a GRPO group's samples share (TreeRL-style).

A group's samples of one question start from the same prompt and, at a low temperature,
agree for most of their tokens: they part at a few tokens (a miscopied syllable of a name,
another query), and what follows a parting is the consequence of it. GRPO gives every
sampled token its trajectory's whole advantage, so the tokens the samples share are pushed
up by some samples and down by others, and the tokens after a parting carry credit that
belongs to the parting itself.

Here the samples of a group form a prefix tree. A node's value is the mean outcome reward
of the samples that pass through it (that share the token stream up to there). A sampled
token's advantage is the value of the node it leads to minus the value of the node it
starts from: the change in expected outcome that choosing it made, measured by the group.
Tokens all samples through a node share get 0; the credit lands where samples part. Along
one trajectory the advantages add up to its reward minus the group's mean reward (the
tree telescopes), so a trajectory's total credit is GRPO's, unscaled; `scale_by_std`
divides by the group's std as GRPO does.

The stream compared is everything the trajectory appended after its prompt, segment after
segment (sampled and injected ids alike): retrieval is deterministic, so two samples that
sampled the same ids saw the same observations, and a difference in what was injected can
only follow a difference in what was sampled. A difference that first shows on an injected
token (one sample's budget ended a turn the other went on with) is credited to the last
sampled token before it.
"""

from __future__ import annotations

from collections.abc import Sequence

import torch


def common_prefix_length(a: Sequence[int], b: Sequence[int]) -> int:
    """Number of leading ids `a` and `b` share."""
    n = min(len(a), len(b))
    for i in range(n):
        if a[i] != b[i]:
            return i
    return n


@torch.no_grad()
def tree_outcome_advantages(
    streams: Sequence[Sequence[int]], sampled: Sequence[Sequence[int]], rewards_N: torch.Tensor,
    group_ids_N: torch.Tensor, scale_by_std: bool = True, eps: float = 1e-6,
) -> list[list[float]]:
    """Per trajectory n, a list aligned to `streams[n]`: at each sampled token (`sampled[n]`
    is 1 there) the change it makes in the mean reward of the group's samples sharing the
    stream before it, 0 elsewhere; divided by the group's unbiased std + eps when
    `scale_by_std`. A group of one, or one whose samples all scored alike, gets 0.

    >>> adv = tree_outcome_advantages([[5, 6, 7], [5, 6, 8]], [[1, 1, 1], [1, 1, 1]],
    ...                               torch.tensor([1.0, 0.0]), torch.tensor([0, 0]), scale_by_std=False)
    >>> adv
    [[0.0, 0.0, 0.5], [0.0, 0.0, -0.5]]
    """
    if len(streams) != len(sampled) or len(streams) != len(rewards_N) or len(rewards_N) != len(group_ids_N):
        raise ValueError(f"expected one stream, mask, reward and group id per trajectory; got {len(streams)} "
                         f"streams, {len(sampled)} masks, {len(rewards_N)} rewards, {len(group_ids_N)} group ids")
    for n, (ids, mask) in enumerate(zip(streams, sampled)):
        if len(ids) != len(mask):
            raise ValueError(f"trajectory {n}: {len(ids)} stream ids but {len(mask)} mask values")
    rewards = rewards_N.double().tolist()
    groups: dict[int, list[int]] = {}
    for n, g in enumerate(group_ids_N.tolist()):
        groups.setdefault(g, []).append(n)
    out = [[0.0] * len(ids) for ids in streams]
    for members in groups.values():
        if len(members) < 2:
            continue
        values = [rewards[n] for n in members]
        mean = sum(values) / len(values)
        std = (sum((v - mean) ** 2 for v in values) / (len(values) - 1)) ** 0.5
        if std == 0:
            continue
        scale = 1 / (std + eps) if scale_by_std else 1.0
        for n in members:
            # How far n shares its stream with each member (itself: all of it).
            shared = {m: common_prefix_length(streams[n], streams[m]) if m != n else len(streams[n]) for m in members}
            # The value of n's node after j ids is the mean reward over members sharing >= j ids; it
            # changes only at a parting, where members with shared == j drop out of n's node.
            through, total = len(members), sum(values)
            for j in sorted({s for s in shared.values() if s < len(streams[n])}):
                leaving = [m for m in members if shared[m] == j]
                before = total / through
                through -= len(leaving)
                total -= sum(rewards[m] for m in leaving)
                delta = (total / through - before) * scale
                pos = next((t for t in range(j, -1, -1) if sampled[n][t]), None)
                if pos is not None:
                    out[n][pos] += delta
    return out


def tree_advantage_rows(trajs, outcome_rewards_N: torch.Tensor, group_ids_N: torch.Tensor,
                        scale_by_std: bool = True, eps: float = 1e-6) -> list[list[float]]:
    """`tree_outcome_advantages` of trajectories' response streams, split back into one list
    per segment (aligned to its `response_ids`), trajectory by trajectory: what
    `train.advantages.response_values_to_rows` lays into a batch's rows."""
    streams = [[i for seg in t.segments for i in seg.response_ids] for t in trajs]
    masks = [[m for seg in t.segments for m in seg.loss_mask] for t in trajs]
    per_traj = tree_outcome_advantages(streams, masks, outcome_rewards_N, group_ids_N, scale_by_std, eps)
    rows = []
    for t, values in zip(trajs, per_traj):
        start = 0
        for seg in t.segments:
            rows.append(values[start : start + len(seg.response_ids)])
            start += len(seg.response_ids)
    return rows
