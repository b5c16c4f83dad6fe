"""How a cost grows with a size: a clock for shared machines, the slope of a log-log fit said
in words, and the curves as a PNG.

On a machine shared with other work, wall time measures the neighbours as much as the code:
a process that waits for a core is not slower, only later. `clock` records both the wall time
and the process's CPU time (every thread's); with one thread (`OMP_NUM_THREADS=1`), CPU time is
what the wall time would be on a core of its own, so the benches fit growth on it.
"""

from __future__ import annotations

import math
import os
import time
from contextlib import contextmanager
from pathlib import Path

import numpy as np

__all__ = ["clock", "growth_words", "plot_panels", "rss_bytes", "slope", "threads"]


@contextmanager
def clock():
    """{"wall": s, "cpu": s} of the block, filled in when it ends."""
    spent: dict[str, float] = {}
    wall, cpu = time.perf_counter(), time.process_time()
    try:
        yield spent
    finally:
        spent["wall"], spent["cpu"] = time.perf_counter() - wall, time.process_time() - cpu


def threads() -> str:
    """The threads torch and faiss compute with, and the load on the machine, for a caption."""
    import faiss
    import torch

    return (f"torch {torch.get_num_threads()} / faiss {faiss.omp_get_max_threads()} threads; load average "
            f"{os.getloadavg()[0]:.1f} on {os.cpu_count()} cores")


def slope(sizes: list[float], costs: list[float]) -> float:
    """The exponent b of cost ~ a * size^b, fitted by least squares on logs (nan under two points).

    >>> round(slope([1e4, 1e5, 1e6], [2.0, 20.0, 200.0]), 3)
    1.0
    >>> round(slope([256, 512, 1024], [1.0, 4.0, 16.0]), 3)
    2.0
    """
    pairs = [(x, y) for x, y in zip(sizes, costs) if x > 0 and y is not None and y > 0]
    if len(pairs) < 2:
        return math.nan
    x, y = np.log([p[0] for p in pairs]), np.log([p[1] for p in pairs])
    return float(np.polyfit(x, y, 1)[0])


def growth_words(exponent: float) -> str:
    """An exponent said in words: what a reader needs to extrapolate.

    >>> growth_words(1.04)
    'linear'
    >>> growth_words(0.48)
    'about the square root'
    """
    if math.isnan(exponent):
        return "not fitted"
    bands = [(0.15, "flat"), (0.35, "much slower than linear (logarithmic-like)"), (0.65, "about the square root"),
             (0.85, "sublinear"), (1.15, "linear"), (1.5, "slightly faster than linear"),
             (1.85, "between linear and quadratic"), (2.2, "quadratic")]
    if exponent < -0.15:
        return "falling"
    return next((words for bound, words in bands if exponent < bound), "faster than quadratic")


def plot_panels(path: str | Path, title: str, panels: list[dict]) -> Path:
    """A PNG of log-log panels side by side; each panel is {"title", "xlabel", "ylabel", "series":
    {label: (xs, ys)}}; points with a missing or non-positive y are left out."""
    import matplotlib

    matplotlib.use("Agg")  # files only, no display
    import matplotlib.pyplot as plt

    path = Path(path)
    path.parent.mkdir(parents=True, exist_ok=True)
    from matplotlib.ticker import FuncFormatter, NullFormatter

    columns = len(panels) if len(panels) <= 3 else 2
    rows = math.ceil(len(panels) / columns)
    fig, axes = plt.subplots(rows, columns, figsize=(4.6 * columns, 3.6 * rows + 0.3), squeeze=False)
    for ax, panel in zip(axes.flat, panels):
        for label, (xs, ys) in panel["series"].items():
            points = sorted((x, y) for x, y in zip(xs, ys) if y is not None and y > 0)
            if points:
                ax.plot(*zip(*points), marker="o", label=label)
        ax.set_xscale("log")
        ax.set_yscale("log")
        # the measured sizes as the x ticks, written short (10k, 1M)
        ax.set_xticks(sorted({x for xs, _ in panel["series"].values() for x in xs}))
        ax.xaxis.set_major_formatter(FuncFormatter(_short))
        ax.xaxis.set_minor_formatter(NullFormatter())
        ax.set_title(panel["title"], fontsize=10)
        ax.set_xlabel(panel["xlabel"])
        ax.set_ylabel(panel["ylabel"])
        ax.grid(True, which="both", alpha=0.3)
        if ax.lines:
            ax.legend(fontsize=8)
    fig.suptitle(title, fontsize=11)
    fig.tight_layout()
    fig.savefig(path, dpi=110)
    plt.close(fig)
    return path


def _short(value: float, _position=None) -> str:
    """10000 -> '10k', 1000000 -> '1M', 256 -> '256'."""
    for unit, scale in (("M", 1e6), ("k", 1e3)):
        if value >= scale:
            return f"{value / scale:g}{unit}"
    return f"{value:g}"


def rss_bytes() -> int | None:
    """This process's resident memory now (Linux /proc; None elsewhere)."""
    try:
        with open("/proc/self/statm") as f:
            return int(f.read().split()[1]) * os.sysconf("SC_PAGE_SIZE")
    except OSError:
        return None
