"""The fictional world: determinism, disjoint splits, exact support, twins, hop mix, CLI."""

from __future__ import annotations

import json
from collections import Counter
from pathlib import Path

import pytest
from hypothesis import given, settings
from hypothesis import strategies as st

from agent.data.world import (
    RELATIONS,
    World,
    WorldConfig,
    ensure_world,
    generate_world,
    iter_passages,
    iter_questions,
    main,
    parse_hops,
    write_world,
)

FILES = ("corpus.jsonl", "train.jsonl", "dev.jsonl", "test.jsonl", "world.json")
SPLITS = ("train", "dev", "test")


def read_jsonl(path: Path) -> list[dict]:
    return [json.loads(line) for line in path.read_text(encoding="utf-8").splitlines()]


@pytest.fixture(scope="module")
def world() -> World:
    return generate_world(WorldConfig(seed=0, entities=200))


@pytest.fixture(scope="module")
def questions(world: World) -> dict[str, list[dict]]:
    return {split: list(iter_questions(world, split)) for split in SPLITS}


@pytest.fixture(scope="module")
def texts(world: World) -> dict[str, str]:
    return {pid: text for pid, _, text in iter_passages(world)}


def entity_of_passage(world: World, pid: str):
    return world.entities[int(pid.split("-")[0][1:])]


def chain_entities(world: World, question: dict) -> list:
    """Every named entity a question walks through: each hop's subject and entity answers."""
    by_name = {e.name: e for e in world.entities}
    found = []
    for step in question["metadata"]["chain"]:
        relation_query = next(r.query for r in RELATIONS.values() if step["query"].endswith(" " + r.query))
        found.append(by_name[step["query"][: -len(relation_query) - 1]])
        if step["answer"] in by_name:
            found.append(by_name[step["answer"]])
    return found


# ----------------------------------------------------------------------------- determinism

def test_same_seed_gives_identical_bytes_and_another_seed_differs(tmp_path):
    cfg = dict(entities=200)
    for name, seed in (("a", 3), ("b", 3), ("c", 4)):
        write_world(generate_world(WorldConfig(seed=seed, **cfg)), tmp_path / name)
    for file in FILES:
        assert (tmp_path / "a" / file).read_bytes() == (tmp_path / "b" / file).read_bytes(), file
        assert (tmp_path / "a" / file).read_bytes() != (tmp_path / "c" / file).read_bytes(), file


# ----------------------------------------------------------------------------- splits

def test_splits_use_disjoint_entities_and_share_only_countries(world, questions):
    for split, records in questions.items():
        for q in records:
            for entity in chain_entities(world, q):
                assert entity.split == split or (entity.split == "shared" and entity.kind == "country"), \
                    (q["question"], entity.name, entity.split)
            for pid in q["metadata"]["support"]:
                assert entity_of_passage(world, pid).split in (split, "shared"), (q["id"], pid)
    for entity in world.entities:  # relations never cross splits
        for value in entity.facts.values():
            if isinstance(value, int):
                target = world.entities[value]
                assert target.split in (entity.split, "shared"), (entity.name, target.name)


def test_question_mentions_its_subject_by_exact_name(world, questions):
    for records in questions.values():
        for q in records:
            subject = chain_entities(world, q)[0]
            assert subject.name in q["question"], (q["question"], subject.name)


# ----------------------------------------------------------------------------- support

def check_support(world: World, records: list[dict], texts: dict[str, str]) -> None:
    for q in records:
        meta = q["metadata"]
        assert q["golden_answers"] and all(isinstance(a, str) and a for a in q["golden_answers"])
        assert meta["hops"] == len(meta["chain"]) and set(meta["support"]) == {
            pid for step in meta["chain"] for pid in step["support"]}
        for step in meta["chain"]:
            assert step["support"], q
            assert all(pid in texts for pid in step["support"]), q
            assert any(step["answer"].lower() in texts[pid].lower() for pid in step["support"]), (q["question"], step)
        answer = q["golden_answers"][0].lower()
        if meta["type"] == "comparison":
            winner = [s for s in meta["chain"] if s["query"].lower().startswith(answer + " ")]
            assert len(winner) == 1, q
            assert any(answer in texts[pid].lower() for pid in winner[0]["support"]), q
        else:
            assert answer == meta["chain"][-1]["answer"].lower()
            assert any(answer in texts[pid].lower() for pid in meta["chain"][-1]["support"]), q


