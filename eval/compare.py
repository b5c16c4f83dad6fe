"""Compare evaluation runs side by side, with paired significance tests and plots.

    python -m eval.compare runs/oracle-test runs/tiny-test runs/rag-test --out runs/compare.md

Each RUN_DIR is an output directory of `python -m eval.run` (metrics.json, traces.jsonl).
Prints a table of the runs (scores, then outcomes) and, with `--out`, writes the same as
markdown with PNG plots next to it:

  <out>-em-by-hops.png    EM per hop count, one bar per run (runs with hop labels)
  <out>-training.png      reward and/or EM against training step, for every run whose
                          directory also holds a training `metrics.jsonl` (one JSON object
                          per line with "step" and "reward" and/or "em")

Significance: every run is tested against the first (the reference) by a paired
bootstrap on EM over the questions both runs answered, matched by example id (a question
rolled out several times scores its mean EM). Reported: the EM difference (run minus
reference), its 95% percentile interval, and the two-sided p-value (`rewards.bootstrap`).

Won and lost: of the questions the reference answers wrong, the share the run answers
right ("won"), and of those it answers right, the share the run answers wrong ("lost";
a question counts as right when its mean EM is above 0.5). Two runs with the same EM
difference can get there by little churn or by a lot; and since the difference is about
won x (1 - p) - lost x p for a reference at EM p, the same two rates gain less on a split
the reference already does well on.
"""

from __future__ import annotations

import argparse
import json
from collections import defaultdict
from pathlib import Path

from rich.console import Console
from rich.table import Table

from rewards.bootstrap import DEFAULT_RESAMPLES, paired_bootstrap
from rewards.metrics import ERROR_CATEGORIES, fmt, markdown_table
from rewards.outcome import exact_match

console = Console(stderr=True)

SCORE_HEADERS = ["run", "policy", "n", "EM", "EM 95% CI", "F1", "cover-EM", "searches/q", "valid", "JUDGE acc",
                 "support recall", "tokens/q"]
CURVE_KEYS = ("reward", "em")


def load_run(run_dir: Path) -> dict:
    """{'name', 'dir', 'metrics'} of a run directory; errors name the file."""
    path = Path(run_dir) / "metrics.json"
    if not path.exists():
        raise FileNotFoundError(f"{path}: not found; is {run_dir} a run directory written by `python -m eval.run`?")
    try:
        metrics = json.loads(path.read_text())
    except json.JSONDecodeError as error:
        raise ValueError(f"{path} line {error.lineno}: not valid JSON ({error.msg})") from None
    missing = [k for k in ("n", "em", "f1") if k not in (metrics if isinstance(metrics, dict) else {})]
    if missing:
        raise ValueError(f"{path}: missing field(s) {missing}; expected the metrics.json of `python -m eval.run`")
    return {"name": Path(run_dir).name, "dir": Path(run_dir), "metrics": metrics}


def per_question_em(records: list[dict], source: str = "traces") -> dict[str, float]:
    """Mean EM per example id, from trace records (their stored score, else recomputed)."""
    scores = defaultdict(list)
    for i, r in enumerate(records):
        ev = r.get("eval")
        if isinstance(ev, dict) and "em" in ev:
            em = ev["em"]
        elif "golden_answers" in r:
            em = exact_match(r.get("answer"), r["golden_answers"])
        else:
            raise ValueError(f"{source}: record {i + 1} (example {r.get('example_id')!r}) has neither a score "
                             "nor golden_answers")
        scores[str(r["example_id"])].append(float(em))
    return {k: sum(v) / len(v) for k, v in scores.items()}


def paired_test(ref: dict[str, float], run: dict[str, float], *, resamples: int = DEFAULT_RESAMPLES,
                seed: int = 0) -> dict | None:
    """Paired bootstrap of run minus reference over their shared ids (None when they share none)."""
    ids = sorted(ref.keys() & run.keys())
    if not ids:
        return None
    return paired_bootstrap([ref[i] for i in ids], [run[i] for i in ids], resamples=resamples, seed=seed)


def won_lost(ref: dict[str, float], run: dict[str, float]) -> dict:
    """Questions the reference got wrong and the run right ("won"), and the reverse ("lost"),
    over the shared ids, as counts and as shares of the reference's wrong and right answers."""
    ids = ref.keys() & run.keys()
    right = {i for i in ids if ref[i] > 0.5}
    won = sum(run[i] > 0.5 for i in ids - right)
    lost = sum(run[i] <= 0.5 for i in right)
    wrong = len(ids) - len(right)
    return {"won": won, "lost": lost, "reference_right": len(right), "reference_wrong": wrong,
            "won_rate": won / wrong if wrong else 0.0, "lost_rate": lost / len(right) if right else 0.0}


