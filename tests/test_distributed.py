"""Data-parallel training through `accelerate launch`, on CPUs (gloo): two processes train as
one, write one set of logs and checkpoints, resume, and agree with a one-process run; the
same under accelerate's FSDP2 and DeepSpeed ZeRO-2 and ZeRO-3, which shard the model's state (slow)."""

import json
import os
import socket
import subprocess
import sys
from pathlib import Path

import pytest

from agent.traces import read_traces
from train.grpo import main

ROOT = Path(__file__).resolve().parents[1]


@pytest.fixture(scope="module")
def setup(trainer_world):
    return trainer_world


def args(setup, model_dir, out, steps):
    return ["--model", str(model_dir), "--data", str(setup / "world"), "--index", str(setup / "bm25"),
            "--output_dir", str(out), "--max_steps", str(steps), "--questions_per_step", "4", "--group_size", "3",
            "--max_turns", "2", "--max_new_tokens", "6", "--eval_questions", "3", "--test_questions", "3",
            "--save_every", "1", "--keep_last", "5", "--learning_rate", "1e-3", "--temperature", "1.0",
            "--oversample", "1", "--entropy_coef", "0.01", "--device", "cpu", "--precision", "fp32"]


def launch(n: int, argv: list[str], script: Path = ROOT / "train" / "grpo.py",
           config: Path | None = None) -> subprocess.CompletedProcess:
    """`accelerate launch` of train/grpo.py (or `script`) with `n` processes on the CPU, data
    parallel or as the accelerate `config` file says."""
    with socket.socket() as sock:
        sock.bind(("127.0.0.1", 0))
        port = sock.getsockname()[1]
    kind = ["--config_file", str(config)] if config else ["--multi_gpu"]
    cmd = [sys.executable, "-m", "accelerate.commands.launch", *kind, "--num_processes", str(n),
           "--num_machines", "1", "--mixed_precision", "no", "--dynamo_backend", "no", "--main_process_port", str(port),
           str(script), *argv]
    path = os.pathsep.join(p for p in (str(ROOT), os.environ.get("PYTHONPATH")) if p)  # and where deepspeed may be
    env = {**os.environ, "OMP_NUM_THREADS": "1", "PYTHONPATH": path}  # --device cpu: gloo, even beside GPUs
    return subprocess.run(cmd, env=env, capture_output=True, text=True, timeout=900, check=False)


def metrics(out):
    return [r for r in read_traces(out / "metrics.jsonl") if r["step"] > 0]


def test_two_processes_train_as_one_write_once_and_resume(setup, tiny_model_dir):
    out = setup / "two"
    run = launch(2, args(setup, tiny_model_dir, out, 2))
    assert run.returncode == 0, run.stderr[-3000:]
    # The trainer checks that both processes end with bit-identical weights (a digest of every
    # trained tensor, gathered); the summary is written once, by the main process.
    summary = json.loads((out / "summary.json").read_text())
    assert summary["machine"]["processes"] == 2
    assert sorted(p.name for p in out.iterdir() if "checkpoint" in p.name) == ["checkpoint-1", "checkpoint-2"]
    assert [r["step"] for r in metrics(out)] == [1, 2]
    traces = read_traces(out / "traces.jsonl")
    assert [t["step"] for t in traces] == [1] * 12 + [2] * 12  # both processes' groups, written once
    assert len({t["group_id"] for t in traces if t["step"] == 1}) == 4

    # The same global batch in one process: the same rollouts, rewards and losses.
    one = setup / "one"
    main(args(setup, tiny_model_dir, one, 2))
    for a, b in zip(metrics(one), metrics(out)):
        for key in ("reward", "em", "loss", "kl_ref", "approx_kl", "entropy", "grad_norm"):
            assert b[key] == pytest.approx(a[key], rel=1e-4, abs=1e-6), (a["step"], key)

    # Resumed with two processes it goes on from checkpoint-2; with one it is refused.
    run = launch(2, args(setup, tiny_model_dir, out, 3))
    assert run.returncode == 0, run.stderr[-3000:]
    assert [r["step"] for r in metrics(out)] == [1, 2, 3]
    with pytest.raises(ValueError, match="written by a run of 2 process"):
        main(args(setup, tiny_model_dir, out, 4))


