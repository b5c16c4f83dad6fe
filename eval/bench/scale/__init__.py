"""How cost grows with scale, on three axes; each prints a table, fits how the cost grows
(the slope b of a log-log fit, cost ~ size^b: 1 is linear, 2 quadratic, 0.5 the square root)
and writes its curves as a PNG.

    python -m eval.bench.scale retrieval     # FAISS Flat / HNSW32 / IVF-PQ and BM25, 10k to 1M passages
    python -m eval.bench.scale rollout       # seconds per rollout call against questions x group size
    python -m eval.bench.scale train         # the update's seconds per row against the sequence length

`retrieval --help` lists that axis's flags; `rollout` and `train` take the flags their
docstrings name and GRPO's, and build the trainer as `train/grpo.py` does.
"""

from __future__ import annotations

import sys

__all__ = ["AXES", "main"]

AXES = ("retrieval", "rollout", "train")


def main(argv: list[str] | None = None) -> dict:
    argv = list(sys.argv[1:] if argv is None else argv)
    if not argv or argv[0] not in AXES:
        raise SystemExit(f"usage: python -m eval.bench.scale {{{','.join(AXES)}}} [flags]; got "
                         f"{argv[0] if argv else 'no axis'!r}")
    axis, rest = argv[0], argv[1:]
    if axis == "retrieval":
        from eval.bench.scale.retrieval import main as run
    elif axis == "rollout":
        from eval.bench.scale.rollout import main as run
    else:
        from eval.bench.scale.update import main as run
    return run(rest)
