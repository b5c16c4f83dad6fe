"""An LRU cache of search results in front of any retriever, bounded in entries and in bytes.

RL rollouts repeat queries a lot (GRPO samples the same question many times and agents
converge on the same searches), and a dense search costs a model forward pass. Entries
are keyed on (a 128-bit hash of the query, k), so a long query costs the cache 16 bytes,
not its length. Per batch, only the misses go to the inner retriever, all in one call, so
batching survives the cache.

The byte bound counts each entry's passages as if their strings were the cache's own
(an upper bound: a local index shares them with its corpus), plus a fixed overhead per
entry and per passage; least recently used entries go first when either bound is passed.
"""

from __future__ import annotations

import hashlib
import threading
from collections import OrderedDict

from retrieval.types import Passage, Retriever, check_k

__all__ = ["CachedRetriever", "query_key", "DEFAULT_MAX_BYTES"]

DEFAULT_MAX_BYTES = 256 * 2**20
_ENTRY_OVERHEAD = 200  # bytes: the key, the OrderedDict node and the tuple of an entry
_PASSAGE_OVERHEAD = 200  # bytes: a Passage object and its four fields' headers


def query_key(query: str) -> bytes:
    """A 16-byte digest of the query; lone surrogates hash like any other code point."""
    return hashlib.blake2b(query.encode("utf-8", "surrogatepass"), digest_size=16).digest()


def entry_bytes(passages: tuple[Passage, ...]) -> int:
    """What one cached result counts against `max_bytes`."""
    return _ENTRY_OVERHEAD + sum(_PASSAGE_OVERHEAD + len(p.doc_id) + len(p.title) + len(p.text) for p in passages)


class CachedRetriever:
    """`Retriever` wrapper with an LRU cache of up to `maxsize` results and `max_bytes`; thread-safe."""

    def __init__(self, inner: Retriever, maxsize: int = 10_000, max_bytes: int = DEFAULT_MAX_BYTES):
        if maxsize < 1:
            raise ValueError(f"maxsize must be >= 1, got {maxsize}")
        if max_bytes < 1:
            raise ValueError(f"max_bytes must be >= 1, got {max_bytes}")
        self.inner, self.maxsize, self.max_bytes = inner, maxsize, max_bytes
        self.hits = self.misses = 0
        self.bytes = 0
        self._entries: OrderedDict[tuple[bytes, int], tuple[tuple[Passage, ...], int]] = OrderedDict()
        self._lock = threading.Lock()

    def search(self, queries: list[str], k: int) -> list[list[Passage]]:
        k = check_k(k)
        results: list[tuple[Passage, ...] | None] = [None] * len(queries)
        missing: dict[bytes, tuple[str, list[int]]] = {}  # key -> (query, positions); a repeat is fetched once
        with self._lock:
            for position, query in enumerate(queries):
                key = (query_key(query), k)
                cached = self._entries.get(key)
                if cached is None:
                    missing.setdefault(key[0], (query, []))[1].append(position)
                else:
                    self._entries.move_to_end(key)
                    results[position] = cached[0]
                    self.hits += 1
            # A query repeated within the batch is fetched once; its repeats count as hits.
            self.misses += len(missing)
            self.hits += sum(len(positions) - 1 for _, positions in missing.values())
        if missing:
            fetched = self.inner.search([query for query, _ in missing.values()], k)
            if len(fetched) != len(missing):  # no list could be matched to its query
                raise ValueError(f"the retriever answered {len(missing)} queries with {len(fetched)} result lists")
            with self._lock:
                for (digest, (_, positions)), passages in zip(missing.items(), fetched):
                    entry = tuple(passages)  # immutable, so no caller can edit what others get
                    self._store((digest, k), entry)
                    for position in positions:
                        results[position] = entry
        return [list(entry) for entry in results]

    def _store(self, key: tuple[bytes, int], entry: tuple[Passage, ...]) -> None:
        size = entry_bytes(entry)
        previous = self._entries.pop(key, None)
        if previous is not None:
            self.bytes -= previous[1]
        if size > self.max_bytes:
            return  # larger than the whole cache: served, not kept
        self._entries[key] = (entry, size)
        self.bytes += size
        while len(self._entries) > self.maxsize or self.bytes > self.max_bytes:
            _, (_, evicted) = self._entries.popitem(last=False)
            self.bytes -= evicted

    def __len__(self) -> int:
        return len(self._entries)

    def clear(self) -> None:
        with self._lock:
            self._entries.clear()
            self.hits = self.misses = self.bytes = 0

    def stats(self) -> dict[str, int]:
        return {"hits": self.hits, "misses": self.misses, "size": len(self._entries), "maxsize": self.maxsize,
                "bytes": self.bytes, "max_bytes": self.max_bytes}

    def __getattr__(self, name: str):
        # Expose the inner retriever's extras (corpus, encoder, metadata) through the cache.
        if name == "inner":
            raise AttributeError(name)
        return getattr(self.inner, name)
