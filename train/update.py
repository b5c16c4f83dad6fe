"""One training step's math on a batch of scored trajectories: token-level advantages,
the clipped policy update, and the batch statistics the trainer logs."""

from __future__ import annotations

import math
import time
from collections import defaultdict
from dataclasses import dataclass

import torch

from agent.types import Example, Trajectory
from rewards.base import Score
from rewards.outcome import exact_match
from train.advantages import (ADVANTAGE_ESTIMATORS, place_step_rewards, process_advantages, response_values_to_rows,
                              scale_negatives)
from train.batching import TokenBatch, collate_segments, merge_duplicate_rows, token_logprobs
from train.loss import aggregate, high_entropy_mask, is_finite_step, kl_penalty, policy_loss, truncated_is_weights
from train.policy import autocast_dtype, autocast_to
from train.sft import sft_losses
from train.tree_credit import tree_advantage_rows


FULL_KL_MAX_BYTES = 4 * 2**30  # kl_estimator=full: the most the reference's kept distributions may take


@dataclass
class Advantages:
    batch: TokenBatch  # one row per segment, trajectory by trajectory
    adv_B_T: torch.Tensor  # (B, T) advantage on sampled tokens, 0 elsewhere
    per_traj: list[float]  # mean advantage over each trajectory's sampled tokens (for traces)


def advantages_for(trajs: list[Trajectory], scores: list[Score], cfg, pad_id: int) -> Advantages:
    segments = [seg for t in trajs for seg in t.segments]
    traj_index_B = torch.tensor([n for n, t in enumerate(trajs) for _ in t.segments])
    order: dict[str, int] = {}
    group_ids_N = torch.tensor([order.setdefault(t.group_id, len(order)) for t in trajs])
    batch = collate_segments(segments, pad_id)
    mask_B_T = batch.loss_mask
    if cfg.advantage == "process":
        placed = [place_step_rewards(t, s, include_outcome=False) for t, s in zip(trajs, scores)]
        rewards_rows = [r for p in placed for r in p.rewards]
        index_rows = [i for p in placed for i in p.step_index]
        step_rewards_B_T = response_values_to_rows(rewards_rows, batch.attention_mask)
        step_index_B_T = response_values_to_rows(index_rows, batch.attention_mask, fill=-1, dtype=torch.long)
        outcome_N = torch.tensor([p.outcome for p in placed], dtype=torch.float32)
        keys_B_T = None
        if cfg.process_by_kind:  # searches compared with searches, judges with judges
            kinds: dict[str, int] = {}
            key_rows = [[kinds.setdefault(t.steps[i].kind, len(kinds)) if i >= 0 else -1 for i in row]
                        for t, p in zip(trajs, placed) for row in p.step_index]
            keys_B_T = response_values_to_rows(key_rows, batch.attention_mask, fill=-1, dtype=torch.long)
        outcome_B_T = None  # sequence credit: GRPO's advantage on every token (GRPOConfig checks the name)
        if cfg.outcome_credit == "tree":
            outcome_B_T = response_values_to_rows(
                tree_advantage_rows(trajs, outcome_N, group_ids_N, scale_by_std=cfg.scale_by_std), batch.attention_mask)
        adv_B_T = process_advantages(outcome_N, group_ids_N, step_rewards_B_T, step_index_B_T, mask_B_T,
                                     traj_index_B, process_weight=cfg.process_weight, step_keys_B_T=keys_B_T,
                                     scale_by_std=cfg.scale_by_std, outcome_advantages_B_T=outcome_B_T)
    elif cfg.advantage in ADVANTAGE_ESTIMATORS:
        rewards_N = torch.tensor([s.value for s in scores], dtype=torch.float32)
        adv_N = ADVANTAGE_ESTIMATORS[cfg.advantage](rewards_N, group_ids_N)
        adv_B_T = adv_N[traj_index_B, None] * mask_B_T
    else:
        raise ValueError(f"unknown advantage {cfg.advantage!r}; expected process or one of {sorted(ADVANTAGE_ESTIMATORS)}")
    adv_B_T = scale_negatives(adv_B_T, cfg.negative_weight)
    if cfg.skip_settled_groups:
        settled_N = settled_groups([s.value for s in scores], group_ids_N)
        adv_B_T = adv_B_T * (~settled_N[traj_index_B]).float()[:, None]
    sums_N = torch.zeros(len(trajs)).index_add_(0, traj_index_B, adv_B_T.sum(1))
    counts_N = torch.zeros(len(trajs)).index_add_(0, traj_index_B, mask_B_T.sum(1)).clamp(min=1)
    return Advantages(batch, adv_B_T, (sums_N / counts_N).tolist())


def settled_groups(rewards: list[float], group_ids_N: torch.Tensor) -> torch.Tensor:
    """(N,) bool: the trajectory's group scored one reward on every sample."""
    rewards_N = torch.tensor(rewards, dtype=torch.float32)
    n_groups = int(group_ids_N.max()) + 1 if len(group_ids_N) else 0
    hi_G = torch.full((n_groups,), -math.inf).scatter_reduce(0, group_ids_N, rewards_N, "amax")
    lo_G = torch.full((n_groups,), math.inf).scatter_reduce(0, group_ids_N, rewards_N, "amin")
    return (hi_G == lo_G)[group_ids_N]


