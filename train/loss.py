"""Policy-gradient losses: pure functions over (B, T) tensors with a mask.

All per-token tensors are aligned like `train.batching.token_logprobs`: position t holds
log pi(x_t | x_<t), and the mask is the batch's `loss_mask` (1 on sampled tokens). Every
term reduces through `aggregate`, so the policy loss, the KL term and the entropy bonus
share one normalisation:

    loss, metrics = policy_loss(lp_B_T, old_lp_B_T, adv_B_T, mask_B_T, aggregation=mode)
    loss = loss + beta * aggregate(kl_penalty(lp_B_T, ref_lp_B_T, "k3"), mask_B_T, mode)
    loss.backward()
    if is_finite_step(loss, model.parameters()): optimizer.step()
    else: log it and skip (optimizer.zero_grad())
"""

from __future__ import annotations

from collections.abc import Iterable
from dataclasses import dataclass

import torch

from train.config import check_fields, doc

__all__ = [
    "AGGREGATIONS",
    "KL_ESTIMATORS",
    "LossConfig",
    "aggregate",
    "aggregate_weight",
    "grads_are_finite",
    "high_entropy_mask",
    "is_finite_step",
    "kl_penalty",
    "policy_loss",
    "truncated_is_weights",
]

AGGREGATIONS = ("token_mean", "seq_mean_token_mean", "seq_mean_token_sum_norm")

# exp() of a log-ratio beyond this overflows float32 long before it means anything; verl clamps alike.
_MAX_LOG_RATIO = 20.0


@dataclass
class LossConfig:
    """The terms of the update's loss and how they are reduced."""

    clip_low: float = doc("lower clip of the ratio pi / pi_old: 1 - clip_low (PPO, Schulman et al. 2017)", 0.2,
                          ge=0, lt=1)
    clip_high: float = doc("upper clip of the ratio: 1 + clip_high; above clip_low it is DAPO's clip-higher "
                           "(Yu et al. 2025), which lets unlikely tokens with positive advantage grow", 0.28, ge=0)
    kl_coef: float = doc("weight of the KL term to the reference (the starting model); 0 = none, and no "
                         "reference is held", 0.1, ge=0)
    kl_estimator: str = doc("k1 | k2 | k3: Schulman's estimators of KL(pi || ref) from the sampled token "
                            "(k3, unbiased and never negative, is GRPO's)", "k3", choices=("k1", "k2", "k3"))
    entropy_coef: float = doc("weight of the entropy bonus (0 = none)", 0.0, ge=0)
    entropy_top_share: float = doc("share of sampled tokens, the highest-entropy ones under the policy, that carry "
                                   "the policy-gradient loss (Wang et al. 2025, 'Beyond the 80/20 rule', train on "
                                   "0.2); the KL and entropy terms keep every token. 1 = all", 1.0, gt=0, le=1)
    aggregation: str = doc("how per-token terms reduce to the loss: token_mean (every token weighs the same, DAPO) "
                           "| seq_mean_token_mean (every row the same, the original GRPO) | seq_mean_token_sum_norm "
                           "(sum over a constant, Dr.GRPO)", "token_mean", choices=AGGREGATIONS)
    sft_coef: float = doc("weight of an auxiliary supervised term in every update: the mean cross-entropy of the "
                          "scripted oracle's right answers to the step's questions (as InstructGPT's PPO-ptx mixes "
                          "in pretraining; needs a generated world). 0 = none", 0.0, ge=0)
    tis_cap: float | None = doc(
        "truncated importance sampling (Yao et al. 2025) when the sampler is not the trainer: each token's loss is "
        "weighted by min(pi_trainer / pi_sampler, tis_cap) and the ratio is taken against the trainer's own "
        "logprobs. 0 = off; default: 2 with rollout_engine=vllm, off with hf (whose bf16 copy differs by rounding "
        "only)", None, ge=0)

    def __post_init__(self) -> None:
        check_fields(self)


