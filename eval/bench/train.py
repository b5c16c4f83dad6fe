"""Where a GRPO step's time goes, on the default configuration.

    python -m eval.bench.train --steps 3

The model is the trainer's: `tiny` (the default) is the embedded warm start, built on first
use and trained with the attention the trainer gives it; any other `--model` as `train/grpo.py`
loads it.

Runs `--steps` steps of the trainer's own functions (rollout, rewards, advantages, update,
trace records) and splits each step into generation, retrieval, rollout bookkeeping,
rewards, advantages, the reference logprobs (the KL term's forward pass through the frozen
reference; none when `--kl_coef 0`), the update (logprobs with gradients, backward,
optimizer) and trace bookkeeping, with the tokens/s of generation, reference and update.
Old logprobs are the sampler's, so they cost no pass of their own.

Then, on the last step's batch, the reference forward and the update's forward and
backward of `token_logprobs` with the output head on the trained tokens only (as the
trainer runs them) against the baseline of the full head on every position; and the
update's forward and backward under bf16 autocast (`--autocast auto`, the default where
the hardware computes bf16) against float32, with the logprob gap between the two. Last,
one step's rollouts sampled by the bf16 copy of the model (`--rollout_dtype auto` where the
hardware computes bf16) against the float32 model itself, and the gap between the bf16
sampler's logprobs and the trainer's of the same tokens (the first pass's log-ratio).
"""

from __future__ import annotations

import json
import math
import sys
import time
from dataclasses import asdict

import torch
from rich.console import Console
from rich.table import Table

from eval.bench.rollout import Timed

console = Console()


def main(argv=None) -> dict:
    from agent.engines.hf import HFEngine
    from agent.rollout import Rollout, RolloutConfig
    from agent.traces import trajectory_record
    from agent.data.qa import load_qa
    from retrieval import open_retriever
    from rewards.registry import build_reward
    from train.config import parse_config
    from train.grpo import GRPOConfig, next_questions, passages_per_search, pick_groups, policy_path, prepare_update
    from train.policy import load_policy, rollout_model
    from train.update import advantages_for, policy_update

    argv = list(sys.argv[1:] if argv is None else argv)
    steps = 3
    if "--steps" in argv:
        at = argv.index("--steps")
        steps = int(argv[at + 1])
        del argv[at : at + 2]
    cfg = parse_config(GRPOConfig, argv)
    policy = load_policy(policy_path(cfg), need_reference=cfg.kl_coef > 0, dtype=cfg.dtype)
    sampler = rollout_model(policy, cfg.rollout_dtype)
    _, optimizer = prepare_update(policy, cfg)
    engine, retriever = Timed(HFEngine(sampler, policy.tokenizer), "generate"), Timed(open_retriever(cfg.index), "search")
    engine.tokenizer = policy.tokenizer
    train_set = load_qa(cfg.data, "train")
    by_id = {ex.id: ex for ex in train_set}
    reward = build_reward(json.loads(cfg.rewards))
    rcfg = RolloutConfig(top_k=passages_per_search(cfg), max_turns=cfg.max_turns, max_new_tokens=cfg.max_new_tokens,
                         temperature=cfg.temperature)
    parts = {k: 0.0 for k in ("generation", "retrieval", "rollout bookkeeping", "rewards", "advantages",
                              "reference logprobs", "update", "trace records")}
    sampled = update_tokens = 0
    counts = {"rolled out": 0, "trained on": 0}  # trajectories
    cursor = {"epoch": 0, "pos": 0}
    n_rolled = math.ceil(cfg.questions_per_step * cfg.oversample)
    for step in range(steps):
        questions, cursor = next_questions(train_set, cursor, n_rolled, cfg.seed)
        g0, r0, t0 = engine.seconds, retriever.seconds, time.perf_counter()
        trajs = Rollout(engine, retriever, RolloutConfig(**{**asdict(rcfg), "seed": step}), policy.tokenizer)(questions, cfg.group_size)
        t1 = time.perf_counter()
        parts["generation"] += engine.seconds - g0
        parts["retrieval"] += retriever.seconds - r0
        parts["rollout bookkeeping"] += (t1 - t0) - (engine.seconds - g0) - (retriever.seconds - r0)
        examples = [by_id[t.example_id] for t in trajs]
        scores = reward(trajs, examples)
        t2 = time.perf_counter()
        rolled, rolled_examples = trajs, examples  # --oversample: the update trains the groups the trainer picks
        kept = pick_groups(trajs, scores, cfg.questions_per_step)
        trajs, scores = [rolled[i] for i in kept], [scores[i] for i in kept]
        adv = advantages_for(trajs, scores, cfg, policy.tokenizer.pad_token_id)
        t3 = time.perf_counter()
        logged = policy_update(policy, adv, cfg, optimizer, seed=step)
        engine.update_weights(policy.model)
        t4 = time.perf_counter()
        [json.dumps(trajectory_record(t, ex, policy.tokenizer, step=step)) for t, ex in zip(rolled, rolled_examples)]
        t5 = time.perf_counter()
        parts["rewards"] += t2 - t1
        parts["advantages"] += t3 - t2
        parts["reference logprobs"] += logged["reference_s"]
        parts["update"] += t4 - t3 - logged["reference_s"]
        parts["trace records"] += t5 - t4
        sampled += sum(t.n_sampled_tokens for t in rolled)
        counts["rolled out"] += len(rolled)
        counts["trained on"] += len(trajs)
        update_tokens += adv.batch.n_tokens
    total = sum(parts.values())
    rolled = f" (of {n_rolled} rolled out)" if n_rolled > cfg.questions_per_step else ""
    trained_with = policy.model.config._attn_implementation
    table = Table(title=f"{steps} GRPO steps · {cfg.questions_per_step} questions{rolled} x {cfg.group_size} samples · "
                        f"{cfg.model} · {trained_with} attention in the update")
    for col in ("part", "seconds/step", "share", "tokens/s"):
        table.add_column(col, justify="right")
    for name, sec in parts.items():
        tps = {"generation": sampled / parts["generation"], "update": update_tokens / parts["update"],
               "reference logprobs": update_tokens / parts["reference logprobs"] if cfg.kl_coef else 0}.get(name)
        table.add_row(name, f"{sec / steps:.2f}", f"{sec / total:.1%}", f"{tps:.0f}" if tps else "")
    table.add_row("step", f"{total / steps:.2f}", "100%", "")
    console.print(table)
    console.print(f"{sampled / steps:.0f} sampled tokens and {update_tokens / steps:.0f} trained-on tokens per step")
    head = head_only_on_trained_tokens(policy.model, adv.batch, cfg.temperature)
    amp = bf16_against_float32(policy.model, adv.batch, cfg.temperature)
    merged = merged_against_whole(policy, adv, cfg)
    sampling = bf16_sampler_against_float32(policy, retriever, questions, rcfg, cfg)
    return {**{k: v / steps for k, v in parts.items()}, "trajectories": counts, "attention": trained_with,
            "head": head, "bf16": amp, "merge": merged, "bf16_sampler": sampling}


