"""Checkpoints a run can trust: complete only when their marker says so, resumed from the
newest complete one, pruned without losing it, read without running code; log truncation
from the end of the file; one trainer per output_dir."""

import json
import os
import random
import subprocess
import sys
from pathlib import Path

import numpy as np
import pytest
import torch

from agent.traces import read_traces, repair_partial_tail
from train.checkpoint import (
    CheckpointError,
    checkpoints,
    latest_checkpoint,
    load_trainer_state,
    resume_run,
    save_checkpoint,
)
from train.metrics_log import append_jsonl, tail_cut, truncate_after

ROOT = Path(__file__).resolve().parents[1]


@pytest.fixture(scope="module")
def policy(tiny_model_dir):
    """(model, tokenizer, optimizer, scheduler) of the tiny model, after one optimizer step."""
    from transformers import AutoModelForCausalLM, AutoTokenizer

    from train.update import OptimConfig, lr_scheduler, make_optimizer

    model = AutoModelForCausalLM.from_pretrained(tiny_model_dir)
    optimizer = make_optimizer([p for p in model.parameters() if p.requires_grad], OptimConfig())
    model(input_ids=torch.tensor([[1, 2, 3]]), labels=torch.tensor([[1, 2, 3]])).loss.backward()
    optimizer.step()
    return model, AutoTokenizer.from_pretrained(tiny_model_dir), optimizer, lr_scheduler(optimizer, OptimConfig(), 10)


def save(out, step, policy, keep_last=5, summary=None):
    model, tokenizer, optimizer, scheduler = policy
    return save_checkpoint(out, step, model, tokenizer, optimizer, scheduler, cursor={"epoch": 0, "pos": step},
                           config={"step": step}, keep_last=keep_last, summary=summary or {"test_before": {"em": 0.1}})


def empty(path):
    path.write_bytes(b"")


