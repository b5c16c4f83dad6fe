"""Checkpoints: `output_dir/checkpoint-{step}/` with the model (safetensors), tokenizer,
optimizer, scheduler, RNG states, data cursor, config and the run's summary; and resuming a
run from one.

A checkpoint is complete only when its marker, `complete.json`, says so: the marker is written
last, after every other file and the directory were synced to disk, and records each file's
size. The directory is filled under a temporary name and renamed into place, so a half-written
one never carries the final name either. On resume, `latest_checkpoint` takes the newest
complete checkpoint and names the newer ones it skipped (a file missing, empty or truncated
after the fact: a full disk, a crash before the data reached the disk, a copy cut short), and
the lines metrics.jsonl and traces.jsonl got after the checkpoint are dropped (those steps are
redone), so each step appears once.

The trainer state is read with `torch.load(weights_only=True)`: tensors and plain Python data
only, so a checkpoint from elsewhere cannot run code when it is resumed.
"""

from __future__ import annotations

import contextlib
import json
import os
import pickle
import random
import re
import shutil
from dataclasses import asdict, dataclass, field, is_dataclass
from pathlib import Path

import numpy as np
import torch
from rich.console import Console

from train.metrics_log import truncate_after

_NAME = re.compile(r"^checkpoint-(\d+)$")
STATE_FILE = "trainer_state.pt"
SUMMARY_FILE = "summary.json"
MARKER = "complete.json"


class CheckpointError(ValueError):
    """A checkpoint that cannot be resumed from as it is."""


def rng_state() -> dict:
    """Every RNG's state as tensors and plain data (numpy's key array as an int64 tensor), which
    `torch.load(weights_only=True)` reads back."""
    name, keys, pos, has_gauss, gauss = np.random.get_state()
    state = {"python": random.getstate(), "numpy": (name, torch.from_numpy(keys.astype(np.int64)), pos, has_gauss, gauss),
             "torch": torch.get_rng_state()}
    if torch.cuda.is_available():
        state["cuda"] = torch.cuda.get_rng_state_all()
    return state


def set_rng_state(state: dict) -> None:
    random.setstate(state["python"])
    name, keys, pos, has_gauss, gauss = state["numpy"]
    np.random.set_state((name, keys.numpy().astype(np.uint32), pos, has_gauss, gauss))
    torch.set_rng_state(state["torch"])
    if "cuda" in state and torch.cuda.is_available():
        torch.cuda.set_rng_state_all(state["cuda"])


@contextlib.contextmanager
def quiet_save():
    """transformers draws a tqdm bar ("Writing model shards") for every model it writes, even
    one local shard; among the trainer's own progress lines it is noise. Off while a model is
    written, then as it was."""
    from huggingface_hub.utils import are_progress_bars_disabled, disable_progress_bars
    from transformers.utils import logging as hf_logging

    was_on, hub_was_off = hf_logging.is_progress_bar_enabled(), are_progress_bars_disabled()
    hf_logging.disable_progress_bar()  # switches the hub's bars off too
    try:
        yield
    finally:
        if was_on:
            hf_logging.enable_progress_bar()
        if hub_was_off:
            disable_progress_bars()


@contextlib.contextmanager
def atomic_dir(final: Path):
    """A fresh temporary sibling of `final` to fill; it replaces `final` only when the block
    ends without an error, so a reader never sees a half-written directory."""
    tmp = final.with_name(f".{final.name}.tmp")
    shutil.rmtree(tmp, ignore_errors=True)
    tmp.mkdir(parents=True)
    yield tmp
    shutil.rmtree(final, ignore_errors=True)
    tmp.rename(final)


def save_atomic(model, tokenizer, out_dir: str | Path, extra: dict | None = None) -> Path:
    """A model directory (HF weights and tokenizer, plus `extra` as training.json) written
    under a temporary name, then renamed into place."""
    out_dir = Path(out_dir)
    with atomic_dir(out_dir) as tmp, quiet_save():
        model.save_pretrained(tmp)
        tokenizer.save_pretrained(tmp)
        if extra:
            (tmp / "training.json").write_text(json.dumps(extra, indent=2) + "\n")
    return out_dir


