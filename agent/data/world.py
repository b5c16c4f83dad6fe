"""A contamination-free fictional world and its questions, generated from a seed.

FictionalHot (ReSeek) swaps the entities of real questions for invented ones and writes
Wikipedia-style articles about them, so no model can answer from memory: it has to search.
This module builds such a world from scratch:

* entities of eight kinds (people, cities, countries, organisations, written works, ships,
  machines, events) with invented, pronounceable, unique names;
* typed relations between them (born in, founded by, written by, ...), years and a few
  categorical values (occupations, currencies);
* one article per entity, two for people and organisations, stating every fact with
  varied phrasing; some facts appear only in the *other* entity's article (the founder of
  an organisation may be named only in the founder's career article);
* near-duplicate "twin" entities (`Orin Kael` / `Orin Kale`) with facts of their own, so
  retrieval and judging have to read names letter by letter;
* questions from 1-hop factoids to 4-hop compositions, each with gold answers and
  aliases, supporting passage ids and the chain of lookups a scripted agent can follow.

Train, dev and test questions come from disjoint sub-worlds: every person, city,
organisation, ... belongs to exactly one split and relations never cross splits, so the
splits share only countries (with their currencies), years and occupations.

This module generates the entities and facts and writes the files; `agent.data.entities`
holds the world's data types, `agent.data.names` invents the names and twins,
`agent.data.relations` holds the relations and their phrasing, and `agent.data.text`
renders passages and questions.

Same seed, same bytes: all randomness comes from `random.Random` instances seeded from
the config, and nothing depends on set or hash order. Generation is linear in the number
of entities; passages and questions are rendered lazily, so writing streams.

    python -m agent.data.world --seed 0 --entities 2000 --out data/world-0

A world is the files `WORLD_FILES` of its directory and nothing else: writing one over a
previous world replaces them, and a directory holding anything more is refused unless
`--overwrite`, which replaces only them and keeps the rest.
"""

from __future__ import annotations

import argparse
import json
import os
import random
import tempfile
import time
from collections import Counter
from dataclasses import asdict
from pathlib import Path
from typing import Iterable

from rich.console import Console
from rich.progress import track
from rich.table import Table

from agent.data.entities import Entity, World, WorldConfig
from agent.data.names import CURRENCY_UNITS, Names
from agent.data.relations import RELATIONS
from agent.data.text import entity_passages, iter_passages, iter_questions
from retrieval import cli

__all__ = [
    "WorldConfig",
    "World",
    "Entity",
    "RELATIONS",
    "generate_world",
    "write_world",
    "ensure_world",
    "iter_passages",
    "iter_questions",
    "parse_hops",
    "main",
    "WORLD_FILES",
]

SPLITS = ("train", "dev", "test")
WORLD_FILES = ("corpus.jsonl", *(f"{split}.jsonl" for split in SPLITS), "world.json")
SHARED = "shared"
# Share of the named (non-country) entities per kind, in creation order: a kind may only
# point at kinds created before it, so every relation finds a target in its split.
# agent.data.relations.KINDS lists the same kinds in the same order, after "country".
KIND_SHARES = {"city": 0.12, "person": 0.35, "org": 0.13, "work": 0.14, "ship": 0.07, "machine": 0.07, "event": 0.12}


# ----------------------------------------------------------------------------- world

