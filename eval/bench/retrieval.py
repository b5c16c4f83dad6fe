"""Retrieval speed: our retrievers against the raw libraries, on the same data, in one run.

    python -m eval.bench.retrieval                      # a generated 2,000-entity world
    python -m eval.bench.retrieval --corpus data/world-0/corpus.jsonl --n-queries 2000

Reports
* encoding: passages/s of the sentence-transformers encoder over the whole corpus;
* dense: queries/s of `DenseRetriever.search_vectors` against `faiss.IndexFlatIP.search`
  on the same vectors and query vectors (the ratio is what our row -> Passage mapping costs);
* BM25: queries/s of `BM25Retriever.search` against plain `bm25s` (tokenise + retrieve),
  and whether their top-10 ids and scores are identical, less bm25s' zero-score padding
  (the run fails if not).

Timings alternate ours/raw and keep each side's best of `--repeats`, so a burst of load
from other processes on a shared machine does not land on one side only.

Without --corpus, the corpus is the fictional world of `agent.data.world` (generated once and
kept in the temp dir); if that generator is unavailable, a synthetic corpus of the same
shape stands in (`synthetic_corpus`), and the report says so.
"""

from __future__ import annotations

import argparse
import json
import os
import random
import subprocess
import sys
import tempfile
import time
from pathlib import Path

import numpy as np
from rich.console import Console
from rich.table import Table

__all__ = ["world_dir", "synthetic_corpus", "load_queries", "main"]

console = Console()


# ----------------------------------------------------------------------------- data

def world_dir(seed: int = 0, entities: int = 2000, timeout: float = 1800) -> Path | None:
    """A generated world (corpus.jsonl, train/dev/test.jsonl), cached in the temp dir; None if unavailable.

    The cache key includes a hash of the generator's source, so an edited generator
    never serves a stale world.
    """
    import hashlib
    import importlib.util

    spec = importlib.util.find_spec("agent.data.world")
    if spec is None or spec.origin is None:
        console.print("[yellow]agent.data.world not found; using a synthetic corpus")
        return None
    version = hashlib.sha256(Path(spec.origin).read_bytes()).hexdigest()[:10]
    out = Path(tempfile.gettempdir()) / "searchrl-bench" / f"world-s{seed}-e{entities}-{version}"
    if (out / "corpus.jsonl").exists() and (out / "test.jsonl").exists():
        return out
    staging = out.with_name(out.name + ".partial")
    command = [sys.executable, "-m", "agent.data.world", "--seed", str(seed), "--entities", str(entities),
               "--out", str(staging)]
    with console.status(f"generating a {entities}-entity world: {' '.join(command[1:])}"):
        try:
            done = subprocess.run(command, capture_output=True, text=True, timeout=timeout)
        except subprocess.TimeoutExpired:
            console.print(f"[yellow]agent.data.world took over {timeout:.0f}s; using a synthetic corpus")
            return None
    if done.returncode != 0:
        reason = (done.stderr.strip().splitlines() or ["no output"])[-1]
        console.print(f"[yellow]agent.data.world unavailable ({reason}); using a synthetic corpus")
        return None
    if out.exists():
        import shutil

        shutil.rmtree(out)
    staging.rename(out)
    return out


def synthetic_corpus(path: Path, n_passages: int = 4000, seed: int = 0) -> tuple[Path, list[str]]:
    """Invented-name passages and questions about them, shaped like the world's (the fallback)."""
    rng = random.Random(seed)
    syllables = ["ka", "lo", "mi", "ren", "dor", "sa", "vel", "tu", "qua", "zen", "bri", "ost", "ny", "fal"]

    def name() -> str:
        return "".join(rng.choice(syllables) for _ in range(rng.randint(2, 3))).capitalize()

    cities = [name() for _ in range(200)]
    questions = []
    with open(path, "w", encoding="utf-8") as f:
        for i in range(n_passages):
            person, city, year = f"{name()} {name()}", rng.choice(cities), rng.randint(1700, 1990)
            text = (f"{person} was born in {city} in {year}. {person} worked as a {rng.choice(['painter', 'sailor', 'judge', 'miller'])} "
                    f"and later moved to {rng.choice(cities)}, where {rng.choice(['a guild', 'a school', 'a bridge'])} bears the name.")
            f.write(json.dumps({"id": f"s{i}", "contents": f'"{person}"\n{text}'}) + "\n")
            questions.append(f"Where was {person} born?")
    return path, questions


