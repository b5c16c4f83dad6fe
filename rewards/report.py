"""Which reward components tell correct trajectories from incorrect ones, on saved traces.

    python -m rewards.report runs/oracle/traces.jsonl runs/tiny/traces.jsonl --out separation.md
    python -m rewards.report runs/tiny/traces.jsonl --spec rewards.yaml --corpus data/world/corpus.jsonl

Each traces file (from `python -m eval.run` or training) is read back into trajectories
and their questions, every reward component scores every trajectory, and the trajectories
are split into correct (exact match with a gold answer, EM = 1) and incorrect. Per
component the table gives the mean ± std (population std) on each side, the count of each,
the difference of means (correct minus incorrect) and the AUC: the probability that a
correct trajectory scores above an incorrect one, ties counting 1/2
(`rewards.shaping.pairwise_auc`, over the whole file).

Components: by default every simple component of the registry (one that wraps no other
reward spec) with its default parameters; `--corpus` is passed to info_gain so that it
measures against the texts of the gold support passages. `--spec FILE.yaml` scores the
components of a reward config instead (a list of specs, or a mapping with a `rewards:`
list) and adds a row for their weighted total, the reward training would see.

Flag rule, with margin m (`--margin`, default 0.05):
  ✗ chance       0.5 - m <= AUC <= 0.5 + m (a constant component lands here: AUC 0.5)
  ✗ one-sided    no correct or no incorrect trajectory, so there is nothing to compare
  ⚠ reversed     AUC < 0.5 - m: it separates, but scores incorrect trajectories higher
The em row is AUC 1 by construction (em defines the split): a check, not a finding.
"""

from __future__ import annotations

import argparse
import math
from collections.abc import Sequence
from dataclasses import dataclass
from pathlib import Path

from rich import box
from rich.console import Console
from rich.progress import Progress
from rich.table import Table

from agent.traces import read_traces, record_to_trajectory
from agent.types import Example, Trajectory
from rewards.base import check_scores
from rewards.metrics import fmt, markdown_table
from rewards.outcome import answer_em
from rewards.registry import COMPONENTS, WeightedSum, build_reward
from rewards.shaping import pairwise_auc

__all__ = ["Separation", "FileReport", "mean_std", "separation_flag", "separation", "simple_components",
           "record_to_example", "load_traces", "load_spec", "score_components", "report_file",
           "render_markdown", "main"]

DEFAULT_MARGIN = 0.05
NEAR_CHANCE, ONE_SIDED, REVERSED = "✗ chance", "✗ one-sided", "⚠ reversed"
TOTAL = "total"
HEADERS = ["component", "correct mean ± std", "incorrect mean ± std", "n correct", "n incorrect", "Δ mean", "AUC",
           "flag"]

console = Console(stderr=True)


@dataclass(frozen=True)
class Separation:
    """How one component's values differ between correct and incorrect trajectories."""

    n_correct: int
    n_incorrect: int
    mean_correct: float | None  # None when there is no correct trajectory
    std_correct: float | None  # population std
    mean_incorrect: float | None
    std_incorrect: float | None
    difference: float | None  # mean_correct - mean_incorrect; None when a side is empty
    auc: float | None  # P(correct value > incorrect value), ties 1/2; None when a side is empty
    flag: str  # "" when it separates, else NEAR_CHANCE, ONE_SIDED or REVERSED


@dataclass(frozen=True)
class FileReport:
    path: Path
    n_correct: int
    n_incorrect: int
    rows: dict[str, Separation]  # component label -> its separation, in scoring order


def mean_std(values: Sequence[float]) -> tuple[float | None, float | None]:
    """(mean, population std), or (None, None) for no values.

    >>> mean_std([1.0, 0.5])
    (0.75, 0.25)
    """
    if not values:
        return None, None
    mean = math.fsum(values) / len(values)
    return mean, math.sqrt(math.fsum((v - mean) ** 2 for v in values) / len(values))


def separation_flag(auc: float | None, margin: float = DEFAULT_MARGIN) -> str:
    """The flag of a component with this AUC (see the module docstring); "" when it separates.

    >>> [separation_flag(a) for a in (0.9, 0.55, 0.5, 0.2, None)]
    ['', '✗ chance', '✗ chance', '⚠ reversed', '✗ one-sided']
    """
    if auc is None:
        return ONE_SIDED
    # A small tolerance: an AUC that is the band's edge in exact arithmetic counts as inside.
    if abs(auc - 0.5) <= margin + 1e-12:
        return NEAR_CHANCE
    return REVERSED if auc < 0.5 else ""


