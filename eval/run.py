"""Evaluate an agent, a baseline or the scripted oracle on a QA set with a retriever.

    python -m eval.run --policy tiny --data data/world-0 --split test --index indexes/world-0 --out runs/tiny-test
    python -m eval.run --policy rag --model Qwen/Qwen2.5-3B-Instruct --data nq/test.jsonl \\
        --index indexes/wiki18-e5 --out runs/rag-nq
    python -m eval.run --policy openai:http://127.0.0.1:8000/v1 --model-name qwen --tokenizer Qwen/Qwen2.5-3B-Instruct ...
    python -m eval.run --preset hot ...            (the ReSeek protocol: see eval/presets.py)

Policies (`--policy`):
  tiny | PATH | openai:URL   the agent: a model that searches, judges and answers (eval/policies.py)
  oracle                     the scripted expert, an upper bound on engine + parsing + retrieval
  direct | rag               one-turn baselines over `--model` (default tiny; eval/baselines.py):
                             answer at once (contamination check), or after one top-k retrieval

`--data` is a directory of SPLIT.jsonl / SPLIT.parquet files (a generated world, a
Search-R1 data directory; `--split` picks one) or any QA file in FlashRAG JSONL or
Search-R1 parquet; `--index` an index directory from `python -m retrieval.build` over
any corpus, or a retrieval server URL (`direct` needs none); a search that fails (the server
down, after its retries) ends the run with an error naming it, and no metrics. Models decode
greedily unless `--temperature` says otherwise. Writes to `--out`:

  metrics.json   every answer metric (EM / F1 / cover-EM, and Search-R1's and FlashRAG's
                 definitions: squad_em, subem, acc, flashrag_f1) with bootstrap CIs, by hops,
                 type and data source, searches, turns, valid-action rate, JUDGE accuracy,
                 support recall (where labelled), tokens, latency, the error breakdown, and
                 the run's settings under "config" (every field: rewards/metrics.py)
  traces.jsonl   one trajectory per line; its per-question scores under "eval"
  report.md      tables and a few example traces (eval/report.py); the tables show the
                 answer metrics `--metrics` names

Compare runs with `python -m eval.compare RUN_DIR RUN_DIR ... --out compare.md`.
"""

from __future__ import annotations

import argparse
import json
import os
import time
from pathlib import Path

from rich.console import Console
from rich.progress import BarColumn, MofNCompleteColumn, Progress, TextColumn, TimeElapsedColumn
from rich.table import Table

from agent.fields import arg_type
from agent.prompts import resolve_style
from agent.rollout import Rollout, RolloutConfig, SearchesFailed, SearchTally
from agent.traces import TraceWriter, trajectory_record
from eval.baselines import BASELINES, OneTurnRollout
from rewards.bootstrap import DEFAULT_RESAMPLES
from rewards.metrics import (ANSWER_METRICS, ERROR_CATEGORIES, METRIC_LABELS, REPORTED_METRICS, question_row,
                             summarize_rows)
from eval.policies import build_model, build_oracle
from eval.presets import PRESETS
from eval.report import metric_names, pick_examples, reported_metrics, run_title, write_report
from retrieval import cli

console = Console(stderr=True)


def evaluate(examples, rollout: Rollout, out_dir: Path, *, batch_size: int = 64, prompt_style: str = "compact",
             config: dict | None = None, resamples: int = DEFAULT_RESAMPLES, seed: int = 0,
             search_budget: int | None = None, report_examples: int = 4) -> dict:
    """Roll out every example, write traces.jsonl, metrics.json and report.md; returns the metrics.
    A batch with a failed search raises `SearchesFailed` once its traces are written: the
    metrics would measure the retriever's outage, not the policy."""
    out_dir.mkdir(parents=True, exist_ok=True)
    traces_path = out_dir / "traces.jsonl"
    for path in (traces_path, out_dir / "metrics.json", out_dir / "report.md"):
        path.unlink(missing_ok=True)  # an evaluation is rerun whole: nothing of an earlier one is left to mistake for it
    writer = TraceWriter(traces_path)
    rows, firsts = [], {}  # firsts: the first record of each error category, for the report
    start = time.perf_counter()
    columns = [TextColumn("[bold]evaluating"), BarColumn(), MofNCompleteColumn(), TimeElapsedColumn()]
    with Progress(*columns, console=console, transient=True) as progress:
        task = progress.add_task("eval", total=len(examples))
        for i in range(0, len(examples), batch_size):
            batch = examples[i : i + batch_size]
            batch_start = time.perf_counter()
            trajs = rollout(batch, seed=seed)
            seconds = (time.perf_counter() - batch_start) / len(batch)
            records = []
            for traj, ex in zip(trajs, batch):
                row = question_row(traj, ex, seconds=seconds)
                rows.append(row)
                score = {k: row[k] for k in (*ANSWER_METRICS, "category", "gold_retrieved",
                                             "support_recall", "judge_labels", "seconds")}
                records.append(trajectory_record(traj, ex, rollout.tokenizer, prompt_style=prompt_style, eval=score))
                firsts.setdefault(row["category"], records[-1])
            writer.write(records)
            searched = SearchTally.of(trajs)
            if searched.failed:
                raise SearchesFailed(f"{searched.failed} of {searched.searches} searches of questions {i + 1}-"
                                     f"{i + len(batch)} failed ({searched.first_error})")
            progress.advance(task, len(batch))
    metrics = summarize_rows(rows, resamples=resamples, seed=seed, search_budget=search_budget)
    metrics["seconds"] = round(time.perf_counter() - start, 2)
    if config is not None:
        metrics["config"] = config
    (out_dir / "metrics.json").write_text(json.dumps(metrics, indent=2) + "\n")
    write_report(out_dir, pick_examples(list(firsts.values()), report_examples), report_examples)
    return metrics


