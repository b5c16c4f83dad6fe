"""Batched sampling from a Hugging Face causal LM with a KV cache: token ids in, token ids out.

Why an own loop instead of `model.generate`: the rollout needs, in one pass,
- the logprob of every sampled id in the trainer's convention (log_softmax(logits / T) at
  the sampled id, before top-k / top-p truncation, in fp32; see `base.py`),
- per-row stops on token ids and on strings of the row's *new* text, keeping the stop,
- identical prompts (a GRPO group on its first turn) prefilled once,
- finished rows dropped from the batch instead of decoding padding until the longest row ends.

One forward and one device->host copy (the sampled ids, needed for the stop checks) per step;
logprobs stay on the device until the batch is done.

Over 400 lines, kept in one file: the prefill, the decode loop, its stop checks and the
cache compaction all work on one batch's state; the KV store across turns is
`prefix_cache.py`.
"""

from __future__ import annotations

import inspect
import secrets
from collections.abc import Iterable, Mapping

import torch
import torch.nn.functional as F

from agent.engines.base import Generation, SamplingParams
from agent.engines.prefix_cache import PrefixStore, RowKV, extract_rows, prefixed_inputs
from agent.engines.sampling import row_keys, sample_next

# Compact the batch (drop finished rows from the KV cache) once this fraction of its rows is
# idle. Compaction copies the cache once, about what one decode step's concatenation costs.
COMPACT_IDLE_FRACTION = 1 / 8
# Tokens decoded beyond the longest stop string (in bytes) when checking a row's new text: a
# stop string of n bytes spans at most n tokens; the slack covers partial characters and
# decoders that strip a leading space at the start of a window.
STOP_WINDOW_SLACK = 4
# A prefill whose rows feed very different numbers of new tokens (a passage in some, a few
# tokens in others) runs as up to this many forward calls of similar lengths, when a split
# saves at least this share of the padded positions (`length_buckets`). On the tiny
# default's rollouts a third of a single call's positions were padding.
PREFILL_MAX_BUCKETS = 4
PREFILL_MIN_SAVING = 0.1


def left_pad(
    prompts: list[list[int]], pad_id: int, device: torch.device
) -> tuple[torch.Tensor, torch.Tensor | None, torch.Tensor]:
    """Left-pad prompts; returns ids_B_L, attention mask_B_L (None when nothing is padded)
    and position ids_B_L (0 at each prompt's first real token, as `generate` does)."""
    length = max(len(p) for p in prompts)
    ids_B_L = torch.tensor([[pad_id] * (length - len(p)) + p for p in prompts], dtype=torch.long)
    if all(len(p) == length for p in prompts):
        positions_B_L = torch.arange(length).expand(len(prompts), length)
        return ids_B_L.to(device), None, positions_B_L.to(device)
    mask_B_L = torch.tensor([[0] * (length - len(p)) + [1] * len(p) for p in prompts], dtype=torch.long)
    positions_B_L = (mask_B_L.cumsum(-1) - 1).clamp(min=0)
    return ids_B_L.to(device), mask_B_L.to(device), positions_B_L.to(device)


