"""Rollout time against the number of questions and the group size, with the trainer's sampler.

    python -m eval.bench.scale rollout                        # the embedded default
    python -m eval.bench.scale rollout --shapes 1x8,16x8 --repeats 2 --png out.png --temperature 1.0

A shape QxG rolls out the first Q train questions G times each in one call of
`Rollout.groups`, which is what a GRPO step's rollout is, with the trainer's sampler (the
bf16 copy where the precision is bf16-mixed), retriever, rollout config and seed; GRPO flags
set those as in `train/grpo.py`. The retriever's cache, where it has one, is cleared before
each call. Reported per shape: seconds per call (best of --repeats; the process's CPU time,
see `growth.clock`, with the wall time kept next to it), sampled tokens, sampled tokens/s and
trajectories/s; then how the seconds grow with the trajectories, for the shapes of 8 samples
and for those of 16 questions.
"""

from __future__ import annotations

from rich.console import Console
from rich.table import Table

from eval.bench.scale.growth import clock, growth_words, plot_panels, slope, threads
from eval.bench.train import bench_trainer, take_flag

__all__ = ["main", "parse_shapes"]

console = Console()
SHAPES = "1x8,4x8,8x8,16x8,32x8,64x8,16x1,16x2,16x4,16x16"


def parse_shapes(text: str) -> list[tuple[int, int]]:
    """`QxG,...` as (questions, group size) pairs.

    >>> parse_shapes("1x8,16x2")
    [(1, 8), (16, 2)]
    """
    shapes = []
    for part in text.split(","):
        q, _, g = part.strip().partition("x")
        if not (q.isdigit() and g.isdigit() and int(q) > 0 and int(g) > 0):
            raise SystemExit(f"--shapes: {part.strip()!r} is not QUESTIONSxGROUP with both >= 1 (e.g. 16x8)")
        shapes.append((int(q), int(g)))
    return shapes


def main(argv: list[str]) -> dict:
    from agent.rollout import Rollout

    argv = list(argv)
    shapes = parse_shapes(take_flag(argv, "--shapes", SHAPES))
    repeats = int(take_flag(argv, "--repeats", "2"))
    png = take_flag(argv, "--png", "docs/images/scale-rollout.png")
    cfg, trainer, train_set = bench_trainer(argv)
    retriever = trainer.retriever
    rollout = Rollout(trainer.sampler, retriever, cfg.rollout, trainer.policy.tokenizer)
    if max(q for q, _ in shapes) > len(train_set):
        raise SystemExit(f"--shapes: {max(q for q, _ in shapes)} questions asked, {cfg.data} has {len(train_set)}")

    def call(q: int, g: int) -> dict:
        if hasattr(retriever, "clear"):
            retriever.clear()
        with clock() as spent:
            groups = rollout.groups(train_set[:q], g, seed=cfg.seed)
        return {"seconds": spent["cpu"], "wall_seconds": spent["wall"],
                "sampled_tokens": sum(t.n_sampled_tokens for gr in groups for t in gr.trajectories)}

    call(1, 1)  # warm-up: the first call pays one-off setup
    rows = []
    for q, g in shapes:
        best = min((call(q, g) for _ in range(repeats)), key=lambda r: r["seconds"])
        rows.append({"questions": q, "group_size": g, "trajectories": q * g, **best,
                     "tokens_per_s": best["sampled_tokens"] / best["seconds"],
                     "trajectories_per_s": q * g / best["seconds"]})
        console.log(f"{q}x{g}: {best['seconds']:.2f} s, {rows[-1]['tokens_per_s']:.0f} sampled tokens/s")
    report(rows, f"{cfg.policy.model} · {trainer.precision.name} · temperature {cfg.rollout.temperature}", png,
           threads())
    return {"rows": rows, "precision": trainer.precision.name}


def report(rows: list[dict], what: str, png: str, machine: str) -> None:
    table = Table(title=f"rollout time against questions x group size · {what}", caption=f"CPU time; {machine}")
    for column in ("questions x group", "trajectories", "seconds a call", "sampled tokens", "tokens/s",
                   "trajectories/s"):
        table.add_column(column, justify="right")
    for r in rows:
        table.add_row(f"{r['questions']}x{r['group_size']}", str(r["trajectories"]), f"{r['seconds']:.2f}",
                      f"{r['sampled_tokens']:,}", f"{r['tokens_per_s']:,.0f}", f"{r['trajectories_per_s']:.1f}")
    console.print(table)
    series = {"8 samples, questions vary": [r for r in rows if r["group_size"] == 8],
              "16 questions, group size varies": [r for r in rows if r["questions"] == 16]}
    for label, points in series.items():
        b = slope([p["trajectories"] for p in points], [p["seconds"] for p in points])
        console.print(f"{label}: seconds ~ trajectories^{b:.2f} ({growth_words(b)})")
    panels = [{"title": "seconds per rollout call", "xlabel": "trajectories (questions x group size)",
               "ylabel": "seconds", "series": {k: ([p["trajectories"] for p in v], [p["seconds"] for p in v])
                                               for k, v in series.items()}},
              {"title": "sampled tokens per second", "xlabel": "trajectories (questions x group size)",
               "ylabel": "tokens/s", "series": {k: ([p["trajectories"] for p in v], [p["tokens_per_s"] for p in v])
                                                for k, v in series.items()}}]
    console.print(f"curves written to {plot_panels(png, f'rollout cost against batch · {what}', panels)}")
