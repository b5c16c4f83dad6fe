"""Question sets as `Example`s: a generated world, FlashRAG JSONL or Search-R1 parquet.

    load_qa("data/world-0", "test")           # DIR/test.jsonl of a generated world
    load_qa("nq/test.jsonl")                   # FlashRAG: id, question, golden_answers, metadata
    load_qa("nq_search/test.parquet")          # Search-R1: prompt, reward_model.ground_truth.target, ...
    load_qa("nq_search", "train")              # a directory's SPLIT.jsonl or SPLIT.parquet

Files load through `datasets` (packaged json / parquet builders, no hub access). Bad input
raises `DatasetError` naming the file, the line (JSONL) or row (parquet), the field, the
value and what was expected, never a bare pyarrow traceback. Question ids are unique
within a file: a rollout is scored against the answers of the question its id names.

Search-R1 rows (`scripts/data_process/nq_search.py`, `qa_search_*_merge.py`) carry a
`data_source` ("nq", "hotpotqa", ...); their id is `{data_source}-{id}` (the FlashRAG id
the row kept, e.g. `nq-test_0`) or `{data_source}-{extra_info.index}`, because a merged
file holds `test_0` of several datasets.
"""

from __future__ import annotations

import contextlib
import json
import logging
import tempfile
from pathlib import Path
from typing import Any, Iterator

import datasets

from agent.types import Example

__all__ = ["DatasetError", "load_qa", "qa_splits"]

WORLD_SPLITS = ("train", "dev", "test")
QA_SUFFIXES = (".jsonl", ".parquet")
NOT_QUESTIONS = ("corpus",)  # a world's corpus.jsonl sits next to its splits
# FlashRAG metadata keys the project gives a meaning to (see agent/data/world.py); others are kept as they are.
KNOWN_META = ("support", "hops", "type", "split", "chain")


class DatasetError(ValueError):
    """A question file that cannot be read, with where and why."""


def load_qa(path: str | Path, split: str | None = None) -> list[Example]:
    """Load questions from a FlashRAG .jsonl, a Search-R1 .parquet, or a directory's `split`
    (a generated world, a FlashRAG dataset directory, Search-R1's train/test.parquet)."""
    path = Path(path)
    if path.is_dir():
        path = _split_file(path, split)
    if not path.exists():
        raise DatasetError(f"{path}: no such file")
    if path.suffix == ".parquet":
        examples = _load_parquet(path)
    elif path.suffix in (".jsonl", ".json"):
        examples = _load_jsonl(path)
    else:
        raise DatasetError(f"{path}: unknown question file type {path.suffix!r}, expected .jsonl or .parquet")
    if split is not None:
        for example in examples:
            example.meta.setdefault("split", split)
    return examples


def qa_splits(directory: str | Path) -> list[str]:
    """The splits a directory holds: the names of its question files (.jsonl / .parquet)."""
    return sorted({p.stem for p in Path(directory).iterdir()
                   if p.suffix in QA_SUFFIXES and p.stem not in NOT_QUESTIONS and p.is_file()})


def _split_file(directory: Path, split: str | None) -> Path:
    found = qa_splits(directory)
    if split is None:
        raise DatasetError(f"{directory} is a directory: pass split= one of {found or list(WORLD_SPLITS)}")
    files = [directory / f"{split}{suffix}" for suffix in QA_SUFFIXES if (directory / f"{split}{suffix}").is_file()]
    if len(files) > 1:
        raise DatasetError(f"{directory}: both {files[0].name} and {files[1].name} hold split {split!r}; "
                           f"pass the file to load")
    if not files:
        raise DatasetError(f"{directory}: no split {split!r} ({split}.jsonl or {split}.parquet); "
                           f"its splits: {', '.join(found) or 'none'}")
    return files[0]


# ----------------------------------------------------------------------------- reading

@contextlib.contextmanager
def _quiet_datasets() -> Iterator[None]:
    """No progress bars or error logs from `datasets`: failures are reported by DatasetError."""
    bars = datasets.is_progress_bar_enabled()
    level = datasets.logging.get_verbosity()
    datasets.disable_progress_bars()
    datasets.logging.set_verbosity(logging.CRITICAL)
    try:
        yield
    finally:
        datasets.logging.set_verbosity(level)
        if bars:
            datasets.enable_progress_bars()