def print_metrics(metrics: dict, title: str) -> None:
    """The run's answer metrics (the first with its CI) overall and by hops and data source."""
    names = reported_metrics(metrics)
    table = Table(title=title)
    for col in ("split", "n", METRIC_LABELS[names[0]], "95% CI", *(METRIC_LABELS[n] for n in names[1:]), "searches/q"):
        table.add_column(col, justify="left" if col == "split" else "right")
    lo, hi = metrics[f"{names[0]}_ci"]
    table.add_row("all", str(metrics["n"]), f"{metrics[names[0]]:.3f}", f"{lo:.3f}-{hi:.3f}",
                  *(f"{metrics[n]:.3f}" for n in names[1:]), f"{metrics['searches_per_question']:.2f}")
    groups = [(f"{hops}-hop", m) for hops, m in metrics.get("by_hops", {}).items()]
    groups += list(metrics.get("by_data_source", {}).items())
    for label, m in groups:
        table.add_row(label, str(m["n"]), f"{m[names[0]]:.3f}", "", *(f"{m[n]:.3f}" for n in names[1:]),
                      f"{m['searches_per_question']:.2f}")
    console.print(table)
    extras = [f"valid actions {metrics['valid_action_rate']:.3f}"]
    if "judge_accuracy" in metrics:
        extras.append(f"JUDGE accuracy {metrics['judge_accuracy']:.3f} ({metrics['judged']} judged)")
    if "support_recall" in metrics:
        extras.append(f"support recall {metrics['support_recall']:.3f}")
    extras.append(f"tokens/q {metrics['sampled_tokens_per_question']:.0f} sampled, {metrics['total_tokens_per_question']:.0f} total")
    console.print(" · ".join(extras))
    console.print("outcomes: " + " · ".join(f"{c} {metrics['errors'][c]}" for c in ERROR_CATEGORIES))


def parse_args(argv=None) -> argparse.Namespace:
    p = argparse.ArgumentParser(prog="python -m eval.run", description=__doc__.split("\n\n")[0],
                                formatter_class=argparse.RawDescriptionHelpFormatter, epilog=__doc__.split("\n\n", 1)[1])
    p.add_argument("--policy", required=True, help="tiny, oracle, direct, rag, a model directory / hub id, or openai:URL")
    p.add_argument("--model", default="tiny", help="the model of the direct / rag baselines: tiny, PATH or openai:URL")
    p.add_argument("--model-name", default=None, help="served model name, for openai:URL")
    p.add_argument("--tokenizer", default=None, help="local tokenizer for openai:URL (default: --model-name) or the oracle")
    p.add_argument("--data", required=True, type=Path, help="a QA file (.jsonl / .parquet) or a directory of them by split (a world, Search-R1's train/test.parquet)")
    p.add_argument("--split", default="test", help="split of a --data directory (default: test)")
    p.add_argument("--index", default=None, help="index directory from `python -m retrieval.build`, or a server URL")
    p.add_argument("--out", required=True, type=Path, help="output directory for metrics.json, traces.jsonl, report.md")
    p.add_argument("--corpus", type=Path, default=None, help="corpus for the oracle's passage titles (default: DATA/corpus.jsonl)")
    p.add_argument("--preset", choices=sorted(PRESETS), default=None, help="a protocol's settings (eval/presets.py)")
    p.add_argument("--limit", type=arg_type(int, ge=1), default=None, help="evaluate the first N questions only")
    p.add_argument("--batch-size", type=arg_type(int, ge=1), default=64, help="questions rolled out together")
    p.add_argument("--passages-per-search", type=arg_type(int, ge=1), default=3, help="passages each search returns")
    p.add_argument("--max-turns", type=arg_type(int, ge=1), default=RolloutConfig.max_turns, help="actions per question")
    p.add_argument("--max-new-tokens", type=arg_type(int, ge=1), default=RolloutConfig.max_new_tokens,
                   help="tokens per turn")
    p.add_argument("--temperature", type=arg_type(float, ge=0), default=0.0, help="0 = greedy")
    p.add_argument("--prompt-style", default="auto", choices=["auto", "chat", "compact"])
    p.add_argument("--seed", type=int, default=0, help="seeds sampling and the bootstrap")
    p.add_argument("--device", default="auto", help="auto (a GPU where CUDA exists, else the CPU) | cpu | cuda | cuda:N")
    p.add_argument("--search-budget", type=arg_type(int, ge=0), default=None,
                   help="searches allowed per question (a further one is an invalid action); also reported")
    p.add_argument("--resamples", type=arg_type(int, ge=1), default=DEFAULT_RESAMPLES, help="bootstrap resamples for the CIs")
    p.add_argument("--report-examples", type=arg_type(int, ge=0), default=4, help="example traces in report.md")
    p.add_argument("--metrics", type=metric_names, default=list(REPORTED_METRICS),
                   help="answer metrics the table and report.md show, comma-separated: em, f1, cover_em (ours), "
                        "squad_em (Search-R1's and FlashRAG's em), subem (Search-R1), acc and flashrag_f1 (FlashRAG); "
                        f"metrics.json holds all (default: {','.join(REPORTED_METRICS)})")
    p.set_defaults(headline="em")
    preset = p.parse_known_args(argv)[0].preset
    if preset:  # the preset's values become defaults: explicit flags still win
        p.set_defaults(**PRESETS[preset])
    return p.parse_args(argv)


