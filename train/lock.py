"""One trainer per output_dir: an operating-system lock on `output_dir/.lock`, held while the
run lives.

Two trainers on one directory would log every step twice and overwrite each other's
checkpoints, so the second is refused at once, with who holds the directory. The lock is
`filelock`'s (flock on Unix, msvcrt on Windows): the operating system releases it when the
holder exits or is killed, so a crashed run never leaves a stale lock behind. The holder's
pid and host are written next to it, in `output_dir/.lock.holder`, for the refusal message.
"""

from __future__ import annotations

import contextlib
import os
import socket
from collections.abc import Iterator
from pathlib import Path

from filelock import FileLock, Timeout

LOCK_FILE = ".lock"


class OutputDirInUse(OSError):
    """Another process holds the output directory."""


@contextlib.contextmanager
def hold_output_dir(output_dir: Path) -> Iterator[None]:
    """Hold `output_dir` (made if missing) for the block; refuse at once with `OutputDirInUse`
    when another process holds it."""
    output_dir.mkdir(parents=True, exist_ok=True)
    lock = FileLock(output_dir / LOCK_FILE, timeout=0)
    holder = output_dir / f"{LOCK_FILE}.holder"
    try:
        lock.acquire()
    except Timeout:
        who = holder.read_text(encoding="utf-8").strip() if holder.exists() else "another process"
        raise OutputDirInUse(f"{output_dir} is in use by {who or 'another process'}: one trainer per output_dir "
                             "(wait for it to end, or choose another --output_dir)") from None
    try:
        holder.write_text(f"pid {os.getpid()} on {socket.gethostname()}\n", encoding="utf-8")
        yield
    finally:
        lock.release()
