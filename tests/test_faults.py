"""The fault-injection bench (eval/bench/faults.py): its kill lands in the chosen call of its
phase, its counts see what a run lost or repeated, and (slow) a killed and a damaged run come
back whole."""

import json
import random
import subprocess
import sys
from pathlib import Path

import pytest

from eval.bench.faults import (
    DAMAGES,
    Bench,
    Row,
    damaged_checkpoint,
    sigkill,
    trajectory_keys,
)
from train.metrics_log import append_jsonl

ROOT = Path(__file__).resolve().parents[1]

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
