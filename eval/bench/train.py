"""Where a GRPO step's time goes: the trainer's own `train_step`, timed part by part.

    python -m eval.bench.train --steps 3          # the default config, any GRPO flag accepted

The trainer is built as `train/grpo.py` builds it (`build_trainer`: the model, precision,
attention, sampler and optimizer); its sampler and retriever are wrapped in timers, and
`--steps` calls of `train_step` are split into generation, retrieval, rollout bookkeeping,
rewards, the reference forward (the KL term's; none with `--kl_coef 0`), the update
(advantages, logprobs with gradients, backward, optimizer, sampler sync) and the step's
trace records, with the tokens/s of generation, reference and update.

Then, on the last step's batch, three comparisons, each against a baseline in the same run:
the output head run on the trained tokens only (as the update does) against the full head;
the update's forward and backward under bf16 autocast against float32, with the logprob gap
between the two; and the update of the batch with identical rows merged (as the update
does) against training every row.
"""

from __future__ import annotations

import json
import math
import sys
import time

import torch
from rich.console import Console
from rich.table import Table

from eval.bench.rollout import Timed

console = Console()


def bench_trainer(argv: list[str]):
    """(config, trainer, train questions) of GRPO flags `argv`: the trainer built as
    `train/grpo.py` builds it, on the warm start `ensure_default` makes for an embedded model,
    with its retriever wrapped in a `Timed`."""
    from retrieval import open_retriever
    from train.config import parse_config
    from train.grpo import GRPOConfig, build_trainer
    from train.prepare import ensure_default
    from train.questions import load_questions
    from train.tiny import is_embedded

    cfg = parse_config(GRPOConfig, argv)
    model_path = cfg.policy.model
    if is_embedded(model_path):
        model_path = str(ensure_default(cfg.data, cfg.index, model_path, eval_questions=0)[2])
    train_set = load_questions(cfg)[0]
    return cfg, build_trainer(cfg, model_path, Timed(open_retriever(cfg.train_index or cfg.index), "search")), train_set


def take_flag(argv: list[str], flag: str, default: str) -> str:
    """The value of `flag` in `argv` (removed from it), else `default`: the bench's own flags
    next to GRPO's."""
    if flag not in argv:
        return default
    at = argv.index(flag)
    if at + 1 == len(argv):
        raise SystemExit(f"{flag}: expected a value after it")
    value = argv[at + 1]
    del argv[at : at + 2]
    return value


