"""`python -m eval.bench.scale`: each axis run at a tiny size gives its rows, columns and PNG.

Nothing here checks a timing: only that the modes run, measure what they say and fit growth."""

from __future__ import annotations

import math

import numpy as np
import pytest

from eval.bench.scale import main
from eval.bench.scale.growth import growth_words, slope
from eval.bench.scale.retrieval import dense_factories, draw_like
from eval.bench.scale.rollout import parse_shapes
from eval.bench.scale.update import linear_and_quadratic

PNG_MAGIC = b"\x89PNG\r\n\x1a\n"


def test_slope_and_words_fit_known_powers():
    sizes = [1e4, 1e5, 3e5, 1e6]
    assert slope(sizes, [3 * x for x in sizes]) == pytest.approx(1.0)
    assert slope(sizes, [x**0.5 for x in sizes]) == pytest.approx(0.5)
    assert slope(sizes, [7.0] * 4) == pytest.approx(0.0, abs=1e-9)
    assert math.isnan(slope([1e4], [1.0]))
    assert slope([256, 512, 1024, 2048], [1, 4, 16, None]) == pytest.approx(2.0)  # missing points are left out
    assert [growth_words(b) for b in (0.02, 0.5, 1.0, 2.0)] == ["flat", "about the square root", "linear", "quadratic"]


def test_linear_and_quadratic_terms_are_recovered():
    lengths = [256, 512, 1024, 2048]
    a, b = linear_and_quadratic(lengths, [2e-4 * x + 5e-7 * x * x for x in lengths])
    assert a == pytest.approx(2e-4) and b == pytest.approx(5e-7)


def test_drawn_vectors_are_unit_length_and_near_the_real_ones():
    rng = np.random.default_rng(0)
    centres = rng.standard_normal((4, 32)).astype(np.float32)
    real = centres[rng.integers(0, 4, 400)] + 0.1 * rng.standard_normal((400, 32)).astype(np.float32)
    real /= np.linalg.norm(real, axis=1, keepdims=True)
    drawn = draw_like(real, 1000, seed=0, clusters=4)
    assert drawn.shape == (1000, 32) and drawn.dtype == np.float32
    assert np.allclose(np.linalg.norm(drawn, axis=1), 1.0, atol=1e-5)
    # each drawn vector lies close to one of the real clusters, not anywhere on the sphere
    unit_centres = centres / np.linalg.norm(centres, axis=1, keepdims=True)
    assert (drawn @ unit_centres.T).max(axis=1).min() > 0.8


def test_ivf_lists_grow_as_the_square_root():
    assert dense_factories(10_000) == {"Flat": "Flat", "HNSW32": "HNSW32", "IVF-PQ": "IVF128,PQ32"}
    assert dense_factories(1_000_000)["IVF-PQ"] == "IVF1024,PQ32"


@pytest.fixture
def one_faiss_thread():
    """FAISS on one thread, as the bench is run: on a busy 2-core machine two OpenMP threads
    wait for each other at every barrier (this test took 80 s there, 33 s on one thread)."""
    import faiss

    before = faiss.omp_get_max_threads()
    faiss.omp_set_num_threads(1)
    yield
    faiss.omp_set_num_threads(before)


def test_retrieval_axis_rows_and_png(tmp_path, one_faiss_thread):
    png = tmp_path / "retrieval.png"
    out = main(["retrieval", "--entities", "300", "--sizes", "300,600", "--embed", "256", "--queries", "8",
                "--png", str(png)])
    assert png.read_bytes()[:8] == PNG_MAGIC
    rows = out["rows"]
    dense = [(r["retriever"], r["passages"], r["data"]) for r in rows if r["retriever"] != "BM25"]
    kinds = ["Flat", "HNSW32", "IVF-PQ"]
    assert dense == ([(k, 256, "real") for k in kinds] + [(k, 256, "drawn only") for k in kinds]
                     + [(k, 300, "256 real + drawn") for k in kinds] + [(k, 600, "256 real + drawn") for k in kinds])
    # BM25 indexes world text: the 300-entity world has over 300 passages, not 600
    assert out["passages_in_world"] < 600
    assert [r["passages"] for r in rows if r["retriever"] == "BM25"] == [300]
    for r in rows:
        assert r["build_s"] >= 0 and r["index_bytes"] > 0
        assert r["ms_per_query_b1"] > 0 and r["ms_per_query_b64"] > 0 and r["wall_ms_per_query_b1"] > 0
        if r["retriever"] == "Flat":
            assert r["recall@10"] == 1.0 and r["index_bytes"] == r["passages"] * 384 * 4
        elif r["retriever"] != "BM25":
            assert 0 < r["recall@10"] <= 1.0
    assert out["encoder"]["passages_per_s"] > 0 and out["encoder"]["queries_per_s"] > 0


def test_rollout_axis_rows_and_png(trainer_world, tiny_model_dir, tmp_path):
    png = tmp_path / "rollout.png"
    out = main(["rollout", "--shapes", "1x2,2x2,2x1", "--repeats", "1", "--png", str(png),
                "--model", str(tiny_model_dir), "--data", str(trainer_world / "world"),
                "--index", str(trainer_world / "bm25"), "--max_turns", "2", "--max_new_tokens", "6"])
    assert png.read_bytes()[:8] == PNG_MAGIC
    assert [(r["questions"], r["group_size"], r["trajectories"]) for r in out["rows"]] == [(1, 2, 2), (2, 2, 4),
                                                                                           (2, 1, 2)]
    for r in out["rows"]:
        assert r["seconds"] > 0 and r["sampled_tokens"] > 0
        assert r["tokens_per_s"] == pytest.approx(r["sampled_tokens"] / r["seconds"])


def test_train_axis_rows_and_png(trainer_world, tiny_model_dir, tmp_path):
    png = tmp_path / "train.png"
    flags = ["--model", str(tiny_model_dir), "--data", str(trainer_world / "world"),
             "--index", str(trainer_world / "bm25")]
    out = main(["train", "--lengths", "16,64", "--tokens", "128", "--repeats", "1", "--png", str(png), *flags])
    assert png.read_bytes()[:8] == PNG_MAGIC
    assert [(r["length"], r["rows"]) for r in out["rows"]] == [(16, 8), (64, 2)]
    for r in out["rows"]:
        assert r["seconds_per_row"] == pytest.approx(r["seconds"] / r["rows"])
        assert 0 < r["reference_share"] < 1  # the KL term's reference forward is part of the update
    with pytest.raises(SystemExit, match="512 positions"):
        main(["train", "--lengths", "1024", "--png", str(png), *flags])


def test_bad_axis_and_shapes_are_one_line_errors():
    with pytest.raises(SystemExit, match="usage: python -m eval.bench.scale"):
        main(["speed"])
    with pytest.raises(SystemExit, match="'16y8'"):
        parse_shapes("1x8,16y8")
    assert parse_shapes("1x8, 16x2") == [(1, 8), (16, 2)]
