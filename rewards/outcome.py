"""Outcome metrics against gold answers (SQuAD normalisation), and the outcome rewards.

Each metric takes a prediction and every gold alias and returns the best match. Below
them: the same metrics per trajectory, format validity, and the length and search-count
budget penalties, as rewards.

>>> normalize_answer("The  Ashen Lantern!")
'ashen lantern'
>>> exact_match("the ashen lantern", ["Ashen Lantern", "Lantern"])
1.0
>>> round(f1_score("Orin Kael of Velmora", ["Orin Kael"]), 3)
0.667
>>> cover_exact_match("It was Orin Kael.", ["orin kael"])
1.0
"""

from __future__ import annotations

import re
import string
from collections import Counter
from collections.abc import Sequence

from agent.types import Example, Trajectory
from rewards.base import Score, check_batch, number

_ARTICLES = re.compile(r"\b(a|an|the)\b")
# SQuAD's ASCII punctuation and the curly quotes models write around names: “Velmora” is Velmora.
_PUNCT = str.maketrans("", "", string.punctuation + "‘’“”")


def normalize_answer(text: str) -> str:
    """Lower-case, drop punctuation (curly quotes too) and articles, fold white space (SQuAD).

    >>> normalize_answer("“The Ashen Lantern”")
    'ashen lantern'
    """
    text = text.lower().translate(_PUNCT)
    return " ".join(_ARTICLES.sub(" ", text).split())


def gold_list(golds: str | Sequence[str]) -> Sequence[str]:
    """The gold answers; a bare string is one answer, as Search-R1 and FlashRAG take it
    (iterating it would match its single characters)."""
    return [golds] if isinstance(golds, str) else golds


def exact_match(prediction: str | None, golds: str | Sequence[str]) -> float:
    """1 when the normalised prediction equals a normalised gold alias.

    >>> exact_match("Paris", "Paris"), exact_match("P", "Paris")
    (1.0, 0.0)
    """
    if prediction is None:
        return 0.0
    pred = normalize_answer(prediction)
    return float(any(pred == normalize_answer(g) for g in gold_list(golds)))


def cover_exact_match(prediction: str | None, golds: str | Sequence[str]) -> float:
    """1 when a normalised gold answer appears inside the normalised prediction as whole
    words ("1990" is not inside "1990s"; see `rewards.metrics` for the peers' substring rule)."""
    if prediction is None:
        return 0.0
    pred = f" {normalize_answer(prediction)} "
    return float(any(f" {normalize_answer(g)} " in pred for g in gold_list(golds) if normalize_answer(g)))


def f1_score(prediction: str | None, golds: str | Sequence[str]) -> float:
    """Token-level F1 of the best-matching gold alias."""
    if prediction is None:
        return 0.0
    pred_tokens = normalize_answer(prediction).split()
    best = 0.0
    for gold in gold_list(golds):
        gold_tokens = normalize_answer(gold).split()
        common = sum((Counter(pred_tokens) & Counter(gold_tokens)).values())
        if not pred_tokens or not gold_tokens:
            best = max(best, float(pred_tokens == gold_tokens))
        elif common:
            precision, recall = common / len(pred_tokens), common / len(gold_tokens)
            best = max(best, 2 * precision * recall / (precision + recall))
    return best


# ----------------------------------------------------------------------------- as rewards
# Per-trajectory forms of the metrics above, and the format and budget rules. The
# registry turns the functions into batch rewards with `rewards.base.from_function`.

def answer_em(traj: Trajectory, example: Example) -> float:
    """1 when the trajectory's answer equals a gold alias after normalisation."""
    return exact_match(traj.answer, list(example.answers))


def answer_cover_em(traj: Trajectory, example: Example) -> float:
    """1 when a gold alias appears inside the trajectory's answer after normalisation."""
    return cover_exact_match(traj.answer, list(example.answers))


def answer_f1(traj: Trajectory, example: Example) -> float:
    """Token F1 of the trajectory's answer against its best-matching gold alias."""
    return f1_score(traj.answer, list(example.answers))