def bf16_sampler_against_float32(policy, retriever, questions, rcfg, cfg, repeats: int = 2) -> dict:
    """One step's rollouts (same questions and seed) sampled by a bf16 copy of the model
    against the float32 model itself (the baseline; best of `repeats`, taken in turns), and
    |sampler - trainer| logprob of the bf16 copy's sampled tokens, the trainer computing
    them as the update does."""
    from agent.engines.hf import HFEngine
    from agent.rollout import Rollout
    from train.batching import collate_segments, token_logprobs
    from train.policy import autocast_dtype, autocast_to, rollout_model

    def rollout(model):
        started = time.perf_counter()
        trajs = Rollout(HFEngine(model, policy.tokenizer), retriever, rcfg, policy.tokenizer)(questions, cfg.group_size)
        return time.perf_counter() - started, trajs

    copy_bf16 = rollout_model(policy, "bf16")
    runs = [(rollout(policy.model), rollout(copy_bf16)) for _ in range(repeats)]
    full = min(f for (f, _), _ in runs)
    half, trajs = min((h for _, h in runs), key=lambda r: r[0])
    batch = collate_segments([seg for t in trajs for seg in t.segments], policy.tokenizer.pad_token_id)
    amp = autocast_dtype(cfg.autocast, batch.input_ids.device)
    with torch.no_grad(), autocast_to(batch.input_ids.device, amp):
        trainer_B_L = token_logprobs(policy.model, batch, cfg.temperature, only_loss=True)
    mask = batch.loss_mask.bool()
    gap = (trainer_B_L[mask] - batch.old_logprobs[mask]).abs()
    console.print(f"rollouts of one step: float32 model (baseline) {full:.2f} s · bf16 copy {half:.2f} s · "
                  f"{full / half:.2f}x; |trainer - bf16 sampler| logprob of a sampled token: mean {gap.mean():.1e}, "
                  f"99th percentile {gap.quantile(0.99):.1e}, max {gap.max():.1e}")
    return {"float32_s": full, "bf16_s": half, "logprob_gap_mean": float(gap.mean()),
            "logprob_gap_p99": float(gap.quantile(0.99)), "logprob_gap_max": float(gap.max())}


