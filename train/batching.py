"""Segments -> padded tensors for the trainer, and the model's values on them.

A training row is one `Segment`: its context ids followed by its response ids. Only
response positions with `loss_mask` 1 (tokens the policy sampled) carry loss; context and
injected tokens condition the model and nothing else. `token_logprobs` recomputes the
policy's logprobs (and entropies) of a batch, `sft_losses` its supervised cross-entropy.
"""

from __future__ import annotations

from dataclasses import dataclass

import torch

from agent.types import Segment
from train.distributed import sharded_by


@dataclass
class TokenBatch:
    input_ids: torch.Tensor  # (B, L) context + response ids, right-padded
    attention_mask: torch.Tensor  # (B, L) 1 on real tokens
    loss_mask: torch.Tensor  # (B, L) float, 1 where the token was sampled by the policy
    old_logprobs: torch.Tensor  # (B, L) sampler logprobs at sampled tokens, 0 elsewhere

    def to(self, device) -> "TokenBatch":
        return TokenBatch(*(t.to(device) for t in (self.input_ids, self.attention_mask, self.loss_mask, self.old_logprobs)))

    def rows(self, idx_b: torch.Tensor) -> "TokenBatch":
        """The batch of the rows `idx_b`, in that order."""
        return TokenBatch(self.input_ids[idx_b], self.attention_mask[idx_b], self.loss_mask[idx_b], self.old_logprobs[idx_b])

    @property
    def n_tokens(self) -> int:
        return int(self.attention_mask.sum())


def collate_segments(segments: list[Segment], pad_id: int, max_len: int | None = None) -> TokenBatch:
    """Right-pad segments into one batch; `max_len` cuts from the left of the context
    (never into the response) when a row is too long for the model."""
    rows = []
    for seg in segments:
        ids = seg.context_ids + seg.response_ids
        n_ctx = len(seg.context_ids)
        if max_len is not None and len(ids) > max_len:
            cut = len(ids) - max_len
            if cut > n_ctx:
                raise ValueError(f"response of {len(seg.response_ids)} tokens does not fit max_len={max_len}")
            ids, n_ctx = ids[cut:], n_ctx - cut
        rows.append((ids, n_ctx, seg))
    L = max(len(ids) for ids, _, _ in rows)
    B = len(rows)
    input_ids_B_L = torch.full((B, L), pad_id, dtype=torch.long)
    attention_B_L = torch.zeros((B, L), dtype=torch.long)
    loss_B_L = torch.zeros((B, L), dtype=torch.float32)
    old_lp_B_L = torch.zeros((B, L), dtype=torch.float32)
    for b, (ids, n_ctx, seg) in enumerate(rows):
        n = len(ids)
        input_ids_B_L[b, :n] = torch.tensor(ids, dtype=torch.long)
        attention_B_L[b, :n] = 1
        loss_B_L[b, n_ctx:n] = torch.tensor(seg.loss_mask, dtype=torch.float32)
        old_lp_B_L[b, n_ctx:n] = torch.tensor(seg.logprobs, dtype=torch.float32)
    return TokenBatch(input_ids_B_L, attention_B_L, loss_B_L, old_lp_B_L)


def _body_and_head(model):
    """(decoder, lm_head) of a causal LM whose logits are just `lm_head(last hidden state)`,
    else None: a model that scales or soft-caps its logits (Gemma 2, Cohere, Granite) keeps
    the full forward."""
    config = getattr(model, "config", None)
    if config is None or any(getattr(config, k, None) not in (None, 1, 1.0)
                             for k in ("final_logit_softcapping", "logit_scale", "logits_scaling")):
        return None
    try:
        body, head = model.get_decoder(), model.get_output_embeddings()
    except (AttributeError, NotImplementedError, ValueError):
        return None
    if body is None or body is model or not isinstance(head, torch.nn.Linear):
        return None
    return body, head