@pytest.mark.slow
def test_fsdp2_processes_train_as_one_checkpoint_whole_and_resume(setup, tiny_model_dir):
    """Two processes under accelerate's FSDP2 (tests/fsdp2_on_cpu.py) with a second pass over each
    batch, whose truncated importance sampling calls the sharded model outside its root: the
    losses of a one-process run, whole weights and a name-keyed optimizer in each checkpoint, and
    a resume that goes on as the one-process run does."""
    import torch
    from safetensors.torch import load_file
    from transformers import AutoModelForCausalLM

    extra = ["--tis_cap", "2", "--updates_per_batch", "2"]
    out, one = setup / "fsdp2", setup / "fsdp2-one"
    run = launch(2, args(setup, tiny_model_dir, out, 2) + extra, ROOT / "tests" / "fsdp2_on_cpu.py")
    assert run.returncode == 0, run.stderr[-3000:]
    run = launch(2, args(setup, tiny_model_dir, out, 3) + extra, ROOT / "tests" / "fsdp2_on_cpu.py")
    assert run.returncode == 0, run.stderr[-3000:]
    main(args(setup, tiny_model_dir, one, 3) + extra)
    assert [r["step"] for r in metrics(out)] == [1, 2, 3]
    for a, b in zip(metrics(one), metrics(out), strict=True):
        for key in ("reward", "loss", "kl_ref", "entropy", "grad_norm", "tis_weight"):
            assert b[key] == pytest.approx(a[key], rel=1e-3, abs=1e-6), (a["step"], key)
    state = torch.load(out / "checkpoint-3" / "trainer_state.pt", weights_only=False)
    names = [n for n, _ in AutoModelForCausalLM.from_pretrained(tiny_model_dir).named_parameters()]
    assert list(state["optimizer"]["state"]) == names  # the whole optimizer state, gathered from the shards
    sharded, whole = (load_file(d / "checkpoint-3" / "model.safetensors") for d in (out, one))
    assert sorted(sharded) == sorted(whole)
    for name, tensor in whole.items():
        torch.testing.assert_close(sharded[name], tensor, rtol=0, atol=1e-4, msg=name)


@pytest.mark.slow
@pytest.mark.parametrize("stage", [2, 3])
def test_deepspeed_processes_train_as_one_checkpoint_whole_and_resume(setup, tiny_model_dir, stage):
    """Two processes under DeepSpeed ZeRO-2 or ZeRO-3 (train/accelerate/deepspeed_zero*.yaml, on
    DeepSpeed's CPU accelerator through tests/deepspeed_on_cpu.py) with a second pass over each
    batch: the losses of a one-process run, whole weights in each checkpoint, every process's
    optimizer partition as plain data (what torch.load reads with weights_only), and a resume
    that goes on as the one-process run does."""
    pytest.importorskip("deepspeed", reason="DeepSpeed is optional (pip install deepspeed)")
    import io

    import torch
    from safetensors.torch import load_file

    extra = ["--tis_cap", "2", "--updates_per_batch", "2"]
    out, one = setup / f"zero{stage}", setup / f"zero{stage}-one"
    config, script = ROOT / "train" / "accelerate" / f"deepspeed_zero{stage}.yaml", ROOT / "tests" / "deepspeed_on_cpu.py"
    run = launch(2, args(setup, tiny_model_dir, out, 2) + extra, script, config)
    assert run.returncode == 0, run.stderr[-3000:]
    run = launch(2, args(setup, tiny_model_dir, out, 3) + extra, script, config)
    assert run.returncode == 0, run.stderr[-3000:]
    assert "resumed from" in run.stdout + run.stderr
    main(args(setup, tiny_model_dir, one, 3) + extra)
    assert [r["step"] for r in metrics(out)] == [1, 2, 3]
    for a, b in zip(metrics(one), metrics(out), strict=True):
        for key in ("reward", "loss", "kl_ref", "entropy", "grad_norm", "tis_weight"):
            assert b[key] == pytest.approx(a[key], rel=1e-3, abs=1e-6), (a["step"], key)
    optimizer = torch.load(out / "checkpoint-3" / "trainer_state.pt", weights_only=False)["optimizer"]
    buffer = io.BytesIO()
    torch.save(optimizer, buffer)
    buffer.seek(0)
    partitions = torch.load(buffer, weights_only=True)["zero_partitions"]  # no DeepSpeed objects in it
    assert len(partitions) == 2
    sharded, whole = (load_file(d / "checkpoint-3" / "model.safetensors") for d in (out, one))
    assert sorted(sharded) == sorted(whole)
    for name, tensor in whole.items():
        torch.testing.assert_close(sharded[name], tensor, rtol=0, atol=1e-4, msg=name)


def test_a_step_must_split_evenly_among_the_processes():
    from train.distributed import Processes
    from train.grpo import GRPOConfig
    from train.questions import check_shares

    two = Processes()
    two.n = 2
    assert check_shares(GRPOConfig(questions_per_step=4, oversample=1.5), two) == 6
    with pytest.raises(ValueError, match=r"questions_per_step \(3\).*among 2 processes"):
        check_shares(GRPOConfig(questions_per_step=3, oversample=1.0), two)
    with pytest.raises(ValueError, match=r"rolled out a step \(5, with oversample 2.5\)"):
        check_shares(GRPOConfig(questions_per_step=2, oversample=2.5), two)


def test_weights_that_differ_between_processes_are_caught():
    import torch

    from train.distributed import Processes

    class Two(Processes):  # a second process whose digest `gather` brings back
        def __init__(self, other_digest):
            super().__init__()
            self.other = other_digest

        def gather(self, obj):
            return [obj, obj if self.other is None else self.other]

    params = [torch.nn.Parameter(torch.ones(3)), torch.nn.Parameter(torch.zeros(2, 2))]
    assert Two(None).weights_agree(params)
    assert not Two("0" * 64).weights_agree(params)
