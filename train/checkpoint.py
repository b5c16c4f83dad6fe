"""Checkpoints: `output_dir/checkpoint-{step}/` with the model (safetensors), tokenizer,
optimizer, scheduler, RNG states, data cursor and config; and resuming a run from one.

A checkpoint is written under a temporary name and renamed when complete, so a run killed
mid-write leaves no half checkpoint; `latest_checkpoint` only ever sees complete ones. On
resume, the lines metrics.jsonl and traces.jsonl got after the checkpoint are dropped
(those steps are redone), so each step appears once.
"""

from __future__ import annotations

import contextlib
import json
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


def rng_state() -> dict:
    state = {"python": random.getstate(), "numpy": np.random.get_state(), "torch": torch.get_rng_state()}
    if torch.cuda.is_available():
        state["cuda"] = torch.cuda.get_rng_state_all()
    return state


def set_rng_state(state: dict) -> None:
    random.setstate(state["python"])
    np.random.set_state(state["numpy"])
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


def save_checkpoint(output_dir: str | Path, step: int, model, tokenizer, optimizer, scheduler, *,
                    cursor: dict, config, keep_last: int | None = 3, extra: dict | None = None,
                    processes: int = 1) -> Path:
    """Write checkpoint-{step} atomically and prune all but the newest `keep_last`; `optimizer`
    is an optimizer or its state dict (a sharded one's, gathered by every process); `extra` is
    further trainer state (such as a weight average) handed back by `load_trainer_state`;
    `processes` is the number of processes that trained it (a resume must use as many)."""
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
    if keep_last:
        for old in checkpoints(output_dir)[:-keep_last]:
            shutil.rmtree(old, ignore_errors=True)
    return final


def checkpoints(output_dir: str | Path) -> list[Path]:
    """Complete checkpoints, oldest first."""
    output_dir = Path(output_dir)
    if not output_dir.exists():
        return []
    found = [(int(m.group(1)), p) for p in output_dir.iterdir() if (m := _NAME.match(p.name)) and (p / STATE_FILE).exists()]
    return [p for _, p in sorted(found)]


def latest_checkpoint(output_dir: str | Path) -> Path | None:
    found = checkpoints(output_dir)
    return found[-1] if found else None


def load_trainer_state(path: str | Path, optimizer, scheduler) -> dict:
    """Restore optimizer, scheduler and RNG from a checkpoint; returns {step, cursor, extra}."""
    state = torch.load(Path(path) / STATE_FILE, weights_only=False)
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
    them), and reload summary.json. A checkpoint resumes with the number of processes that
    wrote it: each process rolls out its share of a step's questions, so another number would
    train on other batches than the run it continues.

    The weight average holds consecutive steps up to the checkpoint; a run resumed with another
    `max_steps` or `average_last` averages another window, so an average that does not start
    where the new window does is dropped and started afresh."""
    console = Console(stderr=True)
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
    summary_path = output_dir / "summary.json"
    summary = json.loads(summary_path.read_text()) if summary_path.exists() else {}
    return RunState(step, state["cursor"], summary)
