"""Chat with a search agent in the terminal, step by step; or fork a saved trace and go on from there.

    python -m eval.chat --policy tiny --data data/world-0 --index indexes/world-0
    python -m eval.chat --policy tiny --data data/world-0 --index indexes/world-0 \\
        --fork outputs/grpo/traces.jsonl --id s3:q1204/2 --step 1 --edit query --text "Acur Grei mentor"

Each step prints as it comes (the query and its passages, the judge's verdict, the answer).
Then type a message to go on (the agent reads it after its last step, as injected text) or an
empty line to stop. Every turn is saved as a trace linked to the one it continues: forks of
a run's trace go to that run's forks.jsonl (the debugger shows them as branches), a new
conversation to `--out`/traces.jsonl.
"""

from __future__ import annotations

import argparse
import os
from collections.abc import Callable
from pathlib import Path

from rich.console import Console

from agent.fork import Fork
from agent.rollout import Rollout, RolloutConfig
from agent.traces import TraceWriter, trajectory_record
from agent.types import Example
from eval.debugger import terminal
from eval.debugger.forking import first_new_step, fork_record, fork_stream, live_cards, next_fork_id
from eval.debugger.index import TraceIndex
from eval.debugger.rows import trace_id
from eval.debugger.sources import FORKS_FILE
from eval.debugger.views import trajectory_view

def ask_question(engine, retriever, cfg: RolloutConfig, question: str, golds: list[str], console: Console,
                 number: int = 1) -> dict:
    """A new conversation: roll the question out, printing each step as it comes; returns its record."""
    example = Example(f"chat-{number}", question, golds)
    rollout = Rollout(engine, retriever, cfg, engine.tokenizer)
    shown, traj = 0, None
    for [traj] in rollout.stream([example]):
        cards = live_cards(traj, {"golden_answers": golds})
        for c in cards[shown:]:
            console.print(terminal.card(c))
        shown = len(cards)
    return trajectory_record(traj, example, engine.tokenizer, id=f"chat-{number}/0")


def go_on(parent: dict, fork: Fork, engine, retriever, cfg: RolloutConfig, console: Console, *, fork_id: str,
          policy: str) -> dict:
    """`parent` continued after `fork`, printing each new step as it comes; returns the new record."""
    shown, traj = first_new_step(fork), None
    for traj in fork_stream(parent, fork, engine, retriever, cfg, policy=policy):
        cards = live_cards(traj, parent)
        for c in cards[shown:]:
            console.print(terminal.card(c))
        shown = max(shown, len(cards))
    return fork_record(parent, traj, fork, engine.tokenizer, fork_id=fork_id, policy=policy)


def chat_loop(record: dict, engine, retriever, cfg: RolloutConfig, forks: Path, ask: Callable[[], str],
              console: Console, *, policy: str) -> list[dict]:
    """Ask for messages until an empty one; each continues the latest trace and is saved to `forks`."""
    saved, writer, index = [], TraceWriter(forks), TraceIndex(forks)
    while True:
        message = ask().strip()
        if not message or message in ("/quit", "/exit"):
            return saved
        fork = Fork(len(record["steps"]) - 1, "message", message)
        record = go_on(record, fork, engine, retriever, cfg, console, fork_id=next_fork_id(index, trace_id(record)),
                       policy=policy)
        writer.write([record])
        saved.append(record)
        console.print(f"[dim]saved {record['id']} to {writer.path}[/dim]")


def main(argv=None, ask: Callable[[], str] | None = None, console: Console | None = None, engine=None,
         retriever=None) -> list[dict]:
    os.environ.setdefault("HF_HUB_OFFLINE", "1")
    p = argparse.ArgumentParser(prog="python -m eval.chat", description=__doc__.split("\n\n")[0],
                                formatter_class=argparse.RawDescriptionHelpFormatter, epilog=__doc__.split("\n\n", 1)[1])
    p.add_argument("--policy", default="tiny", help="tiny, a model directory / hub id, or openai:URL")
    p.add_argument("--data", type=Path, default=Path("data/world-0"), help="the world `tiny` belongs to")
    p.add_argument("--index", default=None, help="index directory or retrieval server URL")
    p.add_argument("--model-name", default=None, help="served model name, for openai:URL")
    p.add_argument("--tokenizer", default=None, help="local tokenizer, for openai:URL")
    p.add_argument("--question", default=None, help="ask this first (default: prompt for it)")
    p.add_argument("--gold", action="append", default=[], help="a gold answer, to score the answers (repeatable)")
    p.add_argument("--fork", type=Path, default=None, help="a traces file to fork a trace of")
    p.add_argument("--id", default=None, help="with --fork: the trace id")
    p.add_argument("--step", type=int, default=None, help="with --fork: the step to fork at (default: the last)")
    p.add_argument("--edit", default="message", choices=["message", "text", "query", "passages"],
                   help="with --fork: what --text replaces (passages: not from the terminal)")
    p.add_argument("--text", default=None, help="with --fork: the edited text, query or message")
    p.add_argument("--out", type=Path, default=Path("runs/chat"), help="where a new conversation is saved")
    p.add_argument("--passages-per-search", type=int, default=3)
    p.add_argument("--max-turns", type=int, default=RolloutConfig.max_turns)
    p.add_argument("--temperature", type=float, default=0.0)
    args = p.parse_args(argv)
    console = console or Console()
    ask = ask or (lambda: console.input("[bold]you>[/bold] "))
    if engine is None:
        from eval.policies import build_model

        engine, _ = build_model(args.policy, args.data, model_name=args.model_name, tokenizer_path=args.tokenizer)
    if retriever is None and args.index:
        from retrieval import open_retriever

        retriever = open_retriever(args.index)
    cfg = RolloutConfig(passages_per_search=args.passages_per_search, max_turns=args.max_turns,
                        temperature=args.temperature)
    if args.fork:
        if not args.id or args.edit == "passages":
            raise SystemExit("error: --fork needs --id (and --edit message, text or query with --text)")
        traces = TraceIndex(args.fork)
        traces.refresh()
        if args.id not in traces.by_id:
            raise SystemExit(f"error: {args.fork} has no trace {args.id!r}")
        parent = traces.record(traces.by_id[args.id])
        console.print(terminal.trajectory(trajectory_view(parent)))
        step = len(parent["steps"]) - 1 if args.step is None else args.step
        text = args.text if args.text is not None else ask()
        writer = TraceWriter(args.fork.parent / FORKS_FILE)
        try:
            record = go_on(parent, Fork(step, args.edit, text), engine, retriever, cfg, console,
                           fork_id=next_fork_id(TraceIndex(writer.path), args.id), policy=args.policy)
        except ValueError as error:
            raise SystemExit(f"error: {error}") from None
    else:
        writer = TraceWriter(args.out / "traces.jsonl")
        question = args.question or ask()
        record = ask_question(engine, retriever, cfg, question, args.gold, console, number=_count(writer.path) + 1)
    writer.write([record])
    console.print(f"[dim]saved {record['id']} to {writer.path} · type a message to go on, an empty line to stop[/dim]")
    return [record, *chat_loop(record, engine, retriever, cfg, writer.path.parent / FORKS_FILE, ask, console,
                               policy=args.policy)]


def _count(path: Path) -> int:
    """Conversations already saved in `path`."""
    index = TraceIndex(path)
    index.refresh()
    return len(index.offsets)


if __name__ == "__main__":
    main()
