"""Show one trajectory of a traces file in the terminal: for quick looks and bug reports.

    python -m eval.show outputs/grpo/traces.jsonl --index 0
    python -m eval.show outputs/grpo/traces.jsonl --id s3:q1204/2 --tokens
    python -m eval.show runs/tiny-test/forks.jsonl --index -1          # the newest fork

Prints the question and outcome, then every step as a card (the query and its passages,
gold ones starred; the judge's verdict against its ideal label; the answer with EM / F1;
step rewards and advantages where the trace has them). `--tokens` adds the response's
tokens as trained on: sampled ones shaded by the sampler's probability, injected ones grey.
"""

from __future__ import annotations

import argparse
from pathlib import Path

from rich.console import Console

from eval.debugger import terminal
from eval.debugger.index import TraceIndex
from eval.debugger.views import tokens_view, trajectory_view


def find_record(path: Path, trace_id: str | None, index: int | None) -> dict:
    """The record with `trace_id`, or at position `index` (negative counts from the end)."""
    traces = TraceIndex(path)
    if not path.exists():
        raise SystemExit(f"error: no traces file at {path}")
    traces.refresh()
    n = len(traces.offsets)
    if trace_id is not None:
        if trace_id not in traces.by_id:
            near = [i for i in traces.by_id if trace_id in i][:5]
            raise SystemExit(f"error: {path} has no trace {trace_id!r}" + (f"; similar ids: {', '.join(near)}" if near else ""))
        return traces.record(traces.by_id[trace_id])
    if not -n <= index < n:
        raise SystemExit(f"error: {path} has {n} traces; --index {index} is out of range")
    return traces.record(index % n)


def load_tokenizer(path: Path, given: str | None):
    from transformers import AutoTokenizer

    from eval.debugger.sources import find_runs, tokenizer_source

    source = given or tokenizer_source(find_runs([path])[0])
    return AutoTokenizer.from_pretrained(str(source)) if source else None


def main(argv=None, console: Console | None = None) -> dict:
    p = argparse.ArgumentParser(prog="python -m eval.show", description=__doc__.split("\n\n")[0],
                                formatter_class=argparse.RawDescriptionHelpFormatter, epilog=__doc__.split("\n\n", 1)[1])
    p.add_argument("traces", type=Path, help="a traces.jsonl (or forks.jsonl) file")
    which = p.add_mutually_exclusive_group(required=True)
    which.add_argument("--id", help="trace id: group_id/sample, or a fork's id")
    which.add_argument("--index", type=int, help="position in the file (0 = first, -1 = last)")
    p.add_argument("--tokens", action="store_true", help="also show the response tokens, masks and logprobs")
    p.add_argument("--tokenizer", default=None, help="tokenizer directory (default: the run's model)")
    args = p.parse_args(argv)
    console = console or Console()
    record = find_record(args.traces, args.id, args.index)
    view = trajectory_view(record)
    console.print(terminal.trajectory(view))
    if args.tokens:
        console.print(terminal.tokens(tokens_view(record, load_tokenizer(args.traces, args.tokenizer))))
    return view


if __name__ == "__main__":
    main()