def _read(builder: str, path: Path) -> datasets.Dataset:
    # A throwaway cache: questions end up in memory anyway, and a shared cache keyed on
    # path and mtime can serve a stale copy of a file rewritten within the same second.
    with _quiet_datasets(), tempfile.TemporaryDirectory() as cache:
        return datasets.load_dataset(builder, data_files=str(path), split="train",
                                     cache_dir=cache, keep_in_memory=True)


def _load_jsonl(path: Path) -> list[Example]:
    if _is_blank(path):
        raise DatasetError(f"{path}: file is empty, expected one JSON object per line")
    try:
        rows = _read("json", path)
    except Exception as error:  # pyarrow / datasets say little about where: find the line ourselves
        _raise_first_bad_line(path, error)
    line_numbers = None  # computed only when a record is bad
    examples = []
    for index, row in enumerate(rows.to_list()):  # one Arrow conversion; row access is ~5x slower
        try:
            examples.append(_flashrag_example(row))
        except _FieldError as error:
            line_numbers = line_numbers or _record_line_numbers(path)
            raise DatasetError(f"{path} line {line_numbers[index]}: {error}") from None
    if (pair := _repeated_id(examples)) is not None:
        first, repeat = (_record_line_numbers(path)[i] for i in pair)
        raise DatasetError(f"{path} line {repeat}: duplicate id {examples[pair[1]].id!r} (first on line {first}); "
                           f"every question needs its own id")
    return examples


def _load_parquet(path: Path) -> list[Example]:
    try:
        rows = _read("parquet", path)
    except Exception as error:
        raise DatasetError(f"{path}: cannot read as parquet ({type(error).__name__}: {error})") from error
    if len(rows) == 0:
        raise DatasetError(f"{path}: file has no rows")
    examples = []
    for index, row in enumerate(rows.to_list()):
        try:
            examples.append(_search_r1_example(row, default_id=f"{path.stem}-{index}"))
        except _FieldError as error:
            raise DatasetError(f"{path} row {index + 1}: {error}") from None
    if (pair := _repeated_id(examples)) is not None:
        first, repeat = (i + 1 for i in pair)
        raise DatasetError(f"{path} row {repeat}: duplicate id {examples[pair[1]].id!r} (first in row {first}); "
                           f"every question needs its own id")
    return examples


def _repeated_id(examples: list[Example]) -> tuple[int, int] | None:
    """(first, repeat): the positions of the first id that occurs twice, or None."""
    first: dict[str, int] = {}
    for index, example in enumerate(examples):
        if (seen := first.setdefault(example.id, index)) != index:
            return seen, index
    return None


def _is_blank(path: Path) -> bool:
    with open(path, encoding="utf-8", errors="replace") as f:
        while chunk := f.read(1 << 16):
            if chunk.strip():
                return False
    return True


def _record_line_numbers(path: Path) -> list[int]:
    """1-based line number of each record (the json builder skips blank lines)."""
    with open(path, encoding="utf-8", errors="replace") as f:
        return [number for number, line in enumerate(f, 1) if line.strip()]


def _raise_first_bad_line(path: Path, cause: Exception) -> None:
    with open(path, encoding="utf-8", errors="replace") as f:
        for number, line in enumerate(f, 1):
            if not line.strip():
                continue
            try:
                record = json.loads(line)
            except json.JSONDecodeError as error:
                raise DatasetError(f"{path} line {number}: not valid JSON ({error.msg} at column {error.colno})") from None
            try:
                _flashrag_example(record)
            except _FieldError as error:
                raise DatasetError(f"{path} line {number}: {error}") from None
    raise DatasetError(f"{path}: datasets could not read it ({type(cause).__name__}: {cause})") from cause


# ----------------------------------------------------------------------------- records

class _FieldError(Exception):
    """A bad field in one record; the caller adds the file and line."""


def _show(value: Any) -> str:
    text = "missing or null" if value is None else json.dumps(value, ensure_ascii=False, default=str)
    return text if len(text) <= 80 else text[:77] + "..."


def _string(record: dict, field: str) -> str:
    value = record.get(field)
    if isinstance(value, int) and not isinstance(value, bool) and field == "id":
        return str(value)
    if not isinstance(value, str) or not value.strip():
        raise _FieldError(f'field "{field}" must be a non-empty string, got {_show(value)}')
    return value


