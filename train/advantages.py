"""Advantage estimators: scored trajectories -> per-token advantages.

Pure functions over tensors with masks (verl's `core_algos` style); the outcome-level
estimators are selectable by name in `ADVANTAGE_ESTIMATORS`. Shapes: N trajectories,
B rows (one per `Segment`, as `train.batching.collate_segments` lays them out), T token
positions per row, S = the most sampled tokens any one trajectory has.

Outcome-only GRPO, the common case:

    trajs = [traj for group in groups for traj in group.trajectories]  # groups: list[agent.types.TrajectoryGroup]
    segments = [seg for traj in trajs for seg in traj.segments]
    traj_index_B = torch.tensor([n for n, traj in enumerate(trajs) for _ in traj.segments])
    group_ids_N = torch.tensor([g for g, group in enumerate(groups) for _ in group.trajectories])
    batch = collate_segments(segments, pad_id)
    adv_N = ADVANTAGE_ESTIMATORS["grpo"](rewards_N, group_ids_N)
    adv_B_T = adv_N[traj_index_B, None] * batch.loss_mask

With step rewards, place them on tokens first (`train.placement`: `place_step_rewards`, then
`response_values_to_rows` for the rewards and, with fill=-1, the step indices) and call
`process_advantages` or `step_grouped_advantages` with `outcome_rewards_N = placed.outcome`.

Conventions shared by every function here:
- Only sampled tokens (`loss_mask` 1) are actions: they alone carry reward and advantage.
  Outputs are 0 at every other position.
- A trajectory may span several rows (a 'not useful' judge starts a new segment). Functions
  that look along time take `traj_index_B` and join a trajectory's rows, in row order, into
  one sequence of sampled tokens, so a dropped observation never cuts a return. Rows of one
  trajectory must appear in segment order (they do when segments are listed trajectory by
  trajectory, as above); they need not be adjacent.
- Discounting counts sampled tokens: gamma applies once per sampled token and injected
  tokens are skipped, as if they were not there. gamma = 1 (the default) sums the rewards
  still to come, which is what the group-normalised estimators want.
- Group statistics use the unbiased (Bessel-corrected) std, as TRL's GRPOTrainer and verl's
  `compute_grpo_outcome_advantage` do (`torch.std`), with `eps` added to the std. A group
  of one has no baseline to compare with and gets advantage 0 (verl would pass its raw
  reward through; TRL refuses groups of one).
"""

from __future__ import annotations

from dataclasses import dataclass

import torch

from train.config import check_fields, doc

__all__ = [
    "ADVANTAGE_ESTIMATORS",
    "AdvantageConfig",
    "discounted_returns",
    "gae_advantages",
    "grpo_outcome_advantages",
    "process_advantages",
    "reinforce_pp_advantages",
    "rloo_advantages",
    "step_grouped_advantages",
    "whiten",
]


# -- outcome-level estimators: one scalar per trajectory ------------------------------------


def whiten(x: torch.Tensor, mask: torch.Tensor | None = None, eps: float = 1e-8) -> torch.Tensor:
    """(x - mean) / (std + eps) over the positions where `mask` is 1 (all when None); 0 elsewhere.

    Unbiased std, like verl's `masked_whiten`. Fewer than two positions have no spread: zeros.
    """
    mask = torch.ones_like(x) if mask is None else mask.to(x.dtype)
    count = mask.sum()
    if count < 2:
        return torch.zeros_like(x)
    mean = (x * mask).sum() / count
    var = (((x - mean) ** 2) * mask).sum() / (count - 1)
    return torch.where(mask > 0, (x - mean) / (var.sqrt() + eps), torch.zeros_like(x))


def grpo_outcome_advantages(
    rewards_N: torch.Tensor, group_ids_N: torch.Tensor, scale_by_std: bool = True, eps: float = 1e-6
) -> torch.Tensor:
    """(N,) GRPO: (r - mean_g) / (std_g + eps) within each group g of samples of one question.

    `scale_by_std=False` gives r - mean_g, Dr.GRPO's choice: dividing by std up-weights
    questions the policy nearly always gets right or wrong (tiny std), a difficulty bias.
    """
    _check_vectors(rewards_N=rewards_N, group_ids_N=group_ids_N)
    return _group_normalise(rewards_N.float(), group_ids_N, scale_by_std, eps)