def aggregate(loss_B_T: torch.Tensor, mask_B_T: torch.Tensor, mode: str = "token_mean",
              max_tokens: int | None = None, counts_B: torch.Tensor | None = None) -> torch.Tensor:
    """Reduce a per-token loss to a scalar over the positions where `mask_B_T` is 1.

    - token_mean: sum / number of tokens. Every token weighs the same (DAPO's choice), so
      long responses weigh more.
    - seq_mean_token_mean: mean over rows of each row's token mean (rows without tokens are
      left out). Every row weighs the same (the original GRPO). A row is a segment, so a
      trajectory split by a dropped observation counts once per segment.
    - seq_mean_token_sum_norm: sum / (B * max_tokens), a constant (Dr.GRPO's, verl's name) that biases neither towards
      short nor long responses; `max_tokens` is the response budget per row, required.
    Masked positions are selected out, not multiplied by 0, so a NaN or inf on padding
    cannot leak into the sum.

    `counts_B` says how many identical rows each row stands for (`train.batching.merge_duplicate_rows`):
    the result is the one the batch with every row repeated that many times would give.
    """
    if loss_B_T.shape != mask_B_T.shape or loss_B_T.dim() != 2:
        raise ValueError(f"expected loss and mask of one (B, T) shape, got {tuple(loss_B_T.shape)} and {tuple(mask_B_T.shape)}")
    if counts_B is not None and counts_B.shape != loss_B_T.shape[:1]:
        raise ValueError(f"counts_B has shape {tuple(counts_B.shape)}, expected ({loss_B_T.shape[0]},)")
    count_B = torch.ones(loss_B_T.shape[0], device=loss_B_T.device) if counts_B is None else counts_B.float()
    keep_B_T = mask_B_T > 0
    kept_B_T = torch.where(keep_B_T, loss_B_T, torch.zeros_like(loss_B_T))
    if mode == "token_mean":
        return (kept_B_T.sum(dim=1) * count_B).sum() / (keep_B_T.sum(dim=1) * count_B).sum().clamp(min=1)
    if mode == "seq_mean_token_mean":
        tokens_B = keep_B_T.sum(dim=1)
        row_mean_B = kept_B_T.sum(dim=1) / tokens_B.clamp(min=1)
        return (row_mean_B * count_B).sum() / ((tokens_B > 0) * count_B).sum().clamp(min=1)
    if mode == "seq_mean_token_sum_norm":
        if max_tokens is None or max_tokens <= 0:
            raise ValueError("aggregation 'seq_mean_token_sum_norm' needs max_tokens > 0 (the response token budget): a constant, "
                             f"so the loss scale does not follow batch lengths; got {max_tokens!r}")
        return (kept_B_T.sum(dim=1) * count_B).sum() / (count_B.sum() * max_tokens)
    raise ValueError(f"aggregation must be one of {', '.join(AGGREGATIONS)}; got {mode!r}")


def aggregate_weight(mask_B_T: torch.Tensor, mode: str, counts_B: torch.Tensor | None = None) -> float:
    """The denominator `aggregate` divides by, but for the constant `max_tokens` of
    seq_mean_token_sum_norm: tokens (token_mean), rows with tokens (seq_mean_token_mean) or
    rows (seq_mean_token_sum_norm), each row counted `counts_B` times. Processes that each
    hold part of a batch weigh their means by it (`train.distributed.Processes.share`)."""
    count_B = torch.ones(mask_B_T.shape[0], device=mask_B_T.device) if counts_B is None else counts_B.float()
    tokens_B = (mask_B_T > 0).sum(dim=1)
    if mode == "token_mean":
        return float((tokens_B * count_B).sum())
    if mode == "seq_mean_token_mean":
        return float(((tokens_B > 0) * count_B).sum())
    if mode == "seq_mean_token_sum_norm":
        return float(count_B.sum())
    raise ValueError(f"aggregation must be one of {', '.join(AGGREGATIONS)}; got {mode!r}")


