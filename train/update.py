"""One training step's math on a batch of scored groups: token-level advantages, the
clipped policy update with its optimizer, and the batch statistics the trainer logs."""

from __future__ import annotations

import math
import time
from collections import defaultdict
from dataclasses import dataclass

import torch

from agent.types import Trajectory, TrajectoryGroup
from rewards.outcome import exact_match
from train.advantages import ADVANTAGE_ESTIMATORS, AdvantageConfig, process_advantages, scale_negatives
from train.batching import LogprobsForward, TokenBatch, collate_segments, merge_duplicate_rows, sft_losses, token_logprobs
from train.config import check_fields, doc
from train.distributed import ONE, Processes
from train.loss import LossConfig, aggregate, aggregate_weight, high_entropy_mask, is_finite_step, kl_penalty, policy_loss, truncated_is_weights
from train.placement import place_step_rewards, response_values_to_rows
from train.policy import autocast_to
from train.tree_credit import tree_advantage_rows

LR_SCHEDULES = {"constant": "constant_with_warmup", "linear": "linear", "cosine": "cosine"}


@dataclass
class OptimConfig:
    """AdamW, its schedule, and how each batch is cut into optimizer steps."""

    learning_rate: float = doc("AdamW learning rate (peak, after warmup)", 1e-4, gt=0)
    lr_schedule: str = doc("constant | linear | cosine: the learning rate from the end of warmup to max_steps, "
                           "moved once per step of questions", "constant", choices=tuple(LR_SCHEDULES))
    warmup_steps: int = doc("steps of linear warmup from 0 to learning_rate", 0, ge=0)
    max_grad_norm: float = doc("gradients are clipped to this global L2 norm", 1.0, gt=0)
    updates_per_batch: int = doc("passes over each step's batch (PPO epochs)", 1, ge=1)
    minibatch_rows: int = doc("most distinct rows (segments) per optimizer step within a pass; a pass takes as few "
                              "minibatches as that allows, sized alike", 128, ge=1)

    def __post_init__(self) -> None:
        check_fields(self)


def make_optimizer(params, ocfg: OptimConfig) -> torch.optim.Optimizer:
    """AdamW without weight decay (the KL term holds the policy near its start) and with a
    short second-moment memory (0.99) for a policy that moves every step."""
    return torch.optim.AdamW(params, lr=ocfg.learning_rate, betas=(0.9, 0.99), eps=1e-8, weight_decay=0.0)


def lr_scheduler(optimizer, ocfg: OptimConfig, max_steps: int):
    """Warmup, then `ocfg.lr_schedule` to `max_steps`; stepped once per step of questions."""
    from transformers import get_scheduler

    return get_scheduler(LR_SCHEDULES[ocfg.lr_schedule], optimizer, num_warmup_steps=ocfg.warmup_steps,
                         num_training_steps=max_steps)


# -- advantages -------------------------------------------------------------------------------


@dataclass
class Advantages:
    batch: TokenBatch  # one row per segment, trajectory by trajectory, group by group
    adv_B_T: torch.Tensor  # (B, T) advantage on sampled tokens, 0 elsewhere
    per_traj: list[float]  # (N,) mean advantage over each trajectory's sampled tokens (for traces)

    def per_step(self, trajectories: list[Trajectory]) -> list[list[float | None]]:
        """(N,) for each of the trajectories these advantages were computed for, in order: the mean
        advantage over each step's sampled tokens, None for a step without any (for traces)."""
        out, row = [], 0
        for traj in trajectories:
            steps = []
            for step in traj.steps:
                b, start = row + step.segment, len(traj.segments[step.segment].context_ids)
                cols = slice(start + step.span[0], start + step.span[1])
                n = float(self.batch.loss_mask[b, cols].sum())
                steps.append(round(float(self.adv_B_T[b, cols].sum()) / n, 6) if n else None)
            out.append(steps)
            row += len(traj.segments)
        return out