def rloo_advantages(rewards_N: torch.Tensor, group_ids_N: torch.Tensor) -> torch.Tensor:
    """(N,) REINFORCE leave-one-out: r_i - mean of the *other* rewards in i's group.

    Equals G / (G - 1) * (r_i - mean_g) for a group of G; a group of one gets 0.
    """
    _check_vectors(rewards_N=rewards_N, group_ids_N=group_ids_N)
    rewards_N = rewards_N.float()
    _, inverse_N, count_G = torch.unique(group_ids_N, return_inverse=True, return_counts=True)
    size_N = count_G[inverse_N].to(rewards_N.dtype)
    centred_N = _group_normalise(rewards_N, group_ids_N, scale_by_std=False, eps=0.0)
    return centred_N * size_N / (size_N - 1).clamp(min=1)


def reinforce_pp_advantages(
    rewards_N: torch.Tensor, group_ids_N: torch.Tensor | None = None, eps: float = 1e-6
) -> torch.Tensor:
    """(N,) REINFORCE++ (Hu, 2025): rewards whitened over the whole batch (a global baseline).

    With `group_ids_N`, the group mean is subtracted first ("REINFORCE++-baseline"), then the
    batch std divides. Each trajectory counts once; verl whitens over tokens instead, which
    lets long responses weigh more.
    """
    _check_vectors(rewards_N=rewards_N)
    rewards_N = rewards_N.float()
    if group_ids_N is not None:
        _check_vectors(rewards_N=rewards_N, group_ids_N=group_ids_N)
        rewards_N = _group_normalise(rewards_N, group_ids_N, scale_by_std=False, eps=0.0)
    return whiten(rewards_N, eps=eps)


def _reinforce_pp_global(rewards_N: torch.Tensor, group_ids_N: torch.Tensor) -> torch.Tensor:
    return reinforce_pp_advantages(rewards_N)  # the global baseline ignores groups by design


# Every entry: (rewards_N, group_ids_N) -> advantages_N. GRPO with or without its std
# (Dr.GRPO) is `AdvantageConfig.scale_by_std`.
ADVANTAGE_ESTIMATORS = {
    "grpo": grpo_outcome_advantages,
    "rloo": rloo_advantages,
    "reinforce_pp": _reinforce_pp_global,
    "reinforce_pp_baseline": reinforce_pp_advantages,
}


ESTIMATORS = ("process", *ADVANTAGE_ESTIMATORS)
OUTCOME_CREDITS = ("tree", "sequence")


@dataclass
class AdvantageConfig:
    """How scored trajectories become per-token advantages."""

    estimator: str = doc(
        "process: GRPO's outcome advantage + process_weight x group-normalised step rewards on the tokens that "
        "end each step (DeepSeekMath's process supervision) | grpo: outcome only (Shao et al. 2024) | rloo: "
        "leave-one-out baseline (Ahmadian et al. 2024) | reinforce_pp: batch-whitened rewards, REINFORCE++ "
        "(Hu 2025) | reinforce_pp_baseline: group mean subtracted first", "process", choices=ESTIMATORS)
    process_weight: float = doc("estimator=process: weight of the process (step reward) advantage", 0.5, ge=0)
    outcome_credit: str = doc(
        "estimator=process: where the outcome advantage lands. sequence: on every sampled token of the trajectory "
        "(GRPO). tree: on the tokens where the group's samples part, each getting the change in the mean outcome "
        "of the samples sharing the stream before it; adds up to the GRPO advantage along each trajectory "
        "(train/tree_credit.py)", "tree", choices=OUTCOME_CREDITS)
    negative_weight: float = doc("scale of negative advantages: 1 = as estimated, < 1 pushes less on samples worse "
                                 "than their group's mean", 0.3, ge=0)
    scale_by_std: bool = doc("divide group-centred rewards by the group's std (GRPO); false centres only, as "
                             "Dr.GRPO (Liu et al. 2025) does against the difficulty bias of the std", True)

    def __post_init__(self) -> None:
        check_fields(self)


