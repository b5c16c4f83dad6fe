"""The retrieval vocabulary: what a search returns and what a retriever is.

Kept in `retrieval` (not `agent`) because dependencies point one way,
retrieval <- agent <- rewards <- train; `agent.types` re-exports these names.
"""

from __future__ import annotations

from dataclasses import dataclass
from typing import Protocol, runtime_checkable


@dataclass(frozen=True)
class Passage:
    """One retrieved passage. `doc_id` is the corpus id, kept exactly as given."""

    doc_id: str
    title: str
    text: str
    score: float = 0.0

    @property
    def contents(self) -> str:
        """The FlashRAG / Search-R1 `contents` form: '"Title"\\ntext'."""
        return f'"{self.title}"\n{self.text}' if self.title else self.text


@runtime_checkable
class Retriever(Protocol):
    """Anything that answers a batch of queries with the top-k passages of each."""

    def search(self, queries: list[str], k: int) -> list[list[Passage]]: ...


def check_k(k: object) -> int:
    """k must be a positive int (bool excluded); every retriever checks it the same way."""
    import numpy as np

    if isinstance(k, bool) or not isinstance(k, (int, np.integer)) or k < 1:
        raise ValueError(f"k must be a positive integer, got {k!r}")
    return int(k)