def advantages_for(groups: list[TrajectoryGroup], acfg: AdvantageConfig, pad_id: int) -> Advantages:
    """The batch of the groups' segments and each sampled token's advantage."""
    trajs = [t for g in groups for t in g.trajectories]
    scores = [s for g in groups for s in g.scores]
    segments = [seg for t in trajs for seg in t.segments]
    traj_index_B = torch.tensor([n for n, t in enumerate(trajs) for _ in t.segments])
    group_ids_N = torch.tensor([i for i, g in enumerate(groups) for _ in g.trajectories])
    batch = collate_segments(segments, pad_id)
    mask_B_T = batch.loss_mask
    if acfg.estimator == "process":
        placed = [place_step_rewards(t, s, include_outcome=False) for t, s in zip(trajs, scores)]
        step_rewards_B_T = response_values_to_rows([r for p in placed for r in p.rewards], batch.attention_mask)
        index_rows = [i for p in placed for i in p.step_index]
        step_index_B_T = response_values_to_rows(index_rows, batch.attention_mask, fill=-1, dtype=torch.long)
        outcome_N = torch.tensor([p.outcome for p in placed], dtype=torch.float32)
        # Each step reward is compared with the group's steps of the same kind (searches with searches):
        # rule-based rewards rate some kinds only, and counting every answer as a step that earned 0
        # would push every answer down.
        kinds: dict[str, int] = {}
        key_rows = [[kinds.setdefault(t.steps[i].kind, len(kinds)) if i >= 0 else -1 for i in row]
                    for t, p in zip(trajs, placed) for row in p.step_index]
        keys_B_T = response_values_to_rows(key_rows, batch.attention_mask, fill=-1, dtype=torch.long)
        outcome_B_T = None  # sequence credit: GRPO's advantage on every sampled token
        if acfg.outcome_credit == "tree":
            outcome_B_T = response_values_to_rows(
                tree_advantage_rows(trajs, outcome_N, group_ids_N, scale_by_std=acfg.scale_by_std), batch.attention_mask)
        adv_B_T = process_advantages(outcome_N, group_ids_N, step_rewards_B_T, step_index_B_T, mask_B_T,
                                     traj_index_B, process_weight=acfg.process_weight, step_keys_B_T=keys_B_T,
                                     scale_by_std=acfg.scale_by_std, outcome_advantages_B_T=outcome_B_T)
    else:
        rewards_N = torch.tensor([s.value for s in scores], dtype=torch.float32)
        if acfg.estimator == "grpo":
            adv_N = ADVANTAGE_ESTIMATORS["grpo"](rewards_N, group_ids_N, scale_by_std=acfg.scale_by_std)
        else:
            adv_N = ADVANTAGE_ESTIMATORS[acfg.estimator](rewards_N, group_ids_N)
        adv_B_T = adv_N[traj_index_B, None] * mask_B_T
    adv_B_T = scale_negatives(adv_B_T, acfg.negative_weight)
    sums_N = torch.zeros(len(trajs)).index_add_(0, traj_index_B, adv_B_T.sum(1))
    counts_N = torch.zeros(len(trajs)).index_add_(0, traj_index_B, mask_B_T.sum(1)).clamp(min=1)
    return Advantages(batch, adv_B_T, (sums_N / counts_N).tolist())


# -- the update -------------------------------------------------------------------------------


def policy_update(policy, adv: Advantages, lcfg: LossConfig, ocfg: OptimConfig, optimizer, *, temperature: float,
                  seed: int, autocast: torch.dtype | None = None, demos: TokenBatch | None = None, forward=None,
                  procs: Processes = ONE) -> dict:
    """`ocfg.updates_per_batch` passes of minibatch steps on the clipped loss (+ KL, - entropy,
    + `lcfg.sft_coef` x the mean cross-entropy of `demos`' sampled tokens in every step).
    Logprobs are recomputed at the sampling `temperature`, under `autocast` where given, by
    `forward` (a `LogprobsForward` of the policy, as accelerate prepared it; by default a
    plain one). With several processes (`procs`), each trains on its own rows and the loss is
    the mean over every process's tokens.

    Identical rows (one trajectory sampled several times in a group: same tokens, sampler
    logprobs and advantages) are trained once, weighted by their count: the same loss and
    gradient as the whole batch for the forward and backward passes of the distinct rows."""
    n_rows = adv.batch.input_ids.shape[0]
    batch, adv_B_T, counts_B = merge_duplicate_rows(adv.batch, adv.adv_B_T) if n_rows else (adv.batch, adv.adv_B_T,
                                                                                            torch.ones(0))
    max_tokens = int(procs.max([adv.batch.attention_mask.sum(1).max() if n_rows else 0])[0])
    out = train_rows(policy, batch, adv_B_T, counts_B, lcfg, ocfg, optimizer, temperature=temperature, seed=seed,
                     autocast=autocast, demos=demos, max_tokens=max_tokens, forward=forward, procs=procs)
    distinct, rows = procs.sum([len(counts_B), n_rows])
    out["rows_distinct"] = distinct / max(rows, 1)
    return out