def token_logprobs(model, batch: TokenBatch, temperature: float = 1.0, chunk: int = 8, with_entropy: bool = False,
                   only_loss: bool = False):
    """(B, L) log pi(x_t | x_<t) under softmax(logits / T); position 0 (no history) is 0.

    Computed in float32 a few rows at a time, so a large vocabulary never materialises a
    full (B, L, V) log-softmax. Rows go through the model sorted by length and each chunk
    is cut to its longest row, so short rows do not pay for the batch's longest one (right
    padding: a row's tokens never attend to what is cut). Gradients flow when called
    outside `torch.no_grad`. With `with_entropy`, also returns the (B, L) entropy of the
    distribution each token was drawn from, aligned the same way.

    With `only_loss`, the output head runs only where `loss_mask` is set (the trainer's
    tokens, a tenth of a search agent's rows; passages are context) and every other
    position is 0: the same values there, less time (eval/bench/train.py measures it).

    A model sharded over processes (FSDP, DeepSpeed ZeRO-3) gathers its weights from every
    process in each forward call, so every process must make as many calls as the others,
    whatever its number of rows: such a model takes the whole batch in one call.
    """
    T = temperature if temperature > 0 else 1.0
    B, L = batch.input_ids.shape
    chunk = max(B, 1) if sharded_by(model) else chunk
    lengths_B = batch.attention_mask.sum(1)
    order_B = torch.argsort(lengths_B, descending=True, stable=True)
    split = _body_and_head(model) if only_loss else None
    out, entropies = [], []
    for start in range(0, B, chunk):
        rows_b = order_B[start : start + chunk]
        n = max(int(lengths_B[rows_b].max()), 1)
        ids_b_n = batch.input_ids[rows_b, :n]
        attention_b_n = batch.attention_mask[rows_b, :n]
        if split is None:
            logits_b_n_V = model(input_ids=ids_b_n, attention_mask=attention_b_n, use_cache=False).logits
            logits_k_V = logits_b_n_V[:, :-1].float() / T
            targets_k = ids_b_n[:, 1:]
        else:  # hidden states of the tokens that predict a trained token, then the head on those only
            body, head = split
            hidden_b_n_H = body(input_ids=ids_b_n, attention_mask=attention_b_n, use_cache=False).last_hidden_state
            keep_b_m = batch.loss_mask[rows_b, 1:n] > 0
            logits_k_V = head(hidden_b_n_H[:, :-1][keep_b_m]).float() / T
            targets_k = ids_b_n[:, 1:][keep_b_m]
        picked_k = logits_k_V.gather(-1, targets_k.unsqueeze(-1)).squeeze(-1)
        lse_k = torch.logsumexp(logits_k_V, dim=-1)
        values = [picked_k - lse_k]
        if with_entropy:
            values.append(lse_k - (torch.softmax(logits_k_V, dim=-1) * logits_k_V).sum(-1))
        if split is not None:  # scatter back onto the (b, n - 1) grid
            values = [v.new_zeros(keep_b_m.shape).masked_scatter(keep_b_m, v) for v in values]
        out.append(torch.nn.functional.pad(values[0], (1, L - n)))
        if with_entropy:
            entropies.append(torch.nn.functional.pad(values[1], (1, L - n)))
    unsort_B = torch.argsort(order_B)
    logprobs_B_L = torch.cat(out, dim=0)[unsort_B]
    return (logprobs_B_L, torch.cat(entropies, dim=0)[unsort_B]) if with_entropy else logprobs_B_L


class LogprobsForward(torch.nn.Module):
    """`token_logprobs` of `model` (with entropies, the output head on trained tokens only) as
    a module's forward: what accelerate wraps (DDP, FSDP, DeepSpeed), so that the gradients
    of a minibatch are synced once, by its backward.

    It shows accelerate the model's config (DeepSpeed's "auto" bucket sizes read it), and FSDP2
    its input embeddings, output head and decoder (whose final norm it looks for), so that those
    get FSDP units of their own, as the decoder layers do: the wrapper, FSDP's root, then holds
    no weights, and the model called directly (the update's no-grad pass before several
    minibatches) finds each weight gathered by its own unit."""

    base_model_prefix = "decoder"

    def __init__(self, model):
        super().__init__()
        self.model = model
        self._no_split_modules = getattr(model, "_no_split_modules", None)  # FSDP's auto wrap reads it

    @property
    def config(self):
        return self.model.config

    @property
    def decoder(self):
        return self.model.get_decoder()

    def get_input_embeddings(self):
        return self.model.get_input_embeddings()

    def get_output_embeddings(self):
        return self.model.get_output_embeddings()

    def forward(self, input_ids, attention_mask, loss_mask, temperature: float):
        batch = TokenBatch(input_ids, attention_mask, loss_mask, torch.zeros_like(loss_mask))
        return token_logprobs(self.model, batch, temperature, with_entropy=True, only_loss=True)


def sft_losses(model, batch) -> tuple[torch.Tensor, torch.Tensor]:
    """(policy loss, context loss): mean cross-entropy over the tokens the policy produced
    (`loss_mask` 1) and over every other real token (prompt, injected observations)."""
    logits_B_L_V = model(input_ids=batch.input_ids, attention_mask=batch.attention_mask, use_cache=False).logits
    logits_B_T_V = logits_B_L_V[:, :-1].float()
    targets_B_T = batch.input_ids[:, 1:]
    policy_B_T = batch.loss_mask[:, 1:]
    context_B_T = batch.attention_mask[:, 1:].float() * (1.0 - policy_B_T)
    nll_B_T = torch.nn.functional.cross_entropy(logits_B_T_V.transpose(1, 2), targets_B_T, reduction="none")
    return ((nll_B_T * policy_B_T).sum() / policy_B_T.sum().clamp(min=1),
            (nll_B_T * context_B_T).sum() / context_B_T.sum().clamp(min=1))


def merge_duplicate_rows(batch: TokenBatch, adv_B_T: torch.Tensor) -> tuple[TokenBatch, torch.Tensor, torch.Tensor]:
    """(batch, adv_B_T, counts_B) with each set of identical rows kept once, in first-seen order.

    Rows are identical when their tokens, loss mask, sampler logprobs and advantages all
    are: a group of a peaked policy often samples the same trajectory several times (41-46%
    of the tiny default's rows), and such rows add the same terms to the loss. Trained
    once with `counts_B` as their weight (`train.loss.aggregate`), they give the loss and
    gradient of the full batch for the forward and backward passes of the distinct rows.
    """
    first: dict[tuple, int] = {}
    keep, counts = [], []
    for b in range(batch.input_ids.shape[0]):
        n = int(batch.attention_mask[b].sum())
        key = (n, *(t[b, :n].numpy().tobytes() for t in (batch.input_ids, batch.loss_mask, batch.old_logprobs, adv_B_T)))
        if key in first:
            counts[first[key]] += 1
        else:
            first[key] = len(keep)
            keep.append(b)
            counts.append(1)
    idx = torch.tensor(keep, dtype=torch.long)
    return batch.rows(idx), adv_B_T[idx], torch.tensor(counts, dtype=torch.float32)
