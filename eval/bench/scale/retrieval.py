"""Retrieval from 10k to 1M passages: FAISS Flat, HNSW32 and IVF-PQ, and BM25.

    python -m eval.bench.scale retrieval                       # 10k, 100k, 300k, 1M
    python -m eval.bench.scale retrieval --sizes 10000,100000 --embed 5000

What is real and what is drawn:

1. Texts are real: the passages of a generated world (`agent.data.world`; 700,000 entities
   write about 1.03M passages), so BM25 indexes world text at every size it reaches.
2. `--embed` passages sampled from that world are encoded with the retriever's encoder; its
   passages/s is a row of its own (encoding is the build's cost that grows linearly, and
   hours at 1M passages on 2 cores). Each index holds those real vectors first, then vectors
   drawn from a Gaussian mixture fit of them (k-means clusters, each a Gaussian with its
   own mean and per-dimension spread, then L2-normalised). The same indexes are also built
   over as many drawn vectors as real ones, next to the real ones alone, to show whether the
   draws are as hard to search as the real vectors.
3. Queries are real: 1-hop questions whose gold passage is among the embedded ones.

Per size and index: build seconds (training included), index bytes, how much the process's
resident memory grew while the index was built, milliseconds per query in batches of 1 and
of 64, and recall@k of the approximate indexes against Flat's top k at the same size. Times
are the process's CPU time (`growth.clock`; run with `OMP_NUM_THREADS=1` on a shared machine),
with the wall time kept next to them in the returned rows.
Dense latencies are the raw `index.search` on query vectors (query encoding is its own
row); BM25's are `BM25Retriever.search` on question text. IVF-PQ is `IVF{nlist},PQ32` with
nlist the power of two nearest sqrt(N), trained on at most 64 vectors a list and without
polysemous training; search parameters are the project's defaults
(`retrieval.dense.default_search_params`).
"""

from __future__ import annotations

import argparse
import gc
import math
import time

import numpy as np
from rich.console import Console
from rich.table import Table

from eval.bench.scale.growth import (
    clock,
    growth_words,
    plot_panels,
    rss_bytes,
    slope,
    threads,
)

__all__ = ["dense_factories", "draw_like", "main"]

console = Console()
MIXTURE_CLUSTERS = 64
TRAIN_PER_LIST = 64
BATCHES = (1, 64)