def fsync_path(path: Path) -> None:
    """Flush a file's or a directory's entries to disk (a directory's fsync makes the names in it,
    a rename included, survive a crash)."""
    fd = os.open(path, os.O_RDONLY)
    try:
        os.fsync(fd)
    finally:
        os.close(fd)


def write_atomic(path: Path, text: str) -> None:
    """`text` in `path`, whole or not at all: written to a temporary sibling, synced, renamed."""
    tmp = path.with_name(f".{path.name}.tmp")
    with open(tmp, "w", encoding="utf-8") as f:
        f.write(text)
        f.flush()
        os.fsync(f.fileno())
    tmp.replace(path)
    fsync_path(path.parent)


def mark_complete(directory: Path, step: int) -> None:
    """Sync every file of `directory` and the directory itself, then write the marker that says
    the checkpoint is complete (and each file's size), and sync it."""
    files = sorted(p for p in directory.rglob("*") if p.is_file())
    for p in files:
        fsync_path(p)
    fsync_path(directory)
    sizes = {str(p.relative_to(directory)): p.stat().st_size for p in files}
    with open(directory / MARKER, "w", encoding="utf-8") as f:
        json.dump({"step": step, "files": sizes}, f, indent=1)
        f.flush()
        os.fsync(f.fileno())
    fsync_path(directory)


def incomplete(checkpoint: Path) -> str | None:
    """Why `checkpoint` cannot be resumed from (no marker, a file missing or not the size the
    marker recorded), or None when it is complete."""
    try:
        files = json.loads((checkpoint / MARKER).read_text(encoding="utf-8"))["files"]
    except FileNotFoundError:
        return f"no {MARKER} (it was never finished)"
    except (OSError, ValueError, KeyError, TypeError):
        return f"its {MARKER} is unreadable"
    for name, size in files.items():
        path = checkpoint / name
        if not path.is_file():
            return f"{name} is missing"
        if path.stat().st_size != size:
            return f"{name} has {path.stat().st_size:,} bytes, {size:,} were written"
    return None


def save_checkpoint(output_dir: str | Path, step: int, model, tokenizer, optimizer, scheduler, *,
                    cursor: dict, config, keep_last: int = 3, extra: dict | None = None,
                    summary: dict | None = None, processes: int = 1) -> Path:
    """Write checkpoint-{step}, mark it complete, rename it into place and prune all but the
    newest `keep_last` complete ones (never the one just written); `optimizer` is an optimizer
    or its state dict (a sharded one's, gathered by every process); `extra` is further trainer
    state (such as a weight average) handed back by `load_trainer_state`; `summary` is the
    run's summary.json so far; `processes` is the number of processes that trained it (a
    resume must use as many)."""
    output_dir = Path(output_dir)
    final = output_dir / f"checkpoint-{step}"
    with atomic_dir(final) as tmp, quiet_save():
        model.save_pretrained(tmp)
        tokenizer.save_pretrained(tmp)
        torch.save({
            "step": step,
            "optimizer": optimizer if isinstance(optimizer, dict) else optimizer.state_dict(),
            "scheduler": scheduler.state_dict() if scheduler is not None else None,
            "rng": rng_state(),
            "cursor": cursor,
            "extra": extra or {},
            "processes": processes,
        }, tmp / STATE_FILE)
        cfg = asdict(config) if is_dataclass(config) else dict(config)
        (tmp / "config.json.train").write_text(json.dumps(cfg, indent=2, default=str) + "\n")
        (tmp / SUMMARY_FILE).write_text(json.dumps(summary or {}, indent=2) + "\n")
        mark_complete(tmp, step)
    fsync_path(output_dir)
    for old in checkpoints(output_dir)[:-keep_last]:
        if old != final:
            shutil.rmtree(old, ignore_errors=True)
    return final


def checkpoint_dirs(output_dir: str | Path) -> list[Path]:
    """Every checkpoint-{step} directory, complete or not, oldest first."""
    output_dir = Path(output_dir)
    if not output_dir.exists():
        return []
    found = [(int(m.group(1)), p) for p in output_dir.iterdir() if (m := _NAME.match(p.name)) and p.is_dir()]
    return [p for _, p in sorted(found)]


def checkpoints(output_dir: str | Path) -> list[Path]:
    """Complete checkpoints, oldest first."""
    return [p for p in checkpoint_dirs(output_dir) if incomplete(p) is None]