def score_row(run: dict) -> list[str]:
    m = run["metrics"]
    cfg = m.get("config") or {}
    model = cfg.get("model") or ""
    short = model if model.startswith("openai:") else model.rstrip("/").rsplit("/", 1)[-1]
    policy = cfg.get("policy", "?") + (f" ({short})" if short else "")
    ci = m.get("em_ci")
    return [run["name"], policy, str(m["n"]), fmt(m["em"]), f"{ci[0]:.3f}-{ci[1]:.3f}" if ci else "-",
            fmt(m["f1"]), fmt(m.get("cover_em")),
            fmt(m.get("searches_per_question"), 2), fmt(m.get("valid_action_rate")), fmt(m.get("judge_accuracy")),
            fmt(m.get("support_recall")), fmt(m.get("sampled_tokens_per_question"), 1)]


def outcome_row(run: dict) -> list[str]:
    m, errors = run["metrics"], run["metrics"].get("errors") or {}
    return [run["name"], *(f"{errors[c] / m['n']:.1%}" if c in errors else "-" for c in ERROR_CATEGORIES)]


def significance_rows(tests: list[dict]) -> list[list[str]]:
    return [[t["run"], t["reference"], str(t["n"]), f"{t['diff']:+.3f}", f"[{t['ci'][0]:+.3f}, {t['ci'][1]:+.3f}]",
             f"{t['p_value']:.3g}", f"{t['won']}/{t['reference_wrong']} ({t['won_rate']:.0%})",
             f"{t['lost']}/{t['reference_right']} ({t['lost_rate']:.0%})"] for t in tests]


SIGNIFICANCE_HEADERS = ["run", "vs", "shared questions", "EM diff", "95% CI", "p", "won (of its wrong)",
                        "lost (of its right)"]


def read_training_log(path: Path) -> dict[str, list[tuple[float, float]]]:
    """{key: [(step, value)]} for the CURVE_KEYS found in a training metrics.jsonl."""
    curves = defaultdict(list)
    lines = path.read_text(encoding="utf-8").split("\n")
    for number, line in enumerate(lines, 1):
        if not line.strip():
            continue
        try:
            record = json.loads(line)
        except json.JSONDecodeError as error:
            if number == len(lines):  # a last line cut off by a killed run
                break
            raise ValueError(f"{path} line {number}: not valid JSON ({error.msg} at column {error.colno})") from None
        if not isinstance(record, dict) or not isinstance(record.get("step"), (int, float)):
            continue
        for key in CURVE_KEYS:
            if isinstance(record.get(key), (int, float)):
                curves[key].append((record["step"], record[key]))
    return dict(curves)


def _pyplot():
    import matplotlib

    matplotlib.use("Agg")  # files only, no display
    import matplotlib.pyplot as plt

    return plt


def plot_em_by_hops(runs: list[dict], path: Path) -> bool:
    """Grouped bars of EM per hop count; False (nothing written) when no run has hop labels."""
    with_hops = [r for r in runs if r["metrics"].get("by_hops")]
    if not with_hops:
        return False
    hops = sorted({h for r in with_hops for h in r["metrics"]["by_hops"]}, key=lambda h: (len(h), h))
    plt = _pyplot()
    fig, ax = plt.subplots(figsize=(max(4.0, 1.0 + len(hops) * (0.4 + 0.35 * len(with_hops))), 3.2))
    width = 0.8 / len(with_hops)
    for i, run in enumerate(with_hops):
        by = run["metrics"]["by_hops"]
        xs = [j + (i - (len(with_hops) - 1) / 2) * width for j in range(len(hops))]
        bars = ax.bar(xs, [by[h]["em"] if h in by else 0.0 for h in hops], width, label=run["name"])
        ax.bar_label(bars, fmt="%.2f", fontsize="x-small")
    ax.set_xticks(range(len(hops)), [f"{h}-hop" for h in hops])
    ax.set_ylim(0, 1.1)
    ax.set_ylabel("EM")
    ax.legend(fontsize="small", loc="upper left", bbox_to_anchor=(1.0, 1.0))
    fig.tight_layout()
    fig.savefig(path, dpi=120)
    plt.close(fig)
    return True


def plot_training(curves: dict[str, dict], path: Path) -> bool:
    """One panel per key (reward, em), one line per run; `curves` maps run name -> read_training_log."""
    keys = [k for k in CURVE_KEYS if any(k in c for c in curves.values())]
    if not keys:
        return False
    plt = _pyplot()
    fig, axes = plt.subplots(1, len(keys), figsize=(4.5 * len(keys), 3.2), squeeze=False)
    for ax, key in zip(axes[0], keys):
        for name, run_curves in curves.items():
            if key in run_curves:
                steps, values = zip(*run_curves[key])
                ax.plot(steps, values, label=name, marker="o" if len(steps) <= 20 else None)
        ax.set_xlabel("step")
        ax.set_ylabel(key)
        ax.legend(fontsize="small")
    fig.tight_layout()
    fig.savefig(path, dpi=120)
    plt.close(fig)
    return True


