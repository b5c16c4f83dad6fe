"""What the warm start trains on: oracle demonstrations (of the data world's train split
and, for the tiny model, of a second, freshly named world) and the passages it pretrains
on, none of which ever names a dev/test entity of the data world."""

from __future__ import annotations

import json
import random
from pathlib import Path

from rich.console import Console
from rich.progress import BarColumn, MofNCompleteColumn, Progress, TextColumn, TimeElapsedColumn, TimeRemainingColumn

from agent.rollout import Rollout, RolloutConfig
from agent.types import Segment, Trajectory

console = Console(stderr=True)


class MissingRetriever:
    """A retriever whose searches miss at a seeded rate: a missed search returns the k passages
    ranked just below the top k (near misses, like those a miscopied name brings up).

    Why: the oracle's own searches nearly always find what they look for, so its
    demonstrations almost never judge an observation 'not useful' and search again (78 of
    the tiny warm start's 11,382 did), and the policy warm-started on them judged every
    observation useful on the test split, its 235 wrong retrievals included. With misses
    the demonstrations show the JUDGE action's recovery path: a near miss judged 'not
    useful', dropped, and searched for again. Whether a query misses depends only on the
    seed and its text, so a build is reproducible. (On the tiny model it did not pay off:
    `train.sft.SFTConfig.retrieval_miss_rate`.)
    """

    def __init__(self, inner, rate: float, seed: int = 0):
        if not 0 <= rate < 1:
            raise ValueError(f"miss rate must be in [0, 1), got {rate}")
        self.inner, self.rate, self.seed = inner, rate, seed

    def misses(self, query: str) -> bool:
        return self.rate > 0 and random.Random(f"{self.seed}\x00{query}").random() < self.rate

    def search(self, queries: list[str], k: int):
        missed = [self.misses(q) for q in queries]
        if not any(missed):
            return self.inner.search(queries, k)
        deep = self.inner.search(queries, 2 * k)
        return [found[k : 2 * k] if miss else found[:k] for found, miss in zip(deep, missed)]


def oracle_demonstrations(examples, retriever, tokenizer, title_of, rcfg: RolloutConfig, batch_size: int = 512,
                          miss_rate: float = 0.0, seed: int = 0):
    """Oracle trajectories of `examples`, only the correctly answered ones, with a progress bar;
    `miss_rate` of the searches miss (`MissingRetriever`)."""
    if miss_rate:
        retriever = MissingRetriever(retriever, miss_rate, seed)
    kept = []
    with progress_bar() as progress:
        task = progress.add_task("oracle demonstrations", total=len(examples))
        for i in range(0, len(examples), batch_size):
            kept += right_oracle_answers(examples[i : i + batch_size], retriever, tokenizer, title_of, rcfg)
            progress.advance(task, len(examples[i : i + batch_size]))
    return kept


def right_oracle_answers(examples, retriever, tokenizer, title_of, rcfg: RolloutConfig) -> list[Trajectory]:
    """The oracle's trajectories of `examples` (one rollout batch) that answer correctly."""
    from agent.oracle import OracleEngine
    from rewards.outcome import exact_match

    by_id = {ex.id: ex for ex in examples}
    engine = OracleEngine(tokenizer, examples, title_of, prompt_style=rcfg.prompt_style)
    return [t for t in Rollout(engine, retriever, rcfg, tokenizer)(examples)
            if exact_match(t.answer, by_id[t.example_id].answers)]


def training_segments(trajs: list[Trajectory]) -> list[Segment]:
    return [seg for t in trajs for seg in t.segments if any(seg.loss_mask)]


def entity_names(world_dir: str | Path, splits: tuple[str, ...] | None = None) -> set[str]:
    """Names and aliases of a generated world's entities (of `splits`; all when None)."""
    path = Path(world_dir) / "world.json"
    if not path.exists():
        return set()
    entities = json.loads(path.read_text(encoding="utf-8"))["entities"]
    return {name for e in entities if splits is None or e["split"] in splits for name in (e["name"], *e.get("aliases", []))}


def held_out_names(data_dir: str | Path) -> set[str]:
    """Names and aliases of a generated world's dev and test entities (empty for other data)."""
    return entity_names(data_dir, ("dev", "test"))


def names_pattern(names: set[str]):
    """One regex matching any of `names` (longest first), or None for no names."""
    import re

    return re.compile("|".join(re.escape(n) for n in sorted(names, key=len, reverse=True))) if names else None


def extra_world_dir(data: str | Path, entities: int, seed: int | None = None) -> Path:
    """The second world of the tiny model's warm start (`entities` entities; `seed` defaults to
    the data world's seed + 1000), generated once under DATA/tiny/."""
    from agent.data.world import ensure_world

    if seed is None:
        seed = json.loads((Path(data) / "world.json").read_text(encoding="utf-8"))["seed"] + 1000
    return ensure_world(Path(data) / "tiny" / f"extra-world-{seed}-{entities}", seed=seed, entities=entities)


