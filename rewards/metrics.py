"""Evaluation metrics over finished trajectories (pure functions).

`question_row(traj, example)` scores one question; `summarize_rows` aggregates rows and
`summarize(trajs, examples)` does both. What is measured:

- **answer metrics** (`ANSWER_METRICS`), each against every gold alias, with a
  percentile-bootstrap interval (`em_ci`, ...; see `rewards.bootstrap`), overall, by hop
  count, by question type and by data source (Search-R1's `data_source`):

  | name          | rule                                                                      |
  | ------------- | ------------------------------------------------------------------------- |
  | `em`          | ours: normalised answer equals a gold alias (`rewards.outcome`)           |
  | `cover_em`    | ours: a gold alias appears inside the answer as whole words               |
  | `f1`          | ours: token F1 of the best alias                                          |
  | `squad_em`    | Search-R1's `em` (`em_check`) = FlashRAG's `em`                           |
  | `subem`       | Search-R1's `subem` (`subem_check`): a gold alias is a substring          |
  | `acc`         | FlashRAG's `acc` (`Sub_ExactMatch`): the same substring rule              |
  | `flashrag_f1` | FlashRAG's `f1` (`F1_Score`): yes / no / noanswer score 0 unless exact    |

  Ours normalise as SQuAD does and also drop curly quotes (‘ ’ “ ”); the peers' metrics
  use SQuAD's normalisation as they do, so they reproduce the peers' figures. They part
  from ours where a quote is curly (`“Velmora”`), where a gold is part of a word
  (`1990` in `1990s`, any CJK answer inside a CJK sentence: no spaces separate its
  words) and, for F1, on yes / no answers and answers that normalise to nothing.
- **searches, turns** (actions: search, judge, answer, invalid) per question, and the
  **valid-action rate** (share of actions that were not invalid). Turns and the rate
  count the actions the policy generated; an action the environment forced (the `rag`
  baseline's search, all of whose tokens have loss mask 0) counts as a search only.
- **JUDGE accuracy**: the share of judge verdicts equal to the ideal label of the
  observation they judge (`rewards.judge.ideal_judge_label`). Only judges that follow an
  observation have a label; the key is absent when no judge had one. For questions
  without support labels the label falls back to an embedding-similarity heuristic
  (all-MiniLM-L6-v2, loaded on first need; pass `judge_scorer` to replace it).
- **support recall**: the share of an example's gold support passages retrieved at any
  step (dropped observations count: they were retrieved). Only over examples with
  support labels; the key is absent when none has them.
- **tokens**: sampled by the policy, and total (prompt + every sampled and injected
  token of the response); **latency**: seconds per question, which is the wall time of
  the rollout batch the question ran in divided by the batch size (questions run
  batched, so this is an amortised cost, not a single-question latency).
- **error breakdown**: every question falls in exactly one category, the first of these
  rules that applies:

  | category             | rule                                                                 |
  | -------------------- | -------------------------------------------------------------------- |
  | `correct`            | exact match with a gold alias                                        |
  | `invalid_action`     | no answer: ended by the invalid-action limit (finish `invalid`)      |
  | `no_answer`          | no answer: every allowed turn used without one (finish `max_turns`)  |
  | `budget_exhausted`   | no answer: the token budget ran out, response tokens or the context  |
  |                      | window (finish `max_tokens`)                                         |
  | `gold_not_retrieved` | a wrong answer, and the gold evidence never arrived (below)          |
  | `wrong_with_gold`    | a wrong answer although the gold evidence was retrieved              |

  "The gold evidence was retrieved" means, where the example has a reasoning chain with
  per-hop support (`meta['chain'][i]['support']`, alternatives for one hop), that every
  hop had at least one of its passages retrieved; else, with support labels, that every
  support passage was retrieved; else (no labels at all) that some retrieved passage
  contains a gold answer.

>>> from agent.types import Step
>>> ex = Example("q1", "Where was Orin Kael born?", ["Velmora"], support=["d2"])
>>> traj = Trajectory("q1", "q1", 0, [], [Step("answer", "Dastmoor", (0, 3))], answer="Dastmoor", finish="answered")
>>> question_row(traj, ex)["category"]
'gold_not_retrieved'
"""

from __future__ import annotations

import re
import string
from collections import Counter, defaultdict
from collections.abc import Callable, Sequence
from statistics import fmean

