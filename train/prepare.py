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


def ensure_tiny_policy(data_dir: str | Path = DEFAULT_DATA, index_dir: str | Path = DEFAULT_INDEX,
                       model: str = "tiny", **sft_overrides) -> Path:
    """The warm-started embedded policy `model` (tiny, tiny-large) of a world: built with
    `train.sft` once, then reused."""
    import json

    from train.sft import TINY_RECIPE, SFTConfig, run
    from train.tiny import EMBEDDED, tiny_policy_dir

    out = tiny_policy_dir(data_dir, model)
    if (out / "config.json").exists():
        built = json.loads((out / "training.json").read_text()).get("recipe") if (out / "training.json").exists() else None
        if built == TINY_RECIPE:
            return out
        console.print(f"{out} was built by an older recipe ({built}, now {TINY_RECIPE}): rebuilding it")
    console.print(f"building the embedded {model} policy (tokenizer, model, SFT on oracle demonstrations) in {out}")
    hidden, layers = EMBEDDED[model]
    run(SFTConfig(model="tiny", data=str(data_dir), index=str(index_dir), output_dir=str(out), tiny_hidden_size=hidden,
                  tiny_layers=layers, **sft_overrides))
    return out


def ensure_default(data_dir: str | Path = DEFAULT_DATA, index_dir: str | Path = DEFAULT_INDEX, model: str = "tiny",
                   **sft_overrides) -> tuple[Path, Path, Path]:
    """World, index and warm-started embedded policy: everything `--model tiny` (or tiny-large) needs.
    An `index_dir` that is a server URL is used as it is (the server holds the world's index)."""
    from agent.data.world import ensure_world
    from retrieval.build import ensure_index
    from retrieval.index import is_server_url

    data_dir = ensure_world(data_dir)
    if not is_server_url(index_dir):
        index_dir = ensure_index(data_dir / "corpus.jsonl", index_dir)
    return data_dir, index_dir, ensure_tiny_policy(data_dir, index_dir, model, **sft_overrides)
