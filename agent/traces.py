"""`traces.jsonl`: one JSON object per trajectory per line.

A record carries everything needed to read, debug, score or retrain on a trajectory:
the question and gold answers, every step (query, passages with ids and scores, verdict,
answer, token span), rewards and advantage when the trainer has them, the exact token
ids / masks / logprobs of every segment, and the transcript in OpenAI chat format.

Writes append one batch with a single `write`, then flush and fsync, so a killed run
loses at most the batch in flight. Opening a file for append first cuts off a partial
last line left by a kill, and the reader skips such a line, so no reader ever breaks.
"""

from __future__ import annotations

import json
import os
import warnings
from dataclasses import asdict
from pathlib import Path
from typing import Any

from retrieval.types import Passage

from agent.prompts import build_messages
from agent.types import Example, Segment, Step, Trajectory

SCHEMA_VERSION = 1


def trajectory_record(
    traj: Trajectory,
    example: Example | None = None,
    tokenizer=None,
    *,
    prompt_style: str = "compact",
    **extra: Any,
) -> dict[str, Any]:
    """The JSON-ready record of one trajectory; `extra` adds fields (rewards, advantage, step)."""
    record: dict[str, Any] = {
        "version": SCHEMA_VERSION,
        "example_id": traj.example_id,
        "group_id": traj.group_id,
        "sample": traj.sample,
        "policy_version": traj.policy_version,
        "finish": traj.finish,
        "answer": traj.answer,
        "steps": [_step_record(s) for s in traj.steps],
        "segments": [asdict(seg) for seg in traj.segments],
    }
    if example is not None:
        record["question"] = example.question
        record["golden_answers"] = list(example.answers)
        record["support"] = list(example.support)
        record["meta"] = {k: v for k, v in example.meta.items() if k != "chain"} | (
            {"chain": example.meta["chain"]} if "chain" in example.meta else {}
        )
    if tokenizer is not None:
        record["segment_texts"] = [
            tokenizer.decode(seg.response_ids, skip_special_tokens=False) for seg in traj.segments
        ]
        if example is not None:
            record["messages"] = build_messages(example.question, prompt_style) + [
                {"role": "assistant", "content": "".join(record["segment_texts"])}
            ]
    record.update(extra)
    return record


def _step_record(step: Step) -> dict[str, Any]:
    rec = asdict(step)
    rec["span"] = list(step.span)
    rec["passages"] = [
        {"id": p.doc_id, "title": p.title, "text": p.text, "score": p.score} for p in step.passages
    ]
    return rec


def record_steps(record: dict[str, Any]) -> list[Step]:
    """The `Step`s of a trajectory's record, its passages with them."""
    return [Step(s["kind"], s["text"], tuple(s["span"]),
                 [Passage(p["id"], p.get("title", ""), p.get("text", ""), p.get("score", 0.0)) for p in s.get("passages", [])],
                 s.get("dropped", False), s.get("segment", 0), s.get("error"))
            for s in record.get("steps", [])]


def record_to_trajectory(record: dict[str, Any]) -> Trajectory:
    """Rebuild a `Trajectory` from its record (e.g. to train on saved demonstrations)."""
    steps = record_steps(record)
    return Trajectory(
        example_id=record["example_id"],
        group_id=record["group_id"],
        sample=record["sample"],
        segments=[Segment(**seg) for seg in record["segments"]],
        steps=steps,
        answer=record.get("answer"),
        finish=record.get("finish", ""),
        policy_version=record.get("policy_version", 0),
    )


class TraceWriter:
    """Appends batches of records to a JSONL file, durably."""

    def __init__(self, path: str | Path):
        self.path = Path(path)
        self.path.parent.mkdir(parents=True, exist_ok=True)
        repair_partial_tail(self.path)

    def write(self, records: list[dict[str, Any]]) -> None:
        if not records:
            return
        blob = "".join(json.dumps(r, ensure_ascii=False) + "\n" for r in records)
        with open(self.path, "a", encoding="utf-8") as f:
            f.write(blob)
            f.flush()
            os.fsync(f.fileno())


def repair_partial_tail(path: Path) -> int:
    """Cut a last line that has no newline (a write killed midway); returns bytes removed."""
    if not path.exists() or path.stat().st_size == 0:
        return 0
    with open(path, "rb+") as f:
        f.seek(0, os.SEEK_END)
        size = f.tell()
        f.seek(max(0, size - 1))
        if f.read(1) == b"\n":
            return 0
        # Walk back to the previous newline in chunks.
        pos, chunk = size, 1 << 16
        while pos > 0:
            start = max(0, pos - chunk)
            f.seek(start)
            buf = f.read(pos - start)
            nl = buf.rfind(b"\n")
            if nl >= 0:
                keep = start + nl + 1
                break
            pos = start
        else:
            keep = 0
        f.truncate(keep)
        return size - keep


def read_traces(path: str | Path) -> list[dict[str, Any]]:
    """Read every record; a truncated last line is skipped with a warning, a corrupt line
    elsewhere raises an error naming the file and line."""
    path = Path(path)
    if not path.exists():
        raise FileNotFoundError(f"no traces file at {path}")
    records = []
    with open(path, encoding="utf-8") as f:
        lines = f.read().split("\n")
    last = len(lines) - 1  # text after the final newline ('' when the file ends cleanly)
    for i, line in enumerate(lines):
        if not line.strip():
            continue
        try:
            records.append(json.loads(line))
        except json.JSONDecodeError as exc:
            if i == last:
                warnings.warn(f"{path}: skipped a truncated last line {i + 1} (a write was interrupted)")
                break
            raise ValueError(f"{path} line {i + 1}: not valid JSON ({exc.msg} at column {exc.colno})") from None
    return records