def test_answers_and_chain_steps_are_stated_in_their_support(world, questions, texts):
    for records in questions.values():
        check_support(world, records, texts)


@settings(max_examples=4, deadline=None)
@given(seed=st.integers(0, 10_000), distractor_rate=st.floats(0.0, 0.5), elsewhere_rate=st.floats(0.0, 1.0))
def test_support_holds_for_any_seed_and_knobs(seed, distractor_rate, elsewhere_rate):
    small = generate_world(WorldConfig(seed=seed, entities=150, distractor_rate=distractor_rate,
                                       elsewhere_rate=elsewhere_rate))
    texts = {pid: text for pid, _, text in iter_passages(small)}
    check_support(small, list(iter_questions(small, "test")), texts)


def test_ids_are_unique_and_aliases_are_stated(world, questions, texts):
    passage_ids = [pid for pid, _, _ in iter_passages(world)]
    assert len(passage_ids) == len(set(passage_ids)) == len(texts)
    assert passage_ids == sorted(passage_ids)
    question_ids = [q["id"] for records in questions.values() for q in records]
    assert len(question_ids) == len(set(question_ids))
    assert len({q["question"] for records in questions.values() for q in records}) == len(question_ids)
    for entity in world.entities:
        for alias in entity.aliases:
            assert alias.lower() in texts[entity.passage_id(0)].lower(), (entity.name, alias)


def test_some_facts_are_stated_only_in_the_other_entitys_article(world):
    placements = Counter(where for e in world.entities for where in e.placement.values())
    assert placements["o"] > 0 and placements["s"] > placements["o"]


def test_passages_are_flashrag_records_titled_by_entity(tmp_path, world):
    write_world(world, tmp_path)
    corpus = read_jsonl(tmp_path / "corpus.jsonl")
    for record in corpus:
        assert set(record) == {"id", "contents"}
        title, _, text = record["contents"].partition("\n")
        entity = entity_of_passage(world, record["id"])
        assert title.startswith('"' + entity.name) and title.endswith('"') and text
    assert max(len(r["contents"]) for r in corpus) < 1500  # short enough for a small model's context


# ----------------------------------------------------------------------------- mix, twins, names

def test_hop_mix_and_types_are_honoured():
    cfg = WorldConfig(seed=1, entities=1000, hops={1: 0.25, 2: 0.25, 3: 0.25, 4: 0.25}, comparison_rate=0.5,
                      dev_questions=0, test_questions=0, train_questions=800)
    records = list(iter_questions(generate_world(cfg), "train"))
    assert len(records) == 800
    hops = Counter(q["metadata"]["hops"] for q in records)
    types = Counter(q["metadata"]["type"] for q in records)
    for n in (1, 2, 3, 4):
        assert abs(hops[n] / 800 - 0.25) < 0.06, hops
    assert abs(types["comparison"] / hops[2] - 0.5) < 0.1, types
    assert types["factoid"] == hops[1] and types["compositional"] == hops[3] + hops[4]


def test_default_question_counts_scale_with_entities():
    cfg = WorldConfig(entities=2000)
    assert (cfg.train_questions, cfg.dev_questions, cfg.test_questions) == (3000, 300, 500)


def damerau_distance(a: str, b: str) -> int:
    """Optimal-string-alignment edit distance (an adjacent swap counts once)."""
    d = [[max(i, j) if i == 0 or j == 0 else 0 for j in range(len(b) + 1)] for i in range(len(a) + 1)]
    for i in range(1, len(a) + 1):
        for j in range(1, len(b) + 1):
            d[i][j] = min(d[i - 1][j] + 1, d[i][j - 1] + 1, d[i - 1][j - 1] + (a[i - 1] != b[j - 1]))
            if i > 1 and j > 1 and a[i - 1] == b[j - 2] and a[i - 2] == b[j - 1]:
                d[i][j] = min(d[i][j], d[i - 2][j - 2] + 1)
    return d[-1][-1]


