"""The update's time per row against the sequence length, on synthetic rows of one length.

    python -m eval.bench.scale train                          # the embedded default
    python -m eval.bench.scale train --lengths 256,512,1024,2048 --tokens 8192 --repeats 3

At each length L a batch of `--tokens / L` rows of L random token ids, the loss on the last
L/8 of each (about the sampled share of a real row), goes through `train_rows` as the
trainer runs it: the reference forward of the KL term, the forward and backward with
entropy, clipping and the optimizer step, under the trainer's precision and attention
(GRPO flags set them as in `train/grpo.py`). Every batch holds the same number of tokens,
so a cost linear in L takes the same seconds at every length and the seconds per row double
with L; best of `--repeats`, in the process's CPU time (see `growth.clock`; the wall time is
kept next to it).
"""

from __future__ import annotations

import numpy as np
import torch
from rich.console import Console
from rich.table import Table

from eval.bench.scale.growth import clock, growth_words, plot_panels, slope, threads
from eval.bench.train import bench_trainer, take_flag

__all__ = ["linear_and_quadratic", "main", "synthetic_rows"]

console = Console()
LOSS_SHARE = 8  # the loss is on the last 1/LOSS_SHARE of each row


def synthetic_rows(rows: int, length: int, vocab: int, seed: int = 0):
    """A `TokenBatch` of random ids with the loss on each row's last tokens, and its advantages (B, L)."""
    from train.batching import TokenBatch

    gen = torch.Generator().manual_seed(seed)
    input_ids = torch.randint(0, vocab, (rows, length), generator=gen)
    loss_mask = torch.zeros(rows, length)
    loss_mask[:, -max(1, length // LOSS_SHARE):] = 1.0
    batch = TokenBatch(input_ids, torch.ones(rows, length, dtype=torch.long), loss_mask, torch.zeros(rows, length))
    return batch, loss_mask.clone()


def linear_and_quadratic(lengths: list[int], seconds: list[float]) -> tuple[float, float]:
    """(a, b) of seconds ~ a L + b L^2, per-token work against attention's, fitted by least
    squares on the relative error (every length weighs the same, however long it takes)."""
    x, y = np.array(lengths, dtype=float), np.array(seconds, dtype=float)
    (a, b), *_ = np.linalg.lstsq(np.stack([x / y, x**2 / y], axis=1), np.ones_like(y), rcond=None)
    return float(a), float(b)


def main(argv: list[str]) -> dict:
    from train.update import train_rows

    argv = list(argv)
    lengths = [int(x) for x in take_flag(argv, "--lengths", "256,512,1024,2048").split(",")]
    tokens = int(take_flag(argv, "--tokens", "8192"))
    repeats = int(take_flag(argv, "--repeats", "3"))
    png = take_flag(argv, "--png", "docs/images/scale-train.png")
    cfg, trainer, _ = bench_trainer(argv)
    policy = trainer.policy
    window = policy.model.config.max_position_embeddings
    if max(lengths) > window or min(lengths) < LOSS_SHARE:
        raise SystemExit(f"--lengths: each must be between {LOSS_SHARE} and the model's {window} positions, "
                         f"got {','.join(map(str, lengths))}")

    def update(batch, adv_B_L) -> dict:
        with clock() as spent:
            logged = train_rows(policy, batch, adv_B_L, torch.ones(len(adv_B_L)), cfg.loss, cfg.optim,
                                trainer.optimizer, temperature=cfg.rollout.temperature, seed=cfg.seed,
                                max_tokens=batch.input_ids.shape[1], autocast=trainer.precision.autocast,
                                forward=trainer.forward)
        # train_rows times its reference forward in wall time: kept as its share of the call's
        return {"seconds": spent["cpu"], "wall_seconds": spent["wall"],
                "reference_share": logged["reference_s"] / spent["wall"]}

    update(*synthetic_rows(1, lengths[0], len(policy.tokenizer)))  # warm-up: the first call pays one-off setup
    rows = []
    for length in lengths:
        n_rows = max(1, tokens // length)
        batch, adv_B_L = synthetic_rows(n_rows, length, len(policy.tokenizer), cfg.seed)
        best = min((update(batch, adv_B_L) for _ in range(repeats)), key=lambda r: r["seconds"])
        rows.append({"length": length, "rows": n_rows, "seconds": best["seconds"], "wall_seconds": best["wall_seconds"],
                     "seconds_per_row": best["seconds"] / n_rows, "reference_share": best["reference_share"],
                     "tokens_per_s": n_rows * length / best["seconds"]})
        console.log(f"{length} tokens: {rows[-1]['seconds_per_row'] * 1e3:.1f} ms a row")
    attention = policy.model.config._attn_implementation
    report(rows, f"{cfg.policy.model} · {trainer.precision.name} · {attention} attention", png, threads())
    return {"rows": rows, "precision": trainer.precision.name, "attention": attention}


def report(rows: list[dict], what: str, png: str, machine: str) -> None:
    table = Table(title=f"the update against the sequence length · {what}", caption=f"CPU time; {machine}")
    for column in ("tokens a row", "rows", "ms a row", "reference forward", "ms per 1k tokens", "tokens/s"):
        table.add_column(column, justify="right")
    for r in rows:
        table.add_row(f"{r['length']:,}", str(r["rows"]), f"{r['seconds_per_row'] * 1e3:.1f}",
                      f"{r['reference_share']:.0%}", f"{r['seconds'] / (r['rows'] * r['length']) * 1e6:.1f}",
                      f"{r['tokens_per_s']:,.0f}")
    console.print(table)
    lengths = [r["length"] for r in rows]
    b = slope(lengths, [r["seconds_per_row"] for r in rows])
    console.print(f"seconds a row ~ length^{b:.2f} ({growth_words(b)})")
    linear, quadratic = linear_and_quadratic(lengths, [r["seconds_per_row"] for r in rows])
    shares = ", ".join(f"{quadratic * x / (linear + quadratic * x):.0%} at {x}" for x in lengths)
    console.print(f"seconds a row ~ {linear:.2e} L + {quadratic:.2e} L^2; the L^2 term's share: {shares}")
    panels = [{"title": "the update's seconds per row", "xlabel": "tokens a row", "ylabel": "seconds",
               "series": {"measured": (lengths, [r["seconds_per_row"] for r in rows]),
                          "linear from the shortest": (lengths, [rows[0]["seconds_per_row"] * x / lengths[0]
                                                                 for x in lengths])}},
              {"title": "tokens per second", "xlabel": "tokens a row", "ylabel": "tokens/s",
               "series": {"measured": (lengths, [r["tokens_per_s"] for r in rows])}}]
    console.print(f"curves written to {plot_panels(png, f'update cost against sequence length · {what}', panels)}")