def train_rows(policy, batch: TokenBatch, adv_B_T: torch.Tensor, counts_B: torch.Tensor, lcfg: LossConfig,
               ocfg: OptimConfig, optimizer, *, temperature: float, seed: int, max_tokens: int,
               autocast: torch.dtype | None = None, demos: TokenBatch | None = None, forward=None,
               procs: Processes = ONE) -> dict:
    """The update of `batch`, each row standing for `counts_B` identical ones (`policy_update`)."""
    model = policy.model
    forward = forward if forward is not None else LogprobsForward(model)
    logs = defaultdict(list)
    device = next(model.parameters()).device
    batch, adv_B_T, counts_B = batch.to(device), adv_B_T.to(device), counts_B.to(device)
    demos = demos.to(device) if demos is not None else None
    # The reference is frozen: its logprobs are computed once per batch, not once per pass.
    started, ref_logprobs_B_L = time.perf_counter(), None
    if lcfg.kl_coef:
        with torch.no_grad(), policy.as_reference() as ref, autocast_to(device, autocast):
            ref_logprobs_B_L = token_logprobs(ref, batch, temperature, only_loss=True)
    reference_s = time.perf_counter() - started
    model.train()
    # Truncated importance sampling (the sampler is not the trainer: vLLM, a bf16 copy): the
    # ratio is taken against the trainer's own logprobs before this step, and each token is
    # weighted by min(pi_trainer / pi_sampler, cap). With one pass of one minibatch those are
    # the first forward's own values, detached (the weights have not moved yet): no extra pass.
    n_minibatches = int(procs.max([minibatch_count(len(counts_B), ocfg.minibatch_rows)])[0])  # alike on every process
    tis_cap, trainer_old_B_L = lcfg.tis_cap, None
    if tis_cap and len(counts_B) and (ocfg.updates_per_batch > 1 or n_minibatches > 1):
        with torch.no_grad(), autocast_to(device, autocast):
            trainer_old_B_L = token_logprobs(model, batch, temperature, only_loss=True)
    gen = torch.Generator().manual_seed(seed)
    for _ in range(ocfg.updates_per_batch if n_minibatches else 0):
        perm = torch.randperm(len(counts_B), generator=gen).to(device)
        for idx in torch.tensor_split(perm, n_minibatches):
            # A process with fewer rows than minibatches still takes part in each synced step: on
            # one row of its batch, weighted 0.
            weight = 1.0 if len(idx) else 0.0
            idx = idx if len(idx) else perm[:1]
            mb = batch.rows(idx)
            mask, adv_mb, counts = mb.loss_mask, adv_B_T[idx], counts_B[idx]
            with autocast_to(device, autocast):
                logprobs, entropy = forward(mb.input_ids, mb.attention_mask, mb.loss_mask, temperature)
            old, is_weights = mb.old_logprobs, None
            tokens = weight * float((mask.sum(1) * counts).sum())  # this process's tokens in the minibatch
            if tis_cap:
                trainer_old = logprobs.detach() if trainer_old_B_L is None else trainer_old_B_L[idx]
                is_weights = truncated_is_weights(old, trainer_old, tis_cap)
                for k, v in sampler_stats(old, trainer_old, is_weights, mask, tis_cap).items():
                    logs[k].append(procs.weighted_mean(v, tokens, maximum=k.endswith("_max")))
                old = trainer_old
            if lcfg.entropy_top_share < 1:  # the policy gradient on the forking tokens only
                forks = high_entropy_mask(entropy, mask, lcfg.entropy_top_share, counts)
                is_weights = forks if is_weights is None else is_weights * forks
                share = float((forks.sum(1) * counts).sum() / (mask.sum(1) * counts).sum().clamp(min=1))
                logs["pg_token_share"].append(procs.weighted_mean(share, tokens))
            loss, m = policy_loss(logprobs, old, adv_mb, mask, lcfg.clip_low, lcfg.clip_high, lcfg.aggregation,
                                  max_tokens=max_tokens, is_weights_B_T=is_weights, counts_B=counts)
            entropy_mean = aggregate(entropy, mask, lcfg.aggregation, max_tokens, counts)
            if lcfg.entropy_coef:
                loss = loss - lcfg.entropy_coef * entropy_mean
            if lcfg.kl_coef:
                kl = aggregate(kl_penalty(logprobs, ref_logprobs_B_L[idx], lcfg.kl_estimator), mask, lcfg.aggregation,
                               max_tokens, counts)
                loss = loss + lcfg.kl_coef * kl
            # Every term is a mean over this process's part of the minibatch; the processes'
            # gradients are averaged, so each term is scaled by the process's share of the whole.
            scale = procs.share(weight * aggregate_weight(mask, lcfg.aggregation, counts))
            if scale != 1.0:
                loss = loss * scale
            if lcfg.kl_coef:
                logs["kl_ref"].append(procs.mean(kl.item() * scale))
            if demos is not None and lcfg.sft_coef:
                with autocast_to(device, autocast):
                    nll = sft_losses(model, demos)[0]
                loss = loss + lcfg.sft_coef * nll
                logs["demo_nll"].append(procs.mean(nll.item()))
            optimizer.zero_grad(set_to_none=True)
            procs.backward(loss)
            params = [p for p in model.parameters() if p.requires_grad]
            finite = is_finite_step(loss, params)  # one NaN applied by AdamW would corrupt every weight
            if procs.n > 1:  # every process takes the step, or none does
                finite = procs.max([not finite])[0] == 0
            if not finite:
                optimizer.zero_grad(set_to_none=True)
                logs["skipped"].append(1.0)
                continue
            logs["grad_norm"].append(procs.clip_grad_norm(params, ocfg.max_grad_norm))
            optimizer.step()
            logs["loss"].append(procs.mean(loss.item()))
            logs["entropy"].append(procs.mean(entropy_mean.item() * scale))
            for k, v in m.items():
                logs[k].append(procs.weighted_mean(v, tokens, maximum=k.endswith("_max")))
    model.eval()
    out = {k: max(v) if k.endswith("_max") else sum(v) / len(v) for k, v in logs.items() if k != "skipped"}
    out["skipped_steps"] = float(sum(logs["skipped"]))
    out["reference_s"] = reference_s  # time of the reference forward (KL)
    out.setdefault("approx_kl", 0.0)
    out.setdefault("entropy", 0.0)
    return out