def policy_update(policy, adv: Advantages, cfg, optimizer, seed: int, demos: TokenBatch | None = None) -> dict:
    """`updates_per_batch` passes of minibatch steps on the clipped loss (+ KL, - entropy,
    + `cfg.sft_coef` x the mean cross-entropy of `demos`' sampled tokens in every step)."""
    model, batch = policy.model, adv.batch
    max_tokens = int(batch.attention_mask.sum(1).max())
    # Rows whose every advantage is 0 (a group whose samples all scored alike) add nothing
    # to the policy gradient but cost a forward and backward pass; without KL or entropy
    # terms they are left out (as DAPO's dynamic sampling), and the token mean is then
    # taken over the tokens that carry signal.
    n_rows = batch.input_ids.shape[0]
    keep_B = torch.arange(n_rows)
    if (cfg.skip_zero_advantage or cfg.skip_settled_groups) and not cfg.kl_coef and not cfg.entropy_coef:
        keep_B = (adv.adv_B_T != 0).any(dim=1).nonzero().squeeze(1)
    batch = batch.rows(keep_B)
    adv_B_T, counts_B = adv.adv_B_T[keep_B], torch.ones(len(keep_B))
    if cfg.merge_duplicate_rows and len(keep_B):
        batch, adv_B_T, counts_B = merge_duplicate_rows(batch, adv_B_T)
    logs = defaultdict(list)
    logs["rows_trained"].append(len(keep_B) / max(n_rows, 1))
    logs["rows_distinct"].append(len(counts_B) / max(len(keep_B), 1))
    device = next(model.parameters()).device
    batch, adv_B_T, counts_B = batch.to(device), adv_B_T.to(device), counts_B.to(device)
    demos = demos.to(device) if demos is not None else None
    # The reference is frozen: its logprobs are computed once per batch, not once per pass.
    amp = autocast_dtype(cfg.autocast, device)
    started, ref_logprobs_B_L, ref_dists = time.perf_counter(), None, None
    full_kl = cfg.kl_estimator == "full"  # exact KL over the vocabulary: the reference's distributions are kept
    if cfg.kl_coef and full_kl:
        positions = int(batch.loss_mask.sum())
        held = positions * model.config.vocab_size * 4
        if held > FULL_KL_MAX_BYTES:
            raise ValueError(f"kl_estimator=full would hold the reference's distributions at {positions} "
                             f"trained positions x {model.config.vocab_size} tokens ({held / 2**30:.1f} GiB); "
                             f"use k3 for a vocabulary this large")
    if cfg.kl_coef:
        with torch.no_grad(), policy.as_reference() as ref, autocast_to(device, amp):
            if full_kl:  # the whole distributions at the trained positions, not only the sampled tokens' logprobs
                _, ref_dists = token_logprobs(ref, batch, cfg.temperature, only_loss=True, with_dist=True)
            else:
                ref_logprobs_B_L = token_logprobs(ref, batch, cfg.temperature, only_loss=True)
    reference_s = time.perf_counter() - started
    model.train()
    # Truncated importance sampling (the sampler is not the trainer: vLLM, a bf16 copy): the
    # ratio is taken against the trainer's own logprobs before this step, and each token is
    # weighted by min(pi_trainer / pi_sampler, cap). With one pass of one minibatch those are
    # the first forward's own values, detached (the weights have not moved yet): no extra pass.
    tis_cap = cfg.tis_cap
    trainer_old_B_L = None
    if tis_cap and len(counts_B) and (cfg.updates_per_batch > 1 or len(counts_B) > cfg.minibatch_rows):
        with torch.no_grad(), autocast_to(device, amp):
            trainer_old_B_L = token_logprobs(model, batch, cfg.temperature, only_loss=True)
    gen = torch.Generator().manual_seed(seed)
    for _ in range(cfg.updates_per_batch if len(counts_B) else 0):
        perm = torch.randperm(len(counts_B), generator=gen).to(device)
        for idx in even_minibatches(perm, cfg.minibatch_rows):
            mb = batch.rows(idx)
            mask, adv_mb, counts = mb.loss_mask, adv_B_T[idx], counts_B[idx]
            with autocast_to(device, amp):  # with ref_dists, also the exact KL to the reference
                forward = token_logprobs(model, mb, cfg.temperature, with_entropy=True, only_loss=True,
                                         kl_to=ref_dists.rows(idx) if ref_dists is not None else None)
            logprobs, entropy = forward[:2]
            old, is_weights = mb.old_logprobs, None
            if tis_cap:
                trainer_old = logprobs.detach() if trainer_old_B_L is None else trainer_old_B_L[idx]
                is_weights = truncated_is_weights(old, trainer_old, tis_cap)
                for k, v in sampler_stats(old, trainer_old, is_weights, mask, tis_cap).items():
                    logs[k].append(v)
                old = trainer_old
            if cfg.entropy_top_share < 1:  # the policy gradient on the forking tokens only
                forks = high_entropy_mask(entropy, mask, cfg.entropy_top_share, counts)
                is_weights = forks if is_weights is None else is_weights * forks
                logs["pg_token_share"].append(float((forks.sum(1) * counts).sum() / (mask.sum(1) * counts).sum().clamp(min=1)))
            loss, m = policy_loss(logprobs, old, adv_mb, mask, cfg.clip_low, cfg.clip_high, cfg.aggregation,
                                  max_tokens=max_tokens, is_weights_B_T=is_weights, counts_B=counts)
            entropy_mean = aggregate(entropy, mask, cfg.aggregation, max_tokens, counts)
            if cfg.entropy_coef:
                loss = loss - cfg.entropy_coef * entropy_mean
            if cfg.kl_coef:
                kl_B_T = forward[2] if ref_dists is not None else kl_penalty(logprobs, ref_logprobs_B_L[idx], cfg.kl_estimator)
                kl = aggregate(kl_B_T, mask, cfg.aggregation, max_tokens, counts)
                loss = loss + cfg.kl_coef * kl
                logs["kl_ref"].append(kl.item())
            if demos is not None and cfg.sft_coef:
                with autocast_to(device, amp):
                    nll = sft_losses(model, demos)[0]
                loss = loss + cfg.sft_coef * nll
                logs["demo_nll"].append(nll.item())
            optimizer.zero_grad(set_to_none=True)
            loss.backward()
            params = [p for p in model.parameters() if p.requires_grad]
            if not is_finite_step(loss, params):  # one NaN applied by AdamW would corrupt every weight
                optimizer.zero_grad(set_to_none=True)
                logs["skipped"].append(1.0)
                continue
            logs["grad_norm"].append(float(torch.nn.utils.clip_grad_norm_(params, cfg.max_grad_norm)))
            optimizer.step()
            logs["loss"].append(loss.item())
            logs["entropy"].append(entropy_mean.item())
            for k, v in m.items():
                logs[k].append(v)
    model.eval()
    out = {k: max(v) if k.endswith("_max") else sum(v) / len(v) for k, v in logs.items() if k != "skipped"}
    out["skipped_steps"] = float(sum(logs["skipped"]))
    out["reference_s"] = reference_s  # time of the reference forward (KL)
    out.setdefault("approx_kl", 0.0)
    out.setdefault("entropy", 0.0)
    return out