def clashing_names(world_dir: Path, data: str | Path) -> set[str]:
    """Names of the world in `world_dir` that are also dev/test names of the data world."""
    return entity_names(world_dir) & held_out_names(data)


def pretraining_texts(world_dir: Path, data: str | Path) -> list[str]:
    """The passages of the world in `world_dir`, minus any that mentions a held-out name of the data world."""
    pattern = names_pattern(clashing_names(world_dir, data))
    with open(world_dir / "corpus.jsonl", encoding="utf-8") as f:
        texts = [json.loads(line)["contents"] for line in f if line.strip()]
    return [t for t in texts if not (pattern and pattern.search(t))]


def extra_world_demonstrations(world_dir: Path, data: str | Path, tokenizer, rcfg: RolloutConfig, questions: int = 0,
                               miss_rate: float = 0.0, seed: int = 0) -> tuple[list[Trajectory], int]:
    """Oracle demonstrations on every split of the world in `world_dir` (a second, freshly
    named world; BM25-indexed once beside it: a dense index of it would cost ~100 s of the
    build), or of a seeded sample of `questions` of them. Its names are new, so the model
    cannot answer by recalling them and has to learn to copy them from the question and the
    passages. Where a generated name of that world is also a dev/test name of the data
    world `data` (a chance collision), every demonstration mentioning it is dropped: SFT
    never sees a held-out entity's name."""
    from agent.data.qa import load_qa
    from retrieval import open_retriever
    from retrieval.build import ensure_index
    from retrieval.corpus import load_corpus

    index_dir = ensure_index(world_dir / "corpus.jsonl", world_dir.with_name(world_dir.name + "-bm25"), method="bm25")
    examples = [ex for split in ("train", "dev", "test") for ex in load_qa(world_dir, split)]
    if questions and questions < len(examples):
        examples = random.Random(seed).sample(examples, questions)
    corpus = load_corpus(world_dir / "corpus.jsonl")
    demos = oracle_demonstrations(examples, open_retriever(index_dir), tokenizer, lambda d: corpus.passage(d).title, rcfg,
                                  miss_rate=miss_rate, seed=seed)
    return without_names(demos, examples, clashing_names(world_dir, data)), len(examples)


def _mentions(pattern, example, more_texts=()) -> bool:
    return any(pattern.search(text) for text in (example.question, *example.answers, *more_texts))


def without_names(demos: list[Trajectory], examples, names: set[str]) -> list[Trajectory]:
    """The demonstrations whose question, answers and retrieved passages mention none of `names`."""
    pattern = names_pattern(names)
    if pattern is None:
        return demos
    by_id = {ex.id: ex for ex in examples}
    return [d for d in demos if not _mentions(pattern, by_id[d.example_id],
                                               (t for step in d.steps for p in step.passages for t in (p.title, p.text)))]


def examples_without_names(examples: list, names: set[str]) -> list:
    """The examples whose question and answers mention none of `names`."""
    pattern = names_pattern(names)
    return examples if pattern is None else [ex for ex in examples if not _mentions(pattern, ex)]


class StepDemos:
    """The scripted oracle's right answers to a step's questions as one training batch, for the
    update's auxiliary supervised term (`LossConfig.sft_coef`); none that reads a dev/test
    entity's name of `held_out_data`, as in the warm start's SFT. They retrieve as the
    policy's rollouts do (`rcfg`'s passages and prompt), within the oracle's own turn
    budgets (it writes whole actions)."""

    def __init__(self, data: str | Path, retriever, tokenizer, rcfg: RolloutConfig, held_out_data: str | Path):
        from retrieval.corpus import load_corpus

        corpus = load_corpus(Path(data) / "corpus.jsonl")
        self.title_of = lambda doc_id: corpus.passage(doc_id).title
        self.retriever, self.tokenizer = retriever, tokenizer
        self.held_out = held_out_names(held_out_data)
        self.rcfg = RolloutConfig(passages_per_search=rcfg.passages_per_search, max_doc_tokens=rcfg.max_doc_tokens,
                                  prompt_style=rcfg.prompt_style, temperature=0.0)

    def __call__(self, questions: list):
        """The batch of the right answers to `questions` (each once), or None when there are none."""
        from train.batching import collate_segments

        unique = list({ex.id: ex for ex in questions}.values())
        right = right_oracle_answers(unique, self.retriever, self.tokenizer, self.title_of, self.rcfg)
        segments = training_segments(without_names(right, unique, self.held_out))
        return collate_segments(segments, self.tokenizer.pad_token_id) if segments else None


def progress_bar() -> Progress:
    return Progress(TextColumn("[bold]{task.description}"), BarColumn(), MofNCompleteColumn(),
                    TimeElapsedColumn(), TimeRemainingColumn(), console=console, transient=True)
