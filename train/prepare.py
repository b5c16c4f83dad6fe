"""The embedded default, prepared once and cached on disk: a generated world, its dense
index, and the tiny policy warm-started by SFT on oracle demonstrations.

Every step writes under a temporary name and renames when complete, so a killed run
never leaves a half-built artefact that the next run would mistake for a finished one.
Each step is skipped when its output already exists.
"""

from __future__ import annotations

from pathlib import Path

from rich.console import Console

console = Console(stderr=True)

DEFAULT_DATA = Path("data/world-0")
DEFAULT_INDEX = Path("indexes/world-0")


def ensure_world(data_dir: str | Path = DEFAULT_DATA, seed: int = 0, entities: int = 2000) -> Path:
    from eval.world import WorldConfig, generate_world, write_world
    from train.checkpoint import atomic_dir

    data_dir = Path(data_dir)
    if (data_dir / "test.jsonl").exists():
        return data_dir
    console.print(f"generating a world of {entities} entities (seed {seed}) in {data_dir}")
    with atomic_dir(data_dir) as tmp:
        write_world(generate_world(WorldConfig(seed=seed, entities=entities)), tmp)
    return data_dir


def ensure_index(data_dir: str | Path = DEFAULT_DATA, index_dir: str | Path = DEFAULT_INDEX, method: str = "dense") -> Path:
    from retrieval.build import build_index
    from retrieval.index import INDEX_META

    index_dir = Path(index_dir)
    if (index_dir / INDEX_META).exists():
        return index_dir
    console.print(f"building the {method} index of {data_dir} in {index_dir}")
    build_index(Path(data_dir) / "corpus.jsonl", index_dir, method)
    return index_dir


def tiny_policy_dir(data_dir: str | Path) -> Path:
    return Path(data_dir) / "tiny" / "policy-sft"


def ensure_tiny_policy(data_dir: str | Path = DEFAULT_DATA, index_dir: str | Path = DEFAULT_INDEX, **sft_overrides) -> Path:
    """The warm-started tiny policy of a world: built with `train.sft` once, then reused."""
    import json

    from train.sft import TINY_RECIPE, SFTConfig, run

    out = tiny_policy_dir(data_dir)
    if (out / "config.json").exists():
        built = json.loads((out / "training.json").read_text()).get("recipe") if (out / "training.json").exists() else None
        if built == TINY_RECIPE:
            return out
        console.print(f"{out} was built by an older recipe ({built}, now {TINY_RECIPE}): rebuilding it")
    console.print(f"building the embedded tiny policy (tokenizer, model, SFT on oracle demonstrations) in {out}")
    run(SFTConfig(model="tiny", data=str(data_dir), index=str(index_dir), output_dir=str(out), **sft_overrides))
    return out


def ensure_default(data_dir: str | Path = DEFAULT_DATA, index_dir: str | Path = DEFAULT_INDEX, **sft_overrides) -> tuple[Path, Path, Path]:
    """World, index and warm-started tiny policy: everything `--model tiny` needs."""
    data_dir = ensure_world(data_dir)
    index_dir = ensure_index(data_dir, index_dir)
    return data_dir, index_dir, ensure_tiny_policy(data_dir, index_dir, **sft_overrides)