def latest_checkpoint(output_dir: str | Path, log=None) -> Path | None:
    """The newest complete checkpoint (None when there is none); `log` gets one line for each
    newer checkpoint skipped, saying why."""
    for path in reversed(checkpoint_dirs(output_dir)):
        problem = incomplete(path)
        if problem is None:
            return path
        if log is not None:
            log(f"skipped {path}: {problem}")
    return None


def load_trainer_state(path: str | Path, optimizer, scheduler) -> dict:
    """Restore optimizer, scheduler and RNG from a checkpoint; returns {step, cursor, extra}.
    Only tensors and plain data are read: a state file carrying any other object is refused."""
    try:
        state = torch.load(Path(path) / STATE_FILE, weights_only=True)
    except pickle.UnpicklingError as error:
        reason = str(error).strip().splitlines()[0]
        raise CheckpointError(f"{Path(path) / STATE_FILE}: refused, it holds more than tensors and plain data "
                              f"({reason})") from None
    optimizer.load_state_dict(state["optimizer"])
    if scheduler is not None and state["scheduler"] is not None:
        scheduler.load_state_dict(state["scheduler"])
    set_rng_state(state["rng"])
    return {"step": state["step"], "cursor": state["cursor"], "extra": state.get("extra", {}),
            "processes": state.get("processes", 1)}


@dataclass
class RunState:
    """Where a run is: steps done, the data cursor, and summary.json's evaluations."""

    step: int = 0
    cursor: dict = field(default_factory=lambda: {"epoch": 0, "pos": 0})
    summary: dict = field(default_factory=dict)


def resume_run(output_dir: Path, checkpoint: Path, optimizer, scheduler, average, *, max_steps: int,
               average_last: int, processes: int = 1, logs: bool = True) -> RunState:
    """Restore `checkpoint`'s optimizer, scheduler, RNG, data cursor and weight average (`average`),
    drop what metrics.jsonl and traces.jsonl logged after it (`logs`: the process that writes
    them), and reload summary.json (the checkpoint's copy where the run's own is unreadable). A checkpoint resumes with the number of processes that
    wrote it: each process rolls out its share of a step's questions, so another number would
    train on other batches than the run it continues.

    The weight average holds consecutive steps up to the checkpoint; a run resumed with another
    `max_steps` or `average_last` averages another window, so an average that does not start
    where the new window does is dropped and started afresh."""
    console = Console(stderr=True, soft_wrap=True)  # lines that name paths stay whole
    state = load_trainer_state(checkpoint, optimizer, scheduler)
    if state["processes"] != processes:
        raise ValueError(f"{checkpoint} was written by a run of {state['processes']} process(es); resume it with as many "
                         f"(accelerate launch --num_processes {state['processes']}), not {processes}, or start a new "
                         "output_dir")
    step = state["step"]
    if "average" in state["extra"]:
        average.load_state_dict(state["extra"]["average"])
        window, first = max(1, max_steps - average_last + 1), average.first_step(step)
        if average.count and first != window and step < max_steps:
            console.print(f"the weight average of steps {first}-{step} is dropped: with max_steps {max_steps} and "
                          f"average_last {average_last} the final model averages steps from {max(window, step + 1)} on")
            average.reset()
    if logs:
        dropped = truncate_after(output_dir / "metrics.jsonl", step) + truncate_after(output_dir / "traces.jsonl", step)
        console.print(f"resumed from {checkpoint} (step {step}; {dropped} lines after it dropped)")
    return RunState(step, state["cursor"], read_summary(output_dir, checkpoint, console))


def read_summary(output_dir: Path, checkpoint: Path, console: Console) -> dict:
    """The run's summary.json, or the copy `checkpoint` holds where the run's own is missing or
    unreadable (a write cut short)."""
    path = output_dir / SUMMARY_FILE
    try:
        summary = json.loads(path.read_text(encoding="utf-8"))
        if isinstance(summary, dict):
            return summary
    except (OSError, ValueError):
        pass
    if path.exists():
        console.print(f"{path} is unreadable: the summary is taken from {checkpoint / SUMMARY_FILE}")
    return json.loads((checkpoint / SUMMARY_FILE).read_text(encoding="utf-8"))
