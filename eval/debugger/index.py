"""A lazy index over one JSONL trace file: byte offsets and a small row per record.

The file is read once, in chunks, into (offset, row) pairs; a trajectory is read back on
demand by seeking to its offset. `refresh` picks up lines a training run appended since
(only whole lines: a line still being written waits for its newline), and starts over
when the file shrank or was replaced (a resumed run cuts the lines logged after its
checkpoint). Every method is safe to call from several threads.
"""

from __future__ import annotations

import json
import os
import threading
from pathlib import Path

from eval.debugger.rows import trace_id, trace_row

CHUNK_BYTES = 4 << 20  # read per step of `refresh`


class TraceIndex:
    def __init__(self, path: Path):
        self.path = Path(path)
        self._lock = threading.RLock()
        self._reset()

    def _reset(self) -> None:
        self.offsets: list[int] = []  # (N,) byte offset of each record's line
        self.rows: list[dict] = []  # (N,) `trace_row` of each record
        self.by_id: dict[str, int] = {}  # trace id -> position
        self.groups: dict[str, list[int]] = {}  # group id -> positions, in file order
        self.children: dict[str, list[int]] = {}  # parent trace id -> positions of its forks
        self.facets = {"steps": set(), "finishes": set(), "categories": set(), "hops": set()}
        self.indexed_bytes = 0  # bytes read up to the end of the last whole line
        self.lines_read = 0  # whole lines read, blank and bad ones included
        self.size = 0  # the file's size when last looked at
        self.bad_lines: list[str] = []  # lines that were not JSON, with where they are
        self._inode = None

    # -- reading the file ---------------------------------------------------------------------

    def refresh(self, max_bytes: int | None = None) -> int:
        """Index whole lines appended since the last call (at most about `max_bytes` of them);
        returns how many records were added."""
        with self._lock:
            try:
                stat = os.stat(self.path)
            except FileNotFoundError:
                if self.offsets:
                    self._reset()
                return 0
            if stat.st_size < self.indexed_bytes or (self._inode is not None and stat.st_ino != self._inode):
                self._reset()
            self._inode, self.size = stat.st_ino, stat.st_size
            added = 0
            with open(self.path, "rb") as f:
                while self.indexed_bytes < stat.st_size and (max_bytes is None or max_bytes > 0):
                    f.seek(self.indexed_bytes)
                    left = stat.st_size - self.indexed_bytes
                    chunk = f.read(min(CHUNK_BYTES, left, CHUNK_BYTES if max_bytes is None else max_bytes))
                    end = chunk.rfind(b"\n")
                    if end < 0:
                        if len(chunk) >= left:
                            break  # a line still being written
                        chunk = chunk + f.readline()  # the rest of a line longer than the chunk
                        end = chunk.rfind(b"\n")
                        if end < 0:
                            break
                    added += self._add_lines(chunk[: end + 1], self.indexed_bytes)
                    self.indexed_bytes += end + 1
                    if max_bytes is not None:
                        max_bytes -= end + 1
            return added

    def _add_lines(self, blob: bytes, base: int) -> int:
        added, offset = 0, base
        for line in blob.split(b"\n")[:-1]:
            start, offset = offset, offset + len(line) + 1
            self.lines_read += 1
            if not line.strip():
                continue
            try:
                record = json.loads(line)
            except json.JSONDecodeError as exc:
                self.bad_lines.append(f"{self.path} line {self.lines_read}: not valid JSON ({exc.msg} at column {exc.colno})")
                continue
            self._add(record, start)
            added += 1
        return added

    def _add(self, record: dict, offset: int) -> None:
        position = len(self.offsets)
        row = trace_row(record, position)
        self.offsets.append(offset)
        self.rows.append(row)
        self.by_id.setdefault(trace_id(record), position)
        self.groups.setdefault(row["group"], []).append(position)
        if row["parent"]:
            self.children.setdefault(row["parent"], []).append(position)
        for facet, key in (("steps", "step"), ("finishes", "finish"), ("categories", "category"), ("hops", "hops")):
            if row[key] is not None:
                self.facets[facet].add(row[key])

    # -- answering ------------------------------------------------------------------------------

    @property
    def done(self) -> bool:
        """Every whole line of the file, as last looked at, is indexed."""
        return self.indexed_bytes >= self.size

    def snapshot(self) -> list[dict]:
        with self._lock:
            return list(self.rows)

    def record(self, position: int) -> dict:
        """The full record at `position` (IndexError when there is none)."""
        with self._lock:
            if not 0 <= position < len(self.offsets):
                raise IndexError(f"{self.path}: no trace at position {position} (it has {len(self.offsets)})")
            offset = self.offsets[position]
        with open(self.path, "rb") as f:
            f.seek(offset)
            return json.loads(f.readline())

    def facet_lists(self) -> dict:
        with self._lock:
            return {k: sorted(v) for k, v in self.facets.items()}
