"""Shared fixtures: a tiny tokenizer and a random tiny Qwen2 model built in seconds."""

from __future__ import annotations

import os

import pytest
import torch

os.environ.setdefault("HF_HUB_OFFLINE", "1")
os.environ.setdefault("TOKENIZERS_PARALLELISM", "false")
# The tests run many small ops, which one thread does fastest (and the same way each run).
torch.set_num_threads(1)

TINY_TEXTS = [
    "Orin Kael was born in Velmora, a city in Dastria.",
    "The Zentrova Guild was founded in 1834 by Orin Kael.",
    "Where was Orin Kael born? Which country is Velmora in?",
    "Mira Solen wrote The Ashen Lantern in 1901.",
    "useful not useful the a of in was by",
] * 20


@pytest.fixture(scope="session")
def tiny_tokenizer():
    from train.tiny import train_tokenizer

    return train_tokenizer(TINY_TEXTS, vocab_size=400)


@pytest.fixture(scope="session")
def tiny_model_dir(tiny_tokenizer, tmp_path_factory):
    """A saved random tiny Qwen2 (2 layers, d=64) with its tokenizer, loadable by path."""
    from train.tiny import TinyModelConfig, build_model, save_model_dir

    cfg = TinyModelConfig(hidden_size=64, num_layers=2, num_heads=4, num_kv_heads=2, intermediate_size=128, max_positions=512)
    model = build_model(tiny_tokenizer, cfg, seed=0)
    return save_model_dir(model, tiny_tokenizer, tmp_path_factory.mktemp("tiny_model"))


@pytest.fixture(scope="session")
def trainer_world(tmp_path_factory):
    """A 300-entity world (seed 2) with its BM25 index under one directory: what the trainer's
    end-to-end tests train on (each writes its runs under its own name there)."""
    from fakes import world_with_index

    return world_with_index(tmp_path_factory.mktemp("trainer-world"), seed=2, entities=300, method="bm25")


def pytest_terminal_summary(terminalreporter, exitstatus, config):
    """After `make test-gpu` (tests marked gpu), one table: what ran, what was skipped and why,
    and what each test measured (step time, tokens/s, ...)."""
    reports = [r for key in ("passed", "failed", "skipped") for r in terminalreporter.stats.get(key, [])
               if "test_gpu.py" in r.nodeid and r.when in ("call", "setup") and not (r.when == "setup" and r.passed)]
    if not reports:
        return
    from rich.console import Console
    from rich.table import Table

    table = Table(title="GPU checks")
    for column in ("check", "outcome", "measured / why skipped"):
        table.add_column(column)
    for r in reports:
        if r.skipped:
            detail = r.longrepr[2] if isinstance(r.longrepr, tuple) else str(r.longrepr)
        else:
            detail = " · ".join(f"{k} {v}" for k, v in r.user_properties) or ("" if r.passed else r.longreprtext[-200:])
        table.add_row(r.nodeid.split("::")[-1].removeprefix("test_"), r.outcome, detail)
    Console().print(table)