def cut_in_half(path):
    data = path.read_bytes()
    path.write_bytes(data[: len(data) // 2])


@pytest.mark.parametrize("damage, name, why", [
    (empty, "model.safetensors", "model.safetensors has 0 bytes"),
    (cut_in_half, "trainer_state.pt", "trainer_state.pt has"),
    (empty, "summary.json", "summary.json has 0 bytes"),
    (os.remove, "complete.json", "no complete.json"),
])
def test_a_damaged_newest_checkpoint_is_skipped_and_named(policy, tmp_path, damage, name, why):
    for step in (1, 2, 3):
        save(tmp_path, step, policy)
    damage(tmp_path / "checkpoint-3" / name)
    skipped = []
    assert latest_checkpoint(tmp_path, log=skipped.append) == tmp_path / "checkpoint-2"
    assert len(skipped) == 1 and str(tmp_path / "checkpoint-3") in skipped[0] and why in skipped[0], skipped
    assert checkpoints(tmp_path) == [tmp_path / "checkpoint-1", tmp_path / "checkpoint-2"]


def test_a_checkpoint_is_complete_only_with_its_marker_written_last(policy, tmp_path):
    path = save(tmp_path, 1, policy)
    marker = json.loads((path / "complete.json").read_text())
    files = sorted(p.name for p in path.iterdir() if p.name != "complete.json")
    assert marker["step"] == 1 and sorted(marker["files"]) == files
    assert all(marker["files"][n] == (path / n).stat().st_size for n in files)
    assert not list(tmp_path.glob(".checkpoint-*"))  # the temporary directory was renamed into place


def test_pruning_never_deletes_the_checkpoint_just_written(policy, tmp_path):
    save(tmp_path, 9, policy)  # a complete checkpoint of a longer, earlier run in the same directory
    save(tmp_path, 2, policy, keep_last=1)
    assert (tmp_path / "checkpoint-2").exists() and latest_checkpoint(tmp_path) is not None
    (tmp_path / "checkpoint-9" / "complete.json").unlink()  # now incomplete: pruning counts complete ones only
    save(tmp_path, 3, policy, keep_last=1)
    assert checkpoints(tmp_path) == [tmp_path / "checkpoint-3"] and (tmp_path / "checkpoint-9").exists()


def test_trainer_state_roundtrips_every_rng(policy, tmp_path):
    *_, optimizer, scheduler = policy
    random.seed(1), np.random.seed(2), torch.manual_seed(3)
    path = save(tmp_path, 4, policy)
    draws = (random.random(), np.random.rand(), torch.rand(1).item())
    random.seed(9), np.random.seed(9), torch.manual_seed(9)
    state = load_trainer_state(path, optimizer, scheduler)
    assert (random.random(), np.random.rand(), torch.rand(1).item()) == draws
    assert state["step"] == 4 and state["cursor"] == {"epoch": 0, "pos": 4}


class RunsCode:
    """Unpickling this calls os.mkdir(path): what a hostile checkpoint would do, harmlessly."""

    def __init__(self, path):
        self.path = path

    def __reduce__(self):
        return os.mkdir, (self.path,)


def test_a_trainer_state_that_would_run_code_is_refused(policy, tmp_path):
    path = save(tmp_path, 1, policy)
    flag = tmp_path / "code-ran"
    torch.save({"step": 1, "rng": RunsCode(str(flag))}, path / "trainer_state.pt")
    _, _, optimizer, scheduler = policy
    with pytest.raises(CheckpointError, match="trainer_state.pt: refused, it holds more than tensors and plain data"):
        load_trainer_state(path, optimizer, scheduler)
    assert not flag.exists()


def test_resume_takes_the_checkpoints_summary_where_the_runs_is_unreadable(policy, tmp_path):
    from train.averaging import WeightAverage

    model, _, optimizer, scheduler = policy
    path = save(tmp_path, 2, policy, summary={"test_before": {"em": 0.25}})
    (tmp_path / "summary.json").write_text("")  # a write cut short
    state = resume_run(tmp_path, path, optimizer, scheduler, WeightAverage(list(model.parameters())), max_steps=5,
                       average_last=0)
    assert state.step == 2 and state.summary == {"test_before": {"em": 0.25}}


# -- metrics.jsonl / traces.jsonl truncation -----------------------------------------------------


def truncate_by_rewriting(path: Path, step: int) -> int:
    """What truncate_after did before: read every record, write back those up to `step`."""
    if not path.exists():
        return 0
    repair_partial_tail(path)
    records = read_traces(path)
    kept = [r for r in records if r.get("step", 0) <= step]
    if len(kept) == len(records):
        return 0
    path.write_text("".join(json.dumps(r, default=float) + "\n" for r in kept), encoding="utf-8")
    return len(records) - len(kept)


def log_file(path: Path, steps: int, per_step: int = 3, partial_tail: bool = True) -> Path:
    rng = random.Random(0)
    append_jsonl(path, [{"step": 0, "dev_em": 0.1}])
    for step in range(1, steps + 1):
        append_jsonl(path, [{"step": step, "text": "x" * rng.randrange(1, 3000), "i": i} for i in range(per_step)])
    if partial_tail:
        with open(path, "a") as f:
            f.write('{"step": 99, "text": "cut sh')
    return path


@pytest.mark.parametrize("step", [-1, 0, 1, 7, 19, 20, 25])
def test_truncation_from_the_end_writes_what_rewriting_the_file_wrote(tmp_path, step):
    new, old = log_file(tmp_path / "new.jsonl", 20), log_file(tmp_path / "old.jsonl", 20)
    assert truncate_after(new, step) == truncate_by_rewriting(old, step)
    assert new.read_bytes() == old.read_bytes()


class CountingReader:
    """A binary file that counts the bytes read from it."""

    def __init__(self, f):
        self.f, self.bytes_read = f, 0

    def seek(self, *args):
        return self.f.seek(*args)

    def read(self, n=-1):
        data = self.f.read(n)
        self.bytes_read += len(data)
        return data


@pytest.mark.parametrize("steps", [50, 500])
def test_truncation_reads_only_the_dropped_records_from_the_end(tmp_path, steps):
    """Bytes read: the two dropped steps, the record kept before them and at most one block
    more, however long the file."""
    path = log_file(tmp_path / "traces.jsonl", steps, partial_tail=False)
    lines = path.read_bytes().splitlines(keepends=True)
    tail = sum(len(line) for line in lines[-7:])  # 2 steps x 3 records dropped, 1 record kept
    with open(path, "rb") as f:
        reader = CountingReader(f)
        keep, dropped = tail_cut(reader, steps - 2, block=1024)
    assert dropped == 6 and keep == path.stat().st_size - sum(len(line) for line in lines[-6:])
    assert reader.bytes_read <= tail + 1024


# -- one trainer per output_dir ----------------------------------------------------------------


def test_a_second_trainer_on_an_output_dir_is_refused_at_once_and_the_lock_dies_with_its_holder(tmp_path, capsys):
    from retrieval import cli
    from train.grpo import main
    from train.lock import hold_output_dir

    out = tmp_path / "run"
    holder = subprocess.Popen([sys.executable, "-c", "import sys, time\nfrom pathlib import Path\n"
                               "from train.lock import hold_output_dir\n"
                               f"with hold_output_dir(Path({str(out)!r})):\n"
                               "    print('held', flush=True)\n    time.sleep(120)\n"],
                              cwd=ROOT, stdout=subprocess.PIPE, text=True)
    try:
        assert holder.stdout.readline().strip() == "held"
        with pytest.raises(SystemExit) as exit_:
            cli.run(main, ["--output_dir", str(out)])
        err = capsys.readouterr().err
        assert exit_.value.code == 2 and err.count("\n") == 1 and "Traceback" not in err
        assert err.startswith(f"error: {out} is in use by pid {holder.pid} on ")
    finally:
        holder.kill()  # SIGKILL: no cleanup runs in the holder
        holder.wait()
    with hold_output_dir(out):  # the operating system released the lock with its holder
        pass
