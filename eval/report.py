"""`report.md` of an evaluation run: metrics, by-hop and by-type tables, the error
breakdown, and a few traces rendered compactly (one per error category, in the order of
`rewards.metrics.ERROR_CATEGORIES`).

`eval.run` writes it next to `metrics.json` and `traces.jsonl`; to rewrite it from those
two files (e.g. with more example traces, or the answer metrics Search-R1 and FlashRAG
report: `rewards.metrics.ANSWER_METRICS`, all of which metrics.json holds):

    python -m eval.report runs/tiny-test --examples 6
    python -m eval.report runs/tiny-test --metrics squad_em,subem,acc,flashrag_f1

In a rendered trace, `*` marks a gold support passage, `(dropped)` an observation the
agent judged not useful, and a judge shows its ideal label when it had one.
"""

from __future__ import annotations

import argparse
import json
from pathlib import Path

from rich.console import Console

from rewards.metrics import (
    ANSWER_METRICS,
    ERROR_CATEGORIES,
    METRIC_LABELS,
    REPORTED_METRICS,
    fmt,
    markdown_table,
)

__all__ = ["markdown_table", "render_report", "render_trace", "write_report", "CATEGORY_MEANING",
           "metric_names", "reported_metrics"]

CATEGORY_MEANING = {
    "correct": "exact match with a gold answer",
    "gold_not_retrieved": "wrong answer; the gold evidence was never retrieved",
    "wrong_with_gold": "wrong answer although the gold evidence was retrieved",
    "no_answer": "no answer within the turn budget (finish max_turns)",
    "budget_exhausted": "no answer before the token budget ran out (finish max_tokens)",
    "invalid_action": "ended by the invalid-action limit (finish invalid)",
}


def metric_names(text: str) -> list[str]:
    """`--metrics em,subem,acc`: answer metrics by name (argparse type)."""
    names = [name.strip() for name in text.split(",") if name.strip()]
    unknown = [name for name in names if name not in ANSWER_METRICS]
    if unknown or not names:
        raise argparse.ArgumentTypeError(f"unknown metric {(unknown or [text])[0]!r}: "
                                         f"choose from {', '.join(ANSWER_METRICS)}")
    return names


def reported_metrics(metrics: dict) -> list[str]:
    """The answer metrics a run's tables show: its `--metrics`, else EM, F1 and cover-EM."""
    return list((metrics.get("config") or {}).get("metrics") or REPORTED_METRICS)


def fmt_ci(metrics: dict, key: str) -> str:
    ci = metrics.get(f"{key}_ci")
    return fmt(metrics.get(key)) + (f" [{ci[0]:.3f}, {ci[1]:.3f}]" if ci else "")


def summary_rows(m: dict, names: list[str] | None = None) -> list[list[str]]:
    """(metric, value) rows of the headline table; `names`: the answer metrics (default: the run's)."""
    names = names or reported_metrics(m)
    rows = [["questions", str(m["n"])]]
    rows += [[METRIC_LABELS[name] + (" [95% CI]" if f"{name}_ci" in m else ""), fmt_ci(m, name)]
             for name in names]
    rows += [["searches / question", fmt(m["searches_per_question"], 2)],
             ["turns / question", fmt(m.get("turns_per_question"), 2)], ["valid-action rate", fmt(m["valid_action_rate"])]]
    if "judge_accuracy" in m:
        rows.append([f"JUDGE accuracy ({m['judged']} judged)", fmt(m["judge_accuracy"])])
    if "support_recall" in m:
        rows.append(["support recall", fmt(m["support_recall"])])
    rows += [["sampled tokens / question", fmt(m.get("sampled_tokens_per_question"), 1)],
             ["total tokens / question", fmt(m.get("total_tokens_per_question"), 1)]]
    if "seconds_per_question" in m:
        rows.append(["seconds / question (amortised)", fmt(m["seconds_per_question"], 4)])
    if "over_search_budget" in m:
        rows.append([f"questions over {m['search_budget']} searches", str(m["over_search_budget"])])
    return rows


def _group_table(groups: dict, label: str, names: list[str]) -> str:
    rows = [[k, g["n"], *(fmt(g.get(name)) for name in names), fmt(g.get("searches_per_question"), 2)]
            for k, g in groups.items()]
    return markdown_table([label, "n", *(METRIC_LABELS[name] for name in names), "searches/q"], rows)


def _code(text: object, limit: int = 80) -> str:
    text = " ".join(str(text).split()).replace("`", "'")
    return "`" + (text if len(text) <= limit else text[: limit - 1] + "…") + "`"


