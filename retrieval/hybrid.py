"""Hybrid retrieval: reciprocal-rank fusion (RRF) of dense and BM25 rankings.

RRF (Cormack et al., 2009) scores a passage by sum over rankings of 1 / (rrf_k + rank),
rank counted from 1. It needs no score calibration between a cosine and a BM25 score,
which live on unrelated scales. Each side retrieves a deeper candidate list than k so a
passage ranked moderately by both can overtake one ranked high by only one.
"""

from __future__ import annotations

from retrieval.types import Passage, Retriever, check_k

__all__ = ["HybridRetriever", "rrf_fuse", "RRF_K"]

RRF_K = 60  # the constant of the original paper; larger flattens the rank discount


def rrf_fuse(rankings: list[list[Passage]], k: int, rrf_k: int = RRF_K) -> list[Passage]:
    """Fuse ranked lists of one query into the top-k by RRF score (Passage.score = fused score).

    Ties keep first-appearance order, reading the lists in the order given.

    >>> a, b, c = (Passage(i, "", "") for i in "abc")
    >>> [(p.doc_id, round(p.score, 4)) for p in rrf_fuse([[a, b], [b, c]], k=3, rrf_k=1)]
    [('b', 0.8333), ('a', 0.5), ('c', 0.3333)]
    """
    fused: dict[str, float] = {}
    first: dict[str, Passage] = {}
    for ranking in rankings:
        for rank, passage in enumerate(ranking, start=1):
            fused[passage.doc_id] = fused.get(passage.doc_id, 0.0) + 1.0 / (rrf_k + rank)
            first.setdefault(passage.doc_id, passage)
    # sorted() is stable, so equal scores stay in first-appearance order.
    best = sorted(fused, key=fused.__getitem__, reverse=True)[:k]
    return [Passage(doc_id, first[doc_id].title, first[doc_id].text, fused[doc_id]) for doc_id in best]


def candidate_depth(k: int) -> int:
    """How deep each side retrieves for a final top-k."""
    return max(4 * k, 20)


class HybridRetriever:
    """RRF of a dense and a lexical retriever over the same corpus."""

    def __init__(self, dense: Retriever, lexical: Retriever, rrf_k: int = RRF_K):
        self.dense, self.lexical, self.rrf_k = dense, lexical, rrf_k

    def search(self, queries: list[str], k: int) -> list[list[Passage]]:
        check_k(k)
        if not queries:
            return []
        depth = candidate_depth(k)
        dense_Q = self.dense.search(list(queries), depth)
        lexical_Q = self.lexical.search(list(queries), depth)
        return [rrf_fuse([d, s], k, self.rrf_k) for d, s in zip(dense_Q, lexical_Q)]
