"""What a run does when its searches fail, so that it never trains on an outage.

A search fails when the retriever raises or does not answer (an `HTTPRetriever` retries with
backoff first): the rollout records why on the search step and the policy reads "Search
failed." (`agent/rollout.py`). A training step's failed searches are counted in its record
(`search/failed`, `search/failure_rate`) and, while they are few, trained on as the policy saw
them. Once their share passes `retrieval_failure_threshold`, `on_retrieval_failure` acts
before the update:

1. stop: the run ends with a one-line error naming the retriever; the same command resumes
   from the last checkpoint once the retriever answers again.
2. pause: wait with exponential backoff until the retrieval server's `/health` answers (a
   retriever without one: one wait), then roll the same step out again (same questions,
   same seed), as often as it takes.

An evaluation with a failed search measures the outage, not the policy: any failed search
acts the same way there.
"""

from __future__ import annotations

from collections.abc import Callable
from dataclasses import dataclass
from time import monotonic, sleep

from agent.rollout import SearchesFailed, SearchTally
from agent.types import Trajectory
from train.distributed import ONE, Processes

ON_FAILURE = ("stop", "pause")
__all__ = ["ON_FAILURE", "SearchGuard", "SearchesFailed", "check_answers"]


@dataclass
class SearchGuard:
    """Rolls out, counts the failed searches, and stops or pauses past the threshold."""

    threshold: float  # the share of a rollout's searches that may fail; above it `on_failure` acts
    on_failure: str  # stop | pause
    log: Callable[[str], None]
    first_wait: float = 5.0  # seconds of the first pause; each further one doubles, up to max_wait
    max_wait: float = 300.0

    def rollout(self, roll: Callable[[], list[Trajectory]], retriever, what: str, *, procs: Processes = ONE,
                threshold: float | None = None) -> tuple[list[Trajectory], SearchTally, float]:
        """`roll()`'s trajectories once no more than `threshold` (default: the guard's) of their
        searches failed, counted over every process; with the tally and the seconds paused.
        Raises `SearchesFailed` when the run stops."""
        threshold = self.threshold if threshold is None else threshold
        paused, wait = 0.0, self.first_wait
        while True:
            trajectories = roll()
            tally = _summed(SearchTally.of(trajectories), procs)
            if tally.failure_rate <= threshold:
                return trajectories, tally, paused
            where = getattr(retriever, "base_url", None)
            message = (f"{tally.failed} of {tally.searches} searches of {what} failed"
                       + (f" against {where}" if where else "") + f" ({tally.first_error})")
            if self.on_failure == "stop":
                raise SearchesFailed(message)
            self.log(f"{message}; pausing before rolling it out again")
            started = monotonic()
            wait = self._wait_for(retriever, where, wait)
            paused += monotonic() - started

    def _wait_for(self, retriever, where: str | None, wait: float) -> float:
        """Sleep `wait`, doubling it each time, until the retriever's health check answers
        (a retriever without one: once); returns the next wait."""
        health, name = getattr(retriever, "health", None), where or "the retriever"
        while True:
            self.log(f"waiting {wait:g} s for {name}")
            sleep(wait)
            wait = min(2 * wait, self.max_wait)
            if health is None:
                return wait
            try:
                health()
            except Exception as err:  # still down: wait longer
                self.log(f"{name} does not answer its health check: {err}")
                continue
            self.log(f"{name} answers again")
            return wait


def check_answers(retriever) -> None:
    """Raise `SearchesFailed` when a retrieval server does not answer its health check: at
    start-up a wrong URL or a server not yet started is the likely cause, and pausing for it
    would wait forever."""
    health = getattr(retriever, "health", None)
    if health is None:
        return
    try:
        health()
    except Exception as err:
        raise SearchesFailed(str(err)) from None


def _summed(tally: SearchTally, procs: Processes) -> SearchTally:
    """Every process's tally added up (the same on every process, so all of them act alike)."""
    if procs.n == 1:
        return tally
    searches, failed = procs.sum([tally.searches, tally.failed])
    errors = [e for e in procs.gather(tally.first_error) if e is not None] if failed else []  # failed: the same everywhere
    return SearchTally(int(searches), int(failed), errors[0] if errors else None)