def _answers(value: Any, field: str) -> tuple[str, ...]:
    if isinstance(value, str) and value.strip():  # Search-R1 sometimes stores a single answer
        return (value,)
    if not isinstance(value, list) or not value or not all(isinstance(a, str) for a in value):
        raise _FieldError(f'field "{field}" must be a non-empty list of strings, got {_show(value)}')
    return tuple(value)


def _without_nulls(value: Any) -> Any:
    """Drop the null keys Arrow adds when records have different metadata fields."""
    if isinstance(value, dict):
        return {k: _without_nulls(v) for k, v in value.items() if v is not None}
    if isinstance(value, list):
        return [_without_nulls(v) for v in value]
    return value


def _meta(record: dict) -> dict:
    metadata = _without_nulls(record.get("metadata"))
    if metadata is None:
        return {}
    if not isinstance(metadata, dict):
        raise _FieldError(f'field "metadata" must be an object, got {_show(metadata)}')
    support = metadata.get("support", [])
    if not isinstance(support, list) or not all(isinstance(s, str) for s in support):
        raise _FieldError(f'field "metadata.support" must be a list of passage ids (strings), got {_show(support)}')
    hops = metadata.get("hops", 1)
    if not isinstance(hops, int) or isinstance(hops, bool) or hops < 1:
        raise _FieldError(f'field "metadata.hops" must be a positive integer, got {_show(hops)}')
    chain = metadata.get("chain", [])
    if not isinstance(chain, list):
        raise _FieldError(f'field "metadata.chain" must be a list of steps, got {_show(chain)}')
    for i, step in enumerate(chain):
        if not isinstance(step, dict) or not isinstance(step.get("query"), str) \
                or not isinstance(step.get("answer"), str):
            raise _FieldError(f'field "metadata.chain[{i}]" must be an object with string "query" and '
                              f'"answer", got {_show(step)}')
    return metadata


def _flashrag_example(record: Any) -> Example:
    if not isinstance(record, dict):
        raise _FieldError(f"expected a JSON object with id, question and golden_answers, got {_show(record)}")
    meta = _meta(record)
    return Example(id=_string(record, "id"), question=_string(record, "question"),
                   answers=_answers(record.get("golden_answers"), "golden_answers"),
                   support=tuple(meta.get("support", ())), meta=meta)


def _search_r1_example(row: dict, default_id: str) -> Example:
    """Search-R1 rows: prompt (chat messages), reward_model.ground_truth.target, data_source,
    extra_info; rows built from FlashRAG data also keep id, question and golden_answers."""
    question = row.get("question")
    if not (isinstance(question, str) and question.strip()):
        question = _question_from_prompt(row.get("prompt"))
    if row.get("golden_answers") is not None:
        answers = _answers(row["golden_answers"], "golden_answers")
    else:
        ground_truth = (row.get("reward_model") or {}).get("ground_truth")
        target = ground_truth.get("target") if isinstance(ground_truth, dict) else ground_truth
        answers = _answers(target, "reward_model.ground_truth.target")
    extra = row.get("extra_info") or {}
    source = row.get("data_source")
    if row.get("id") is not None:
        example_id = _string(row, "id")
    elif source and isinstance(extra, dict) and extra.get("index") is not None:
        example_id = str(extra["index"])
    else:
        example_id = default_id
    if isinstance(source, str) and source and example_id != default_id:
        example_id = f"{source}-{example_id}"  # a merged file holds test_0 of several datasets
    meta = _meta(row)
    for key in ("data_source", "ability", "extra_info"):
        if row.get(key) is not None:
            meta.setdefault(key, _without_nulls(row[key]))
    return Example(id=example_id, question=question, answers=answers,
                   support=tuple(meta.get("support", ())), meta=meta)


def _question_from_prompt(prompt: Any) -> str:
    """The question inside a Search-R1 prompt: the text after its first 'Question:' marker,
    or the whole last user message when there is no marker. Search-R1's templates put
    their one marker right before the question, which may itself say 'Question:'."""
    if isinstance(prompt, str):
        content = prompt
    elif isinstance(prompt, list):
        users = [m.get("content") for m in prompt if isinstance(m, dict) and m.get("role") == "user"]
        content = users[-1] if users else None
    else:
        content = None
    if not isinstance(content, str) or not content.strip():
        raise _FieldError(f'no "question" field and no user message in "prompt", got prompt {_show(prompt)}')
    _, marker, after = content.partition("Question:")
    return after.strip() if marker and after.strip() else content.strip()