# -- along time: returns, GAE, process rewards ----------------------------------------------


@torch.no_grad()
def discounted_returns(
    token_rewards_B_T: torch.Tensor, loss_mask_B_T: torch.Tensor, gamma: float = 1.0,
    traj_index_B: torch.Tensor | None = None,
) -> torch.Tensor:
    """(B, T) return-to-go G_t = r_t + gamma * G_(next sampled token of the trajectory).

    `traj_index_B` (row -> trajectory) joins a trajectory's rows; None: each row is its own.
    A reward on an unsampled position is refused: it would otherwise vanish silently.
    """
    _check_same_shape(token_rewards_B_T=token_rewards_B_T, loss_mask_B_T=loss_mask_B_T)
    _check_nothing_on_unsampled(token_rewards_B_T != 0, loss_mask_B_T, "token_rewards_B_T")
    packing = _Packing.of(loss_mask_B_T, traj_index_B)
    return packing.unpack(_returns(packing.pack(token_rewards_B_T.float()), gamma))


@torch.no_grad()
def gae_advantages(
    rewards_B_T: torch.Tensor, values_B_T: torch.Tensor, loss_mask_B_T: torch.Tensor,
    gamma: float = 1.0, lam: float = 0.95, traj_index_B: torch.Tensor | None = None,
) -> tuple[torch.Tensor, torch.Tensor]:
    """(advantages_B_T, returns_B_T) by GAE over the trajectory's sampled tokens.

    delta_t = r_t + gamma * V_next - V_t; A_t = delta_t + gamma * lam * A_next, where "next"
    is the next sampled token of the trajectory (injected tokens are skipped, their values
    ignored, as verl's multi-turn GAE does) and V = 0 after the last one. returns = A + V is
    the critic's target. Advantages are not whitened: PPO usually does `whiten(adv, mask)`.
    """
    _check_same_shape(rewards_B_T=rewards_B_T, values_B_T=values_B_T, loss_mask_B_T=loss_mask_B_T)
    _check_nothing_on_unsampled(rewards_B_T != 0, loss_mask_B_T, "rewards_B_T")
    packing = _Packing.of(loss_mask_B_T, traj_index_B)
    r_N_S, v_N_S = packing.pack(rewards_B_T.float()), packing.pack(values_B_T.float())
    adv_N_S = torch.zeros_like(r_N_S)
    next_value_N = torch.zeros(r_N_S.shape[0])
    running_N = torch.zeros(r_N_S.shape[0])
    # Padding past a trajectory's end has r = V = 0, so it contributes nothing.
    for s in reversed(range(r_N_S.shape[1])):
        delta_N = r_N_S[:, s] + gamma * next_value_N - v_N_S[:, s]
        running_N = delta_N + gamma * lam * running_N
        adv_N_S[:, s] = running_N
        next_value_N = v_N_S[:, s]
    advantages_B_T = packing.unpack(adv_N_S)
    return advantages_B_T, packing.unpack(adv_N_S + v_N_S)


