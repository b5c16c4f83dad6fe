"""Grounding: a step reward for copying names exactly from what the agent has read.

A search query or an answer is *grounded* when its words come from the text in the agent's
context at that point: the question, and the titles and texts of the passages earlier
searches returned (a passage dropped after a 'not useful' JUDGE has left the context, so it
no longer counts). For step k

    search:  r_search * (share of the query's words found in that text)
    answer:  r_answer * (1 if the whole answer occurs in that text as a run of words, else 0)
    other:   0

Words are SQuAD-normalised (`normalize_answer`). The rule needs no gold label, so it scores
every step of every sample, right or wrong: it is the dense signal that teaches a small
policy to copy a name letter for letter, where a miscopied name in a query means the gold
passage never arrives and a miscopied name in an answer is wrong even with the passage in
view. It does not say the name is the right one; pair it with an outcome reward (a
trajectory that copies the question's own entity as its answer is grounded and wrong).
Relation words of a query ("author", "born") need not appear in the text; they cost every
sample of a question the same share, so they cancel within a GRPO group.
"""

from __future__ import annotations

from agent.types import Example, Trajectory
from rewards.base import StepRuleReward, number
from rewards.outcome import normalize_answer

__all__ = ["grounding_step_rewards", "GroundingReward"]


def grounding_step_rewards(traj: Trajectory, example: Example, r_search: float = 1.0,
                           r_answer: float = 1.0) -> list[float]:
    """One value per step of `traj` (see the module docstring).

    >>> from agent.types import Passage, Step
    >>> p = Passage("d1", "Velmora", "Orin Kael was born in Velmora.")
    >>> steps = [Step("search", "Orin Kaell birthplace", (0, 4), [p]), Step("answer", "velmora", (9, 11))]
    >>> grounding_step_rewards(Trajectory("q", "q", 0, [], steps), Example("q", "Where was Orin Kael born?", ["Velmora"]))
    [0.3333333333333333, 1.0]
    """
    runs = [f" {normalize_answer(example.question)} "]  # each text in context, words space-padded
    seen = set(runs[0].split())
    per_step = []
    for step in traj.steps:
        value = 0.0
        if step.kind == "search":
            query = normalize_answer(step.text).split()
            if query:
                value = r_search * sum(w in seen for w in query) / len(query)
            if not step.dropped:
                for passage in step.passages:
                    for part in (passage.title, passage.text):
                        runs.append(f" {normalize_answer(part)} ")
                        seen.update(runs[-1].split())
        elif step.kind == "answer":
            answer = normalize_answer(step.text)
            value = r_answer * float(bool(answer) and any(f" {answer} " in run for run in runs))
        per_step.append(value)
    return per_step


class GroundingReward(StepRuleReward):
    """Step rewards for queries and answers copied from the context (module docstring)."""

    def __init__(self, r_search: float = 1.0, r_answer: float = 1.0):
        self.r_search = number("grounding.r_search", r_search)
        self.r_answer = number("grounding.r_answer", r_answer)

    def _per_step(self, traj: Trajectory, example: Example) -> list[float]:
        return grounding_step_rewards(traj, example, self.r_search, self.r_answer)
