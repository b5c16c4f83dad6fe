"""Lexical retrieval: BM25 (Lucene variant) through `bm25s`.

Text goes through bm25s' own tokenizer (lower-case, `\\w\\w+` words, English stopwords),
and the index is built from exactly the token ids `bm25s.tokenize` would produce, so
results (ids, scores, and the order of ties) are identical to plain `bm25s` usage, less
the passages that share no term with the query: bm25s fills its top-k with zero-score
passages when fewer match, and those are dropped here, so a query matching nothing gets
an empty list (as Pyserini's searcher does); `tests/test_retrieval.py` checks both.
Passages are indexed as `contents` (title and text).
On disk: bm25s' own files plus `bm25.json` (parameters, corpus path and fingerprint).
"""

from __future__ import annotations

import json
import os
from pathlib import Path

import bm25s
import numpy as np
from bm25s.tokenization import Tokenized

from retrieval.corpus import Corpus, load_corpus
from retrieval.meta import check_same_corpus, read_meta
from retrieval.types import Passage, check_k

__all__ = ["BM25Retriever", "tokenize"]

META_FILE = "bm25.json"
STOPWORDS = "en"

# Tokenising is pure Python; chunks let a progress bar move on large corpora.
_CHUNK = 20_000
_PROGRESS_MIN_TEXTS = 50_000


def tokenize(texts: list[str], stopwords: str = STOPWORDS) -> list[list[str]]:
    """bm25s' tokenizer, as token strings (what `BM25.retrieve` converts ids back into anyway)."""
    return bm25s.tokenize(texts, stopwords=stopwords, return_ids=False, show_progress=False)


def tokenize_corpus(texts: list[str], stopwords: str = STOPWORDS, progress: bool | None = None) -> Tokenized:
    """Token ids with a first-seen vocabulary: the same `Tokenized` as `bm25s.tokenize(texts)`."""
    show = len(texts) >= _PROGRESS_MIN_TEXTS if progress is None else progress
    vocab: dict[str, int] = {}
    ids: list[list[int]] = []
    chunks = range(0, len(texts), _CHUNK)
    if show:
        from rich.progress import track

        chunks = track(chunks, description=f"tokenising {len(texts)} passages")
    for start in chunks:
        for tokens in tokenize(texts[start:start + _CHUNK], stopwords):
            ids.append([vocab.setdefault(token, len(vocab)) for token in tokens])
    return Tokenized(ids=ids, vocab=vocab)


class BM25Retriever:
    """Top-k passages by BM25 score, only those matching a query term (so possibly fewer than k);
    ties come back in bm25s' order."""

    def __init__(self, corpus: Corpus, model: bm25s.BM25, stopwords: str = STOPWORDS):
        num_docs = int(model.scores["num_docs"])
        if num_docs != len(corpus):
            raise ValueError(f"BM25 index holds {num_docs} documents but corpus {corpus.path} has {len(corpus)}")
        self.corpus = corpus
        self.model = model
        self.stopwords = stopwords

    @classmethod
    def build(cls, corpus: Corpus, k1: float = 1.5, b: float = 0.75, stopwords: str = STOPWORDS,
              progress: bool | None = None) -> "BM25Retriever":
        texts = [corpus.contents(row) for row in range(len(corpus))]
        model = bm25s.BM25(k1=k1, b=b)
        model.index(tokenize_corpus(texts, stopwords, progress), show_progress=False)
        return cls(corpus, model, stopwords)

    def search(self, queries: list[str], k: int) -> list[list[Passage]]:
        k = min(check_k(k), len(self.corpus))  # bm25s refuses k above the corpus size
        if not queries:
            return []
        rows_Q_K, scores_Q_K = self.model.retrieve(tokenize(list(queries), self.stopwords), k=k,
                                                    show_progress=False)
        # A passage that matches a term scores > 0 (Lucene's idf is positive); row -1 is dropped.
        return self.corpus.passages(np.where(scores_Q_K > 0, rows_Q_K, -1), scores_Q_K)

    def metadata(self) -> dict:
        return {
            "method": "bm25",
            "library": f"bm25s {bm25s.__version__}",
            "variant": self.model.method,
            "k1": self.model.k1,
            "b": self.model.b,
            "stopwords": self.stopwords,
            "num_passages": len(self.corpus),
            "corpus": os.path.abspath(self.corpus.path),
            "corpus_fingerprint": self.corpus.fingerprint(),
        }

    def save(self, directory: str | os.PathLike) -> None:
        directory = Path(directory)
        directory.mkdir(parents=True, exist_ok=True)
        self.model.save(str(directory), show_progress=False)
        (directory / META_FILE).write_text(json.dumps(self.metadata(), indent=2) + "\n")

    @classmethod
    def load(cls, directory: str | os.PathLike, corpus: Corpus | None = None) -> "BM25Retriever":
        directory = Path(directory)
        meta = read_meta(directory / META_FILE, expected_method="bm25")
        corpus = corpus if corpus is not None else load_corpus(meta["corpus"])
        check_same_corpus(meta, corpus, directory)
        try:
            model = bm25s.BM25.load(str(directory), load_corpus=False, show_progress=False)
        except (OSError, ValueError) as err:
            raise ValueError(f"{directory}: cannot read the bm25s index files: {err}") from err
        return cls(corpus, model, meta.get("stopwords", STOPWORDS))
