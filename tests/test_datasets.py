"""Question loaders: world directories, FlashRAG JSONL, Search-R1 parquet, and their errors."""

from __future__ import annotations

import json
from pathlib import Path

import datasets
import pytest

from agent.types import Example
from agent.data.qa import DatasetError, load_qa
from agent.data.world import WorldConfig, generate_world, write_world

DATA = Path(__file__).parent / "data"
SEARCH_R1_PROMPT = ("Answer the given question. You must conduct reasoning inside <think> and </think> first "
                    "every time you get new information. ... Question: {question}\n")


def write_lines(path: Path, lines: list) -> Path:
    path.write_text("".join((line if isinstance(line, str) else json.dumps(line)) + "\n" for line in lines))
    return path


def good(i: int) -> dict:
    return {"id": f"q{i}", "question": f"Question {i}?", "golden_answers": [f"answer {i}"]}


# ----------------------------------------------------------------------------- world and FlashRAG

def test_a_generated_world_directory_loads_by_split(tmp_path):
    write_world(generate_world(WorldConfig(seed=0, entities=150)), tmp_path)
    lines = [json.loads(line) for line in (tmp_path / "dev.jsonl").read_text().splitlines()]
    examples = load_qa(tmp_path, "dev")
    assert len(examples) == len(lines) > 0
    first, record = examples[0], lines[0]
    assert isinstance(first, Example)
    assert (first.id, first.question) == (record["id"], record["question"])
    assert first.answers == tuple(record["golden_answers"])
    assert first.support == tuple(record["metadata"]["support"])
    assert first.meta["chain"] == record["metadata"]["chain"]
    assert {e.meta["split"] for e in examples} == {"dev"}
    assert {e.meta["type"] for e in examples} <= {"factoid", "bridge", "comparison", "compositional"}
    with pytest.raises(DatasetError, match="directory.*split"):
        load_qa(tmp_path)


def test_flashrag_fixture_loads_and_its_chains_are_stated_in_the_small_corpus():
    examples = load_qa(DATA / "qa_small.jsonl")
    corpus = {}
    for line in (DATA / "corpus_small.jsonl").read_text().splitlines():
        record = json.loads(line)
        corpus[record["id"]] = record["contents"].partition("\n")[2].lower()
    assert 8 <= len(examples) <= 10
    assert {e.meta["hops"] for e in examples} == {1, 2, 3, 4}
    for example in examples:
        chain = example.meta["chain"]
        assert set(example.support) == {pid for step in chain for pid in step["support"]}
        for step in chain:
            assert any(step["answer"].lower() in corpus[pid] for pid in step["support"]), (example.id, step)
        # a comparison's answer is one of the compared names, stated in that entity's own passage
        final = example.support if example.meta["type"] == "comparison" else chain[-1]["support"]
        assert any(example.answers[0].lower() in corpus[pid] for pid in final), example.id


def test_plain_flashrag_records_keep_extra_metadata_and_take_integer_ids(tmp_path):
    path = write_lines(tmp_path / "nq.jsonl", [
        {"id": 7, "question": "Who?", "golden_answers": ["Ann", "Annie"]},
        "",  # blank lines are allowed
        {"id": 8, "question": "Where?", "golden_answers": ["Paris"],
         "metadata": {"type": "bridge", "level": "hard", "support": ["d1"]}},
    ])
    first, second = load_qa(path, split="test")
    assert (first.id, first.answers, first.support, first.meta) == ("7", ("Ann", "Annie"), (), {"split": "test"})
    assert second.support == ("d1",)
    assert second.meta == {"type": "bridge", "level": "hard", "support": ["d1"], "split": "test"}


# ----------------------------------------------------------------------------- Search-R1 parquet

def search_r1_row(i: int, question: str, answers: list[str]) -> dict:
    return {"data_source": "nq", "prompt": [{"role": "user", "content": SEARCH_R1_PROMPT.format(question=question)}],
            "ability": "fact-reasoning",
            "reward_model": {"style": "rule", "ground_truth": {"target": answers}},
            "extra_info": {"split": "test", "index": i}}


