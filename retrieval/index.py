"""`open_retriever`: an index directory (its layout: `retrieval.meta`) or a server URL ->
a ready retriever.

`open_retriever(path)` reads it and returns the matching retriever behind a result cache;
it is how the rest of the project gets a retriever. It also accepts the URL of a running
`retrieval.server`, so the same configuration field can point at either.
"""

from __future__ import annotations

import os
from pathlib import Path

from retrieval.meta import INDEX_META, check_same_corpus, read_meta

__all__ = ["is_server_url", "open_retriever"]


def is_server_url(index: str | os.PathLike) -> bool:
    """Whether `index` names a retrieval server (http:// or https://) rather than a directory."""
    return str(index).startswith(("http://", "https://"))


def open_retriever(index: str | os.PathLike, *, cache_size: int = 10_000, corpus=None,
                   use_gpu: bool | None = None, rrf_k: int = 60, timeout: float = 30.0):
    """A ready `Retriever` for an index directory (or a retrieval server URL), behind an LRU cache.

    `corpus` overrides the corpus path recorded in the index (e.g. after moving files);
    it must hold the same ids in the same order. `cache_size=0` disables the cache.
    """
    from retrieval.cache import CachedRetriever

    retriever = _open_uncached(index, corpus=corpus, use_gpu=use_gpu, rrf_k=rrf_k, timeout=timeout)
    return CachedRetriever(retriever, cache_size) if cache_size > 0 else retriever


def _open_uncached(index, *, corpus, use_gpu, rrf_k, timeout):
    if is_server_url(index):
        from retrieval.client import HTTPRetriever

        return HTTPRetriever(str(index), timeout=timeout)
    directory = Path(index)
    if not directory.exists():
        raise FileNotFoundError(f"retrieval index {directory} not found; build it with `python -m retrieval.build "
                                f"--corpus CORPUS.jsonl --out {directory} --method dense|bm25|hybrid`")
    if not directory.is_dir():
        raise ValueError(f"{directory}: is a file, expected an index directory written by `python -m retrieval.build`")

    from retrieval.bm25 import BM25Retriever
    from retrieval.corpus import load_corpus

    def dense(path):  # faiss is imported only for dense indexes
        from retrieval.dense import DenseRetriever

        return DenseRetriever.load(path, corpus, use_gpu=use_gpu)

    if corpus is not None and not hasattr(corpus, "fingerprint"):
        corpus = load_corpus(corpus)  # a path was given
    # A component directory (dense/ or bm25/) opens on its own too.
    if not (directory / INDEX_META).exists():
        if (directory / "dense.json").exists():
            return dense(directory)
        if (directory / "bm25.json").exists():
            return BM25Retriever.load(directory, corpus)
        raise ValueError(f"{directory}: not a retrieval index (no {INDEX_META}, dense.json or bm25.json); "
                         f"build one with `python -m retrieval.build`")

    meta = read_meta(directory / INDEX_META)
    corpus = corpus if corpus is not None else load_corpus(meta["corpus"])
    check_same_corpus(meta, corpus, directory)
    method = meta["method"]
    if method == "dense":
        return dense(directory / "dense")
    if method == "bm25":
        return BM25Retriever.load(directory / "bm25", corpus)
    from retrieval.hybrid import HybridRetriever

    return HybridRetriever(dense(directory / "dense"), BM25Retriever.load(directory / "bm25", corpus), rrf_k=rrf_k)
