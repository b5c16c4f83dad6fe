"""Run logs: `metrics.jsonl` (one line per step), optional trackers, and PNG curves.

Lines are appended with fsync. On resume, `truncate_after(path, step)` drops every line
written after the checkpoint being resumed (steps that will be redone), so a killed and
resumed run has each step exactly once in `metrics.jsonl` and `traces.jsonl`.
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
    """Keep only records with record[key] <= step; returns how many were dropped."""
    if not path.exists():
        return 0
    repair_partial_tail(path)
    records = read_traces(path)
    kept = [r for r in records if r.get(key, 0) <= step]
    if len(kept) == len(records):
        return 0
    tmp = path.with_name(path.name + ".tmp")
    tmp.write_text("".join(json.dumps(r, default=float) + "\n" for r in kept), encoding="utf-8")
    tmp.replace(path)
    return len(records) - len(kept)


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