def test_twins_appear_at_the_configured_rate_with_a_one_letter_edit():
    world = generate_world(WorldConfig(seed=2, entities=1500, distractor_rate=0.3))
    named = [e for e in world.entities if e.split != "shared"]
    twins = [e for e in named if e.twin_of is not None]
    assert abs(len(twins) / len(named) - 0.3) < 0.05
    differing_facts = 0
    for twin in twins:
        base = world.entities[twin.twin_of]
        assert (base.kind, base.split) == (twin.kind, twin.split)
        assert damerau_distance(base.name, twin.name) == 1, (base.name, twin.name)
        differing_facts += base.facts != twin.facts
    assert differing_facts >= 0.95 * len(twins)
    none = generate_world(WorldConfig(seed=2, entities=300, distractor_rate=0.0))
    assert all(e.twin_of is None for e in none.entities)


def test_names_are_unique_and_invented(world):
    names = [e.name.lower() for e in world.entities]
    assert len(names) == len(set(names))
    assert all(e.name[0].isupper() for e in world.entities)


# ----------------------------------------------------------------------------- files and CLI

def test_cli_writes_every_file_and_a_consistent_description(tmp_path):
    summary = main(["--seed", "5", "--entities", "200", "--out", str(tmp_path), "--hops", "1:0.5,2:0.5",
                    "--distractor-rate", "0.2", "--train-questions", "120", "--dev-questions", "20",
                    "--test-questions", "30"])
    for file in FILES:
        assert (tmp_path / file).stat().st_size > 0, file
    description = json.loads((tmp_path / "world.json").read_text())
    assert description["seed"] == 5 and description["config"]["distractor_rate"] == 0.2
    assert description["counts"] == summary
    assert len(description["entities"]) == summary["entities"]
    assert len(read_jsonl(tmp_path / "corpus.jsonl")) == summary["passages"]
    for split, wanted in (("train", 120), ("dev", 20), ("test", 30)):
        records = read_jsonl(tmp_path / f"{split}.jsonl")
        assert len(records) == wanted == summary["questions"][split]["total"]
        assert {q["metadata"]["hops"] for q in records} <= {1, 2}
        assert all(q["metadata"]["split"] == split for q in records)


def test_a_world_is_never_written_among_other_files(tmp_path):
    def write(seed: int, *extra: str) -> dict:
        return main(["--seed", str(seed), "--entities", "150", "--out", str(tmp_path), *extra])

    write(5)
    (tmp_path / "notes.txt").write_text("mine")
    before = {name: (tmp_path / name).read_bytes() for name in FILES}
    with pytest.raises(SystemExit) as exit_:
        write(6)
    message = str(exit_.value)
    assert "\n" not in message and str(tmp_path) in message and "'notes.txt'" in message and "--overwrite" in message
    assert {name: (tmp_path / name).read_bytes() for name in FILES} == before  # nothing written

    write(6, "--overwrite")
    assert json.loads((tmp_path / "world.json").read_text())["seed"] == 6
    assert (tmp_path / "notes.txt").read_text() == "mine"
    (tmp_path / "notes.txt").unlink()
    write(7)  # a previous world alone is simply replaced
    assert json.loads((tmp_path / "world.json").read_text())["seed"] == 7
    assert sorted(p.name for p in tmp_path.iterdir()) == sorted(FILES)


def test_ensure_world_generates_once_and_refuses_a_foreign_directory(tmp_path):
    world_dir = ensure_world(tmp_path / "w", seed=3, entities=150)
    stamp = (world_dir / "world.json").stat().st_mtime_ns
    assert sorted(p.name for p in world_dir.iterdir()) == sorted(FILES)
    assert ensure_world(world_dir, seed=3, entities=150) == world_dir
    assert (world_dir / "world.json").stat().st_mtime_ns == stamp
    (tmp_path / "other").mkdir()
    (tmp_path / "other" / "notes.txt").write_text("mine")
    with pytest.raises(ValueError, match="refusing to write a world"):
        ensure_world(tmp_path / "other", seed=3, entities=150)
    assert [p.name for p in (tmp_path / "other").iterdir()] == ["notes.txt"]


def test_bad_knobs_are_rejected_with_the_field_named():
    with pytest.raises(ValueError, match="entities"):
        WorldConfig(entities=10)
    with pytest.raises(ValueError, match="distractor_rate"):
        WorldConfig(distractor_rate=1.5)
    with pytest.raises(ValueError, match="hops"):
        WorldConfig(hops={5: 1.0})
    assert parse_hops("1:0.4,2:0.6") == {1: 0.4, 2: 0.6}
    with pytest.raises(Exception, match="HOPS:WEIGHT"):
        parse_hops("1-0.4")
