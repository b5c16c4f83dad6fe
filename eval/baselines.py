"""Baselines that answer in a single turn: `direct` (no retrieval) and `rag` (retrieve once).

    python -m eval.run --policy direct --model tiny --data data/world-0 --out runs/direct-test
    python -m eval.run --policy rag --model tiny --data data/world-0 --index indexes/world-0 --out runs/rag-test

`direct` is the contamination check: the model sees the question and must answer at
once, so a high score means it knows the answers without looking anything up (a
generated fictional world should give about 0). `rag` is the classic retrieve-then-read
pipeline: one search with the question itself, the top-k passages injected as the first
observation, then one answer. Against `direct`, it measures what retrieval adds; against
the agent, what searching *well* (reformulating, hopping, judging) adds.

How: both run the agent's own prompt and token layout, with the environment forcing what
a one-turn baseline has no choice about, as injected tokens (loss mask 0):

    direct:  prompt  <answer>|model text
    rag:     prompt  <search>QUESTION</search><information>...</information>  <answer>|model text

The model then generates one turn (up to `max_new_tokens`, stopping at `</answer>`); the
forced `<answer>` plus its text is parsed with the agent's action grammar, so a turn that
does not close the tag, or writes anything but an answer, is an invalid action (finish
`invalid`; there is no second try). Trajectories and traces are the agent's, so every
metric, report and the trace debugger read them unchanged: a `rag` trace has one search
step (the forced one, with its passages) and one answer or invalid step; a `direct`
trace has only the answer or invalid step, and the retriever is never called.
"""

from __future__ import annotations

from typing import TYPE_CHECKING

from agent.actions import format_action, parse_action
from agent.engines.base import Engine, SamplingParams
from agent.rollout import Rollout, RolloutConfig
from agent.types import Example, Step, Trajectory
from retrieval.types import Retriever

if TYPE_CHECKING:
    from agent.rollout import _Run

BASELINES = ("direct", "rag")
ANSWER_OPEN = "<answer>"


class OneTurnRollout(Rollout):
    """A `Rollout` whose trajectories are: [one forced search,] one forced-open answer turn."""

    def __init__(self, engine: Engine, retriever: Retriever | None, cfg: RolloutConfig | None = None,
                 tokenizer=None, *, retrieve: bool):
        if retrieve and retriever is None:
            raise ValueError("the rag baseline needs a retriever")
        super().__init__(engine, retriever, cfg, tokenizer)
        self.retrieve = retrieve

    def __call__(self, examples: list[Example], group_size: int = 1, *, policy_version: int = 0,
                 group_prefix: str = "", seed: int | None = None) -> list[Trajectory]:
        runs = self._start(examples, group_size, policy_version, group_prefix)
        if self.retrieve:
            self._retrieve_once(runs)
        self._answer_turn([run for run in runs if not run.done], self.sampling_params(0, seed))
        return [run.traj for run in runs]

    def _retrieve_once(self, runs: list[_Run]) -> None:
        """Force `<search>question</search>`, then every question's search in one batched call."""
        searches = []
        for run in runs:
            start = len(run.segment.response_ids)
            if self._inject(run, self.tokens(format_action("search", run.example.question))):
                step = Step("search", run.example.question, (start, len(run.segment.response_ids)))
                run.traj.steps.append(step)
                searches.append((run, step))
        if searches:
            self._search(searches)  # injects each observation, or finishes 'max_tokens' when it does not fit

    def _answer_turn(self, runs: list[_Run], params: SamplingParams) -> None:
        starts = {}
        for run in runs:
            start = len(run.segment.response_ids)
            if self._inject(run, self.tokens(ANSWER_OPEN)):
                starts[id(run)] = start
        ready = [run for run in runs if not run.done]
        if not ready:
            return
        outputs = self.engine.generate([run.segment.full_ids for run in ready], params)
        for run, out in zip(ready, outputs):
            room = self._room(run)
            ids, logprobs = list(out.token_ids)[:room], list(out.logprobs)[:room]
            over_budget = len(out.token_ids) > room
            run.segment.append(ids, sampled=True, logprobs=logprobs)
            span = (starts[id(run)], len(run.segment.response_ids))
            text = ANSWER_OPEN + self.tokenizer.decode(ids, skip_special_tokens=False)
            action = parse_action(text, self.cfg.max_answer_chars)
            if action.kind == "answer":
                run.traj.steps.append(Step("answer", action.text, span))
                run.traj.answer = action.text
                run.finish("answered")
            else:
                error = action.error or f"expected an answer, got a {action.kind} action"
                run.traj.steps.append(Step("invalid", text, span, error=error))
                run.finish("max_tokens" if over_budget else "invalid")