def minibatch_count(rows: int, max_rows: int) -> int:
    """As few minibatches of at most `max_rows` as `rows` take; `torch.tensor_split` then sizes
    them alike (83 rows at 64 make 42 + 41, not 64 + 19): each minibatch's loss is a mean, so
    a small remainder would take a full optimizer step on a few rows' noise."""
    if max_rows < 1:
        raise ValueError(f"minibatch_rows must be >= 1, got {max_rows}")
    return math.ceil(rows / max_rows)


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


def group_stats(groups: list[TrajectoryGroup]) -> dict:
    """EM, search and validity rates, and B-STaR's exploration monitors over the groups."""
    em = [[exact_match(t.answer, g.example.answers) for t in g.trajectories] for g in groups]
    trajs = [t for g in groups for t in g.trajectories]
    actions = [s for t in trajs for s in t.steps if s.kind != "think"]
    return {
        "em": sum(map(sum, em)) / len(trajs),
        "searches": sum(s.kind == "search" for s in actions) / len(trajs),
        "valid": 1 - sum(s.kind == "invalid" for s in actions) / max(len(actions), 1),
        "distinct_answers": sum(len({t.answer for t in g.trajectories}) for g in groups) / len(groups),
        "pass_at_group": sum(any(e) for e in em) / len(groups),
        "zero_variance_groups": sum(g.settled for g in groups) / len(groups),
    }