def compare(run_dirs: list[Path], out: Path | None = None, *, resamples: int = DEFAULT_RESAMPLES, seed: int = 0) -> dict:
    """Load, test, print, and (with `out`) write markdown and plots; returns what was computed."""
    from agent.traces import read_traces

    runs = [load_run(d) for d in run_dirs]
    if len({r["name"] for r in runs}) < len(runs):  # same directory names: show the paths
        for r in runs:
            r["name"] = str(r["dir"])
    tests = []
    if len(runs) > 1:
        ems = {}
        for r in runs:
            traces = r["dir"] / "traces.jsonl"
            ems[r["name"]] = per_question_em(read_traces(traces), str(traces)) if traces.exists() else None
        ref = runs[0]["name"]
        for r in runs[1:]:
            if ems[ref] is None or ems[r["name"]] is None:
                console.print(f"[yellow]no traces.jsonl for {ref if ems[ref] is None else r['name']}: "
                              "no significance test")
                continue
            result = paired_test(ems[ref], ems[r["name"]], resamples=resamples, seed=seed)
            if result is None:
                console.print(f"[yellow]{r['name']} and {ref} share no question ids: no significance test")
                continue
            tests.append({"run": r["name"], "reference": ref, **result, **won_lost(ems[ref], ems[r["name"]])})
    _print_tables(runs, tests)
    plots = {}
    if out is not None:
        out.parent.mkdir(parents=True, exist_ok=True)
        hops_png = out.with_name(f"{out.stem}-em-by-hops.png")
        if plot_em_by_hops(runs, hops_png):
            plots["EM by hop count"] = hops_png
        curves = {r["name"]: read_training_log(r["dir"] / "metrics.jsonl") for r in runs
                  if (r["dir"] / "metrics.jsonl").exists()}
        train_png = out.with_name(f"{out.stem}-training.png")
        if curves and plot_training(curves, train_png):
            plots["Training curves"] = train_png
        out.write_text(render_markdown(runs, tests, plots))
        console.print(f"wrote {out}" + "".join(f", {p}" for p in plots.values()))
    return {"runs": runs, "tests": tests, "plots": plots}


def render_markdown(runs: list[dict], tests: list[dict], plots: dict[str, Path]) -> str:
    parts = ["# Comparison", "", markdown_table(SCORE_HEADERS, [score_row(r) for r in runs], "ll" + "r" * 10), "",
             "## Outcomes (share of questions; see `eval/metrics.py`)", "",
             markdown_table(["run", *ERROR_CATEGORIES], [outcome_row(r) for r in runs])]
    if tests:
        parts += ["", "## Paired bootstrap on EM", "",
                  f"Each run against {tests[0]['reference']}, on the question ids both hold; won and lost: "
                  "the reference's wrong answers the run got right, and its right answers the run got wrong.", "",
                  markdown_table(SIGNIFICANCE_HEADERS, significance_rows(tests), "llrrrrrr")]
    for title, path in plots.items():
        parts += ["", f"## {title}", "", f"![{title}]({path.name})"]
    return "\n".join(parts) + "\n"


def _print_tables(runs: list[dict], tests: list[dict]) -> None:
    for title, headers, rows in (("runs", SCORE_HEADERS, [score_row(r) for r in runs]),
                                 ("outcomes", ["run", *ERROR_CATEGORIES], [outcome_row(r) for r in runs]),
                                 ("paired bootstrap on EM", SIGNIFICANCE_HEADERS, significance_rows(tests))):
        if not rows:
            continue
        table = Table(title=title)
        for i, h in enumerate(headers):
            table.add_column(h, justify="left" if i < 2 else "right")
        for row in rows:
            table.add_row(*row)
        console.print(table)


def main(argv=None) -> dict:
    p = argparse.ArgumentParser(prog="python -m eval.compare", description=__doc__.split("\n\n")[0],
                                formatter_class=argparse.RawDescriptionHelpFormatter, epilog=__doc__.split("\n\n", 1)[1])
    p.add_argument("run_dirs", nargs="+", type=Path, help="run directories; the first is the reference")
    p.add_argument("--out", type=Path, default=None, help="markdown file to write (plots go next to it)")
    p.add_argument("--resamples", type=int, default=DEFAULT_RESAMPLES, help="bootstrap resamples")
    p.add_argument("--seed", type=int, default=0, help="bootstrap seed")
    args = p.parse_args(argv)
    try:
        return compare(args.run_dirs, args.out, resamples=args.resamples, seed=args.seed)
    except (OSError, ValueError) as error:
        raise SystemExit(f"error: {error}") from None


if __name__ == "__main__":
    main()