def load_queries(qa_paths: list[Path], limit: int | None = None, hops: int | None = None) -> list[dict]:
    """Question records (FlashRAG JSONL), optionally only those with `metadata.hops == hops`."""
    records = []
    for path in qa_paths:
        with open(path, encoding="utf-8") as f:
            for line in f:
                if line.strip():
                    record = json.loads(line)
                    if hops is None or record.get("metadata", {}).get("hops") == hops:
                        records.append(record)
    return records[:limit] if limit else records


def _cycle(items: list[str], n: int) -> list[str]:
    return [items[i % len(items)] for i in range(n)]


# ----------------------------------------------------------------------------- timing

def _best_of(repeats: int, *runs) -> list[float]:
    """Best wall time of each run, interleaving them round by round."""
    best = [float("inf")] * len(runs)
    for _ in range(repeats):
        for i, run in enumerate(runs):
            started = time.perf_counter()
            run()
            best[i] = min(best[i], time.perf_counter() - started)
    return best


def bench_dense(corpus, vectors_N_D, queries_Q_D, k: int, repeats: int) -> dict:
    import faiss

    from retrieval.dense import DenseRetriever, build_faiss_index

    ours = DenseRetriever(corpus, build_faiss_index(vectors_N_D, "Flat"), model="bench", factory="Flat")
    raw = faiss.IndexFlatIP(vectors_N_D.shape[1])
    raw.add(vectors_N_D)
    ours_s, raw_s = _best_of(repeats, lambda: ours.search_vectors(queries_Q_D, k), lambda: raw.search(queries_Q_D, k))
    _, raw_rows = raw.search(queries_Q_D, k)
    same = [[p.doc_id for p in hits] for hits in ours.search_vectors(queries_Q_D, k)] == \
        [[corpus.ids[r] for r in row] for row in raw_rows.tolist()]
    n = len(queries_Q_D)
    return {"ours": n / ours_s, "raw": n / raw_s, "identical": same, "memory": ours.memory_bytes()}


def bench_bm25(corpus, queries: list[str], k: int, repeats: int) -> dict:
    import bm25s

    from retrieval.bm25 import BM25Retriever

    ours = BM25Retriever.build(corpus)
    texts = [corpus.contents(row) for row in range(len(corpus))]
    raw = bm25s.BM25()
    raw.index(bm25s.tokenize(texts, stopwords="en", show_progress=False), show_progress=False)

    def raw_search():
        return raw.retrieve(bm25s.tokenize(queries, stopwords="en", show_progress=False), k=k, show_progress=False)

    ours_s, raw_s = _best_of(repeats, lambda: ours.search(queries, k), raw_search)
    raw_rows, raw_scores = raw_search()
    hits = ours.search(queries, k)
    # bm25s pads a top-k with zero-score passages when fewer match; ours returns only matches
    matching = [[(corpus.ids[r], s) for r, s in zip(rows, scores) if s > 0]
                for rows, scores in zip(raw_rows.tolist(), raw_scores.tolist())]
    same = [[(p.doc_id, p.score) for p in h] for h in hits] == matching
    return {"ours": len(queries) / ours_s, "raw": len(queries) / raw_s, "identical": same}


# ----------------------------------------------------------------------------- main

