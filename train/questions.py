"""Which questions a step trains on: a seeded order through the train split, checkpointed as
a cursor, split evenly among the processes of a run."""

from __future__ import annotations

import math
import random

from train.distributed import Processes


def next_questions(examples: list, cursor: dict, n: int, seed: int) -> tuple[list, dict]:
    """The next `n` questions of a per-epoch seeded shuffle; the cursor is checkpointed."""
    epoch, pos = cursor["epoch"], cursor["pos"]
    out = []
    while len(out) < n:
        order = list(range(len(examples)))
        random.Random(seed * 1_000_003 + epoch).shuffle(order)
        take = order[pos : pos + n - len(out)]
        out += [examples[i] for i in take]
        pos += len(take)
        if pos >= len(examples):
            epoch, pos = epoch + 1, 0
    return out, {"epoch": epoch, "pos": pos}


def load_questions(cfg) -> tuple[list, list, list]:
    """(train, dev, test) questions; train questions of another dataset leave out any that names
    one of `data`'s dev/test entities (a chance collision of generated names). A `data` directory
    without a dev split (Search-R1's holds train and test) gives no dev questions."""
    from pathlib import Path

    from agent.data.qa import load_qa, qa_splits
    from train.demos import examples_without_names, held_out_names

    train = load_qa(cfg.train_data or cfg.data, "train")
    if cfg.train_data:
        train = examples_without_names(train, held_out_names(cfg.data))
        if not train:
            raise ValueError(f"no train question left: every one names a dev/test entity of {cfg.data}")
    has_dev = not Path(cfg.data).is_dir() or "dev" in qa_splits(cfg.data)
    dev = load_qa(cfg.data, "dev")[: cfg.eval_questions] if has_dev else []
    test = load_qa(cfg.data, "test")[: cfg.test_questions] if cfg.test_questions else []
    return train, dev, test


def check_shares(cfg, procs: Processes) -> int:
    """Questions rolled out a step; each process takes an equal share of them, whole groups."""
    n_rolled = math.ceil(cfg.questions_per_step * cfg.oversample)
    if cfg.questions_per_step % procs.n or n_rolled % procs.n:
        raise ValueError(f"questions_per_step ({cfg.questions_per_step}) and the questions rolled out a step "
                         f"({n_rolled}, with oversample {cfg.oversample}) must divide evenly among {procs.n} processes")
    return n_rolled