def separation(values: Sequence[float], correct: Sequence[bool], margin: float = DEFAULT_MARGIN) -> Separation:
    """Means, stds, counts, difference of means and AUC of `values` split by `correct`.

    >>> s = separation([1.0, 0.5, 0.0, 0.5], [True, True, False, False])
    >>> s.mean_correct, s.mean_incorrect, s.difference, s.auc, s.flag
    (0.75, 0.25, 0.5, 0.875, '')
    """
    if len(values) != len(correct):
        raise ValueError(f"{len(values)} values but {len(correct)} correctness labels")
    right = [v for v, c in zip(values, correct) if c]
    wrong = [v for v, c in zip(values, correct) if not c]
    (mean_r, std_r), (mean_w, std_w) = mean_std(right), mean_std(wrong)
    auc = pairwise_auc(values, correct)
    difference = mean_r - mean_w if right and wrong else None
    return Separation(len(right), len(wrong), mean_r, std_r, mean_w, std_w, difference, auc,
                      separation_flag(auc, margin))


def simple_components() -> list[str]:
    """Registry components that wrap no other reward spec, so they build with no parameters."""
    return [name for name, c in COMPONENTS.items() if not (c.specs or c.maybe_specs or c.members)]


def record_to_example(record: dict, where: str) -> Example:
    """The question of a trace record (written with its example), or a ValueError naming `where`."""
    answers = record.get("golden_answers")
    if not isinstance(answers, list) or not answers:
        raise ValueError(f"{where} (example {record.get('example_id')!r}): no 'golden_answers'; the traces must be "
                         "written with their examples, as `python -m eval.run` does")
    return Example(id=str(record.get("example_id")), question=str(record.get("question", "")), answers=tuple(answers),
                   support=tuple(record.get("support") or ()), meta=dict(record.get("meta") or {}))


def load_traces(path: Path) -> tuple[list[Trajectory], list[Example]]:
    """Trajectories and their examples from a traces JSONL file; errors name the file and record."""
    records = read_traces(path)
    if not records:
        raise ValueError(f"{path}: no trajectories")
    trajectories, examples = [], []
    for i, record in enumerate(records):
        where = f"{path} record {i + 1}"
        try:
            trajectories.append(record_to_trajectory(record))
        except (KeyError, TypeError) as err:
            raise ValueError(f"{where}: not a trajectory record ({type(err).__name__}: {err})") from None
        examples.append(record_to_example(record, where))
    return trajectories, examples


def load_spec(path: Path) -> list:
    """Reward specs from YAML: a list of specs, or a config mapping with a `rewards:` list."""
    import yaml

    try:
        data = yaml.safe_load(Path(path).read_text())
    except yaml.YAMLError as err:
        raise ValueError(f"{path}: not valid YAML ({err})") from None
    specs = data.get("rewards") if isinstance(data, dict) else data
    if not isinstance(specs, list) or not specs:
        raise ValueError(f"{path}: expected a list of reward specs such as [{{name: f1}}] or a mapping with a "
                         f"'rewards:' list; got {data!r}")
    return specs


def score_components(reward: WeightedSum, trajectories: list[Trajectory], examples: list[Example], *,
                     total: bool = False, where: str = "", progress: Progress | None = None) -> dict[str, list[float]]:
    """Label -> each trajectory's (unweighted) value; with `total`, also the weighted sum."""
    values: dict[str, list[float]] = {}
    task = progress.add_task(f"scoring {where}", total=len(reward.components)) if progress else None
    for label, _, component in reward.components:
        try:
            scores = check_scores(component(trajectories, examples), trajectories, label)
        except (KeyError, ValueError, TypeError, OSError) as err:
            raise ValueError(f"{where}: reward component {label!r} failed: {err}") from None
        values[label] = [s.value for s in scores]
        if progress:
            progress.advance(task)
    if total:
        values[TOTAL] = [math.fsum(w * values[label][i] for label, w, _ in reward.components)
                         for i in range(len(trajectories))]
    return values


def report_file(path: Path, reward: WeightedSum, *, total: bool = False, margin: float = DEFAULT_MARGIN,
                progress: Progress | None = None) -> FileReport:
    trajectories, examples = load_traces(path)
    correct = [answer_em(t, e) >= 1.0 for t, e in zip(trajectories, examples)]
    values = score_components(reward, trajectories, examples, total=total, where=str(path), progress=progress)
    return FileReport(Path(path), sum(correct), len(correct) - sum(correct),
                      {label: separation(v, correct, margin) for label, v in values.items()})