class HFEngine:
    """Generation engine over an in-process `transformers` causal LM.

    Holding the trainer's own model object makes weight sync free (`update_weights` is then
    a no-op); the engine switches the model to eval mode while generating and restores the
    previous mode afterwards.
    """

    exact_tokens = True

    def __init__(self, model, tokenizer, device=None, dtype=None, max_batch_size: int | None = None,
                 prefix_cache: bool = True, prefill_buckets: int = PREFILL_MAX_BUCKETS):
        if device is not None:
            model.to(device)
        if dtype is not None:
            model.to(_as_dtype(dtype))
        if max_batch_size is not None and max_batch_size < 1:
            raise ValueError(f"max_batch_size must be >= 1 or None, got {max_batch_size}")
        if prefill_buckets < 1:
            raise ValueError(f"prefill_buckets must be >= 1 (forward calls a prefill may split into), got {prefill_buckets}")
        self.model = model
        self.tokenizer = tokenizer
        self.max_batch_size = max_batch_size
        self.device = next(model.parameters()).device
        self.vocab_size = model.get_input_embeddings().num_embeddings
        self.pad_id = _first_id(tokenizer.pad_token_id, tokenizer.eos_token_id, 0)
        self.eos_ids = frozenset(_eos_ids(tokenizer, model))
        # Keep the whole prompt's lm_head off the prefill when the model allows it.
        forward_params = inspect.signature(model.forward).parameters
        self._keeps_logits = "logits_to_keep" in forward_params
        # transformers >= 5.24 names the KV cache argument `cache` (`past_key_values` warns there)
        self._cache_arg = "cache" if "cache" in forward_params else "past_key_values"
        # Each row's KV states carried to the next call, whose prompts extend these rows.
        self._prefix = PrefixStore(model) if prefix_cache else None
        self.prefix_tokens_reused = 0  # prompt tokens served from the prefix store, for benchmarks
        # A split prefill merges its caches column by column: full-attention cache layers only.
        self.prefill_buckets = prefill_buckets if _full_attention_cache(model) else 1
        self.prefill_calls = 0  # forward calls of prefills, for benchmarks

    @classmethod
    def from_pretrained(cls, path_or_id: str, device=None, dtype=None, max_batch_size: int | None = None,
                        prefix_cache: bool = True, prefill_buckets: int = PREFILL_MAX_BUCKETS, **model_kwargs):
        """Load a model directory or hub id with its tokenizer."""
        from transformers import AutoModelForCausalLM, AutoTokenizer

        tokenizer = AutoTokenizer.from_pretrained(path_or_id)
        if dtype is not None:
            model_kwargs.setdefault("dtype", _as_dtype(dtype))
        model = AutoModelForCausalLM.from_pretrained(path_or_id, **model_kwargs)
        return cls(model, tokenizer, device=device, max_batch_size=max_batch_size, prefix_cache=prefix_cache,
                   prefill_buckets=prefill_buckets)

    def generate(self, prompts: list[list[int]], params: SamplingParams) -> list[Generation]:
        if not prompts:
            return []
        for i, prompt in enumerate(prompts):
            if len(prompt) == 0:
                raise ValueError(f"prompt {i} is empty: every prompt needs at least one token id")
        # Each row samples from its own key: the same ids whatever else is in the batch (`sampling.py`).
        seed = params.seed if params.seed is not None else secrets.randbits(62)  # fresh entropy, global RNG untouched
        keys = row_keys(prompts, seed)
        chunk = self.max_batch_size or len(prompts)
        was_training = self.model.training
        self.model.eval()
        try:
            with torch.inference_mode():
                lookup = self._prefix.begin_call() if self._prefix is not None else None
                out: list[Generation] = []
                for start in range(0, len(prompts), chunk):
                    out.extend(self._generate_batch(prompts[start : start + chunk], params, keys[start : start + chunk],
                                                    lookup))
                return out
        finally:
            self.model.train(was_training)

    def update_weights(self, source) -> int:
        """Copy new policy weights into the engine's model in place; returns how many tensors
        were copied. `source` is a model, a state dict, or (name, tensor) pairs; a partial
        state dict updates only the tensors it names."""
        if source is self.model:
            return 0
        if isinstance(source, torch.nn.Module):
            source = source.state_dict()
        named = dict(source.items() if isinstance(source, Mapping) else source)
        targets = self.model.state_dict()
        resolved = [(_resolve_name(name, targets), name, tensor) for name, tensor in named.items()]
        unknown = [name for target, name, _ in resolved if target is None]
        if unknown:
            raise KeyError(
                f"update_weights: {len(unknown)} names are not in the engine's model, e.g. {unknown[:3]}; "
                f"expected names like {list(targets)[:3]}"
            )
        for target, name, tensor in resolved:  # all checked before any is copied
            if targets[target].shape != tensor.shape:
                raise ValueError(
                    f"update_weights: {name} has shape {tuple(tensor.shape)}, "
                    f"the engine's model expects {tuple(targets[target].shape)}"
                )
        with torch.no_grad():
            for target, _, tensor in resolved:
                targets[target].copy_(tensor)
        if self._prefix is not None:
            self._prefix.clear()
        return len(resolved)

    # -- the decode loop -------------------------------------------------------------------

    def _generate_batch(self, prompts: list[list[int]], params: SamplingParams, keys: list[int],
                        lookup=None) -> list[Generation]:
        n_rows = len(prompts)
        logits_B_V, cache, mask_B_S, next_pos_B = self._prefill(prompts, lookup)

        out_ids: list[list[int]] = [[] for _ in range(n_rows)]
        finish: list[str | None] = [None] * n_rows
        stop_reason: list[int | str | None] = [None] * n_rows
        logprobs_R_T = torch.zeros(n_rows, params.max_new_tokens, dtype=torch.float32, device=self.device)
        rows = list(range(n_rows))  # batch position -> output row
        rows_t = torch.arange(n_rows, device=self.device)
        keys_B = torch.tensor(keys, dtype=torch.long, device=self.device)
        stop_ids = self.eos_ids | frozenset(params.stop_token_ids)
        window = max((len(s.encode("utf-8")) for s in params.stop_strings), default=0) + STOP_WINDOW_SLACK

        for step in range(params.max_new_tokens):
            ids_B, logprobs_B = sample_next(logits_B_V, params, keys_B, step)
            logprobs_R_T[rows_t, step] = logprobs_B
            for row, token in zip(rows, ids_B.tolist()):  # the one host sync of the step
                if finish[row] is not None:
                    continue
                out_ids[row].append(token)
                if token in stop_ids:
                    finish[row], stop_reason[row] = "stop", token
            if params.stop_strings:
                self._check_stop_strings(rows, out_ids, finish, stop_reason, params.stop_strings, window)
            if step + 1 == params.max_new_tokens:
                break
            idle = sum(finish[row] is not None for row in rows)
            if idle == len(rows):
                break
            if idle >= max(1, len(rows) * COMPACT_IDLE_FRACTION):
                self._store_rows(prompts, out_ids, cache, mask_B_S, rows, [j for j, row in enumerate(rows) if finish[row] is not None])
                keep = [j for j, row in enumerate(rows) if finish[row] is None]
                keep_t = torch.tensor(keep, device=self.device)
                rows = [rows[j] for j in keep]
                rows_t, ids_B, next_pos_B, keys_B = rows_t[keep_t], ids_B[keep_t], next_pos_B[keep_t], keys_B[keep_t]
                mask_B_S = _compact_cache(cache, keep_t, mask_B_S)
            if mask_B_S is not None:
                mask_B_S = torch.cat([mask_B_S, mask_B_S.new_ones(len(rows), 1)], dim=1)
            output = self.model(
                input_ids=ids_B[:, None],
                attention_mask=mask_B_S,
                position_ids=next_pos_B[:, None],
                use_cache=True,
                **{self._cache_arg: cache},
            )
            logits_B_V = output.logits[:, -1, :]
            next_pos_B = next_pos_B + 1

        self._store_rows(prompts, out_ids, cache, mask_B_S, rows, list(range(len(rows))))
        logprobs_R_T = logprobs_R_T.cpu()
        return [
            Generation(
                token_ids=ids,
                logprobs=logprobs_R_T[row, : len(ids)].tolist(),
                finish=finish[row] or "length",
                meta={"stop_reason": stop_reason[row]},
            )
            for row, ids in enumerate(out_ids)
        ]

    def _store_rows(self, prompts, out_ids, cache, mask_B_S, rows, batch_positions) -> None:
        """Keep the KV states of the given batch rows for the next call (prompt + sampled ids
        but the last, which was never fed)."""
        if self._prefix is None or not batch_positions:
            return
        seqs = [prompts[rows[j]] + out_ids[rows[j]][:-1] for j in batch_positions]
        for seq, kv in zip(seqs, extract_rows(cache, batch_positions, mask_B_S, [len(q) for q in seqs])):
            self._prefix.put(seq, kv)

    def _prefill(self, prompts: list[list[int]], lookup=None):
        """Run each distinct prompt once, then expand the cache to one row per prompt.
        A prompt that extends a row of the previous call prefills only its new tokens.
        Rows whose new tokens differ much in number go through the model in a few calls of
        similar lengths (`length_buckets`), merged into one batch for the decode.

        Returns next-token logits_B_V, the cache, the attention mask_B_S (None when no row is
        padded) and the position of each row's next token (B,).
        """
        unique: dict[tuple[int, ...], int] = {}
        row_to_unique = [unique.setdefault(tuple(p), len(unique)) for p in prompts]
        distinct = [list(p) for p in unique]
        if max(max(p) for p in distinct) >= self.vocab_size or min(min(p) for p in distinct) < 0:
            raise ValueError(f"prompt token ids must be in [0, {self.vocab_size}), the model's vocabulary size")
        hits = [PrefixStore.longest(lookup, p) for p in distinct] if lookup else [(0, None)] * len(distinct)
        self.prefix_tokens_reused += sum(n for n, _ in hits)
        buckets = length_buckets([len(p) - n for p, (n, _) in zip(distinct, hits)], self.prefill_buckets)
        if len(buckets) == 1:
            logits_U_V, cache, mask_U_S, next_pos_U = self._prefill_rows(distinct, hits)
        else:
            parts = [self._prefill_rows([distinct[i] for i in b], [hits[i] for i in b]) for b in buckets]
            logits_U_V, cache, mask_U_S, next_pos_U = self._merge(parts, buckets)
        if len(distinct) == len(prompts):
            return logits_U_V, cache, mask_U_S, next_pos_U
        expand_B = torch.tensor(row_to_unique, device=self.device)
        cache.batch_select_indices(expand_B)
        mask_B_S = None if mask_U_S is None else mask_U_S[expand_B]
        return logits_U_V[expand_B], cache, mask_B_S, next_pos_U[expand_B]

    def _prefill_rows(self, prompts: list[list[int]], hits: list[tuple[int, RowKV | None]]):
        """One forward over `prompts` (each after its cached prefix, if any): (logits_B_V,
        cache, mask_B_S or None, next positions_B)."""
        from transformers import DynamicCache

        if any(n for n, _ in hits):
            cache_data, ids_B_L, mask_B_S, positions_B_L = prefixed_inputs(prompts, hits, self.pad_id, self.device)
            cache = DynamicCache(ddp_cache_data=cache_data, config=self.model.config)
        else:
            ids_B_L, mask_B_S, positions_B_L = left_pad(prompts, self.pad_id, self.device)
            cache = DynamicCache(config=self.model.config)
        extra = {"logits_to_keep": 1} if self._keeps_logits else {}
        self.prefill_calls += 1
        output = self.model(
            input_ids=ids_B_L,
            attention_mask=mask_B_S,
            position_ids=positions_B_L,
            use_cache=True,
            **{self._cache_arg: cache},
            **extra,
        )
        return output.logits[:, -1, :], cache, mask_B_S, positions_B_L[:, -1] + 1

    def _merge(self, parts, buckets: list[list[int]]):
        """The prefills of `buckets` as one batch in the rows' original order: each part's KV
        columns right-aligned in the widest part's width, the columns added on the left masked."""
        from transformers import DynamicCache

        caches = [cache for _, cache, _, _ in parts]
        widths = [cache.layers[0].keys.shape[-2] for cache in caches]
        width = max(widths)
        order_B = torch.tensor([i for b in buckets for i in b], device=self.device)
        inverse_B = torch.empty_like(order_B)
        inverse_B[order_B] = torch.arange(len(order_B), device=self.device)

        def aligned(tensors):  # (n, H, w, D) each -> (B, H, width, D), original row order
            return torch.cat([F.pad(t, (0, 0, width - w, 0)) for t, w in zip(tensors, widths)])[inverse_B]

        cache_data = [(aligned([c.layers[layer].keys for c in caches]), aligned([c.layers[layer].values for c in caches]))
                      for layer in range(len(caches[0].layers))]
        mask_B_S = torch.cat([F.pad(mask if mask is not None else torch.ones(len(b), w, dtype=torch.long, device=self.device),
                                    (width - w, 0)) for (_, _, mask, _), b, w in zip(parts, buckets, widths)])[inverse_B]
        logits_B_V = torch.cat([logits for logits, _, _, _ in parts])[inverse_B]
        next_pos_B = torch.cat([pos for _, _, _, pos in parts])[inverse_B]
        cache = DynamicCache(ddp_cache_data=cache_data, config=self.model.config)
        return logits_B_V, cache, None if bool(mask_B_S.all()) else mask_B_S, next_pos_B

    def _check_stop_strings(self, rows, out_ids, finish, stop_reason, stop_strings, window) -> None:
        """End rows whose new text now contains a stop string, decoding only a tail window."""
        live = [row for row in rows if finish[row] is None]
        if not live:
            return
        tails = self.tokenizer.batch_decode(
            [out_ids[row][-window:] for row in live], skip_special_tokens=False, clean_up_tokenization_spaces=False
        )
        for row, text in zip(live, tails):
            hit = next((s for s in stop_strings if s in text), None)
            if hit is not None:
                finish[row], stop_reason[row] = "stop", hit