def format_score(traj: Trajectory, *, invalid_penalty: float = 1.0, unanswered: float = 0.0) -> float:
    """Credit for following the action grammar, in [0, 1].

    An answered trajectory starts at 1, an unanswered one at `unanswered`; each invalid
    action takes `invalid_penalty` off, down to 0. The defaults give the strict rule
    (1 only when it answered without a single invalid action); partial credit is e.g.
    `invalid_penalty=0.25` (an answer after one malformed turn still earns 0.75) or
    `unanswered=0.5` (clean turns that ran out of budget still earn something).

    >>> from agent.types import Step
    >>> bad = Step("invalid", "<serch>x", (0, 3))
    >>> format_score(Trajectory("q", "q", 0, [], [bad], answer="Velmora"))
    0.0
    >>> format_score(Trajectory("q", "q", 0, [], [bad], answer="Velmora"), invalid_penalty=0.25)
    0.75
    """
    start = 1.0 if traj.answer is not None else unanswered
    n_invalid = sum(step.kind == "invalid" for step in traj.steps)
    return max(0.0, start - invalid_penalty * n_invalid)


def length_penalty(n_sampled_tokens: int, *, budget: int, per_token: float) -> float:
    """-per_token for every sampled token past `budget` (injected tokens are free).

    >>> length_penalty(130, budget=100, per_token=0.01)
    -0.3
    >>> length_penalty(90, budget=100, per_token=0.01)
    0.0
    """
    return -per_token * max(0, n_sampled_tokens - budget) + 0.0  # + 0.0 turns -0.0 into 0.0


def search_penalty_steps(traj: Trajectory, *, budget: int, per_search: float) -> list[float]:
    """-per_search on every search step past the first `budget` searches; 0 elsewhere.

    >>> from agent.types import Step
    >>> steps = [Step("search", "a", (0, 1)), Step("judge", "useful", (1, 2)), Step("search", "b", (2, 3))]
    >>> search_penalty_steps(Trajectory("q", "q", 0, [], steps), budget=1, per_search=0.5)
    [0.0, 0.0, -0.5]
    """
    per_step, searches = [], 0
    for step in traj.steps:
        searches += step.kind == "search"
        per_step.append(-per_search if step.kind == "search" and searches > budget else 0.0)
    return per_step


class FormatReward:
    """`format_score` as a batch reward (see there for the partial-credit options)."""

    def __init__(self, invalid_penalty: float = 1.0, unanswered: float = 0.0):
        self.invalid_penalty = number("format.invalid_penalty", invalid_penalty, minimum=0.0)
        self.unanswered = number("format.unanswered", unanswered, minimum=0.0, maximum=1.0)

    def __call__(self, trajectories: list[Trajectory], examples: list[Example]) -> list[Score]:
        check_batch(trajectories, examples)
        return [Score(format_score(t, invalid_penalty=self.invalid_penalty, unanswered=self.unanswered))
                for t in trajectories]


class LengthPenalty:
    """`length_penalty` on each trajectory's sampled tokens; an outcome-level value <= 0."""

    def __init__(self, budget: int = 512, per_token: float = 0.001):
        self.budget = int(number("length_penalty.budget", budget, minimum=0, integer=True))
        self.per_token = number("length_penalty.per_token", per_token, minimum=0.0)

    def __call__(self, trajectories: list[Trajectory], examples: list[Example]) -> list[Score]:
        check_batch(trajectories, examples)
        return [Score(length_penalty(t.n_sampled_tokens, budget=self.budget, per_token=self.per_token))
                for t in trajectories]


class SearchPenalty:
    """`search_penalty_steps` per trajectory: placed on the searches past the budget."""

    def __init__(self, budget: int = 4, per_search: float = 0.1):
        self.budget = int(number("search_penalty.budget", budget, minimum=0, integer=True))
        self.per_search = number("search_penalty.per_search", per_search, minimum=0.0)

    def __call__(self, trajectories: list[Trajectory], examples: list[Example]) -> list[Score]:
        check_batch(trajectories, examples)
        scores = []
        for traj in trajectories:
            per_step = search_penalty_steps(traj, budget=self.budget, per_search=self.per_search)
            scores.append(Score(sum(per_step) + 0.0, per_step))
        return scores