def merged_against_whole(policy, adv, cfg, repeats: int = 2) -> dict:
    """The whole update (`policy_update`, reference forward included) of one batch with its
    identical rows merged against the baseline that trains every row (best of `repeats`;
    a zero learning rate keeps the weights as they are)."""
    from dataclasses import replace

    from train.update import policy_update

    optimizer = torch.optim.SGD([p for p in policy.model.parameters() if p.requires_grad], lr=0.0)

    def seconds(merge: bool) -> tuple[float, dict]:
        started = time.perf_counter()
        logged = policy_update(policy, adv, replace(cfg, merge_duplicate_rows=merge), optimizer, seed=0)
        return time.perf_counter() - started, logged

    whole, _ = min((seconds(False) for _ in range(repeats)), key=lambda r: r[0])
    merged, logged = min((seconds(True) for _ in range(repeats)), key=lambda r: r[0])
    console.print(f"update of one batch: every row (baseline) {whole:.2f} s · identical rows merged "
                  f"({logged['rows_distinct']:.0%} of the rows distinct) {merged:.2f} s · {whole / merged:.2f}x")
    return {"whole_s": whole, "merged_s": merged, "rows_distinct": logged["rows_distinct"]}


def update_pass(model, batch, temperature: float, only_loss: bool, amp: torch.dtype | None = None):
    """(seconds, logprobs of the trained tokens) of one forward and backward of
    `token_logprobs` with entropy, as the update runs it, optionally under `amp` autocast."""
    from train.batching import token_logprobs
    from train.policy import autocast_to

    started = time.perf_counter()
    with autocast_to(batch.input_ids.device, amp):
        lp, ent = token_logprobs(model, batch, temperature, with_entropy=True, only_loss=only_loss)
    mask = batch.loss_mask.bool()
    (-(lp[mask].mean()) - 0.01 * ent[mask].mean()).backward()
    model.zero_grad(set_to_none=True)
    return time.perf_counter() - started, lp.detach()[mask]


def head_only_on_trained_tokens(model, batch, temperature: float, repeats: int = 2) -> dict:
    """Seconds of the logprobs forward without gradients (the reference's) and with entropy,
    forward and backward (the update's) over `batch`: full head vs head on the loss tokens
    only (best of `repeats`)."""
    from train.batching import token_logprobs

    def reference(only_loss: bool) -> float:
        started = time.perf_counter()
        with torch.no_grad():
            token_logprobs(model, batch, temperature, only_loss=only_loss)
        return time.perf_counter() - started

    def update(only_loss: bool) -> float:
        return update_pass(model, batch, temperature, only_loss)[0]

    out = {}
    share = float(batch.loss_mask.sum()) / batch.n_tokens
    console.print(f"logprobs on one batch ({batch.n_tokens} tokens, {share:.1%} of them trained):")
    for name, fn in (("reference forward", reference), ("update forward + backward", update)):
        model.train(fn is update)
        full = min(fn(False) for _ in range(repeats))
        sliced = min(fn(True) for _ in range(repeats))
        out[name] = {"full_head_s": full, "head_on_trained_s": sliced}
        console.print(f"  {name}: full output head (baseline) {full:.2f} s · head on the trained tokens only "
                      f"{sliced:.2f} s · {full / sliced:.2f}x")
    model.eval()
    return out


def bf16_against_float32(model, batch, temperature: float, repeats: int = 2) -> dict:
    """The update's forward and backward of `token_logprobs` under bf16 autocast against
    the float32 baseline (best of `repeats`), and how far the bf16 logprobs of the trained
    tokens stray from the float32 ones of the same weights: the log-ratio that rounding
    alone puts into the first pass."""
    model.train()
    full, lp32 = min((update_pass(model, batch, temperature, True) for _ in range(repeats)), key=lambda r: r[0])
    half, lp16 = min((update_pass(model, batch, temperature, True, torch.bfloat16) for _ in range(repeats)),
                     key=lambda r: r[0])
    model.eval()
    gap = (lp16 - lp32).abs()
    console.print(f"update forward + backward: float32 (baseline) {full:.2f} s · bf16 autocast {half:.2f} s · "
                  f"{full / half:.2f}x; |bf16 - float32| logprob of a trained token: mean {gap.mean():.1e}, "
                  f"99th percentile {gap.quantile(0.99):.1e}, max {gap.max():.1e}")
    return {"float32_s": full, "bf16_s": half, "logprob_gap_mean": float(gap.mean()),
            "logprob_gap_p99": float(gap.quantile(0.99)), "logprob_gap_max": float(gap.max())}


if __name__ == "__main__":
    main()