def policy_loss(
    logprobs_B_T: torch.Tensor, old_logprobs_B_T: torch.Tensor, advantages_B_T: torch.Tensor,
    mask_B_T: torch.Tensor, clip_low: float = 0.2, clip_high: float = 0.2, aggregation: str = "token_mean",
    max_tokens: int | None = None, is_weights_B_T: torch.Tensor | None = None, counts_B: torch.Tensor | None = None,
) -> tuple[torch.Tensor, dict[str, float]]:
    """PPO's clipped surrogate, -min(r A, clip(r, 1 - clip_low, 1 + clip_high) A) per token.

    r = exp(logprobs - old_logprobs). `clip_high > clip_low` is DAPO's clip-higher: it lets
    unlikely tokens with positive advantage grow faster, against entropy collapse. Where the
    clipped term is the smaller (r > 1 + clip_high with A > 0, r < 1 - clip_low with A < 0)
    the token's gradient is 0. `is_weights_B_T` (detached, e.g. `truncated_is_weights`)
    scales each token's loss.

    Metrics (python floats, over sampled tokens): clip_frac_high / clip_frac_low, the shares
    of tokens with zero gradient from each bound; approx_kl, KL(old || new) by Schulman's
    k3 estimator (r - 1 - log r, never negative); ratio_mean, ratio_max. `counts_B` weighs
    rows that stand for several identical ones, in the loss and the metrics (see `aggregate`).
    """
    for name, x in (("old_logprobs_B_T", old_logprobs_B_T), ("advantages_B_T", advantages_B_T), ("mask_B_T", mask_B_T)):
        if x.shape != logprobs_B_T.shape:
            raise ValueError(f"{name} has shape {tuple(x.shape)}, logprobs_B_T {tuple(logprobs_B_T.shape)}")
    if not (0 <= clip_low < 1 and clip_high >= 0):
        raise ValueError(f"need 0 <= clip_low < 1 and clip_high >= 0, got clip_low={clip_low}, clip_high={clip_high}")
    keep_B_T = mask_B_T > 0
    # Masked positions get log-ratio 0 (ratio 1): their old logprob is a placeholder 0.
    log_ratio_B_T = torch.where(keep_B_T, logprobs_B_T.float() - old_logprobs_B_T.float(), 0.0)
    ratio_B_T = torch.exp(log_ratio_B_T.clamp(-_MAX_LOG_RATIO, _MAX_LOG_RATIO))
    adv_B_T = advantages_B_T.float().detach()
    unclipped_B_T = -adv_B_T * ratio_B_T
    clipped_B_T = -adv_B_T * ratio_B_T.clamp(1 - clip_low, 1 + clip_high)
    loss_B_T = torch.maximum(unclipped_B_T, clipped_B_T)
    if is_weights_B_T is not None:
        if is_weights_B_T.shape != loss_B_T.shape:
            raise ValueError(f"is_weights_B_T has shape {tuple(is_weights_B_T.shape)}, logprobs_B_T {tuple(loss_B_T.shape)}")
        loss_B_T = loss_B_T * is_weights_B_T.detach()
    loss = aggregate(loss_B_T, mask_B_T, aggregation, max_tokens, counts_B)

    with torch.no_grad():
        weight_B_T = keep_B_T.float() * (1.0 if counts_B is None else counts_B.float()[:, None])
        n = weight_B_T.sum().clamp(min=1)
        high_B_T = (ratio_B_T > 1 + clip_high) & (adv_B_T > 0)
        low_B_T = (ratio_B_T < 1 - clip_low) & (adv_B_T < 0)
        k3_B_T = ratio_B_T - 1 - log_ratio_B_T
        metrics = {
            "clip_frac_high": float((high_B_T * weight_B_T).sum() / n),
            "clip_frac_low": float((low_B_T * weight_B_T).sum() / n),
            "approx_kl": float(torch.where(keep_B_T, k3_B_T * weight_B_T, 0.0).sum() / n),
            "ratio_mean": float(torch.where(keep_B_T, ratio_B_T * weight_B_T, 0.0).sum() / n),
            "ratio_max": float(torch.where(keep_B_T, ratio_B_T, 0.0).max()) if keep_B_T.any() else 1.0,
        }
    return loss, metrics


def _k1(log_ratio_B_T: torch.Tensor) -> torch.Tensor:
    return -log_ratio_B_T


def _k2(log_ratio_B_T: torch.Tensor) -> torch.Tensor:
    return 0.5 * log_ratio_B_T**2


def _k3(log_ratio_B_T: torch.Tensor) -> torch.Tensor:
    return torch.exp(log_ratio_B_T) - log_ratio_B_T - 1


# Estimators of KL(pi || ref) from samples of pi, given log_ratio = log ref - log pi.
KL_ESTIMATORS = {"k1": _k1, "k2": _k2, "k3": _k3}


