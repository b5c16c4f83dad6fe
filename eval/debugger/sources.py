"""What a run directory holds for the debugger: its trace files, metrics, settings, and the
policies, tokenizer and retrievers it was made with.

A training run (`train/grpo.py`) writes `traces.jsonl`, `metrics.jsonl`, `summary.json` and
`checkpoint-{step}/` (with `config.json.train`) and `final/`; an evaluation (`eval.run`)
writes `traces.jsonl` and `metrics.json` (its settings under "config"). Forks made in the
debugger or `eval.chat` go to `forks.jsonl` beside the traces, never into them.
"""

from __future__ import annotations

import json
import re
from dataclasses import dataclass
from pathlib import Path

FORKS_FILE = "forks.jsonl"


@dataclass(frozen=True)
class RunFiles:
    name: str  # shown in the page
    root: Path  # the run directory: the only place files are served from
    traces: Path  # the run's own traces (read only)
    forks: Path  # forks.jsonl beside them (appended to)

    @property
    def metrics(self) -> Path:
        return self.root / "metrics.jsonl"


def find_runs(paths: list[str | Path]) -> list[RunFiles]:
    """Each argument is a run directory (holding traces.jsonl) or a traces file; raises
    ValueError naming the path when it is neither."""
    runs = []
    for given in paths:
        path = Path(given).resolve()
        if path.is_dir():
            traces = path / "traces.jsonl"
            if not traces.exists():
                raise ValueError(f"{given}: no traces.jsonl in this directory (pass a run directory or a traces file)")
        elif path.is_file():
            traces = path
        else:
            raise ValueError(f"{given}: no such file or directory")
        root = traces.parent
        runs.append(RunFiles(root.name or str(root), root, traces, root / FORKS_FILE))
    names = [r.name for r in runs]
    return [RunFiles(f"{r.name} ({i})", r.root, r.traces, r.forks) if names.count(r.name) > 1 else r
            for i, r in enumerate(runs)]


def checkpoints(root: Path) -> list[Path]:
    """checkpoint-{step} directories, newest first."""
    found = [(int(m.group(1)), p) for p in root.glob("checkpoint-*") if (m := re.fullmatch(r"checkpoint-(\d+)", p.name))]
    return [p for _, p in sorted(found, reverse=True)]


def run_settings(run: RunFiles) -> dict:
    """The run's data, index, policy and rollout settings, where it recorded them ({} if not)."""
    for ckpt in checkpoints(run.root):
        cfg_path = ckpt / "config.json.train"
        if cfg_path.exists():
            cfg = json.loads(cfg_path.read_text())
            rollout = cfg.get("rollout", {})
            return {"data": cfg.get("data"), "index": cfg.get("index"), "policy": cfg.get("policy", {}).get("model"),
                    "passages_per_search": rollout.get("passages_per_search"), "max_turns": rollout.get("max_turns"),
                    "max_new_tokens": rollout.get("max_new_tokens")}
    metrics = run.root / "metrics.json"
    if metrics.exists():
        cfg = json.loads(metrics.read_text()).get("config", {})
        return {k: cfg.get(k) for k in ("data", "index", "policy", "passages_per_search", "max_turns", "max_new_tokens")}
    return {}


def model_dirs(run: RunFiles) -> dict[str, Path]:
    """Policies the run left: `final` and its checkpoints, newest first (those with weights)."""
    found = {}
    for path in [run.root / "final", *checkpoints(run.root)]:
        if (path / "config.json").exists():
            found[path.name] = path
    return found


def tiny_dir(data: str | None, model: str = "tiny") -> Path | None:
    """The embedded policy `model` (tiny, tiny-large) of a world, when it has been built."""
    if not data:
        return None
    from eval.policies import world_dir
    from train.tiny import tiny_policy_dir

    path = tiny_policy_dir(world_dir(Path(data)), model)
    return path if (path / "config.json").exists() else None


def tokenizer_source(run: RunFiles) -> Path | None:
    """A directory holding the tokenizer the run's traces were sampled with."""
    settings = run_settings(run)
    candidates = list(model_dirs(run).values())
    policy = settings.get("policy")
    from train.tiny import is_embedded

    if policy and is_embedded(policy):
        candidates.append(tiny_dir(settings.get("data"), policy))
    elif policy and Path(policy).is_dir():
        candidates.append(Path(policy))
    for path in candidates:
        if path is not None and ((path / "tokenizer.json").exists() or (path / "tokenizer_config.json").exists()):
            return path
    return None


def read_metrics(run: RunFiles) -> dict:
    """{"curves": per-step rows of metrics.jsonl (reward, EM, dev EM), "summary": metrics.json's
    headline figures or summary.json's test EM}; a truncated last line is skipped."""
    curves = []
    if run.metrics.exists():
        for line in run.metrics.read_text(encoding="utf-8").splitlines():
            try:
                row = json.loads(line)
            except json.JSONDecodeError:
                continue  # a line being written
            curves.append({k: row[k] for k in ("step", "reward", "em", "dev_em", "searches", "valid") if k in row})
    summary = {}
    if (run.root / "metrics.json").exists():
        m = json.loads((run.root / "metrics.json").read_text())
        summary = {k: m[k] for k in ("n", "em", "f1", "cover_em", "searches_per_question", "valid_action_rate") if k in m}
    elif (run.root / "summary.json").exists():
        s = json.loads((run.root / "summary.json").read_text())
        summary = {f"test EM {k.removeprefix('test_')}": s[k]["em"] for k in ("test_before", "test_after") if k in s}
    return {"curves": curves, "summary": summary}
