"""An LRU cache of search results in front of any retriever.

RL rollouts repeat queries a lot (GRPO samples the same question many times and agents
converge on the same searches), and a dense search costs a model forward pass. Entries
are keyed on (query, k). Per batch, only the misses go to the inner retriever, all in
one call, so batching survives the cache.
"""

from __future__ import annotations

import threading
from collections import OrderedDict

from retrieval.types import Passage, Retriever, check_k

__all__ = ["CachedRetriever"]


class CachedRetriever:
    """`Retriever` wrapper with an LRU cache of up to `maxsize` (query, k) results; thread-safe."""

    def __init__(self, inner: Retriever, maxsize: int = 10_000):
        if maxsize < 1:
            raise ValueError(f"maxsize must be >= 1, got {maxsize}")
        self.inner, self.maxsize = inner, maxsize
        self.hits = self.misses = 0
        self._entries: OrderedDict[tuple[str, int], tuple[Passage, ...]] = OrderedDict()
        self._lock = threading.Lock()

    def search(self, queries: list[str], k: int) -> list[list[Passage]]:
        k = check_k(k)
        results: list[tuple[Passage, ...] | None] = [None] * len(queries)
        missing: dict[str, list[int]] = {}  # query -> positions; a repeat in one batch is fetched once
        with self._lock:
            for position, query in enumerate(queries):
                cached = self._entries.get((query, k))
                if cached is None:
                    missing.setdefault(query, []).append(position)
                else:
                    self._entries.move_to_end((query, k))
                    results[position] = cached
                    self.hits += 1
            # A query repeated within the batch is fetched once; its repeats count as hits.
            self.misses += len(missing)
            self.hits += sum(len(positions) - 1 for positions in missing.values())
        if missing:
            fetched = self.inner.search(list(missing), k)
            if len(fetched) != len(missing):  # no list could be matched to its query
                raise ValueError(f"the retriever answered {len(missing)} queries with {len(fetched)} result lists")
            with self._lock:
                for (query, positions), passages in zip(missing.items(), fetched):
                    entry = tuple(passages)  # immutable, so no caller can edit what others get
                    self._entries[(query, k)] = entry
                    self._entries.move_to_end((query, k))
                    for position in positions:
                        results[position] = entry
                while len(self._entries) > self.maxsize:
                    self._entries.popitem(last=False)
        return [list(entry) for entry in results]

    def __len__(self) -> int:
        return len(self._entries)

    def clear(self) -> None:
        with self._lock:
            self._entries.clear()
            self.hits = self.misses = 0

    def stats(self) -> dict[str, int]:
        return {"hits": self.hits, "misses": self.misses, "size": len(self._entries), "maxsize": self.maxsize}

    def __getattr__(self, name: str):
        # Expose the inner retriever's extras (corpus, encoder, metadata) through the cache.
        if name == "inner":
            raise AttributeError(name)
        return getattr(self.inner, name)