def build_rollout(args, examples, retriever) -> tuple[Rollout, str]:
    """The rollout for `--policy`, and its resolved prompt style."""
    cfg = RolloutConfig(passages_per_search=args.passages_per_search, max_turns=args.max_turns, max_new_tokens=args.max_new_tokens,
                        temperature=args.temperature, prompt_style=args.prompt_style, max_searches=args.search_budget)
    if args.policy == "oracle":
        engine, tokenizer = build_oracle(examples, args.data, args.corpus, args.prompt_style, args.tokenizer)
    else:
        spec = args.model if args.policy in BASELINES else args.policy
        engine, tokenizer = build_model(spec, args.data, model_name=args.model_name, tokenizer_path=args.tokenizer,
                                        device=args.device)
    if args.policy in BASELINES:
        rollout = OneTurnRollout(engine, retriever, cfg, tokenizer, retrieve=args.policy == "rag")
    else:
        rollout = Rollout(engine, retriever, cfg, tokenizer)
    return rollout, resolve_style(tokenizer, args.prompt_style)


def load_inputs(args):
    """(examples, retriever or None); bad input ends the run with a message naming the file."""
    from agent.data.qa import DatasetError, load_qa
    from retrieval import open_retriever

    try:
        examples = load_qa(args.data, args.split)
    except DatasetError as error:
        raise SystemExit(f"error: {error}") from None
    examples = examples[: args.limit] if args.limit is not None else examples
    if not examples:
        raise SystemExit(f"error: no questions in {args.data} (split {args.split})")
    if args.policy == "direct":
        return examples, None  # answers without retrieval: the index is never opened
    if args.index is None:
        raise SystemExit(f"error: --policy {args.policy} searches: pass --index (an index directory or server URL)")
    try:
        return examples, open_retriever(args.index)
    except (OSError, ValueError) as error:
        raise SystemExit(f"error: cannot open the index {args.index}: {error}") from None


def main(argv=None) -> dict:
    os.environ.setdefault("HF_HUB_OFFLINE", "1")
    args = parse_args(argv)
    examples, retriever = load_inputs(args)
    rollout, style = build_rollout(args, examples, retriever)
    config = {
        "policy": args.policy, "model": args.model if args.policy in BASELINES else None, "data": str(args.data),
        "split": args.split, "index": None if retriever is None else str(args.index), "preset": args.preset,
        "passages_per_search": args.passages_per_search, "max_turns": args.max_turns, "max_new_tokens": args.max_new_tokens,
        "temperature": args.temperature, "prompt_style": style, "seed": args.seed, "limit": args.limit,
        "headline": args.headline, "metrics": args.metrics,
    }
    try:
        metrics = evaluate(examples, rollout, args.out, batch_size=args.batch_size, prompt_style=style, config=config,
                           resamples=args.resamples, seed=args.seed, search_budget=args.search_budget,
                           report_examples=args.report_examples)
    except SearchesFailed as err:
        raise SystemExit(f"error: searching {args.index}: {err}; no metrics written, the traces so far are in "
                         f"{args.out / 'traces.jsonl'}") from None
    print_metrics(metrics, run_title(metrics, str(args.out)))
    console.print(f"wrote {args.out / 'metrics.json'}, {args.out / 'traces.jsonl'} and {args.out / 'report.md'}")
    return metrics


if __name__ == "__main__":
    cli.run(main)