def test_search_r1_parquet_with_flashrag_columns_loads(tmp_path):
    rows = [dict(search_r1_row(i, f"who wrote book {i}?", [f"author {i}"]), id=f"test_{i}",
                 question=f"who wrote book {i}?", golden_answers=[f"author {i}", f"a. {i}"]) for i in range(3)]
    path = tmp_path / "test.parquet"
    datasets.Dataset.from_list(rows).to_parquet(str(path))
    examples = load_qa(path)
    assert [e.id for e in examples] == ["nq-test_0", "nq-test_1", "nq-test_2"]
    assert examples[1].question == "who wrote book 1?"
    assert examples[1].answers == ("author 1", "a. 1")
    assert examples[1].meta["data_source"] == "nq" and examples[1].meta["extra_info"] == {"split": "test", "index": 1}


def test_search_r1_parquet_without_question_column_reads_the_prompt(tmp_path):
    path = tmp_path / "train.parquet"
    datasets.Dataset.from_list([search_r1_row(i, f"where is town {i}?", [f"county {i}"]) for i in range(2)]) \
        .to_parquet(str(path))
    examples = load_qa(path)
    assert [(e.id, e.question, e.answers) for e in examples] == [
        ("nq-0", "where is town 0?", ("county 0",)), ("nq-1", "where is town 1?", ("county 1",))]


def nq_search_rows(split: str, n: int, source: str = "nq") -> list[dict]:
    """Rows as Search-R1's scripts/data_process/nq_search.py writes them: the FlashRAG record's
    columns kept by `datasets.map`, plus data_source, prompt, ability, reward_model, extra_info."""
    return [dict(search_r1_row(i, f"{source} question {i}?", [f"{source} answer {i}"]), id=f"{split}_{i}",
                 question=f"{source} question {i}", golden_answers=[f"{source} answer {i}"],
                 data_source=source, extra_info={"split": split, "index": i}) for i in range(n)]


def test_a_search_r1_data_directory_loads_as_its_train_and_test_splits(tmp_path):
    for split, n in (("train", 3), ("test", 2)):
        datasets.Dataset.from_list(nq_search_rows(split, n)).to_parquet(str(tmp_path / f"{split}.parquet"))
    train, test = load_qa(tmp_path, "train"), load_qa(tmp_path, "test")
    assert [e.id for e in train] == ["nq-train_0", "nq-train_1", "nq-train_2"]
    assert [(e.id, e.question, e.answers) for e in test] == [
        ("nq-test_0", "nq question 0", ("nq answer 0",)), ("nq-test_1", "nq question 1", ("nq answer 1",))]
    assert {e.meta["split"] for e in test} == {"test"} and test[0].meta["data_source"] == "nq"
    with pytest.raises(DatasetError, match=r"no split 'dev' \(dev\.jsonl or dev\.parquet\); its splits: test, train"):
        load_qa(tmp_path, "dev")
    with pytest.raises(DatasetError, match=r"is a directory: pass split= one of \['test', 'train'\]"):
        load_qa(tmp_path)


def test_training_on_a_search_r1_directory_has_no_dev_split_and_loads_train_and_test(tmp_path):
    from types import SimpleNamespace

    from train.questions import load_questions

    for split, n in (("train", 3), ("test", 2)):
        datasets.Dataset.from_list(nq_search_rows(split, n)).to_parquet(str(tmp_path / f"{split}.parquet"))
    cfg = SimpleNamespace(data=str(tmp_path), train_data=None, eval_questions=200, test_questions=500)
    train, dev, test = load_questions(cfg)
    assert ([e.id for e in train], dev, [e.id for e in test]) == (
        ["nq-train_0", "nq-train_1", "nq-train_2"], [], ["nq-test_0", "nq-test_1"])


def test_a_merged_search_r1_file_keeps_questions_of_each_source_apart(tmp_path):
    """qa_search_test_merge.py concatenates datasets whose FlashRAG ids repeat (test_0 in nq and in triviaqa)."""
    path = tmp_path / "test.parquet"
    datasets.Dataset.from_list(nq_search_rows("test", 2) + nq_search_rows("test", 2, source="triviaqa")) \
        .to_parquet(str(path))
    examples = load_qa(path)
    assert [e.id for e in examples] == ["nq-test_0", "nq-test_1", "triviaqa-test_0", "triviaqa-test_1"]
    assert examples[2].answers == ("triviaqa answer 0",)