def kl_penalty(logprobs_B_T: torch.Tensor, ref_logprobs_B_T: torch.Tensor, kind: str = "k3") -> torch.Tensor:
    """(B, T) per-token estimate of KL(pi || ref) on tokens sampled from pi (Schulman, 2020).

    With d = ref - logprobs: k1 = -d (unbiased, can be negative); k2 = d^2 / 2 (low variance,
    biased); k3 = exp(d) - d - 1 (unbiased and never negative; GRPO's choice). Gradients
    flow through `logprobs_B_T`. Reduce with `aggregate(..., mask_B_T, mode)`.
    """
    if kind not in KL_ESTIMATORS:
        raise ValueError(f"kl kind must be one of {', '.join(KL_ESTIMATORS)}; got {kind!r}")
    if logprobs_B_T.shape != ref_logprobs_B_T.shape:
        raise ValueError(f"logprobs {tuple(logprobs_B_T.shape)} and ref_logprobs {tuple(ref_logprobs_B_T.shape)} differ")
    d_B_T = (ref_logprobs_B_T.detach().float() - logprobs_B_T.float()).clamp(-_MAX_LOG_RATIO, _MAX_LOG_RATIO)
    return KL_ESTIMATORS[kind](d_B_T)


def high_entropy_mask(entropy_B_T: torch.Tensor, mask_B_T: torch.Tensor, top_share: float,
                      counts_B: torch.Tensor | None = None) -> torch.Tensor:
    """(B, T) float, 1 on the sampled tokens whose entropy is among the highest `top_share` of the batch's.

    Wang et al. (2025, "Beyond the 80/20 rule") train the policy gradient on the high-entropy
    "forking" tokens only (top_share 0.2): the tokens where the policy was unsure carry the
    decisions; the low-entropy rest (copied names, fixed syntax) is left where it is. Kept
    are the fewest highest-entropy tokens whose number reaches `top_share` of all sampled
    tokens, and every token that ties with the last one; `counts_B` counts a merged row as
    that many rows (`aggregate`). `top_share` 1 keeps every sampled token. Detached.
    """
    if not 0 < top_share <= 1:
        raise ValueError(f"top_share must be in (0, 1], got {top_share}")
    if entropy_B_T.shape != mask_B_T.shape:
        raise ValueError(f"entropy {tuple(entropy_B_T.shape)} and mask {tuple(mask_B_T.shape)} differ")
    keep_B_T = mask_B_T > 0
    if top_share == 1 or not keep_B_T.any():
        return keep_B_T.float()
    weight_B_T = torch.ones_like(mask_B_T, dtype=torch.float32) if counts_B is None else \
        counts_B.float()[:, None].expand(mask_B_T.shape)
    values_K, weights_K = entropy_B_T.detach().float()[keep_B_T], weight_B_T[keep_B_T]
    order_K = torch.argsort(values_K, descending=True, stable=True)
    reached_K = weights_K[order_K].cumsum(0) >= top_share * weights_K.sum() - 1e-6
    threshold = values_K[order_K][int(reached_K.nonzero()[0])]
    return (keep_B_T & (entropy_B_T.detach().float() >= threshold)).float()


@torch.no_grad()
def truncated_is_weights(sampler_logprobs_B_T: torch.Tensor, trainer_old_logprobs_B_T: torch.Tensor,
                         cap: float = 2.0) -> torch.Tensor:
    """(B, T) min(pi_trainer_old / pi_sampler, cap), detached: truncated importance sampling.

    A fast sampler (vLLM, other kernels or precision) does not compute exactly the
    trainer's probabilities, so its samples are slightly off-policy for the trainer. Pass
    these as `is_weights_B_T`, with the trainer's own recomputed logprobs as
    `old_logprobs_B_T`. The cap bounds the variance a rare token can add. Positions where
    both are 0 (masked) get weight 1.
    """
    if cap <= 0:
        raise ValueError(f"cap must be > 0, got {cap}")
    d_B_T = trainer_old_logprobs_B_T.float() - sampler_logprobs_B_T.float()
    return torch.exp(d_B_T.clamp(max=_MAX_LOG_RATIO)).clamp(max=cap)


def grads_are_finite(parameters: Iterable[torch.nn.Parameter]) -> bool:
    """True when every gradient present is free of NaN and inf (one host sync in all)."""
    flags = [torch.isfinite(p.grad).all() for p in parameters if p.grad is not None]
    return bool(torch.stack(flags).all()) if flags else True


def is_finite_step(loss: torch.Tensor, parameters: Iterable[torch.nn.Parameter]) -> bool:
    """Whether it is safe to take the optimizer step: the loss and all gradients are finite.

    Call after `backward()`, before `optimizer.step()`. On False, zero the gradients, skip
    the step and log it: one NaN applied by AdamW corrupts every weight for good. Under
    DDP/FSDP every rank must agree: all-reduce the flag (MIN) before acting on it.
    """
    return bool(torch.isfinite(loss.detach()).all()) and grads_are_finite(parameters)