def main(argv: list[str] | None = None) -> int:
    parser = argparse.ArgumentParser(prog="python -m eval.bench.retrieval", description=__doc__.splitlines()[0])
    parser.add_argument("--corpus", default=None, help="corpus JSONL (default: a generated world)")
    parser.add_argument("--n-queries", type=int, default=2000)
    parser.add_argument("--k", type=int, default=10)
    parser.add_argument("--repeats", type=int, default=5, help="timing rounds; each side keeps its best")
    parser.add_argument("--entities", type=int, default=2000, help="world size when no --corpus")
    parser.add_argument("--seed", type=int, default=0)
    parser.add_argument("--model", default=None, help="encoder (default: packaged all-MiniLM-L6-v2)")
    parser.add_argument("--scaled-passages", type=int, default=20_000,
                        help="also time dense search on this many random unit vectors (0: skip), to show "
                             "that our added cost per query stays flat as the raw search grows")
    args = parser.parse_args(argv)

    from retrieval.corpus import load_corpus
    from retrieval.encoders import Encoder

    load_at_start = os.getloadavg()[0]
    if args.corpus:
        corpus_path = Path(args.corpus)
        qa = [p for p in (corpus_path.parent / f"{s}.jsonl" for s in ("test", "dev", "train")) if p.exists()]
        questions = [r["question"] for r in load_queries(qa, args.n_queries)]
        source = str(corpus_path)
    else:
        world = world_dir(args.seed, args.entities)
        if world is not None:
            corpus_path = world / "corpus.jsonl"
            qa = [world / f"{s}.jsonl" for s in ("test", "dev", "train")]
            questions = [r["question"] for r in load_queries(qa, args.n_queries)]
            source = f"agent.data.world seed {args.seed}, {args.entities} entities"
        else:
            corpus_path, questions = synthetic_corpus(Path(tempfile.mkdtemp()) / "corpus.jsonl", seed=args.seed)
            source = "synthetic (agent.data.world unavailable)"
    corpus = load_corpus(corpus_path)
    if not questions:  # a bare corpus: ask for passage titles
        questions = [corpus.titles[i] or corpus.texts[i][:60] for i in range(len(corpus))]
    queries = _cycle(questions, args.n_queries)
    console.print(f"corpus: {source}: {len(corpus):,} passages; {len(queries):,} queries, k={args.k}")

    encoder = Encoder(args.model)
    texts = [corpus.contents(row) for row in range(len(corpus))]
    encoder.encode_passages(texts[:64], progress=False)  # warm-up: first calls pay one-off setup
    started = time.perf_counter()
    vectors_N_D = encoder.encode_passages(texts, progress=True)
    encode_rate = len(texts) / (time.perf_counter() - started)
    with console.status("encoding queries"):
        started = time.perf_counter()
        queries_Q_D = encoder.encode_queries(queries, progress=False)
        query_rate = len(queries) / (time.perf_counter() - started)

    with console.status("timing dense search"):
        dense = bench_dense(corpus, vectors_N_D, queries_Q_D, args.k, args.repeats)
        dense_3 = bench_dense(corpus, vectors_N_D, queries_Q_D, 3, args.repeats) if args.k != 3 else None
        scaled = None
        if args.scaled_passages:
            from retrieval.corpus import Corpus

            n = args.scaled_passages
            random_N_D = np.random.default_rng(args.seed).standard_normal((n, vectors_N_D.shape[1]), dtype=np.float32)
            random_N_D /= np.linalg.norm(random_N_D, axis=1, keepdims=True)
            fake = Corpus([f"r{i}" for i in range(n)], [""] * n, [corpus.texts[i % len(corpus)] for i in range(n)])
            scaled = bench_dense(fake, random_N_D, queries_Q_D, args.k, max(1, args.repeats // 2))
    with console.status("timing BM25 search"):
        bm25 = bench_bm25(corpus, queries, args.k, max(1, args.repeats // 2))

    table = Table(title=f"retrieval speed: {len(corpus):,} passages, {len(queries):,} queries",
                  caption=f"encoder {encoder.name}; dense = Flat inner product ({dense['memory'] / 2**20:.1f} MiB), "
                          f"query vectors given; BM25 = bm25s, query text given; load average at start "
                          f"{load_at_start:.1f} on {os.cpu_count()} cores (other work slows encoding most)")
    for column in ("what", "ours /s", "raw /s", "ratio", "+µs/query", "same"):
        table.add_column(column, justify="left" if column == "what" else "right")
    table.add_row("encode passages", f"{encode_rate:,.0f}", "", "", "", "")
    table.add_row("encode queries", f"{query_rate:,.0f}", "", "", "", "")
    # The added time per query is what our wrapper costs (row -> Passage objects); it does
    # not grow with the corpus, while the raw search does, so the ratio tends to 1.
    rows = [(f"dense top-{args.k}", dense), ("dense top-3", dense_3),
            (f"dense top-{args.k}, {args.scaled_passages:,} random vectors", scaled), (f"BM25 top-{args.k}", bm25)]
    for label, result in rows:
        if result is None:
            continue
        added_us = (1 / result["ours"] - 1 / result["raw"]) * 1e6
        table.add_row(label, f"{result['ours']:,.0f}", f"{result['raw']:,.0f}", f"{result['ours'] / result['raw']:.3f}",
                      f"{added_us:,.1f}", "yes" if result["identical"] else "NO")
    console.print(table)
    if not all(result["identical"] for _, result in rows if result is not None):
        console.print("[red]results differ from the raw libraries")
        return 1
    return 0


if __name__ == "__main__":
    sys.exit(main())
