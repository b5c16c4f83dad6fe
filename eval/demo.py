"""The end-to-end demo on the embedded default, from nothing to a results table:

    python -m eval.demo

1. generates the fictional world `data/world-0` (2,000 entities, seed 0),
2. builds its dense index `indexes/world-0` (all-MiniLM-L6-v2, FAISS Flat),
3. builds the embedded tiny policy and warm-starts it by SFT on oracle demonstrations
   of the train split (cached under `data/world-0/tiny/`),
4. evaluates the oracle and the warm-started tiny policy on the held-out test split,
   writing each run to `runs/<policy>-test/` (metrics.json, traces.jsonl).

Every step is cached, so a second run only evaluates.
"""

from __future__ import annotations

import argparse
import time
from pathlib import Path

from rich.console import Console
from rich.table import Table

console = Console(stderr=True)


def main(argv=None) -> dict:
    p = argparse.ArgumentParser(prog="python -m eval.demo", description=__doc__.split("\n\n")[0])
    p.add_argument("--data", type=Path, default=Path("data/world-0"))
    p.add_argument("--index", type=Path, default=Path("indexes/world-0"))
    p.add_argument("--runs", type=Path, default=Path("runs"))
    p.add_argument("--split", default="test")
    args = p.parse_args(argv)

    from eval import run as eval_run
    from train.prepare import ensure_default

    start = time.perf_counter()
    data, index, _ = ensure_default(args.data, args.index)
    console.print(f"embedded default ready in {time.perf_counter() - start:.0f} s")

    results = {}
    for policy in ("oracle", "tiny"):
        out = args.runs / f"{policy}-{args.split}"
        # The tiny policy reads 2 passages per search, as in its warm start; the oracle the default 3.
        passages = ["--passages-per-search", "2"] if policy == "tiny" else []
        results[policy] = eval_run.main(["--policy", policy, "--data", str(data), "--split", args.split,
                                         "--index", str(index), "--out", str(out), *passages])
    table = Table(title=f"{args.split} split of {data}")
    for col in ("policy", "EM", "F1", "valid actions", "searches/q", *[f"EM {h}-hop" for h in "1234"]):
        table.add_column(col, justify="right")
    for policy, m in results.items():
        hops = m.get("by_hops", {})
        table.add_row(policy, f"{m['em']:.3f}", f"{m['f1']:.3f}", f"{m['valid_action_rate']:.3f}",
                      f"{m['searches_per_question']:.2f}", *[f"{hops[h]['em']:.3f}" if h in hops else "-" for h in "1234"])
    console.print(table)
    console.print(f"done in {time.perf_counter() - start:.0f} s")
    return results


if __name__ == "__main__":
    main()
