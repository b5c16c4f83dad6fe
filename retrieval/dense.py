"""Dense retrieval: a FAISS index over normalised passage vectors, inner-product search.

The index comes from a FAISS factory string (`Flat`, `HNSW32`, `IVF256,PQ16`, ...). With
unit vectors, inner product is cosine similarity, which is what sentence-transformers
models are trained for. An index on disk is a directory: `index.faiss` plus `dense.json`
(model, prefixes, factory, corpus path and fingerprint), enough to reopen it alone.

Searching with given query vectors adds only the row -> Passage mapping on top of the raw
`index.search` (see `Corpus.passages`); `eval/bench/retrieval.py` measures the ratio.
"""

from __future__ import annotations

import json
import os
from pathlib import Path

import faiss
import numpy as np

from retrieval.corpus import Corpus, load_corpus
from retrieval.meta import check_same_corpus, read_meta
from retrieval.types import Passage, check_k

__all__ = ["DenseRetriever", "build_faiss_index", "default_search_params", "index_memory_bytes", "gpu_available"]

INDEX_FILE = "index.faiss"
META_FILE = "dense.json"


def gpu_available() -> bool:
    return hasattr(faiss, "StandardGpuResources") and faiss.get_num_gpus() > 0


def default_search_params(factory: str) -> str:
    """Search-time knobs that trade a little speed for near-exact recall on small corpora.

    FAISS defaults (efSearch=16, nprobe=1) are tuned for speed on huge indexes; at the
    scales this project trains on they lose gold passages for no measurable gain.
    """
    params = []
    if "HNSW" in factory:
        params.append("efSearch=128")
    if "IVF" in factory:
        params.append("nprobe=16")
    return ",".join(params)


def build_faiss_index(vectors_N_D: np.ndarray, factory: str = "Flat") -> faiss.Index:
    """A CPU inner-product index of the given vectors, trained first when the type needs it."""
    vectors_N_D = np.ascontiguousarray(vectors_N_D, dtype=np.float32)
    if vectors_N_D.ndim != 2 or len(vectors_N_D) == 0:
        raise ValueError(f"expected a non-empty (N, D) array of vectors, got shape {vectors_N_D.shape}")
    try:
        index = faiss.index_factory(vectors_N_D.shape[1], factory, faiss.METRIC_INNER_PRODUCT)
    except RuntimeError as err:
        raise ValueError(f"invalid FAISS factory string {factory!r} (e.g. 'Flat', 'HNSW32', 'IVF256,PQ16'): "
                         f"{str(err).splitlines()[-1]}") from None
    if isinstance(index, (faiss.IndexIVFPQ, faiss.IndexPQ)):
        # faiss's default reorders PQ codes for polysemous (Hamming) filtering, which no search
        # here uses: about a minute of one core per build, whatever the size.
        index.do_polysemous_training = False
    if not index.is_trained:
        try:
            index.train(vectors_N_D)
        except RuntimeError as err:
            raise ValueError(f"cannot train FAISS index {factory!r} on {len(vectors_N_D)} vectors "
                             f"(IVF needs at least as many vectors as lists, PQ at least 256): "
                             f"{str(err).splitlines()[-1]}") from None
    index.add(vectors_N_D)
    return index


def index_memory_bytes(index: faiss.Index) -> int:
    """Bytes the index holds: exact for flat codes, the serialised size otherwise."""
    if isinstance(index, faiss.IndexFlatCodes):
        return int(index.ntotal) * int(index.code_size)
    return int(faiss.serialize_index(index).size)


def _apply_search_params(index: faiss.Index, params: str, on_gpu: bool) -> None:
    if not params:
        return
    space = faiss.GpuParameterSpace() if on_gpu else faiss.ParameterSpace()
    try:
        space.set_index_parameters(index, params)
    except RuntimeError as err:
        raise ValueError(f"invalid FAISS search parameters {params!r}: {str(err).splitlines()[-1]}") from None