@torch.no_grad()
def process_advantages(
    outcome_rewards_N: torch.Tensor, group_ids_N: torch.Tensor, step_rewards_B_T: torch.Tensor,
    step_index_B_T: torch.Tensor, loss_mask_B_T: torch.Tensor, traj_index_B: torch.Tensor,
    process_weight: float = 1.0, gamma: float = 1.0, scale_by_std: bool = True, eps: float = 1e-6,
    step_keys_B_T: torch.Tensor | None = None, outcome_advantages_B_T: torch.Tensor | None = None,
) -> torch.Tensor:
    """(B, T) GRPO outcome advantage on every sampled token + `process_weight` x process advantage.

    Process advantage, as DeepSeekMath's process-supervised GRPO: every step reward is
    normalised by the mean and std of *all step rewards of its group* (every step of every
    sample of the question, each step counted once however long it is), and a token's
    process advantage is the discounted sum of the normalised rewards of the steps ending
    at or after it. Normalising rewards (not returns) keeps early tokens, which see more
    steps ahead, on the same scale across samples with different step counts.

    `outcome_rewards_N` is the end-of-trajectory part only (`PlacedRewards.outcome`), so that
    step rewards are not counted twice. `step_rewards_B_T` and `step_index_B_T` come from
    `place_step_rewards(..., include_outcome=False)`: rewards at step ends, -1 elsewhere.

    `step_keys_B_T` (an int at each step end, e.g. the step's kind) narrows the comparison
    to the group's steps with the same key: rule-based step rewards rate only some kinds of
    step (searches, judges), and counting every answer step as a step that earned 0 pushes
    every answer down.

    `outcome_advantages_B_T` replaces the GRPO outcome advantage with per-token ones placed
    otherwise (e.g. `train.tree_credit`: the credit where a group's samples part).
    """
    packing, r_N_S, is_step_N_S = _packed_steps(
        outcome_rewards_N, group_ids_N, step_rewards_B_T, step_index_B_T, loss_mask_B_T, traj_index_B)
    n_M, s_M = is_step_N_S.nonzero(as_tuple=True)
    keys_M = group_ids_N[n_M]
    if step_keys_B_T is not None:
        _check_same_shape(step_index_B_T=step_index_B_T, step_keys_B_T=step_keys_B_T)
        keys_M = torch.stack([keys_M, packing.pack(step_keys_B_T.long())[n_M, s_M]], dim=1)
    normalised_N_S = torch.zeros_like(r_N_S)
    normalised_N_S[n_M, s_M] = _group_normalise(r_N_S[n_M, s_M], keys_M, scale_by_std, eps)
    process_N_S = _returns(normalised_N_S, gamma)
    if outcome_advantages_B_T is None:
        outcome_N_S = grpo_outcome_advantages(outcome_rewards_N, group_ids_N, scale_by_std, eps)[:, None]
    else:
        _check_same_shape(outcome_advantages_B_T=outcome_advantages_B_T, loss_mask_B_T=loss_mask_B_T)
        _check_nothing_on_unsampled(outcome_advantages_B_T != 0, loss_mask_B_T, "outcome_advantages_B_T")
        outcome_N_S = packing.pack(outcome_advantages_B_T.float())
    return packing.unpack((outcome_N_S + process_weight * process_N_S) * packing.valid_N_S)


def scale_negatives(adv_B_T: torch.Tensor, weight: float) -> torch.Tensor:
    """Advantages with the negative ones multiplied by `weight` (1 = unchanged, 0 = only
    better-than-average samples are pushed on)."""
    return torch.where(adv_B_T < 0, weight * adv_B_T, adv_B_T)


@torch.no_grad()
def step_grouped_advantages(
    outcome_rewards_N: torch.Tensor, group_ids_N: torch.Tensor, step_rewards_B_T: torch.Tensor,
    step_index_B_T: torch.Tensor, loss_mask_B_T: torch.Tensor, traj_index_B: torch.Tensor,
    step_weight: float = 1.0, gamma: float = 1.0, anchor_ids_B_T: torch.Tensor | None = None,
    scale_by_std: bool = True, eps: float = 1e-6,
) -> torch.Tensor:
    """(B, T) GiGPO-style (Feng et al., 2025): episode advantage + `step_weight` x step advantage.

    Episode advantage: GRPO over each trajectory's whole reward (outcome + its step rewards).
    Step advantage: a step's return-to-go (its own and later step rewards plus the outcome,
    discounted per sampled token) normalised within its *anchor group*. The anchor is
    (question group, step index in `traj.steps`) unless `anchor_ids_B_T` gives another id at
    each step end (e.g. one per distinct query text): GiGPO groups identical environment
    states, which free-text search rarely repeats, so the k-th step of each sample of the
    same question stands in for "the same decision point". Every sampled token from just
    after the previous step's end through this step's end gets this step's advantage
    (the think text and the action that led to it); tokens after the last step get none.
    Inputs are as for `process_advantages`.
    """
    packing, r_N_S, is_step_N_S = _packed_steps(
        outcome_rewards_N, group_ids_N, step_rewards_B_T, step_index_B_T, loss_mask_B_T, traj_index_B)
    N, S = r_N_S.shape
    outcome_N = outcome_rewards_N.float()
    episode_N = grpo_outcome_advantages(outcome_N + r_N_S.sum(dim=1), group_ids_N, scale_by_std, eps)
    length_N = packing.valid_N_S.sum(dim=1).long()
    has_tokens_N = length_N > 0
    token_r_N_S = r_N_S.clone()
    token_r_N_S[has_tokens_N.nonzero().squeeze(1), length_N[has_tokens_N] - 1] += outcome_N[has_tokens_N]
    returns_N_S = _returns(token_r_N_S, gamma)

    anchors = step_index_B_T if anchor_ids_B_T is None else anchor_ids_B_T
    _check_same_shape(step_index_B_T=step_index_B_T, anchor_ids_B_T=anchors)
    anchor_N_S = packing.pack(anchors.long())
    n_M, s_M = is_step_N_S.nonzero(as_tuple=True)
    keys_M_2 = torch.stack([group_ids_N[n_M].long(), anchor_N_S[n_M, s_M]], dim=1)
    step_adv_N_S = torch.zeros_like(r_N_S)
    step_adv_N_S[n_M, s_M] = _group_normalise(returns_N_S[n_M, s_M], keys_M_2, scale_by_std, eps)

    # Each token takes the advantage of the first step end at or after it.
    position_N_S = torch.where(is_step_N_S, torch.arange(S).expand(N, S), torch.full((N, S), S))
    owner_N_S = position_N_S.flip(1).cummin(dim=1).values.flip(1)
    owned_N_S = step_adv_N_S.gather(1, owner_N_S.clamp(max=max(S - 1, 0))) * (owner_N_S < S)
    return packing.unpack((episode_N[:, None] + step_weight * owned_N_S) * packing.valid_N_S)


