"""Index directories' layout and metadata.

An index directory written by `python -m retrieval.build` is self-describing:

    index.json      method (dense | bm25 | hybrid), corpus path, fingerprint, build settings
    dense/          index.faiss + dense.json       (dense and hybrid)
    bm25/           bm25s files + bm25.json        (bm25 and hybrid)
"""

from __future__ import annotations

import json
from pathlib import Path

__all__ = ["read_meta", "check_same_corpus", "INDEX_META", "METHODS"]

INDEX_META = "index.json"
METHODS = ("dense", "bm25", "hybrid")


def read_meta(path: Path, expected_method: str | None = None) -> dict:
    """Read a metadata json, with errors that say which file and what was expected."""
    if not path.exists():
        kind = f"a {expected_method} index" if expected_method else "an index"
        raise FileNotFoundError(f"{path}: not found; is {path.parent} {kind} written by `python -m retrieval.build`?")
    try:
        meta = json.loads(path.read_text())
    except json.JSONDecodeError as err:
        raise ValueError(f"{path}:{err.lineno}: invalid JSON ({err.msg})") from None
    if not isinstance(meta, dict):
        raise ValueError(f"{path}: expected a JSON object, got {type(meta).__name__}")
    method = meta.get("method")
    allowed = (expected_method,) if expected_method else METHODS
    if method not in allowed:
        raise ValueError(f"{path}: field 'method' is {method!r}, expected one of {list(allowed)}")
    return meta


def check_same_corpus(meta: dict, corpus, directory: Path) -> None:
    """An index is row-aligned with its corpus; any other corpus would return wrong passages."""
    expected = (meta.get("num_passages"), meta.get("corpus_fingerprint"))
    found = (len(corpus), corpus.fingerprint())
    if expected != found:
        raise ValueError(
            f"{directory}: index was built from {meta.get('corpus')} ({expected[0]} passages, ids fingerprint "
            f"{expected[1]}) but the corpus given is {corpus.path} ({found[0]} passages, fingerprint {found[1]}); "
            f"rebuild the index with `python -m retrieval.build`")