def _compact_cache(cache, keep_B: torch.Tensor, mask_B_S: torch.Tensor | None) -> torch.Tensor | None:
    """Keep only `keep_B` rows of the cache; also drop left-padding columns no kept row needs.

    Returns the kept rows' mask, or None once no kept row is padded.
    """
    cache.batch_select_indices(keep_B)
    if mask_B_S is None:
        return None
    mask_B_S = mask_B_S[keep_B]
    first = int(mask_B_S.any(dim=0).int().argmax())
    layers = getattr(cache, "layers", None)
    if first > 0 and layers is not None and all(type(layer).__name__ == "DynamicLayer" for layer in layers):
        for layer in layers:
            if layer.keys is not None and layer.keys.numel():
                layer.keys = layer.keys[:, :, first:, :]
                layer.values = layer.values[:, :, first:, :]
        mask_B_S = mask_B_S[:, first:]
    return None if bool(mask_B_S.all()) else mask_B_S


def length_buckets(lengths: list[int], max_buckets: int = PREFILL_MAX_BUCKETS,
                    min_saving: float = PREFILL_MIN_SAVING) -> list[list[int]]:
    """Row indices in runs of similar `lengths` (longest first), one forward call each.

    A batch pads every row to its longest, so a turn where some rows feed a passage and
    others a few tokens pays for the passage in every row. Splits the sorted rows where a
    split saves the most padded positions, while a split saves at least `min_saving` of
    what the batch costs, up to `max_buckets` calls.
    """
    buckets = [sorted(range(len(lengths)), key=lambda i: -lengths[i])]
    while len(buckets) < max_buckets:
        cost = sum(len(b) * lengths[b[0]] for b in buckets)
        best = (0, 0, 0)  # (saving, bucket, split position)
        for j, b in enumerate(buckets):
            top = lengths[b[0]]
            for k in range(1, len(b)):
                if lengths[b[k]] < lengths[b[k - 1]]:
                    saving = (len(b) - k) * (top - lengths[b[k]])
                    best = max(best, (saving, j, k))
        saving, j, k = best
        if saving == 0 or saving < min_saving * cost:
            break
        buckets[j : j + 1] = [buckets[j][:k], buckets[j][k:]]
    return buckets


