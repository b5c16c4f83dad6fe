"""`SearchScheduler`: searches of many requests on a few threads, taking turns chunk by chunk.

A retrieval server in front of one retriever must keep a small request fast next to a large
one. Searching each request whole, one at a time, makes a 2,560-query request block every
other for as long as it takes; this scheduler cuts requests into chunks of at most `chunk`
queries and serves the waiting requests in turns (round robin), on `workers` threads (FAISS,
torch and numpy release the GIL, so threads search in parallel). A request's result is a
`concurrent.futures.Future`, which an asyncio server awaits with `asyncio.wrap_future`.
"""

from __future__ import annotations

import contextlib
import threading
from collections import deque
from concurrent.futures import Future, InvalidStateError

from retrieval.types import Passage, Retriever

__all__ = ["SearchScheduler"]


class _Job:
    """One request's search: its chunks not yet taken, its results as they come."""

    def __init__(self, queries: list[str], k: int, chunk: int):
        self.queries, self.k, self.chunk = queries, k, chunk
        self.untaken = deque(range(0, len(queries), chunk))  # start of each chunk
        self.running = 0
        self.results: list[list[Passage] | None] = [None] * len(queries)
        self.future: Future = Future()

    def settle(self, result=None, error: BaseException | None = None) -> None:
        with contextlib.suppress(InvalidStateError):  # cancelled meanwhile: nobody waits
            if error is not None:
                self.future.set_exception(error)
            else:
                self.future.set_result(result)


class SearchScheduler:
    """Runs searches on `workers` threads, in chunks of at most `chunk` queries, in turns.

    Round robin over requests: a request joins the back of the line when it arrives and
    again each time one of its chunks is done, so a request that arrives while a large one
    is being searched waits for at most one chunk per worker. A worker with nobody in line
    takes another chunk of a request already running, so a lone large request still uses
    every worker.
    """

    def __init__(self, retriever: Retriever, workers: int = 2, chunk: int = 64):
        if workers < 1 or chunk < 1:
            raise ValueError(f"workers and chunk must be >= 1, got {workers} and {chunk}")
        self.retriever, self.chunk = retriever, chunk
        self._line: deque[_Job] = deque()  # requests waiting for a turn
        self._running: list[_Job] = []  # requests with a chunk being searched
        self._changed = threading.Condition()
        self._closed = False
        self._threads = [threading.Thread(target=self._work, name=f"search-{i}", daemon=True) for i in range(workers)]
        for thread in self._threads:
            thread.start()

    def submit(self, queries: list[str], k: int) -> Future:
        """A future of the queries' results, in order."""
        job = _Job(list(queries), k, self.chunk)
        if not queries:
            job.settle([])
            return job.future
        with self._changed:
            if self._closed:
                raise RuntimeError("the search scheduler is closed")
            self._line.append(job)
            self._changed.notify()
        return job.future

    def waiting(self) -> int:
        """Requests in line for a turn (not counting those with a chunk being searched)."""
        with self._changed:
            return len(self._line)

    def close(self) -> None:
        with self._changed:
            self._closed = True
            self._changed.notify_all()
        for thread in self._threads:
            thread.join(timeout=5)

    def _take(self) -> tuple[_Job, int] | None:
        with self._changed:
            while True:
                if self._closed:
                    return None
                if self._line:
                    job = self._line.popleft()
                else:
                    job = next((j for j in self._running if j.untaken), None)
                if job is not None:
                    break
                self._changed.wait()
            start = job.untaken.popleft()
            job.running += 1
            if job not in self._running:
                self._running.append(job)
            if not job.untaken and job in self._line:  # its last chunk was taken outside its turn
                self._line.remove(job)
            return job, start

    def _work(self) -> None:
        while (taken := self._take()) is not None:
            job, start = taken
            error = None
            if not job.future.done():  # skip the rest of a failed or cancelled request
                queries = job.queries[start:start + job.chunk]
                try:
                    passages = self.retriever.search(queries, job.k)
                    if len(passages) != len(queries):
                        raise ValueError(f"the retriever answered {len(queries)} queries with {len(passages)} lists")
                    job.results[start:start + len(queries)] = passages
                except Exception as err:  # reported to the request; the worker goes on
                    error = err
            self._done(job, error)

    def _done(self, job: _Job, error: Exception | None) -> None:
        with self._changed:
            job.running -= 1
            if error is not None:
                job.untaken.clear()
            if job.untaken:  # back of the line for its next chunk
                if job not in self._line:
                    self._line.append(job)
                    self._changed.notify()
            else:
                if job in self._line:
                    self._line.remove(job)
                if job.running == 0:
                    self._running.remove(job)
            finished = not job.untaken and job.running == 0
        if error is not None:
            job.settle(error=error)
        elif finished:
            job.settle(job.results)
