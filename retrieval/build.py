"""Build a retrieval index directory from a corpus JSONL.

    python -m retrieval.build --corpus data/world-0/corpus.jsonl --out indexes/world-0 --method dense
    python -m retrieval.build --corpus data/world-0/corpus.jsonl --out indexes/world-0 --method hybrid \
        --model intfloat/e5-base-v2 --factory HNSW32

The index is built under a temporary name and moved into place when complete, so a killed
build never leaves a half index that `open_retriever` would try to read. The build owns
`index.json`, `dense/` and `bm25/` in `--out` and nothing else: rebuilding over an index
replaces those, and a directory holding anything more is refused unless `--overwrite`,
which replaces only those three and keeps the rest.
"""

from __future__ import annotations

import argparse
import json
import os
import shutil
import time
from pathlib import Path

from retrieval import cli
from retrieval.meta import INDEX_META, METHODS

__all__ = ["INDEX_ENTRIES", "build_index", "ensure_index", "main"]

# What a build writes in its directory: the only entries it ever replaces or removes there.
INDEX_ENTRIES = (INDEX_META, "dense", "bm25")


def build_index(corpus_path: str | os.PathLike, out: str | os.PathLike, method: str = "dense", *,
                model: str | None = None, factory: str = "Flat", search_params: str | None = None,
                batch_size: int | None = None, query_prefix: str | None = None, passage_prefix: str | None = None,
                progress: bool | None = None, encoder=None, overwrite: bool = False) -> dict:
    """Write an index directory; returns its `index.json` content.

    `encoder` reuses an already loaded `Encoder` (then `model`, the prefixes and
    `batch_size` are its own). `out` may be new, empty or a previous index; `overwrite`
    also allows a directory holding other files, which are kept.
    """
    if method not in METHODS:
        raise ValueError(f"method must be one of {list(METHODS)}, got {method!r}")
    out = Path(out)
    cli.check_output_dir(out, INDEX_ENTRIES, what="a retrieval index", action="build", overwrite=overwrite)
    from retrieval.corpus import load_corpus

    started = time.perf_counter()
    corpus = load_corpus(corpus_path)
    meta: dict = {
        "method": method,
        "corpus": os.path.abspath(corpus_path),
        "corpus_fingerprint": corpus.fingerprint(),
        "num_passages": len(corpus),
    }
    staging = out.with_name(f".{out.name}.building-{os.getpid()}")
    shutil.rmtree(staging, ignore_errors=True)
    staging.mkdir(parents=True)
    try:
        if method in ("dense", "hybrid"):
            from retrieval.dense import DenseRetriever
            from retrieval.encoders import Encoder

            if encoder is None:
                encoder = Encoder(model, query_prefix=query_prefix, passage_prefix=passage_prefix,
                                  batch_size=batch_size)
            dense = DenseRetriever.build(corpus, encoder, factory=factory, search_params=search_params,
                                         use_gpu=False, progress=progress)
            dense.save(staging / "dense")
            meta.update(model=dense.model, factory=dense.factory, dense_memory_bytes=dense.memory_bytes())
        if method in ("bm25", "hybrid"):
            from retrieval.bm25 import BM25Retriever

            BM25Retriever.build(corpus, progress=progress).save(staging / "bm25")
        meta["build_seconds"] = round(time.perf_counter() - started, 2)
        (staging / INDEX_META).write_text(json.dumps(meta, indent=2) + "\n")
        _move_into(staging, out)
    finally:
        shutil.rmtree(staging, ignore_errors=True)
    return meta


def ensure_index(corpus_path: str | os.PathLike, out: str | os.PathLike, method: str = "dense") -> Path:
    """The `method` index of `corpus_path` in `out`, built there unless one already is."""
    out = Path(out)
    if not (out / INDEX_META).exists():
        from rich.console import Console

        Console(stderr=True).print(f"building the {method} index of {corpus_path} in {out}")
        build_index(corpus_path, out, method)
    return out


def _move_into(staging: Path, out: Path) -> None:
    """Put the built index at `out`: a rename when `out` is new; else replace only the index's
    own entries, index.json last, so that a directory with an index.json holds a whole index."""
    if not out.exists():
        staging.rename(out)
        return
    for name in INDEX_ENTRIES:  # index.json first: a half-replaced index is no index
        _remove(out / name)
    for name in reversed(INDEX_ENTRIES):  # index.json last
        if (staging / name).exists():
            (staging / name).rename(out / name)


def _remove(path: Path) -> None:
    if path.is_dir() and not path.is_symlink():
        shutil.rmtree(path)
    else:
        path.unlink(missing_ok=True)


def main(argv: list[str] | None = None) -> int:
    parser = argparse.ArgumentParser(prog="python -m retrieval.build", description=__doc__.splitlines()[0])
    parser.add_argument("--corpus", required=True, help="corpus JSONL ({id, contents} or {id, title, text})")
    parser.add_argument("--out", required=True, help="index directory to write")
    parser.add_argument("--method", choices=METHODS, default="dense")
    parser.add_argument("--model", default=None,
                        help="sentence-transformers model path or id (default: packaged all-MiniLM-L6-v2)")
    parser.add_argument("--factory", default="Flat", help="FAISS index factory string: Flat, HNSW32, IVF256,PQ16, ...")
    parser.add_argument("--search-params", default=None,
                        help="FAISS search parameters, e.g. 'efSearch=128' or 'nprobe=32' (default: per factory)")
    parser.add_argument("--batch-size", type=int, default=None,
                        help="encoding batch size (default: 32 on CPU, where larger is slower; 256 on GPU)")
    parser.add_argument("--query-prefix", default=None, help="prefix for queries (default: 'query: ' for e5 models)")
    parser.add_argument("--passage-prefix", default=None,
                        help="prefix for passages (default: 'passage: ' for e5 models)")
    parser.add_argument("--overwrite", action="store_true",
                        help="build into a directory that holds other files too: replace only index.json, dense/ "
                             "and bm25/ there and keep the rest")
    args = parser.parse_args(argv)

    from rich.console import Console
    from rich.table import Table

    console = Console(stderr=True)
    try:
        meta = build_index(args.corpus, args.out, args.method, model=args.model, factory=args.factory,
                           search_params=args.search_params, batch_size=args.batch_size,
                           query_prefix=args.query_prefix, passage_prefix=args.passage_prefix,
                           overwrite=args.overwrite)
    except (ValueError, FileNotFoundError) as err:
        console.print(f"[red]error:[/red] {err}", soft_wrap=True)
        return 2
    table = Table(title=f"index written to {args.out}", show_header=False)
    for key, value in meta.items():
        table.add_row(key, f"{value:,}" if isinstance(value, int) else str(value))
    console.print(table)
    return 0


if __name__ == "__main__":
    cli.run(main)
