"""How every command ends on bad input: one line `error: ...` on stderr and exit status 2.

    if __name__ == "__main__":
        run(main)

A config value that is not allowed, a file that is missing or malformed, a refused
option: the command's `main` raises (a `ValueError` or `OSError` that names the file, the
field and the value, or `SystemExit` with a message), and `run` prints that one line instead
of a traceback. argparse's own errors (an unknown flag, `--group_size 2.5`) come out the same
way, without the usage block. Any other exception is a bug and keeps its traceback; with
`--debug` every error does.

Kept in `retrieval`, the lowest layer, because `python -m retrieval.build` is one of the
commands, and dependencies point one way.
"""

from __future__ import annotations

import argparse
import contextlib
import sys
from collections.abc import Callable, Sequence
from pathlib import Path


class UsageError(Exception):
    """A command line argparse refused."""


def _raise_usage(parser: argparse.ArgumentParser, message: str):
    raise UsageError(f"{message} (see {parser.prog} --help)")


@contextlib.contextmanager
def _argparse_errors_raise():
    """argparse prints its usage block and exits on a bad flag; here it raises instead, so the
    error is one line like any other."""
    original = argparse.ArgumentParser.error
    argparse.ArgumentParser.error = _raise_usage
    try:
        yield
    finally:
        argparse.ArgumentParser.error = original


def fail(message: str) -> None:
    """Print `error: message` on one line to stderr and exit with status 2."""
    message = " ".join(str(message).split()).removeprefix("error: ")
    print(f"error: {message}", file=sys.stderr)
    sys.exit(2)


def run(main: Callable, argv: list[str] | None = None) -> None:
    """Call `main(argv)` (default: the process's arguments, less `--debug`) as a command and
    exit with its status: 0, or the int `main` returns."""
    argv = list(sys.argv[1:] if argv is None else argv)
    debug = "--debug" in argv
    argv = [a for a in argv if a != "--debug"]
    try:
        with contextlib.nullcontext() if debug else _argparse_errors_raise():
            result = main(argv)
    except (ValueError, OSError, UsageError) as error:
        if debug:
            raise
        fail(str(error) or type(error).__name__)
    except SystemExit as exit_:
        if debug or not isinstance(exit_.code, str):
            raise
        fail(exit_.code)
    sys.exit(result if isinstance(result, int) else 0)


def check_output_dir(out: Path, own: Sequence[str], *, what: str, action: str, overwrite: bool) -> None:
    """Refuse `out` when it is a file, or a directory holding anything but a command's `own`
    entries unless `overwrite`: written among other files, `what` would mix with them."""
    if out.exists() and not out.is_dir():
        raise ValueError(f"{out}: is a file, expected a directory path")
    foreign = sorted(p.name for p in out.iterdir() if p.name not in own) if out.is_dir() else []
    if foreign and not overwrite:
        raise ValueError(f"{out}: holds {foreign[0]!r}, which is not part of {what}; refusing to {action} there "
                         f"(choose another --out, or pass --overwrite to replace only {', '.join(own)} and keep the rest)")