# -- internals --------------------------------------------------------------------------------


@dataclass(frozen=True)
class _Packing:
    """Where each sampled token of a (B, T) batch goes when every trajectory's sampled
    tokens are laid end to end: packed row n = trajectory n, column s = its s-th sampled token."""

    b: torch.Tensor  # (K,) row of each sampled token
    t: torch.Tensor  # (K,) position in the row
    n: torch.Tensor  # (K,) trajectory
    s: torch.Tensor  # (K,) rank among the trajectory's sampled tokens
    shape_B_T: tuple[int, int]
    shape_N_S: tuple[int, int]

    @staticmethod
    def of(loss_mask_B_T: torch.Tensor, traj_index_B: torch.Tensor | None, n_traj: int | None = None) -> "_Packing":
        B, T = loss_mask_B_T.shape
        if traj_index_B is None:
            traj_index_B = torch.arange(B)
        if traj_index_B.shape != (B,) or traj_index_B.dtype.is_floating_point:
            raise ValueError(f"traj_index_B must be ({B},) integers, got {tuple(traj_index_B.shape)} {traj_index_B.dtype}")
        traj_index_B = traj_index_B.long()
        if B and int(traj_index_B.min()) < 0:
            raise ValueError("traj_index_B must be >= 0")
        N = n_traj if n_traj is not None else (int(traj_index_B.max()) + 1 if B else 0)
        if B and int(traj_index_B.max()) >= N:
            raise ValueError(f"traj_index_B refers to trajectory {int(traj_index_B.max())}, but there are {N}")
        sampled_B_T = loss_mask_B_T > 0
        count_B_N = torch.nn.functional.one_hot(traj_index_B, N) * sampled_B_T.sum(dim=1, keepdim=True)
        # Sampled tokens in earlier rows of the same trajectory: where this row's tokens start.
        before_B = (count_B_N.cumsum(dim=0) - count_B_N).gather(1, traj_index_B[:, None]).squeeze(1)
        b, t = sampled_B_T.nonzero(as_tuple=True)
        s = before_B[b] + sampled_B_T.long().cumsum(dim=1)[b, t] - 1
        S = int(s.max()) + 1 if s.numel() else 0
        return _Packing(b, t, traj_index_B[b], s, (B, T), (N, S))

    def pack(self, x_B_T: torch.Tensor) -> torch.Tensor:
        out_N_S = x_B_T.new_zeros(self.shape_N_S)
        out_N_S[self.n, self.s] = x_B_T[self.b, self.t]
        return out_N_S

    def unpack(self, x_N_S: torch.Tensor) -> torch.Tensor:
        out_B_T = x_N_S.new_zeros(self.shape_B_T)
        out_B_T[self.b, self.t] = x_N_S[self.n, self.s]
        return out_B_T

    @property
    def valid_N_S(self) -> torch.Tensor:
        out_N_S = torch.zeros(self.shape_N_S)
        out_N_S[self.n, self.s] = 1.0
        return out_N_S