def render_trace(record: dict) -> str:
    """A trace record (from traces.jsonl) as a few markdown lines."""
    ev = record.get("eval") if isinstance(record.get("eval"), dict) else {}
    meta = record.get("meta") or {}
    about = ", ".join(str(x) for x in (f"{meta['hops']}-hop" if meta.get("hops") else None, meta.get("type")) if x)
    support = set(record.get("support") or [])
    lines = [f"**{record['example_id']}** · {ev.get('category', record.get('finish'))}" + (f" ({about})" if about else ""),
             "", f"> {record.get('question', '')}", f"> gold: {' / '.join(record.get('golden_answers', []))}", ""]
    labels = ev.get("judge_labels") or []
    for i, step in enumerate(record.get("steps", [])):
        kind, text = step["kind"], step["text"]
        if kind == "search":
            docs = " · ".join(f"{p['id']}{'*' if p['id'] in support else ''} {p['title']}" for p in step["passages"])
            line = f"search {_code(text)} → {docs or step.get('error') or 'no results'}"
            line += " (dropped)" if step.get("dropped") else ""
        elif kind == "judge":
            label = labels[i] if i < len(labels) else None
            line = f"judge {text}" + (f" (ideal: {label})" if label else "")
        elif kind == "invalid":
            line = f"invalid ({step.get('error')}) {_code(text, 60)}"
        elif kind == "think":
            line = f"think {_code(text, 60)}"
        else:
            line = f"{kind} {_code(text)}"
        lines.append(f"{i + 1}. {line}")
    scores = f"EM {ev['em']:.0f} · F1 {ev['f1']:.2f} · " if "em" in ev else ""
    lines += ["", f"{scores}finish {record.get('finish')}"]
    return "\n".join(lines)


def pick_examples(records: list[dict], n: int) -> list[dict]:
    """The first trace of each error category present, in category order, at most `n`."""
    first: dict[str, dict] = {}
    for r in records:
        category = (r.get("eval") or {}).get("category") if isinstance(r.get("eval"), dict) else None
        if category is not None:
            first.setdefault(category, r)
    return [first[c] for c in ERROR_CATEGORIES if c in first][:n]


GROUPS = (("by_hops", "By hop count", "hops"), ("by_type", "By question type", "type"),
          ("by_data_source", "By data source", "data source"))


def render_report(metrics: dict, records: list[dict], title: str, n_examples: int = 4,
                  names: list[str] | None = None) -> str:
    """report.md's text; `names`: the answer metrics its tables show (default: the run's)."""
    n = metrics["n"]
    names = names or reported_metrics(metrics)
    parts = [f"# {title}", "", markdown_table(["metric", "value"], summary_rows(metrics, names))]
    for key, heading, label in GROUPS:
        if metrics.get(key):
            parts += ["", f"## {heading}", "", _group_table(metrics[key], label, names)]
    if "errors" in metrics:
        rows = [[c, k, f"{k / n:.1%}", CATEGORY_MEANING[c]] for c, k in metrics["errors"].items()]
        parts += ["", "## Outcomes", "", "Each question is in exactly one category (see `eval/metrics.py`).", "",
                  markdown_table(["category", "n", "share", "meaning"], rows, "lrrl")]
    examples = pick_examples(records, n_examples)
    if examples:
        parts += ["", "## Example traces", ""]
        for r in examples:
            parts += [render_trace(r), ""]
    return "\n".join(parts).rstrip() + "\n"


def run_title(metrics: dict, fallback: str) -> str:
    cfg = metrics.get("config") or {}
    if not cfg:
        return fallback
    policy = cfg["policy"] + (f" ({cfg['model']})" if cfg.get("model") else "")
    return f"{policy} on {cfg.get('data')} ({cfg.get('split')})"


def write_report(run_dir: Path, records: list[dict] | None = None, n_examples: int = 4,
                 names: list[str] | None = None) -> Path:
    """Write RUN_DIR/report.md from its metrics.json (and traces.jsonl unless `records` are given);
    `names`: the answer metrics its tables show (default: the run's `--metrics`)."""
    from agent.traces import read_traces

    metrics_path = Path(run_dir) / "metrics.json"
    if not metrics_path.exists():
        raise FileNotFoundError(f"{metrics_path}: not found; is {run_dir} a run directory written by `python -m eval.run`?")
    metrics = json.loads(metrics_path.read_text())
    if records is None:
        traces = Path(run_dir) / "traces.jsonl"
        records = read_traces(traces) if traces.exists() else []
    out = Path(run_dir) / "report.md"
    out.write_text(render_report(metrics, records, run_title(metrics, str(run_dir)), n_examples, names))
    return out


def main(argv=None) -> Path:
    p = argparse.ArgumentParser(prog="python -m eval.report", description="Rewrite report.md of an evaluation run.")
    p.add_argument("run_dir", type=Path)
    p.add_argument("--examples", type=int, default=4, help="example traces to render (one per category)")
    p.add_argument("--metrics", type=metric_names, default=None,
                   help=f"answer metrics the tables show, comma-separated, from {', '.join(ANSWER_METRICS)} "
                        f"(default: the run's)")
    args = p.parse_args(argv)
    try:
        out = write_report(args.run_dir, n_examples=args.examples, names=args.metrics)
    except (FileNotFoundError, ValueError) as error:
        raise SystemExit(f"error: {error}") from None
    Console(stderr=True).print(f"wrote {out}")
    return out


if __name__ == "__main__":
    main()
