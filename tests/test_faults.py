"""The fault-injection bench (eval/bench/faults.py): its kill lands in the chosen call of its
phase, its retrieval server fails as its window says and then answers as the index does, its
counts see what a run lost or repeated, and (slow) a killed, a damaged run and a run whose
retriever answered 500s come back whole."""

import json
import random
import subprocess
import sys
import time

import pytest

from eval.bench.faults import (
    DAMAGES,
    ROOT,
    Bench,
    FlakyServer,
    Row,
    Window,
    damaged_checkpoint,
    retriever_fault,
    sigkill,
    trajectory_keys,
)
from retrieval import open_retriever
from retrieval.client import HTTPRetriever, RetrieverUnavailable
from train.metrics_log import append_jsonl

CHILD = """
import json, sys
from eval.bench.faults import _faulty
step = _faulty(lambda i: print("ran", i, flush=True), "update", json.loads(sys.argv[1]), [])
for i in (1, 2, 3):
    step(i)
"""


@pytest.mark.parametrize("delay", [0.0, 30.0])
def test_the_kill_lands_in_the_chosen_call_of_its_phase(delay):
    """A delay longer than the call: the process dies at the call's end, still inside it."""
    fault = json.dumps({"phase": "update", "call": 2, "delay": delay})
    child = subprocess.run([sys.executable, "-c", CHILD, fault], cwd=ROOT, capture_output=True, text=True, timeout=60, check=False)
    assert child.returncode == -9
    assert child.stdout.splitlines()[0] == "ran 1" and "ran 3" not in child.stdout


@pytest.mark.parametrize(("mode", "error"), [
    ("down", r"unavailable after 2 attempts: (ConnectError|ReadError|RemoteProtocolError)"),
    ("slow", r"unavailable after 2 attempts: ReadTimeout"),
    ("500", r"unavailable after 2 attempts: HTTP 500: injected fault"),
    ("garbage", r"is not JSON|expected \{'result'|is not a list of"),
])
def test_the_server_fails_from_the_window_s_request_for_its_seconds_then_answers_as_the_index(trainer_world, mode,
                                                                                             error):
    index = open_retriever(trainer_world / "bm25", cache_size=0)
    expected = index.search(["Velmora"], 2)
    window = Window(mode, at=2, seconds=1.5)
    server = FlakyServer(index, [window])
    client = HTTPRetriever(server.url, timeout=0.5, retries=1, backoff=0.001)
    try:
        assert client.search(["Velmora"], 2) == expected  # request 1: before the window
        with pytest.raises((RetrieverUnavailable, ValueError), match=error):
            client.search(["Velmora"], 2)
        time.sleep(2.0)  # the window is over
        assert client.search(["Velmora"], 2) == expected
        assert client.health() == {"status": "ok"}
    finally:
        server.close()
    assert window.hits >= 1


def test_a_slow_answer_within_the_client_s_timeout_is_only_late(trainer_world):
    index = open_retriever(trainer_world / "bm25", cache_size=0)
    window = Window("within", at=1, seconds=5.0)
    server = FlakyServer(index, [window])
    client = HTTPRetriever(server.url, timeout=5.0, retries=0)
    try:
        assert client.search(["Velmora"], 2) == index.search(["Velmora"], 2)
    finally:
        server.close()
    assert window.hits == 1


def test_metrics_that_repeat_a_step_or_differ_do_not_match_and_repeated_trajectories_are_seen(tmp_path):
    baseline = [{"step": s, "reward": 0.5, "em": 0.0, "loss": 0.1 * s, "approx_kl": 0.0, "entropy": 6.0,
                 "grad_norm": 1.0} for s in (1, 2, 3)]
    bench = Bench(tmp_path, tmp_path, tmp_path, tmp_path, baseline_metrics=baseline)
    run = tmp_path / "run"
    run.mkdir()
    append_jsonl(run / "metrics.jsonl", [{"step": 0, "dev_em": 0.0}, *baseline[:2]])
    assert bench.matches(run)  # a run killed after step 2 agrees so far
    append_jsonl(run / "metrics.jsonl", [baseline[1]])
    assert not bench.matches(run)  # step 2 logged twice
    (run / "metrics.jsonl").write_text("")
    append_jsonl(run / "metrics.jsonl", [baseline[0], {**baseline[1], "loss": 0.3}])
    assert not bench.matches(run)
    append_jsonl(run / "traces.jsonl", [{"step": 1, "group_id": "s0:q1", "sample": s} for s in (0, 1, 1)])
    assert trajectory_keys(run) == [(1, "s0:q1", 0), (1, "s0:q1", 1), (1, "s0:q1", 1)]


@pytest.mark.slow
def test_a_killed_and_a_damaged_run_lose_and_repeat_nothing(trainer_world, tiny_model_dir, tmp_path):
    bench = Bench(tmp_path, trainer_world / "world", trainer_world / "bm25", tiny_model_dir, steps=3)
    bench.run_baseline()
    assert set(bench.lengths) == {"rollout", "update", "checkpoint write", "trace append"}
    rows = [sigkill("trace append", runs=1, kills=1)(bench, random.Random(0)),
            damaged_checkpoint({"trainer_state.pt": DAMAGES["trainer_state.pt"]})(bench, random.Random(0))]
    assert rows == [Row("SIGKILL in trace append", injected=1, runs=1, survived=1, resumes=1, matched=1),
                    Row("damaged newest checkpoint", injected=1, runs=1, survived=1, resumes=1, matched=1)]
    assert "skipped" in (tmp_path / "damaged-trainer_state.pt.log").read_text()


@pytest.mark.slow
def test_a_run_whose_retriever_answers_500_for_a_while_pauses_and_trains_as_the_uninterrupted(trainer_world, tmp_path):
    from train.prepare import DEFAULT_DATA, DEFAULT_INDEX, ensure_tiny_policy

    bench = Bench(tmp_path, trainer_world / "world", trainer_world / "bm25", tmp_path / "unused", steps=2,
                  policy=ensure_tiny_policy(ROOT / DEFAULT_DATA, ROOT / DEFAULT_INDEX))
    row = retriever_fault("500", runs=1, windows=1)(bench, random.Random(0))
    assert row == Row("retriever answers 500", injected=1, runs=1, survived=1, resumes=1, matched=1)
    assert "answers again" in (tmp_path / "retriever-500-0.log").read_text()