def _mean_std(mean: float | None, std: float | None) -> str:
    return "-" if mean is None else f"{mean:.3f} ± {std:.3f}"


def table_rows(report: FileReport) -> list[list[str]]:
    return [[label, _mean_std(s.mean_correct, s.std_correct), _mean_std(s.mean_incorrect, s.std_incorrect),
             str(s.n_correct), str(s.n_incorrect), "-" if s.difference is None else f"{s.difference:+.3f}",
             fmt(s.auc), s.flag] for label, s in report.rows.items()]


def rule_text(margin: float) -> str:
    return (f"AUC = P(a correct trajectory scores above an incorrect one), ties 1/2; Δ mean = correct − incorrect; "
            f"std is the population std. Flags: {NEAR_CHANCE} when {0.5 - margin:.2f} ≤ AUC ≤ {0.5 + margin:.2f}; "
            f"{ONE_SIDED} when there is no correct or no incorrect trajectory; {REVERSED} when AUC < "
            f"{0.5 - margin:.2f} (scores incorrect trajectories higher). The em row defines the split.")


def render_markdown(reports: list[FileReport], margin: float = DEFAULT_MARGIN) -> str:
    parts = ["# Reward separation: correct (EM = 1) vs incorrect trajectories", "", rule_text(margin)]
    for r in reports:
        parts += ["", f"## {r.path}", "",
                  f"{r.n_correct + r.n_incorrect} trajectories: {r.n_correct} correct, {r.n_incorrect} incorrect.", "",
                  markdown_table(HEADERS, table_rows(r), "lrrrrrrl")]
    return "\n".join(parts) + "\n"


def print_table(report: FileReport) -> None:
    """The markdown table, with the counts moved to the title so that it fits a terminal."""
    table = Table(title=f"{report.path}: {report.n_correct} correct, {report.n_incorrect} incorrect",
                  caption="correct / incorrect: mean ± std", box=box.SIMPLE_HEAD, pad_edge=False)
    for header in ("component", "correct", "incorrect", "Δ mean", "AUC", "flag"):
        table.add_column(header, justify="left" if header in ("component", "flag") else "right", no_wrap=True)
    for row in table_rows(report):
        style = "yellow" if row[-1] == REVERSED else "red" if row[-1] else None
        table.add_row(*row[:3], *row[5:], style=style)
    console.print(table)


def main(argv=None) -> list[FileReport]:
    p = argparse.ArgumentParser(prog="python -m rewards.report", description=__doc__.split("\n\n")[0],
                                formatter_class=argparse.RawDescriptionHelpFormatter, epilog=__doc__.split("\n\n", 1)[1])
    p.add_argument("traces", nargs="+", type=Path, help="traces.jsonl files written with their examples")
    p.add_argument("--spec", type=Path, default=None, help="reward config YAML (default: every simple component)")
    p.add_argument("--corpus", type=Path, default=None, help="corpus JSONL for info_gain's gold support texts")
    p.add_argument("--out", type=Path, default=None, help="markdown file to write the tables to")
    p.add_argument("--margin", type=float, default=DEFAULT_MARGIN, help="flag |AUC - 0.5| <= margin as near chance")
    args = p.parse_args(argv)
    if not 0.0 <= args.margin < 0.5:
        p.error(f"--margin must be in [0, 0.5), got {args.margin}")
    try:
        if args.spec is not None:
            specs, where = load_spec(args.spec), f"{args.spec}: rewards"
        else:
            specs, where = [{"name": n} for n in simple_components()], "rewards"
        specs = [{"name": s} if isinstance(s, str) else s for s in specs]
        if args.corpus is not None:
            if not any(isinstance(s, dict) and s.get("name") == "info_gain" for s in specs):
                raise ValueError(f"--corpus is for info_gain, which {args.spec} does not use")
            specs = [dict(s, corpus=str(args.corpus)) if isinstance(s, dict) and s.get("name") == "info_gain" else s
                     for s in specs]
        reward = build_reward(specs, where)
        with Progress(console=console, transient=True) as progress:
            reports = [report_file(path, reward, total=args.spec is not None, margin=args.margin, progress=progress)
                       for path in args.traces]
    except (OSError, ValueError) as error:
        raise SystemExit(f"error: {error}") from None
    for report in reports:
        print_table(report)
    console.print(rule_text(args.margin))
    if args.out is not None:
        args.out.parent.mkdir(parents=True, exist_ok=True)
        args.out.write_text(render_markdown(reports, args.margin))
        console.print(f"wrote {args.out}")
    return reports


if __name__ == "__main__":
    main()