def _full_attention_cache(model) -> bool:
    """Whether the model's KV cache is all plain layers (no sliding window, no static size)."""
    from transformers import DynamicCache

    try:
        return all(type(layer).__name__ == "DynamicLayer" for layer in DynamicCache(config=model.config).layers)
    except (AttributeError, TypeError, ValueError):
        return False


def _eos_ids(tokenizer, model) -> Iterable[int]:
    ids = set()
    for source in (tokenizer.eos_token_id, getattr(getattr(model, "generation_config", None), "eos_token_id", None)):
        if isinstance(source, int):
            ids.add(source)
        elif source is not None:
            ids.update(int(i) for i in source)
    return ids


def _first_id(*candidates) -> int:
    return next(c for c in candidates if c is not None)


def _resolve_name(name: str, targets: Mapping[str, torch.Tensor]) -> str | None:
    """Match a trainer-side parameter name to the engine's, tolerating DDP / compile prefixes."""
    for candidate in (name, name.removeprefix("module."), name.removeprefix("_orig_mod.")):
        if candidate in targets:
            return candidate
    return None


def _as_dtype(dtype) -> torch.dtype:
    if isinstance(dtype, torch.dtype):
        return dtype
    resolved = getattr(torch, str(dtype), None)
    if not isinstance(resolved, torch.dtype):
        raise ValueError(f"unknown dtype {dtype!r}: expected e.g. 'float32', 'bfloat16' or a torch.dtype")
    return resolved