def _returns(rewards_N_S: torch.Tensor, gamma: float) -> torch.Tensor:
    out_N_S = torch.zeros_like(rewards_N_S)
    running_N = torch.zeros(rewards_N_S.shape[0], dtype=rewards_N_S.dtype)
    for s in reversed(range(rewards_N_S.shape[1])):  # padding past the end is 0: adds nothing
        running_N = rewards_N_S[:, s] + gamma * running_N
        out_N_S[:, s] = running_N
    return out_N_S


def _group_normalise(x_M: torch.Tensor, keys_M: torch.Tensor, scale_by_std: bool, eps: float) -> torch.Tensor:
    """x minus its group's mean (over equal keys; (M,) or rows of (M, K)), divided by the
    group's unbiased std + eps when `scale_by_std`. Groups of one give 0."""
    if x_M.numel() == 0:
        return x_M.clone()
    _, inverse_M, count_G = torch.unique(keys_M, dim=0, return_inverse=True, return_counts=True)
    count_G = count_G.to(x_M.dtype)
    mean_G = torch.zeros_like(count_G).index_add_(0, inverse_M, x_M) / count_G
    centred_M = x_M - mean_G[inverse_M]
    if scale_by_std:
        var_G = torch.zeros_like(count_G).index_add_(0, inverse_M, centred_M**2) / (count_G - 1).clamp(min=1)
        centred_M = centred_M / (var_G.sqrt()[inverse_M] + eps)
    return torch.where(count_G[inverse_M] > 1, centred_M, torch.zeros_like(centred_M))


def _packed_steps(outcome_rewards_N, group_ids_N, step_rewards_B_T, step_index_B_T, loss_mask_B_T, traj_index_B):
    _check_vectors(outcome_rewards_N=outcome_rewards_N, group_ids_N=group_ids_N)
    _check_same_shape(step_rewards_B_T=step_rewards_B_T, step_index_B_T=step_index_B_T, loss_mask_B_T=loss_mask_B_T)
    is_step_B_T = step_index_B_T >= 0
    _check_nothing_on_unsampled(is_step_B_T, loss_mask_B_T, "step_index_B_T")
    if bool(((step_rewards_B_T != 0) & ~is_step_B_T).any()):
        raise ValueError("step_rewards_B_T has rewards away from step ends (step_index_B_T = -1 there); "
                         "place them with place_step_rewards(..., include_outcome=False)")
    packing = _Packing.of(loss_mask_B_T, traj_index_B, n_traj=len(outcome_rewards_N))
    return packing, packing.pack(step_rewards_B_T.float()), packing.pack(is_step_B_T)


def _check_vectors(**tensors: torch.Tensor) -> None:
    shapes = {name: tuple(t.shape) for name, t in tensors.items()}
    if any(len(s) != 1 for s in shapes.values()) or len(set(shapes.values())) > 1:
        raise ValueError(f"expected 1-D tensors of one length (N,), got {shapes}")


def _check_same_shape(**tensors: torch.Tensor) -> None:
    shapes = {name: tuple(t.shape) for name, t in tensors.items()}
    if any(len(s) != 2 for s in shapes.values()) or len(set(shapes.values())) > 1:
        raise ValueError(f"expected 2-D tensors of one shape (B, T), got {shapes}")


def _check_nothing_on_unsampled(marked_B_T: torch.Tensor, loss_mask_B_T: torch.Tensor, name: str) -> None:
    n_bad = int((marked_B_T & (loss_mask_B_T <= 0)).sum())
    if n_bad:
        raise ValueError(f"{name} is set on {n_bad} positions with loss_mask 0; only sampled tokens can carry "
                         "reward (place_step_rewards puts each reward on a sampled token)")