def test_a_prompt_only_question_that_says_question_is_read_whole(tmp_path):
    path = tmp_path / "test.parquet"
    question = "In the quiz show, which host asked 'Question: who am I?' first?"
    datasets.Dataset.from_list([search_r1_row(0, question, ["Ann"])]).to_parquet(str(path))
    assert load_qa(path)[0].question == question


def test_a_directory_with_both_formats_of_a_split_is_ambiguous(tmp_path):
    write_lines(tmp_path / "test.jsonl", [good(1)])
    datasets.Dataset.from_list(nq_search_rows("test", 1)).to_parquet(str(tmp_path / "test.parquet"))
    with pytest.raises(DatasetError, match=r"both test\.jsonl and test\.parquet hold split 'test'"):
        load_qa(tmp_path, "test")


def test_search_r1_parquet_without_any_question_names_the_row(tmp_path):
    rows = [search_r1_row(0, "fine?", ["yes"]), dict(search_r1_row(1, "x", ["y"]), prompt=[{"role": "system", "content": "hi"}])]
    path = tmp_path / "broken.parquet"
    datasets.Dataset.from_list(rows).to_parquet(str(path))
    with pytest.raises(DatasetError, match=r'broken\.parquet row 2: no "question" field and no user message in "prompt"'):
        load_qa(path)


def test_a_file_that_is_not_parquet_is_named(tmp_path):
    path = tmp_path / "junk.parquet"
    path.write_bytes(b"not parquet at all")
    with pytest.raises(DatasetError, match=r"junk\.parquet: cannot read as parquet"):
        load_qa(path)


# ----------------------------------------------------------------------------- duplicate ids

def test_a_repeated_id_is_refused_with_both_lines(tmp_path):
    path = write_lines(tmp_path / "dup.jsonl", [good(1), "", good(2), dict(good(1), question="Another question?")])
    with pytest.raises(DatasetError) as error:
        load_qa(path)
    assert str(error.value) == (f"{path} line 4: duplicate id 'q1' (first on line 1); every question needs its own id")


def test_a_repeated_id_in_parquet_names_the_rows(tmp_path):
    path = tmp_path / "dup.parquet"
    datasets.Dataset.from_list(nq_search_rows("test", 3) + nq_search_rows("test", 1)).to_parquet(str(path))
    with pytest.raises(DatasetError, match=r"dup\.parquet row 4: duplicate id 'nq-test_0' \(first in row 1\)"):
        load_qa(path)


# ----------------------------------------------------------------------------- broken JSONL

@pytest.mark.parametrize("lines, expected", [
    ([good(1), good(2), '{"id": "q3", "question" "Q?"}'], r'bad\.jsonl line 3: not valid JSON'),
    ([good(1), {"id": "q2", "golden_answers": ["a"]}], r'bad\.jsonl line 2: field "question" must be a non-empty string'),
    ([good(1), {"id": "q2", "question": "Q?", "golden_answers": 42}],
     r'bad\.jsonl line 2: field "golden_answers" must be a non-empty list of strings, got 42'),
    ([good(1), "", dict(good(3), golden_answers=[])],
     r'bad\.jsonl line 3: field "golden_answers" must be a non-empty list of strings, got \[\]'),
    ([good(1), dict(good(2), metadata={"support": "d1"})], r'bad\.jsonl line 2: field "metadata.support" must be a list'),
    ([good(1), dict(good(2), metadata={"hops": "two"})], r'bad\.jsonl line 2: field "metadata.hops" must be a positive'),
    ([good(1), "[1, 2]"], r"bad\.jsonl line 2: expected a JSON object"),
])
def test_broken_jsonl_names_file_line_field_and_value(tmp_path, lines, expected):
    path = write_lines(tmp_path / "bad.jsonl", lines)
    with pytest.raises(DatasetError, match=expected):
        load_qa(path)


def test_empty_and_missing_files_are_named(tmp_path):
    (tmp_path / "empty.jsonl").write_text("\n  \n")
    with pytest.raises(DatasetError, match=r"empty\.jsonl: file is empty"):
        load_qa(tmp_path / "empty.jsonl")
    with pytest.raises(DatasetError, match=r"nowhere\.jsonl: no such file"):
        load_qa(tmp_path / "nowhere.jsonl")
    with pytest.raises(DatasetError, match=r"no split 'dev' \(dev\.jsonl or dev\.parquet\); its splits: empty$"):
        load_qa(tmp_path, "dev")
    assert issubclass(DatasetError, ValueError)