def main(argv=None) -> dict:
    from agent.traces import trajectory_record
    from train.grpo import train_step
    from train.questions import next_questions

    argv = list(sys.argv[1:] if argv is None else argv)
    steps = int(take_flag(argv, "--steps", "3"))
    cfg, trainer, train_set = bench_trainer(argv)
    sampler, retriever = Timed(trainer.sampler, "generate"), trainer.retriever
    if trainer.sampler is trainer.engine:  # rollouts from the trained model itself: nothing to sync
        trainer.engine = sampler
    trainer.sampler = sampler
    parts = {k: 0.0 for k in ("generation", "retrieval", "rollout bookkeeping", "rewards", "reference logprobs",
                              "update", "trace records")}
    sampled = update_tokens = 0
    counts = {"rolled out": 0, "trained on": 0}  # trajectories
    cursor = {"epoch": 0, "pos": 0}
    for step in range(steps):
        questions, cursor = next_questions(train_set, cursor, math.ceil(cfg.questions_per_step * cfg.oversample), cfg.seed)
        g0, r0 = sampler.seconds, retriever.seconds
        result = train_step(trainer, questions, step)
        record = result.record
        t0 = time.perf_counter()
        [json.dumps(trajectory_record(t, g.example, trainer.policy.tokenizer, step=step, reward=s.value, rewards=s.parts))
         for g in result.groups for t, s in zip(g.trajectories, g.scores)]
        parts["trace records"] += time.perf_counter() - t0
        generation, search = sampler.seconds - g0, retriever.seconds - r0
        parts["generation"] += generation
        parts["retrieval"] += search
        parts["rollout bookkeeping"] += record["rollout_s"] - generation - search
        parts["rewards"] += record["reward_s"]
        parts["reference logprobs"] += record["reference_s"]
        parts["update"] += record["update_s"] - record["reference_s"]
        sampled += sum(t.n_sampled_tokens for g in result.groups for t in g.trajectories)
        counts["rolled out"] += sum(len(g.trajectories) for g in result.groups)
        counts["trained on"] += sum(len(g.trajectories) for g in result.trained)
        update_tokens += result.advantages.batch.n_tokens
    total = sum(parts.values())
    trained_with = trainer.policy.model.config._attn_implementation
    table = Table(title=f"{steps} GRPO steps · {cfg.questions_per_step} questions trained of {counts['rolled out'] // steps // cfg.group_size} "
                        f"rolled out x {cfg.group_size} samples · {cfg.policy.model} · {trainer.precision.name} · "
                        f"{trained_with} attention in the update")
    for col in ("part", "seconds/step", "share", "tokens/s"):
        table.add_column(col, justify="right")
    for name, sec in parts.items():
        tps = {"generation": sampled / max(parts["generation"], 1e-9), "update": update_tokens / max(parts["update"], 1e-9),
               "reference logprobs": update_tokens / parts["reference logprobs"] if cfg.loss.kl_coef else 0}.get(name)
        table.add_row(name, f"{sec / steps:.2f}", f"{sec / total:.1%}", f"{tps:.0f}" if tps else "")
    table.add_row("step", f"{total / steps:.2f}", "100%", "")
    console.print(table)
    console.print(f"{sampled / steps:.0f} sampled tokens and {update_tokens / steps:.0f} trained-on tokens per step")
    batch, temperature = result.advantages.batch, cfg.rollout.temperature
    head = head_only_on_trained_tokens(trainer.policy.model, batch, temperature)
    amp = bf16_against_float32(trainer.policy.model, batch, temperature)
    merged = merged_against_whole(trainer, result.advantages)
    return {**{k: v / steps for k, v in parts.items()}, "trajectories": counts, "attention": trained_with,
            "head": head, "bf16": amp, "merge": merged}


def merged_against_whole(trainer, adv, repeats: int = 2) -> dict:
    """The update of one batch with its identical rows merged (`policy_update`, reference
    forward included) against the baseline that trains every row (`train_rows` with a count
    of 1 each); best of `repeats`, with a zero learning rate so the weights stay."""
    from train.update import policy_update, train_rows

    cfg, policy = trainer.cfg, trainer.policy
    optimizer = torch.optim.SGD([p for p in policy.model.parameters() if p.requires_grad], lr=0.0)
    kwargs = {"temperature": cfg.rollout.temperature, "seed": 0, "autocast": trainer.precision.autocast}

    def merged():
        return policy_update(policy, adv, cfg.loss, cfg.optim, optimizer, **kwargs)

    def whole():
        counts = torch.ones(adv.batch.input_ids.shape[0])
        return train_rows(policy, adv.batch, adv.adv_B_T, counts, cfg.loss, cfg.optim, optimizer,
                          max_tokens=int(adv.batch.attention_mask.sum(1).max()), **kwargs)

    def seconds(fn) -> tuple[float, dict]:
        started = time.perf_counter()
        logged = fn()
        return time.perf_counter() - started, logged

    whole_s, _ = min((seconds(whole) for _ in range(repeats)), key=lambda r: r[0])
    merged_s, logged = min((seconds(merged) for _ in range(repeats)), key=lambda r: r[0])
    console.print(f"update of one batch: every row (baseline) {whole_s:.2f} s · identical rows merged "
                  f"({logged['rows_distinct']:.0%} of the rows distinct) {merged_s:.2f} s · {whole_s / merged_s:.2f}x")
    return {"whole_s": whole_s, "merged_s": merged_s, "rows_distinct": logged["rows_distinct"]}


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
    forward and backward (the update's) over `batch`: full head (baseline) vs head on the loss
    tokens only (best of `repeats`)."""
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