def even_minibatches(perm_B: torch.Tensor, max_rows: int) -> tuple[torch.Tensor, ...]:
    """`perm_B` in as few minibatches of at most `max_rows` as it takes, sized alike (83
    rows at 64 make 42 + 41, not 64 + 19): each minibatch's loss is a mean, so a small
    remainder would take a full optimizer step on a few rows' noise."""
    if max_rows < 1:
        raise ValueError(f"minibatch_rows must be >= 1, got {max_rows}")
    return torch.tensor_split(perm_B, math.ceil(len(perm_B) / max_rows)) if len(perm_B) else ()


def sampler_stats(sampler_B_T: torch.Tensor, trainer_B_T: torch.Tensor, weights_B_T: torch.Tensor,
                  mask_B_T: torch.Tensor, cap: float) -> dict[str, float]:
    """How far the sampler is from the trainer on the sampled tokens: the mean and largest
    |log pi_trainer - log pi_sampler|, the mean importance weight and the share truncated."""
    keep_B_T = mask_B_T > 0
    if not keep_B_T.any():
        return {}
    gap_K = (trainer_B_T.float() - sampler_B_T.float())[keep_B_T].abs()
    weights_K = weights_B_T[keep_B_T]
    return {"sampler_gap": float(gap_K.mean()), "sampler_gap_max": float(gap_K.max()),
            "tis_weight": float(weights_K.mean()), "tis_truncated": float((weights_K >= cap).float().mean())}


def group_stats(trajs: list[Trajectory], examples: list[Example], scores: list[Score]) -> dict:
    """EM, search and validity rates, and B-STaR's exploration monitors over the groups."""
    em = [exact_match(t.answer, ex.answers) for t, ex in zip(trajs, examples)]
    actions = [s for t in trajs for s in t.steps if s.kind != "think"]
    groups: dict[str, list[int]] = defaultdict(list)
    for i, t in enumerate(trajs):
        groups[t.group_id].append(i)
    values = [s.value for s in scores]
    return {
        "em": sum(em) / len(em),
        "searches": sum(s.kind == "search" for s in actions) / len(trajs),
        "valid": 1 - sum(s.kind == "invalid" for s in actions) / max(len(actions), 1),
        "distinct_answers": sum(len({trajs[i].answer for i in g}) for g in groups.values()) / len(groups),
        "pass_at_group": sum(any(em[i] for i in g) for g in groups.values()) / len(groups),
        "zero_variance_groups": sum(max(values[i] for i in g) == min(values[i] for i in g) for g in groups.values()) / len(groups),
    }
