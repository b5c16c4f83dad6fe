"""The trace debugger: a local web page over one or more runs' traces.

    python -m eval.debugger outputs/grpo                     # a training run (follows it as it writes)
    python -m eval.debugger runs/tiny-test runs/grpo-test    # evaluations side by side
    python -m eval.debugger outputs/grpo --policy qwen=Qwen/Qwen2.5-3B-Instruct --index indexes/world-0

Views: the run overview (reward and EM curves, filters, the list), a trajectory step by
step, its tokens as trained on, its GRPO group side by side; fork any step to continue the
conversation with a policy. Forks are saved to the run's forks.jsonl.

Policies a fork may use: the run's `final/` and checkpoints, the embedded default of the
run's world when built, and each `--policy NAME=SPEC` (a model directory, an HF id, `tiny`,
or `openai:URL` with `--model-name`). Retrievers: the run's index and each `--index`.
The server binds 127.0.0.1 unless `--host` says otherwise.
"""

from __future__ import annotations

import argparse
import os
from pathlib import Path

from rich.console import Console

from eval.debugger.app import build_runs, create_app
from eval.debugger.forking import Toolbox
from eval.debugger.sources import find_runs, model_dirs, tiny_dir

console = Console(stderr=True)


def named(items: list[str], what: str) -> dict[str, str]:
    """NAME=SPEC pairs (a bare SPEC is named by its last path part)."""
    out = {}
    for item in items:
        name, sep, spec = item.partition("=")
        if not sep:
            name, spec = Path(item.rstrip("/")).name or item, item
        if not name or not spec:
            raise SystemExit(f"error: --{what} {item!r}: expected NAME=SPEC or SPEC")
        out[name] = spec
    return out


def toolbox_for(runs, args) -> Toolbox:
    """Every policy and retriever the runs left or the flags name."""
    policies, retrievers, data = {}, {}, args.data
    for run in runs:
        prefix = f"{run.files.name}/" if len(runs) > 1 else ""
        for name, path in model_dirs(run.files).items():
            policies[prefix + name] = str(path)
        data = data or run.settings.get("data")
        index = run.settings.get("index")
        if index and (Path(index).exists() or str(index).startswith("http")):
            retrievers.setdefault(Path(index).name or index, index)
    if tiny_dir(data):
        policies["tiny"] = "tiny"
    policies |= named(args.policy, "policy")
    retrievers |= named(args.index, "index")
    return Toolbox(policies, retrievers, data=data, model_name=args.model_name, tokenizer=args.tokenizer)


def main(argv=None) -> None:
    os.environ.setdefault("HF_HUB_OFFLINE", "1")
    p = argparse.ArgumentParser(prog="python -m eval.debugger", description=__doc__.split("\n\n")[0],
                                formatter_class=argparse.RawDescriptionHelpFormatter, epilog=__doc__.split("\n\n", 1)[1])
    p.add_argument("runs", nargs="+", help="run directories (holding traces.jsonl) or traces files")
    p.add_argument("--port", type=int, default=7860)
    p.add_argument("--host", default="127.0.0.1", help="address to bind (default: this machine only)")
    p.add_argument("--policy", action="append", default=[], help="NAME=SPEC a fork may continue with (repeatable)")
    p.add_argument("--index", action="append", default=[], help="NAME=DIR_OR_URL a fork may search (repeatable)")
    p.add_argument("--data", default=None, help="world whose embedded default `tiny` is (default: the run's)")
    p.add_argument("--tokenizer", default=None, help="tokenizer of the traces (default: the run's model) and of "
                                                     "openai:URL policies")
    p.add_argument("--model-name", default=None, help="served model name of openai:URL policies")
    p.add_argument("--follow", type=float, default=1.0, help="seconds between looks for new lines")
    args = p.parse_args(argv)
    try:
        runs = build_runs(find_runs(args.runs), args.tokenizer)
    except ValueError as error:
        raise SystemExit(f"error: {error}") from None
    toolbox = toolbox_for(runs, args)
    hosts = ("*",) if args.host in ("0.0.0.0", "::") else ("127.0.0.1", "localhost", args.host)
    app = create_app(runs, toolbox, follow=args.follow, allowed_hosts=hosts)
    console.print(f"trace debugger on [bold]http://{args.host}:{args.port}[/bold] · "
                  f"{len(runs)} run(s) · policies: {', '.join(sorted(toolbox.policies)) or 'none'} · "
                  f"retrievers: {', '.join(sorted(toolbox.retrievers)) or 'none'}")
    import uvicorn

    uvicorn.run(app, host=args.host, port=args.port, log_level="warning")


if __name__ == "__main__":
    main()