def generate_world(cfg: WorldConfig, progress: bool = False) -> World:
    """Entities, facts and where each fact is stated. Passages and questions render lazily."""
    rng = random.Random(f"world:{cfg.seed}")
    names = Names(rng)
    entities: list[Entity] = []
    pools: dict[str, dict[str, list[int]]] = {s: {k: [] for k in KIND_SHARES} for s in (*SPLITS, SHARED)}

    def add(kind: str, split: str, base: Entity | None = None) -> Entity:
        """A new entity; a near-duplicate of `base` when given and a free near-duplicate name exists."""
        twin = names.twin(base) if base is not None else None
        if twin is None:
            name, aliases, detail = names.new(kind)
            base = None
        else:
            (name, aliases), detail = twin, base.detail
        entity = Entity(len(entities), kind, name, split, aliases, detail,
                        twin_of=base.index if base is not None else None)
        entities.append(entity)
        pools[split].setdefault(kind, []).append(entity.index)
        return entity

    countries = [add("country", SHARED) for _ in range(max(4, round(0.02 * cfg.entities)))]
    for country in countries:
        country.facts["currency"] = f"{names.fresh_word((2,)).lower()} {rng.choice(CURRENCY_UNITS)}"

    named = cfg.entities - len(countries)
    total_share = sum(cfg.split_shares)
    plan = [(kind, split, max(2, round(named * share * split_share / total_share)))
            for kind, share in KIND_SHARES.items() for split, split_share in zip(SPLITS, cfg.split_shares)]
    steps = track(plan, description="entities") if progress else plan
    for kind, split, count in steps:
        originals: list[Entity] = []
        for _ in range(count):
            base = rng.choice(originals) if originals and rng.random() < cfg.distractor_rate else None
            entity = add(kind, split, base)
            if entity.twin_of is None:
                originals.append(entity)
            _assign_facts(rng, cfg, entity, entities, pools, countries)
    twins: dict[int, list[int]] = {}
    for entity in entities:
        if entity.twin_of is not None:
            twins.setdefault(entity.twin_of, []).append(entity.index)
    return World(cfg, entities, pools, twins)


def _assign_facts(rng: random.Random, cfg: WorldConfig, entity: Entity, entities: list[Entity],
                  pools: dict[str, dict[str, list[int]]], countries: list[Entity]) -> None:
    """Random facts for `entity`, pointing only at entities of its own split (or countries)."""
    pool = pools[entity.split]

    def pick(kind: str) -> Entity:
        return entities[rng.choice(pool[kind])]

    facts: dict[str, int | str] = {}
    if entity.kind == "city":
        facts["located_in"] = rng.choice(countries).index
    elif entity.kind == "person":
        facts["occupation"] = entity.detail
        facts["born_in"] = pick("city").index
        facts["birth_year"] = str(rng.randint(1600, 1900))
        people = pool["person"]  # ends with this entity; mentors come from before it, so mentorship never loops
        if len(people) > 1 and rng.random() < 0.6:
            facts["mentor"] = people[rng.randrange(len(people) - 1)]
    elif entity.kind == "org":
        founder = pick("person")
        facts["founded_by"] = founder.index
        facts["founded_year"] = str(int(founder.facts["birth_year"]) + rng.randint(20, 60))
        facts["headquartered_in"] = pick("city").index
    elif entity.kind == "work":
        author = pick("person")
        facts["author"] = author.index
        facts["published_year"] = str(int(author.facts["birth_year"]) + rng.randint(18, 70))
    elif entity.kind in ("ship", "machine"):
        designer = pick("person")
        facts["designer"] = designer.index
        facts["builder"] = pick("org").index
        year = str(int(designer.facts["birth_year"]) + rng.randint(25, 65))
        facts["launch_year" if entity.kind == "ship" else "completion_year"] = year
    elif entity.kind == "event":
        facts["venue"] = pick("city").index
        facts["event_year"] = str(rng.randint(1650, 1990))
        facts["organiser"] = pick("org").index
    entity.facts = facts
    for relation, value in facts.items():
        if not RELATIONS[relation].said_by_object:
            continue
        roll = rng.random()  # a quarter of the facts are stated in both articles, as in a real wiki
        where = "o" if roll < cfg.elsewhere_rate else "so" if roll < cfg.elsewhere_rate + 0.25 else "s"
        entity.placement[relation] = where
        if "o" in where:
            entities[value].mentions.append((entity.index, relation))


# ----------------------------------------------------------------------------- files

