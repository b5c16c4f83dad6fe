"""Sampling one token per row, the same whatever else is in the batch.

Each row has a 63-bit key made from the call's seed, the row's prompt ids and its place
among identical prompts of the call (the samples of a GRPO group share a prompt on their
first turn). A row's sampling noise at decode step t is a hash of (key, t, token id), and
the token is the Gumbel-max: argmax(logits / T + Gumbel noise), which draws exactly from
softmax(logits / T) (restricted to the top-k / top-p set when those are on). So a row's
samples depend only on its own prompt and the seed, not on the batch it is decoded in:
a step's rollouts are the same when its questions are split over several processes, or
cut into chunks, or sent with other questions.

The logprob reported for a sampled id is log_softmax(logits / T) at that id (T = 1 when
greedy), before top-k / top-p truncation: exactly what the trainer recomputes.
"""

from __future__ import annotations

import hashlib
import struct
from collections.abc import Sequence

import numpy as np
import torch

from agent.engines.base import SamplingParams

_LOW_34, _LOW_37, _LOW_33, _LOW_24 = (1 << 34) - 1, (1 << 37) - 1, (1 << 33) - 1, (1 << 24) - 1


def row_keys(prompts: Sequence[Sequence[int]], seed: int) -> list[int]:
    """A 63-bit key per prompt: the seed, the prompt's ids and its occurrence among identical
    prompts of the call, hashed (blake2b, so the same in every process and Python run)."""
    seen: dict[tuple[int, ...], int] = {}
    keys = []
    for prompt in prompts:
        ids = tuple(prompt)
        n = seen[ids] = seen.get(ids, -1) + 1
        digest = hashlib.blake2b(np.asarray(ids, dtype=np.int64).tobytes(), digest_size=8,
                                 key=struct.pack("<qq", seed, n)).digest()
        keys.append(int.from_bytes(digest, "little") & ((1 << 63) - 1))
    return keys


def _mix(x: torch.Tensor) -> torch.Tensor:
    """splitmix64's finaliser on int64 tensors (arithmetic wraps; shifts made logical by masks)."""
    x = (x ^ ((x >> 30) & _LOW_34)) * -4658895280553007687  # 0xbf58476d1ce4e5b9
    x = (x ^ ((x >> 27) & _LOW_37)) * -7723592293110705685  # 0x94d049bb133111eb
    return x ^ ((x >> 31) & _LOW_33)


def uniform_noise(keys_B: torch.Tensor, step: int, vocab: int) -> torch.Tensor:
    """(B, V) float32 uniforms in (0, 1), a function of each row's key, the step and the token id."""
    offset = ((step + 1) * 0x9E3779B97F4A7C15 + (1 << 63)) % (1 << 64) - (1 << 63)  # as a wrapped int64
    per_step_B = _mix(keys_B + offset)
    bits_B_V = _mix(per_step_B[:, None] + torch.arange(vocab, device=keys_B.device)) >> 40
    return ((bits_B_V & _LOW_24).float() + 0.5) / (1 << 24)


def sample_next(logits_B_V: torch.Tensor, params: SamplingParams, keys_B: torch.Tensor,
                step: int) -> tuple[torch.Tensor, torch.Tensor]:
    """One id per row at decode step `step`; returns (ids_B, logprobs_B), logprobs in fp32."""
    logits_B_V = logits_B_V.float()
    if params.greedy:
        ids_B = logits_B_V.argmax(dim=-1)
        scaled_B_V = logits_B_V
    else:
        scaled_B_V = logits_B_V / params.temperature if params.temperature != 1.0 else logits_B_V
        gumbel_B_V = -torch.log(-torch.log(uniform_noise(keys_B, step, logits_B_V.shape[-1])))
        ids_B = (_truncated(scaled_B_V, params.top_k, params.top_p) + gumbel_B_V).argmax(dim=-1)
    logprobs_B = scaled_B_V.gather(1, ids_B[:, None]).squeeze(1) - torch.logsumexp(scaled_B_V, dim=-1)
    return ids_B, logprobs_B


def _truncated(scaled_B_V: torch.Tensor, top_k: int, top_p: float) -> torch.Tensor:
    """`scaled_B_V` with -inf outside the top-k, then outside the top-p nucleus (the smallest
    set of most likely ids whose mass reaches top_p; the most likely id always stays)."""
    vocab = scaled_B_V.shape[-1]
    if (top_k <= 0 or top_k >= vocab) and top_p >= 1.0:
        return scaled_B_V
    vals_B_V, idx_B_V = scaled_B_V.sort(dim=-1, descending=True)
    drop_B_V = torch.zeros_like(vals_B_V, dtype=torch.bool)
    if 0 < top_k < vocab:
        drop_B_V[:, top_k:] = True
    if top_p < 1.0:
        probs_B_V = torch.softmax(vals_B_V.masked_fill(drop_B_V, float("-inf")), dim=-1)
        drop_B_V |= probs_B_V.cumsum(dim=-1) - probs_B_V >= top_p
    return scaled_B_V.scatter(1, idx_B_V, vals_B_V.masked_fill(drop_B_V, float("-inf")))
