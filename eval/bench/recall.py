"""Retrieval quality on the fictional world: recall@k of dense, BM25 and hybrid retrieval.

    python -m eval.bench.recall                         # generated world, seed 0, 2,000 entities
    python -m eval.bench.recall --world data/world-0 --k 3 --hops 1

A question counts as recalled when any of its gold support passages
(`metadata.support`) is among the top k retrieved with the question itself as the query.
For 1-hop questions that is exactly the passage an agent's first search must find.
"""

from __future__ import annotations

import argparse
import sys
import time
from pathlib import Path

from rich.console import Console
from rich.table import Table

from eval.bench.retrieval import load_queries, world_dir

__all__ = ["recall_at_k", "main"]

console = Console()


def recall_at_k(retrieved: list[list[str]], support: list[list[str]]) -> float:
    """Share of questions with at least one gold id among their retrieved ids.

    >>> recall_at_k([["a", "b"], ["c"]], [["b"], ["d", "e"]])
    0.5
    """
    if not retrieved:
        return 0.0
    return sum(bool(set(ids) & set(gold)) for ids, gold in zip(retrieved, support)) / len(retrieved)


def main(argv: list[str] | None = None) -> int:
    parser = argparse.ArgumentParser(prog="python -m eval.bench.recall", description=__doc__.splitlines()[0])
    parser.add_argument("--world", default=None, help="world directory (default: generate one)")
    parser.add_argument("--entities", type=int, default=2000)
    parser.add_argument("--seed", type=int, default=0)
    parser.add_argument("--splits", default="test,dev", help="question files to use, comma-separated")
    parser.add_argument("--hops", type=int, default=1, help="only questions with this many hops (0: all)")
    parser.add_argument("--k", type=int, default=3)
    parser.add_argument("--model", default=None, help="encoder (default: packaged all-MiniLM-L6-v2)")
    args = parser.parse_args(argv)

    world = Path(args.world) if args.world else world_dir(args.seed, args.entities)
    if world is None:
        console.print("[red]no world: agent.data.world is unavailable; pass --world DIR")
        return 2
    from retrieval.bm25 import BM25Retriever
    from retrieval.corpus import load_corpus
    from retrieval.dense import DenseRetriever
    from retrieval.encoders import Encoder
    from retrieval.hybrid import HybridRetriever

    corpus = load_corpus(world / "corpus.jsonl")
    records = load_queries([world / f"{s}.jsonl" for s in args.splits.split(",")], hops=args.hops or None)
    if not records:
        console.print(f"[red]no {args.hops}-hop questions in {args.splits} of {world}")
        return 2
    questions = [r["question"] for r in records]
    support = [r["metadata"]["support"] for r in records]
    console.print(f"world {world}: {len(corpus):,} passages; {len(records):,} {args.hops or 'any'}-hop "
                  f"questions from {args.splits}")

    dense = DenseRetriever.build(corpus, Encoder(args.model), factory="Flat", progress=True)
    bm25 = BM25Retriever.build(corpus)
    retrievers = {"dense": dense, "bm25": bm25, "hybrid": HybridRetriever(dense, bm25)}

    table = Table(title=f"recall@{args.k} ({len(records):,} questions, {len(corpus):,} passages)")
    for column in ("retriever", f"recall@{args.k}", "queries/s"):
        table.add_column(column, justify="left" if column == "retriever" else "right")
    for name, retriever in retrievers.items():
        with console.status(f"searching with {name}"):
            started = time.perf_counter()
            hits = retriever.search(questions, args.k)
            rate = len(questions) / (time.perf_counter() - started)
        score = recall_at_k([[p.doc_id for p in h] for h in hits], support)
        table.add_row(name, f"{score:.3f}", f"{rate:,.0f}")
    console.print(table)
    return 0


if __name__ == "__main__":
    sys.exit(main())