def draw_like(real_N_D: np.ndarray, n: int, seed: int, clusters: int = MIXTURE_CLUSTERS) -> np.ndarray:
    """`n` unit vectors from a Gaussian mixture fit of `real_N_D`: faiss k-means clusters, each
    drawn from in proportion to its size, with its own mean and per-dimension spread."""
    import faiss

    real_N_D = np.ascontiguousarray(real_N_D, dtype=np.float32)
    clusters = max(1, min(clusters, len(real_N_D) // 39))  # faiss wants ~39 points a cluster
    kmeans = faiss.Kmeans(real_N_D.shape[1], clusters, niter=20, seed=seed)
    kmeans.train(real_N_D)
    _, assign_N = kmeans.index.search(real_N_D, 1)
    assign_N = assign_N[:, 0]
    means_C_D = np.stack([real_N_D[assign_N == c].mean(0) for c in range(clusters)])
    spreads_C_D = np.stack([real_N_D[assign_N == c].std(0) for c in range(clusters)])
    rng = np.random.default_rng(seed)
    picks_n = rng.choice(clusters, size=n, p=np.bincount(assign_N, minlength=clusters) / len(assign_N))
    out_n_D = np.empty((n, real_N_D.shape[1]), dtype=np.float32)
    for start in range(0, n, 100_000):  # in chunks: the noise of 1M x 384 at once would double the memory
        c = picks_n[start:start + 100_000]
        noise = rng.standard_normal((len(c), real_N_D.shape[1]), dtype=np.float32)
        out_n_D[start:start + len(c)] = means_C_D[c] + spreads_C_D[c] * noise
    out_n_D /= np.linalg.norm(out_n_D, axis=1, keepdims=True)
    return out_n_D


def dense_factories(n: int) -> dict[str, str]:
    """FAISS factory strings for `n` vectors: exact, graph and compressed inverted lists."""
    nlist = 2 ** round(math.log2(math.sqrt(n)))
    return {"Flat": "Flat", "HNSW32": "HNSW32", "IVF-PQ": f"IVF{nlist},PQ32"}


def _build(vectors_N_D: np.ndarray, factory: str, seed: int):
    """(index, `clock` of training and filling it) with the project's search parameters."""
    import faiss

    from retrieval.dense import default_search_params

    index = faiss.index_factory(vectors_N_D.shape[1], factory, faiss.METRIC_INNER_PRODUCT)
    if isinstance(index, faiss.IndexIVFPQ):
        # faiss's default: reorder the PQ codes for polysemous (Hamming) filtering, which no
        # search here uses; about a minute of one core whatever the size, which would hide growth.
        index.do_polysemous_training = False
    with clock() as spent:
        if not index.is_trained:
            n_train = min(len(vectors_N_D), TRAIN_PER_LIST * faiss.extract_index_ivf(index).nlist)
            rows = np.sort(np.random.default_rng(seed).choice(len(vectors_N_D), n_train, replace=False))
            index.train(vectors_N_D[rows])
        index.add(vectors_N_D)
    if default_search_params(factory):
        faiss.ParameterSpace().set_index_parameters(index, default_search_params(factory))
    return index, spent


def _latency(search, queries: list, k: int) -> dict:
    """Milliseconds per query of `search(queries, k)` in batches of each of `BATCHES` (after one
    warm-up), CPU time, and the same in wall time under `wall_` keys."""
    out = {}
    for batch in BATCHES:
        timed = queries[:64] if batch == 1 else queries  # one at a time: 64 are enough for a mean
        search(timed[:batch], k)
        with clock() as spent:
            for i in range(0, len(timed), batch):
                search(timed[i:i + batch], k)
        out[f"ms_per_query_b{batch}"] = spent["cpu"] / len(timed) * 1e3
        out[f"wall_ms_per_query_b{batch}"] = spent["wall"] / len(timed) * 1e3
    return out


def bench_dense(vectors_N_D: np.ndarray, queries_Q_D: np.ndarray, k: int, seed: int, data: str) -> list[dict]:
    """One row per index kind over `vectors_N_D`; recall@k against Flat's top k."""
    from retrieval.dense import index_memory_bytes

    rows, truth = [], None
    for name, factory in dense_factories(len(vectors_N_D)).items():
        gc.collect()
        before = rss_bytes()
        index, build = _build(vectors_N_D, factory, seed)
        grown = rss_bytes() - before if before is not None else None
        _, ids_Q_K = index.search(queries_Q_D, k)
        truth = ids_Q_K if truth is None else truth
        recall = float(np.mean([len(set(a) & set(b)) / k for a, b in zip(ids_Q_K.tolist(), truth.tolist())]))
        rows.append({"retriever": name, "factory": factory, "passages": len(vectors_N_D), "data": data,
                     "build_s": build["cpu"], "build_wall_s": build["wall"], "index_bytes": index_memory_bytes(index),
                     "rss_growth_bytes": grown, **_latency(index.search, queries_Q_D, k), f"recall@{k}": recall})
        console.log(_line(rows[-1], k))
        del index
    return rows


def bench_bm25(corpus, rows_n: np.ndarray, questions: list[str], k: int) -> dict:
    """A BM25 index of the passages `rows_n` of `corpus`, built and searched with question text."""
    from retrieval.bm25 import BM25Retriever
    from retrieval.corpus import Corpus

    part = Corpus([corpus.ids[r] for r in rows_n], [corpus.titles[r] for r in rows_n], [corpus.texts[r] for r in rows_n])
    gc.collect()
    before = rss_bytes()
    with clock() as build:
        bm25 = BM25Retriever.build(part, progress=False)
    grown = rss_bytes() - before if before is not None else None
    index_bytes = sum(getattr(v, "nbytes", 0) for v in bm25.model.scores.values())
    row = {"retriever": "BM25", "factory": "bm25s", "passages": len(rows_n), "data": "world text",
           "build_s": build["cpu"], "build_wall_s": build["wall"], "index_bytes": index_bytes,
           "rss_growth_bytes": grown, **_latency(bm25.search, questions, k), f"recall@{k}": None}
    console.log(_line(row, k))
    return row


def _line(row: dict, k: int) -> str:
    recall = row[f"recall@{k}"]
    return (f"{row['retriever']:7} {row['passages']:>9,} ({row['data']}): build {row['build_s']:.2f} s, "
            f"{row['index_bytes'] / 2**20:.1f} MiB, {row['ms_per_query_b1']:.3f} / {row['ms_per_query_b64']:.3f} "
            f"ms a query at batch 1 / 64" + (f", recall@{k} {recall:.3f}" if recall is not None else ""))


def real_part(world, embed: int, n_queries: int, seed: int, model: str | None):
    """(corpus, vectors of `embed` of its passages, query texts, query vectors, encoder rates)."""
    from eval.bench.retrieval import load_queries
    from retrieval.corpus import load_corpus
    from retrieval.encoders import Encoder

    corpus = load_corpus(world / "corpus.jsonl")
    embedded_n = np.sort(np.random.default_rng(seed).choice(len(corpus), min(embed, len(corpus)), replace=False))
    ids = {corpus.ids[r] for r in embedded_n}
    one_hop = load_queries([world / "test.jsonl", world / "dev.jsonl"], hops=1)
    answerable = [r["question"] for r in one_hop if set(r["metadata"]["support"]) <= ids]
    questions = (answerable or [r["question"] for r in one_hop])[:n_queries]
    questions = [questions[i % len(questions)] for i in range(n_queries)]  # repeated where too few are answerable
    encoder = Encoder(model)
    texts = [corpus.contents(int(r)) for r in embedded_n]
    encoder.encode_passages(texts[:64], progress=False)  # warm-up: first calls pay one-off setup
    with clock() as passages:
        passages_N_D = encoder.encode_passages(texts, progress=True)
    with clock() as queries:
        queries_Q_D = encoder.encode_queries(questions, progress=False)
    rates = {"model": encoder.name, "passages_per_s": len(texts) / passages["cpu"],
             "wall_passages_per_s": len(texts) / passages["wall"], "queries_per_s": len(questions) / queries["cpu"],
             "answerable_queries": len(answerable)}
    return corpus, passages_N_D, questions, queries_Q_D, rates


def main(argv: list[str]) -> dict:
    parser = argparse.ArgumentParser(prog="python -m eval.bench.scale retrieval", description=__doc__.splitlines()[0])
    parser.add_argument("--sizes", default="10000,100000,300000,1000000", help="index sizes in passages, comma-separated")
    parser.add_argument("--entities", type=int, default=700_000, help="entities of the generated world")
    parser.add_argument("--embed", type=int, default=5_000, help="passages of the world encoded for real")
    parser.add_argument("--queries", type=int, default=128, help="queries timed and scored")
    parser.add_argument("--k", type=int, default=10)
    parser.add_argument("--seed", type=int, default=0)
    parser.add_argument("--model", default=None, help="encoder (default: packaged all-MiniLM-L6-v2)")
    parser.add_argument("--png", default="docs/images/scale-retrieval.png", help="where to write the curves")
    args = parser.parse_args(argv)
    sizes = sorted({int(s) for s in args.sizes.split(",")})
    if min(sizes[0], args.embed) < 256:
        parser.error(f"--sizes and --embed must be at least 256 (PQ trains 256 centroids), got {args.sizes} and "
                     f"{args.embed}")

    from eval.bench.retrieval import world_dir

    machine = threads()
    started = time.perf_counter()
    world = world_dir(args.seed, args.entities)
    if world is None:
        parser.exit(1, "no generated world: agent.data.world failed (see above)\n")
    world_s = time.perf_counter() - started
    corpus, real_N_D, questions, queries_Q_D, rates = real_part(world, args.embed, args.queries, args.seed, args.model)
    console.log(f"world of {args.entities:,} entities: {len(corpus):,} passages ({world_s:.0f} s, cached after the "
                f"first run); encoded {len(real_N_D):,} at {rates['passages_per_s']:.0f} passages/s; "
                f"{rates['answerable_queries']} answerable 1-hop questions")
    started = time.perf_counter()
    n_real = len(real_N_D)
    # the real vectors, then drawn ones: every index is a prefix (one copy of 1M x 384 floats)
    vectors_N_D = np.concatenate([real_N_D, draw_like(real_N_D, max(sizes[-1], 2 * n_real) - n_real, args.seed)])
    console.log(f"drew {len(vectors_N_D) - n_real:,} vectors like the real ones in {time.perf_counter() - started:.1f} s")

    rows = []
    if n_real not in sizes:
        rows += bench_dense(real_N_D, queries_Q_D, args.k, args.seed, "real")
    rows += bench_dense(vectors_N_D[n_real:2 * n_real], queries_Q_D, args.k, args.seed, "drawn only")
    order_n = np.random.default_rng(args.seed + 1).permutation(len(corpus))
    for n in sizes:
        data = "real" if n <= n_real else f"{n_real:,} real + drawn"
        rows += bench_dense(vectors_N_D[:n], queries_Q_D, args.k, args.seed, data)
        if n <= len(corpus):
            rows.append(bench_bm25(corpus, order_n[:n], questions, args.k))
    machine = f"at the start {machine}; at the end {threads()}"
    report(rows, rates, args, sizes, len(corpus), machine)
    return {"rows": rows, "encoder": rates, "passages_in_world": len(corpus), "world_s": world_s, "machine": machine}


def report(rows: list[dict], rates: dict, args, sizes: list[int], world_passages: int, machine: str) -> None:
    """The table of every row, the fitted growth per retriever, and the PNG."""
    k = args.k
    table = Table(title=f"retrieval from {sizes[0]:,} to {sizes[-1]:,} passages (top {k})",
                  caption=f"encoder {rates['model']}: {rates['passages_per_s']:.0f} passages/s "
                          f"({1e6 / rates['passages_per_s'] / 3600:.1f} h for 1M passages), "
                          f"{rates['queries_per_s']:.0f} queries/s; BM25 over world text up to "
                          f"{world_passages:,} passages; CPU time; {machine}")
    columns = ("retriever", "passages", "vectors", "build s", "index MiB", "RSS +MiB", "ms/query (1)",
               "ms/query (64)", f"recall@{k}")
    for column in columns:
        table.add_column(column, justify="left" if column in ("retriever", "vectors") else "right")
    for r in rows:
        grown = f"{r['rss_growth_bytes'] / 2**20:,.0f}" if r["rss_growth_bytes"] is not None else ""
        recall = r[f"recall@{k}"]
        table.add_row(f"{r['retriever']} ({r['factory']})", f"{r['passages']:,}", r["data"], f"{r['build_s']:.2f}",
                      f"{r['index_bytes'] / 2**20:,.1f}", grown, f"{r['ms_per_query_b1']:.3f}",
                      f"{r['ms_per_query_b64']:.3f}", "" if recall is None else f"{recall:.3f}")
    console.print(table)
    curves = {name: [r for r in rows if r["retriever"] == name and r["data"] != "drawn only" and r["passages"] in sizes]
              for name in dict.fromkeys(r["retriever"] for r in rows)}
    growth = Table(title="how each cost grows with the passages N (log-log slope b of cost ~ N^b)")
    for column in ("retriever", "ms/query (1)", "ms/query (64)", "build s", "index bytes"):
        growth.add_column(column, justify="left" if column == "retriever" else "right")
    keys = ("ms_per_query_b1", "ms_per_query_b64", "build_s", "index_bytes")
    for name, points in curves.items():
        cells = []
        for key in keys:
            b = slope([p["passages"] for p in points], [p[key] for p in points])
            cells.append(f"{b:.2f} ({growth_words(b)})")
        growth.add_row(name, *cells)
    console.print(growth)

    def series(key: str) -> dict:
        return {name: ([p["passages"] for p in points], [p[key] for p in points]) for name, points in curves.items()}

    panels = [{"title": "latency, one query at a time", "xlabel": "passages", "ylabel": "ms per query",
               "series": series("ms_per_query_b1")},
              {"title": "latency, batches of 64", "xlabel": "passages", "ylabel": "ms per query",
               "series": series("ms_per_query_b64")},
              {"title": "build (training included)", "xlabel": "passages", "ylabel": "seconds",
               "series": series("build_s")},
              {"title": "index size", "xlabel": "passages", "ylabel": "bytes", "series": series("index_bytes")}]
    path = plot_panels(args.png, "retrieval cost against corpus size", panels)
    console.print(f"curves written to {path}")
