"""One small row per trace, for the run overview's list: what it filters and sorts on.

`trace_row(record)` reads a `traces.jsonl` record (a training run's, an evaluation's, or a
fork) into a flat dict; `select(rows, filters)` keeps the rows a filter asks for, sorted.
The row keeps no tokens: the list of 100k traces stays small, and a trajectory is read
from its file when it is opened.
"""

from __future__ import annotations

from dataclasses import dataclass

from agent.traces import record_steps
from agent.types import Example, Trajectory
from rewards.metrics import error_category
from rewards.outcome import exact_match, f1_score

SORT_KEYS = ("position", "reward", "advantage", "step")
QUESTION_CHARS = 240  # of the question kept in the row (the trajectory view has it whole)


def trace_id(record: dict) -> str:
    """A trace's id: its own `id` (forks) or group id / sample, unique within a run."""
    return record.get("id") or f"{record.get('group_id', '?')}/{record.get('sample', 0)}"


def example_of(record: dict) -> Example:
    return Example(record.get("example_id", ""), record.get("question", ""), list(record.get("golden_answers", [])),
                   list(record.get("support", [])), dict(record.get("meta", {})))


def outcome(record: dict) -> dict:
    """EM, F1 and error category: the evaluation's own where it scored the trace, else computed
    from the answer, gold answers and steps (None without gold answers)."""
    scored = record.get("eval")
    if scored and "em" in scored:
        return {"em": scored["em"], "f1": scored.get("f1"), "category": scored.get("category")}
    golds = list(record.get("golden_answers", []))
    if not golds:
        return {"em": None, "f1": None, "category": None}
    answer = record.get("answer")
    em, f1 = exact_match(answer, golds), f1_score(answer, golds)
    traj = Trajectory(record.get("example_id", ""), "", 0, [], record_steps(record), answer, record.get("finish", ""))
    try:
        category = error_category(traj, example_of(record), em)
    except ValueError:  # a finish the categories do not know (a fork still running)
        category = None
    return {"em": em, "f1": f1, "category": category}


def trace_row(record: dict, position: int) -> dict:
    """The overview's row of one record at `position` (its line among the file's records)."""
    steps = record.get("steps", [])
    queries = [s["text"] for s in steps if s.get("kind") == "search"]
    question, answer = record.get("question", ""), record.get("answer")
    fork = record.get("fork") or {}
    return {
        "position": position,
        "id": trace_id(record),
        "step": record.get("step"),
        "group": record.get("group_id"),
        "sample": record.get("sample"),
        "question": question[:QUESTION_CHARS],
        "answer": answer,
        "reward": record.get("reward"),
        "advantage": record.get("advantage"),
        **outcome(record),
        "finish": record.get("finish"),
        "hops": record.get("meta", {}).get("hops"),
        "searches": len(queries),
        "steps": len(steps),
        "parent": record.get("parent"),
        "fork_step": fork.get("step"),
        "text": " \n".join([question, *queries, answer or ""]).lower(),  # what the text search reads
    }


@dataclass(frozen=True)
class Filters:
    """What the overview's filter bar sends; None / "" = no filter on that field."""

    step: int | None = None
    reward_min: float | None = None
    reward_max: float | None = None
    correct: bool | None = None
    finish: str | None = None
    category: str | None = None
    hops: int | None = None
    text: str = ""
    sort: str = "position"
    descending: bool = False

    def __post_init__(self) -> None:
        if self.sort not in SORT_KEYS:
            raise ValueError(f"sort must be one of {SORT_KEYS}, got {self.sort!r}")

    def keeps(self, row: dict) -> bool:
        reward = row["reward"]
        return ((self.step is None or row["step"] == self.step)
                and (self.reward_min is None or (reward is not None and reward >= self.reward_min))
                and (self.reward_max is None or (reward is not None and reward <= self.reward_max))
                and (self.correct is None or (row["em"] is not None and bool(row["em"]) == self.correct))
                and (not self.finish or row["finish"] == self.finish)
                and (not self.category or row["category"] == self.category)
                and (self.hops is None or row["hops"] == self.hops)
                and (not self.text or all(word in row["text"] for word in self.text.lower().split())))


def select(rows: list[dict], filters: Filters) -> list[dict]:
    """The rows `filters` keeps, sorted by its key (rows without a value last, either way)."""
    kept = [r for r in rows if filters.keeps(r)]
    if filters.sort == "position" and not filters.descending:
        return kept
    present = [r for r in kept if r[filters.sort] is not None]
    missing = [r for r in kept if r[filters.sort] is None]
    present.sort(key=lambda r: r[filters.sort], reverse=filters.descending)
    return present + missing


def facets(rows: list[dict]) -> dict:
    """The values the filter bar offers: training steps, finish reasons, categories, hops."""
    def values(key):
        return sorted({r[key] for r in rows if r[key] is not None})

    return {"steps": values("step"), "finishes": values("finish"), "categories": values("category"), "hops": values("hops")}