def write_world(world: World, out_dir: str | Path, progress: bool = False, overwrite: bool = False) -> dict:
    """Write corpus.jsonl, {train,dev,test}.jsonl and world.json; returns the summary counts.
    `out_dir` may be new, empty or a previous world; `overwrite` also allows a directory
    holding other files, which are kept."""
    out = Path(out_dir)
    _check_target(out, overwrite)
    out.mkdir(parents=True, exist_ok=True)
    n_passages = 0
    entities: Iterable[Entity] = world.entities
    if progress:
        entities = track(world.entities, description="corpus")
    with open(out / "corpus.jsonl", "w", encoding="utf-8") as f:
        for entity in entities:
            for pid, title, text in entity_passages(world, entity):
                f.write(json.dumps({"id": pid, "contents": f'"{title}"\n{text}'}, ensure_ascii=False) + "\n")
                n_passages += 1
    question_counts = {}
    for split in SPLITS:
        hops, types = Counter(), Counter()
        records = iter_questions(world, split)
        if progress:
            records = track(records, total=world.cfg.questions(split), description=f"{split} questions")
        with open(out / f"{split}.jsonl", "w", encoding="utf-8") as f:
            for record in records:
                f.write(json.dumps(record, ensure_ascii=False) + "\n")
                hops[record["metadata"]["hops"]] += 1
                types[record["metadata"]["type"]] += 1
        question_counts[split] = {"total": sum(hops.values()), "hops": {str(h): hops[h] for h in sorted(hops)},
                                  "type": {t: types[t] for t in sorted(types)}}
    summary = _summary(world, n_passages, question_counts)
    _write_description(world, summary, out / "world.json")
    return summary


def _summary(world: World, n_passages: int, questions: dict) -> dict:
    kinds = Counter(e.kind for e in world.entities)
    splits = Counter(e.split for e in world.entities)
    relations = Counter(r for e in world.entities for r in e.facts)
    return {"entities": len(world.entities),
            "entities_by_kind": {k: kinds[k] for k in sorted(kinds)},
            "entities_by_split": {s: splits[s] for s in sorted(splits)},
            "twins": sum(e.twin_of is not None for e in world.entities),
            "passages": n_passages,
            "relations": {r: relations[r] for r in sorted(relations)},
            "questions": questions}


def _write_description(world: World, summary: dict, path: Path) -> None:
    """world.json: config and counts, then one compact line per entity."""
    config = asdict(world.cfg)
    config["hops"] = {str(h): w for h, w in sorted(world.cfg.hops.items())}
    head = json.dumps({"seed": world.cfg.seed, "config": config, "counts": summary}, indent=2)
    with open(path, "w", encoding="utf-8") as f:
        f.write(head[:-2] + ',\n  "entities": [\n')
        for i, e in enumerate(world.entities):
            facts = {r: world.entities[v].id if isinstance(v, int) else v for r, v in e.facts.items()}
            row = {"id": e.id, "kind": e.kind, "name": e.name, "split": e.split, "aliases": list(e.aliases),
                   "twin_of": world.entities[e.twin_of].id if e.twin_of is not None else None, "facts": facts}
            f.write("    " + json.dumps(row, ensure_ascii=False) + (",\n" if i < len(world.entities) - 1 else "\n"))
        f.write("  ]\n}\n")


def _check_target(out: Path, overwrite: bool = False) -> None:
    cli.check_output_dir(out, WORLD_FILES, what="a generated world", action="write a world", overwrite=overwrite)


# ----------------------------------------------------------------------------- CLI

def ensure_world(data_dir: str | Path, seed: int = 0, entities: int = 2000) -> Path:
    """The world of `seed` in `data_dir`, generated there unless it already is. It is written
    in a temporary sibling directory and renamed into place, so a killed run never leaves
    a half-written world that a later run would take for a finished one."""
    data_dir = Path(data_dir)
    if (data_dir / "test.jsonl").exists():
        return data_dir
    if data_dir.exists() and any(data_dir.iterdir()):
        raise ValueError(f"{data_dir}: exists and holds files but no generated world (no test.jsonl); "
                         "refusing to write a world over them: choose another directory or empty it")
    Console(stderr=True).print(f"generating a world of {entities} entities (seed {seed}) in {data_dir}")
    data_dir.parent.mkdir(parents=True, exist_ok=True)
    with tempfile.TemporaryDirectory(dir=data_dir.parent, prefix=f".{data_dir.name}.", ignore_cleanup_errors=True) as tmp:
        write_world(generate_world(WorldConfig(seed=seed, entities=entities)), tmp)
        os.replace(tmp, data_dir)
    return data_dir


