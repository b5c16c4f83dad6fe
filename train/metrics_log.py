"""Run logs: `metrics.jsonl` (one line per step), optional trackers, and PNG curves.

Lines are appended with fsync. On resume, `truncate_after(path, step)` drops every line
written after the checkpoint being resumed (steps that will be redone), so a killed and
resumed run has each step exactly once in `metrics.jsonl` and `traces.jsonl`; it reads the
file backwards from its end, so resuming costs no more with a long run's traces.
"""

from __future__ import annotations

import json
import os
from pathlib import Path

from agent.traces import read_traces, repair_partial_tail

TRACKERS = ("none", "tensorboard", "wandb", "trackio")


def append_jsonl(path: Path, records: list[dict]) -> None:
    if not records:
        return
    with open(path, "a", encoding="utf-8") as f:
        f.write("".join(json.dumps(r, default=float) + "\n" for r in records))
        f.flush()
        os.fsync(f.fileno())


def truncate_after(path: Path, step: int, key: str = "step") -> int:
    """Drop the records with record[key] > step (a record without `key` counts as step 0);
    returns how many were dropped. Records are appended in step order, so they are the file's
    tail: it is read backwards from the end, a block at a time, up to the first record kept,
    and cut there. Time and memory go with what is dropped (plus a block), not with the file."""
    if not path.exists():
        return 0
    repair_partial_tail(path)
    with open(path, "rb+") as f:
        keep, dropped = tail_cut(f, step, key, str(path))
        if dropped:
            f.truncate(keep)
            f.flush()
            os.fsync(f.fileno())
    return dropped


def tail_cut(f, step: int, key: str = "step", name: str = "file", block: int = 1 << 16) -> tuple[int, int]:
    """(the byte offset where the records of `f` with record[key] > step begin, how many there
    are): `f` (binary, every line ending in a newline) is read backwards from its end, `block`
    bytes at a time, and no further back than the first record kept."""
    end = f.seek(0, os.SEEK_END)  # the records still to look at end here
    buf, buf_start = b"", end  # the bytes [buf_start, end) of the file
    dropped = 0
    while end > 0:
        nl = buf.rfind(b"\n", 0, len(buf) - 1)  # the newline before the last line, if read yet
        while nl < 0 and buf_start > 0:
            start = max(0, buf_start - block)
            f.seek(start)
            buf, buf_start = f.read(buf_start - start) + buf, start
            nl = buf.rfind(b"\n", 0, len(buf) - 1)
        line = buf[nl + 1 : -1]
        if line.strip():
            try:
                value = json.loads(line).get(key, 0)
            except json.JSONDecodeError as exc:
                raise ValueError(f"{name}: the line ending at byte {end} is not valid JSON ({exc.msg})") from None
            if value <= step:
                return end, dropped
            dropped += 1
        buf = buf[: nl + 1]
        end = buf_start + nl + 1
    return 0, dropped


class Trackers:
    """Forwards metrics to trackio / wandb / tensorboard when asked for and installed."""

    def __init__(self, report_to: str, output_dir: Path, config: dict):
        self.sinks = []
        for name in [n.strip() for n in report_to.split(",") if n.strip() and n.strip() != "none"]:
            try:
                if name == "tensorboard":
                    from torch.utils.tensorboard import SummaryWriter

                    writer = SummaryWriter(str(output_dir / "tensorboard"))
                    self.sinks.append(lambda m, s, w=writer: [w.add_scalar(k, v, s) for k, v in m.items()])
                elif name in ("wandb", "trackio"):
                    module = __import__(name)
                    module.init(project="searchrl", config=config)
                    self.sinks.append(lambda m, s, mod=module: mod.log(m, step=s))
                else:
                    raise ValueError(f"unknown report_to {name!r}; expected trackio, wandb, tensorboard or none")
            except ImportError as exc:
                raise ImportError(f"report_to={name} needs the {name} package: pip install {name}") from exc

    def log(self, metrics: dict, step: int) -> None:
        scalars = {k: float(v) for k, v in metrics.items() if isinstance(v, (int, float))}
        for sink in self.sinks:
            sink(scalars, step)


def plot_curves(metrics_path: Path, out_png: Path, keys=("reward", "em", "dev_em")) -> Path | None:
    """Reward and EM against the step, one panel per key present."""
    import matplotlib

    matplotlib.use("Agg")
    import matplotlib.pyplot as plt

    records = read_traces(metrics_path) if metrics_path.exists() else []
    present = [k for k in keys if any(k in r for r in records)]
    if not present:
        return None
    fig, axes = plt.subplots(1, len(present), figsize=(4.5 * len(present), 3.2), squeeze=False)
    for ax, key in zip(axes[0], present):
        points = [(r["step"], r[key]) for r in records if key in r]
        ax.plot(*zip(*points), marker="." if len(points) < 40 else None, alpha=0.5 if len(points) >= 10 else 1.0)
        if len(points) >= 10:  # each step's batch holds other questions: the trend is in the running mean
            w = max(3, len(points) // 8)
            values = [v for _, v in points]
            windows = [values[max(0, i - w + 1) : i + 1] for i in range(len(values))]
            ax.plot([x for x, _ in points], [sum(win) / len(win) for win in windows], color="black", linewidth=1.5,
                    label=f"mean of last {w}")
            ax.legend(fontsize=8)
        ax.set_xlabel("step")
        ax.set_title(key)
        ax.grid(alpha=0.3)
    fig.tight_layout()
    fig.savefig(out_png, dpi=110)
    plt.close(fig)
    return out_png