from agent.types import Example, Step, Trajectory
from rewards.bootstrap import DEFAULT_RESAMPLES, bootstrap_ci
from rewards.judge import Scorer, ideal_labels, passage_has_answer
from rewards.outcome import cover_exact_match, exact_match, f1_score, gold_list

__all__ = [
    "ACTION_KINDS", "ERROR_CATEGORIES", "ANSWER_METRICS", "METRIC_LABELS", "REPORTED_METRICS", "squad_normalize",
    "squad_em", "substring_em", "flashrag_f1", "score_answers", "support_recall", "gold_retrieved",
    "error_category", "question_row", "summarize_rows", "summarize",
]

ACTION_KINDS = ("search", "judge", "answer", "invalid")
ERROR_CATEGORIES = ("correct", "gold_not_retrieved", "wrong_with_gold", "no_answer", "budget_exhausted", "invalid_action")
_UNANSWERED = {"invalid": "invalid_action", "max_turns": "no_answer", "max_tokens": "budget_exhausted"}


# -- the peers' answer metrics ---------------------------------------------------------------
# As Search-R1 (verl/utils/reward_score/qa_em.py) and FlashRAG (flashrag/evaluator/metrics.py
# and utils.py) compute them, rule for rule, so that a figure here is comparable to theirs.
# FlashRAG's regex matching of gold answers, which it switches on for CuratedTREC only, is
# not reproduced.

_SQUAD_PUNCT = frozenset(string.punctuation)
_SQUAD_ARTICLES = re.compile(r"\b(a|an|the)\b")
_FLASHRAG_BINARY = ("yes", "no", "noanswer")


def squad_normalize(text: str) -> str:
    """SQuAD's normalisation as both peers have it: ASCII punctuation only (curly quotes stay).

    >>> squad_normalize("The “Velmora” Prize!")
    '“velmora” prize'
    """
    text = "".join(ch for ch in text.lower() if ch not in _SQUAD_PUNCT)
    return " ".join(_SQUAD_ARTICLES.sub(" ", text).split())


def squad_em(prediction: str | None, golds: str | Sequence[str]) -> float:
    """Search-R1's `em_check` and FlashRAG's `em`: the normalised prediction equals a gold."""
    if prediction is None:
        return 0.0
    pred = squad_normalize(prediction)
    return float(any(squad_normalize(g) == pred for g in gold_list(golds)))


def substring_em(prediction: str | None, golds: str | Sequence[str]) -> float:
    """Search-R1's `subem_check` and FlashRAG's `acc`: a normalised gold is a substring of the
    normalised prediction, inside words too (a gold that normalises to nothing always matches).

    >>> substring_em("the 1990s", ["1990"]), cover_exact_match("the 1990s", ["1990"])
    (1.0, 0.0)
    """
    if prediction is None:
        return 0.0
    pred = squad_normalize(prediction)
    return float(any(squad_normalize(g) in pred for g in gold_list(golds)))


def flashrag_f1(prediction: str | None, golds: str | Sequence[str]) -> float:
    """FlashRAG's `f1` (`F1_Score.token_level_scores`): token F1 of the best gold, where a
    yes / no / noanswer prediction or gold scores 0 unless the two are equal, and no shared
    token scores 0 (two empty answers too).

    >>> flashrag_f1("no", ["no way"]), f1_score("no", ["no way"])
    (0.0, 0.6666666666666666)
    """
    if prediction is None:
        return 0.0
    pred = squad_normalize(prediction)
    best = 0.0
    for gold in gold_list(golds):
        gold = squad_normalize(gold)
        if (pred in _FLASHRAG_BINARY or gold in _FLASHRAG_BINARY) and pred != gold:
            continue
        pred_tokens, gold_tokens = pred.split(), gold.split()
        common = sum((Counter(pred_tokens) & Counter(gold_tokens)).values())
        if common:
            precision, recall = common / len(pred_tokens), common / len(gold_tokens)
            best = max(best, 2 * precision * recall / (precision + recall))
    return best


# Every answer metric by the name metrics.json, traces and reports use; eval.run --metrics picks
# the ones its table and report show (all are always computed and saved).
ANSWER_METRICS: dict[str, Callable[[str | None, str | Sequence[str]], float]] = {
    "em": exact_match, "f1": f1_score, "cover_em": cover_exact_match,
    "squad_em": squad_em, "subem": substring_em, "acc": substring_em, "flashrag_f1": flashrag_f1,
}
METRIC_LABELS = {
    "em": "EM", "f1": "F1", "cover_em": "cover-EM", "squad_em": "EM (Search-R1, FlashRAG)",
    "subem": "subEM (Search-R1)", "acc": "acc (FlashRAG)", "flashrag_f1": "F1 (FlashRAG)",
}
REPORTED_METRICS = ("em", "f1", "cover_em")