class DenseRetriever:
    """Top-k passages by inner product between query and passage vectors.

    The encoder is created on first text search when not given, so code that only has
    vectors (benchmarks, tests) never loads a model.
    """

    def __init__(self, corpus: Corpus, index: faiss.Index, *, model: str, query_prefix: str = "",
                 passage_prefix: str = "", factory: str = "Flat", search_params: str | None = None,
                 encoder=None, use_gpu: bool | None = None):
        if index.ntotal != len(corpus):
            raise ValueError(f"index holds {index.ntotal} vectors but corpus {corpus.path} has {len(corpus)} passages")
        self.corpus = corpus
        self.cpu_index = index
        self.model = model
        self.query_prefix, self.passage_prefix = query_prefix, passage_prefix
        self.factory = factory
        self.search_params = default_search_params(factory) if search_params is None else search_params
        self._encoder = encoder
        self._gpu_resources = None
        if use_gpu and not gpu_available():
            raise ValueError("use_gpu=True but faiss has no GPU support or no GPU is visible")
        self.index = index
        if use_gpu or (use_gpu is None and gpu_available()):
            self.index = self._to_gpu(index, required=bool(use_gpu))
        _apply_search_params(self.index, self.search_params, on_gpu=self.index is not index)

    def _to_gpu(self, index: faiss.Index, required: bool) -> faiss.Index:
        try:
            if faiss.get_num_gpus() == 1:
                # The resources must outlive the GPU index, hence kept on self.
                self._gpu_resources = faiss.StandardGpuResources()
                return faiss.index_cpu_to_gpu(self._gpu_resources, 0, index)
            return faiss.index_cpu_to_all_gpus(index)  # several GPUs: a replica on each
        except RuntimeError as err:  # e.g. HNSW has no GPU implementation
            if required:
                raise ValueError(f"cannot move FAISS index {self.factory!r} to GPU: {str(err).splitlines()[-1]}") from None
            from rich.console import Console

            Console(stderr=True).print(f"[yellow]FAISS index {self.factory!r} stays on CPU (no GPU version): "
                                       f"{str(err).splitlines()[-1]}")
            return index

    @classmethod
    def build(cls, corpus: Corpus, encoder, factory: str = "Flat", search_params: str | None = None,
              use_gpu: bool | None = None, progress: bool | None = None) -> "DenseRetriever":
        """Encode every passage (title and text, as `contents`) and index the vectors."""
        texts = [corpus.contents(row) for row in range(len(corpus))]
        vectors_N_D = encoder.encode_passages(texts, progress=progress)
        return cls(corpus, build_faiss_index(vectors_N_D, factory), model=encoder.name,
                   query_prefix=encoder.query_prefix, passage_prefix=encoder.passage_prefix,
                   factory=factory, search_params=search_params, encoder=encoder, use_gpu=use_gpu)

    @property
    def encoder(self):
        if self._encoder is None:
            from retrieval.encoders import Encoder

            self._encoder = Encoder(self.model, query_prefix=self.query_prefix, passage_prefix=self.passage_prefix)
        return self._encoder

    def search(self, queries: list[str], k: int) -> list[list[Passage]]:
        check_k(k)
        if not queries:
            return []
        return self.search_vectors(self.encoder.encode_queries(list(queries)), k)

    def search_vectors(self, queries_Q_D: np.ndarray, k: int) -> list[list[Passage]]:
        """The hot path: one `index.search` and a vectorised row -> Passage mapping."""
        k = min(check_k(k), self.cpu_index.ntotal)
        queries_Q_D = np.ascontiguousarray(queries_Q_D, dtype=np.float32)
        scores_Q_K, rows_Q_K = self.index.search(queries_Q_D, k)
        return self.corpus.passages(rows_Q_K, scores_Q_K)

    def memory_bytes(self) -> int:
        return index_memory_bytes(self.cpu_index)

    def metadata(self) -> dict:
        return {
            "method": "dense",
            "model": self.model,
            "query_prefix": self.query_prefix,
            "passage_prefix": self.passage_prefix,
            "factory": self.factory,
            "search_params": self.search_params,
            "metric": "inner_product",
            "dim": int(self.cpu_index.d),
            "num_passages": len(self.corpus),
            "corpus": os.path.abspath(self.corpus.path),
            "corpus_fingerprint": self.corpus.fingerprint(),
            "memory_bytes": self.memory_bytes(),
        }

    def save(self, directory: str | os.PathLike) -> None:
        directory = Path(directory)
        directory.mkdir(parents=True, exist_ok=True)
        faiss.write_index(self.cpu_index, str(directory / INDEX_FILE))
        (directory / META_FILE).write_text(json.dumps(self.metadata(), indent=2) + "\n")

    @classmethod
    def load(cls, directory: str | os.PathLike, corpus: Corpus | None = None, encoder=None,
             use_gpu: bool | None = None) -> "DenseRetriever":
        """Reopen a saved index; the corpus is read from the recorded path unless given."""
        directory = Path(directory)
        meta = read_meta(directory / META_FILE, expected_method="dense")
        if not (directory / INDEX_FILE).exists():
            raise FileNotFoundError(f"{directory / INDEX_FILE}: missing FAISS index file next to {META_FILE}")
        corpus = corpus if corpus is not None else load_corpus(meta["corpus"])
        check_same_corpus(meta, corpus, directory)
        index = faiss.read_index(str(directory / INDEX_FILE))
        return cls(corpus, index, model=meta["model"], query_prefix=meta.get("query_prefix", ""),
                   passage_prefix=meta.get("passage_prefix", ""), factory=meta.get("factory", "Flat"),
                   search_params=meta.get("search_params"), encoder=encoder, use_gpu=use_gpu)