def parse_hops(text: str) -> dict[int, float]:
    """'1:0.4,2:0.4,3:0.15,4:0.05' -> {1: 0.4, 2: 0.4, 3: 0.15, 4: 0.05}."""
    mix = {}
    for item in text.split(","):
        hops, _, weight = item.partition(":")
        try:
            mix[int(hops)] = float(weight)
        except ValueError:
            raise argparse.ArgumentTypeError(
                f"--hops item {item!r} must look like HOPS:WEIGHT, e.g. 1:0.4") from None
    return mix


def main(argv: list[str] | None = None) -> dict:
    parser = argparse.ArgumentParser(prog="python -m agent.data.world", description=__doc__.split("\n\n")[0])
    parser.add_argument("--seed", type=int, default=0)
    parser.add_argument("--entities", type=int, default=2000, help="approximate number of entities")
    parser.add_argument("--out", required=True, help="output directory")
    parser.add_argument("--hops", type=parse_hops, default=None, help="hop mix, e.g. 1:0.45,2:0.35,3:0.15,4:0.05")
    parser.add_argument("--distractor-rate", type=float, default=WorldConfig.distractor_rate)
    parser.add_argument("--elsewhere-rate", type=float, default=WorldConfig.elsewhere_rate)
    parser.add_argument("--comparison-rate", type=float, default=WorldConfig.comparison_rate)
    for split in SPLITS:
        parser.add_argument(f"--{split}-questions", type=int, default=None)
    parser.add_argument("--overwrite", action="store_true",
                        help="write into a directory that holds other files too: replace only the world's files "
                             "there and keep the rest")
    args = parser.parse_args(argv)
    options = {k: v for k, v in vars(args).items() if k not in ("out", "overwrite") and v is not None}
    try:
        cfg = WorldConfig(**options)
    except ValueError as error:
        parser.error(str(error))
    try:
        _check_target(Path(args.out), args.overwrite)  # before generating: refuse at once
    except ValueError as error:
        raise SystemExit(f"error: {error}") from None
    console = Console(stderr=True)
    start = time.perf_counter()
    world = generate_world(cfg, progress=True)
    summary = write_world(world, args.out, progress=True, overwrite=args.overwrite)
    _print_summary(console, summary, args.out, time.perf_counter() - start)
    for split in SPLITS:
        if summary["questions"][split]["total"] < cfg.questions(split):
            console.print(f"[yellow]{split}: only {summary['questions'][split]['total']} distinct questions "
                          f"fit in this world ({cfg.questions(split)} asked); add entities for more")
    return summary


def _print_summary(console: Console, summary: dict, out: str, seconds: float) -> None:
    kinds = Table(title=f"world written to {out} in {seconds:.1f}s")
    kinds.add_column("entities")
    kinds.add_column("count", justify="right")
    for kind, n in summary["entities_by_kind"].items():
        kinds.add_row(kind, str(n))
    kinds.add_row("twins (near-duplicate names)", str(summary["twins"]))
    kinds.add_row("all entities", str(summary["entities"]))
    kinds.add_row("passages", str(summary["passages"]))
    questions = Table(title="questions")
    for column in ("split", "total", "1-hop", "2-hop", "3-hop", "4-hop", "comparison"):
        questions.add_column(column, justify="right")
    for split, counts in summary["questions"].items():
        by_hops = [str(counts["hops"].get(str(h), 0)) for h in (1, 2, 3, 4)]
        questions.add_row(split, str(counts["total"]), *by_hops, str(counts["type"].get("comparison", 0)))
    console.print(kinds, questions)


if __name__ == "__main__":
    cli.run(main)