def score_answers(traj: Trajectory, example: Example) -> dict[str, float]:
    """Every metric of `ANSWER_METRICS` for one trajectory's answer."""
    golds = list(example.answers)
    return {name: metric(traj.answer, golds) for name, metric in ANSWER_METRICS.items()}


def _retrieved_ids(traj: Trajectory) -> set[str]:
    return {p.doc_id for s in traj.steps if s.kind == "search" for p in s.passages}


def support_recall(traj: Trajectory, example: Example) -> float | None:
    """Share of gold support passages retrieved at any step (None without labels)."""
    if not example.support:
        return None
    seen = _retrieved_ids(traj)
    support = set(example.support)
    return sum(doc in seen for doc in support) / len(support)


def gold_retrieved(traj: Trajectory, example: Example) -> bool:
    """Whether the gold evidence was retrieved at some step (see the module docstring)."""
    seen = _retrieved_ids(traj)
    chain = example.meta.get("chain")
    if isinstance(chain, list) and chain and all(isinstance(h, dict) and h.get("support") for h in chain):
        return all(seen & set(hop["support"]) for hop in chain)
    if example.support:
        return set(example.support) <= seen
    return any(passage_has_answer(p, example.answers) for s in traj.steps if s.kind == "search" for p in s.passages)


def error_category(traj: Trajectory, example: Example, em: float | None = None) -> str:
    """The one category of `ERROR_CATEGORIES` a finished trajectory falls in."""
    if em is None:
        em = exact_match(traj.answer, list(example.answers))
    if em:
        return "correct"
    if traj.answer is None:
        if traj.finish not in _UNANSWERED:
            raise ValueError(f"trajectory of example {example.id!r} has no answer and finish {traj.finish!r}; "
                             f"expected one of {sorted(_UNANSWERED)}")
        return _UNANSWERED[traj.finish]
    return "wrong_with_gold" if gold_retrieved(traj, example) else "gold_not_retrieved"


def question_row(traj: Trajectory, example: Example, *, seconds: float | None = None,
                 judge_scorer: Scorer | None = None) -> dict:
    """Every per-question quantity `summarize_rows` aggregates (JSON-ready).

    `judge_scorer` labels judged observations of examples without support labels (see
    `rewards.judge.ideal_judge_label`; None = the shared MiniLM scorer, loaded only then).
    """
    if traj.example_id != example.id:
        raise ValueError(f"trajectory of example {traj.example_id!r} paired with example {example.id!r}")
    scores = score_answers(traj, example)
    actions = [s for s in traj.steps if s.kind in ACTION_KINDS and _generated(s, traj)]
    labels = ideal_labels(traj, example, judge_scorer) if any(s.kind == "judge" for s in traj.steps) \
        else [None] * len(traj.steps)
    verdicts = [s.text == label for s, label in zip(traj.steps, labels) if s.kind == "judge" and label is not None]
    prompt = len(traj.segments[0].context_ids) if traj.segments else 0
    return {
        "id": example.id,
        **scores,
        "category": error_category(traj, example, scores["em"]),
        "hops": example.meta.get("hops"),
        "type": example.meta.get("type"),
        "data_source": example.meta.get("data_source"),
        "finish": traj.finish,
        "searches": sum(s.kind == "search" for s in traj.steps),
        "turns": len(actions),
        "invalid": sum(s.kind == "invalid" for s in actions),
        "judged": len(verdicts),
        "judged_right": sum(verdicts),
        "judge_labels": labels,
        "support_recall": support_recall(traj, example),
        "gold_retrieved": gold_retrieved(traj, example),
        "sampled_tokens": traj.n_sampled_tokens,
        "total_tokens": prompt + traj.n_response_tokens,
        "seconds": seconds,
    }


def _generated(step: Step, traj: Trajectory) -> bool:
    """Whether the policy sampled any token of the step (False for actions the environment forced)."""
    if step.segment >= len(traj.segments):
        return True  # a trajectory built without tokens: every step counts
    mask = traj.segments[step.segment].loss_mask[step.span[0]: step.span[1]]
    return not mask or any(mask)


def _mean(values) -> float:
    values = list(values)
    return fmean(values) if values else 0.0


def _scores(rows: list[dict]) -> dict:
    return {
        "n": len(rows),
        **{name: _mean(r[name] for r in rows) for name in ANSWER_METRICS},
        "searches_per_question": _mean(r["searches"] for r in rows),
    }


def _group_order(item) -> tuple:
    """Numbers in numeric order (2 before 10), then names alphabetically."""
    key = item[0]
    return (0, key, "") if isinstance(key, (int, float)) and not isinstance(key, bool) else (1, 0, str(key))


def summarize_rows(rows: Sequence[dict], *, resamples: int = DEFAULT_RESAMPLES, seed: int = 0,
                   search_budget: int | None = None) -> dict:
    """Aggregate `question_row`s. `search_budget` (a protocol's cap on searches per
    question, e.g. 4) adds `over_search_budget`: the questions that searched more."""
    rows = list(rows)
    if not rows:
        raise ValueError("no questions to summarize")
    n_actions = sum(r["turns"] for r in rows)
    out = _scores(rows)
    for name in ANSWER_METRICS:
        out[f"{name}_ci"] = list(bootstrap_ci([r[name] for r in rows], resamples=resamples, seed=seed))
    out["bootstrap"] = {"resamples": resamples, "seed": seed, "confidence": 0.95}
    out["valid_action_rate"] = 1 - sum(r["invalid"] for r in rows) / n_actions if n_actions else 0.0
    out["turns_per_question"] = _mean(r["turns"] for r in rows)
    out["sampled_tokens_per_question"] = _mean(r["sampled_tokens"] for r in rows)
    out["total_tokens_per_question"] = _mean(r["total_tokens"] for r in rows)
    seconds = [r["seconds"] for r in rows if r.get("seconds") is not None]
    if seconds:
        out["seconds_per_question"] = _mean(seconds)
    out["finish"] = dict(sorted(Counter(r["finish"] for r in rows).items()))
    counts = Counter(r["category"] for r in rows)
    out["errors"] = {c: counts.get(c, 0) for c in ERROR_CATEGORIES}
    judged = sum(r["judged"] for r in rows)
    if judged:
        out["judge_accuracy"] = sum(r["judged_right"] for r in rows) / judged
        out["judged"] = judged
    recalls = [r["support_recall"] for r in rows if r["support_recall"] is not None]
    if recalls:
        out["support_recall"] = _mean(recalls)
    if search_budget is not None:
        out["search_budget"] = search_budget
        out["over_search_budget"] = sum(r["searches"] > search_budget for r in rows)
    for key in ("hops", "type", "data_source"):
        groups = defaultdict(list)
        for r in rows:
            if r[key] is not None:
                groups[r[key]].append(r)
        if groups:
            out[f"by_{key}"] = {str(k): _scores(g) for k, g in sorted(groups.items(), key=_group_order)}
    return out


def summarize(trajs: list[Trajectory], examples: list[Example], *, latencies: Sequence[float] | None = None,
              judge_scorer: Scorer | None = None, resamples: int = DEFAULT_RESAMPLES, seed: int = 0,
              search_budget: int | None = None) -> dict:
    """Aggregate metrics; `examples[i]` is the question of `trajs[i]` (and `latencies[i]` its seconds)."""
    if len(trajs) != len(examples):
        raise ValueError(f"{len(trajs)} trajectories but {len(examples)} examples")
    if latencies is not None and len(latencies) != len(trajs):
        raise ValueError(f"{len(latencies)} latencies but {len(trajs)} trajectories")
    rows = [question_row(t, ex, seconds=None if latencies is None else latencies[i], judge_scorer=judge_scorer)
            for i, (t, ex) in enumerate(zip(trajs, examples))]
    return summarize_rows(rows, resamples=resamples, seed=seed, search_budget=search_budget)


# -- formatting for reports ------------------------------------------------------------------


def markdown_table(headers: list[str], rows: list[list[object]], align: str | None = None) -> str:
    """A GitHub markdown table; `align` is one of l / r per column (default: first left, rest right)."""
    align = align or "l" + "r" * (len(headers) - 1)
    cell = lambda v: str(v).replace("|", "\\|").replace("\n", " ")  # noqa: E731
    lines = ["| " + " | ".join(cell(h) for h in headers) + " |",
             "| " + " | ".join("---:" if a == "r" else "---" for a in align) + " |"]
    lines += ["| " + " | ".join(cell(v) for v in row) + " |" for row in rows]
    return "\n".join(lines)


def fmt(value: float | None, digits: int = 3) -> str:
    return "-" if value is None else f"{value:.{digits}f}"
