"""The debugger's web app (FastAPI): a JSON API over the runs' trace indexes, the fork endpoint,
and the page's static files (served from this package: no CDN, it works offline).

    GET  /api/runs                         runs, their curves, figures, facets, policies, retrievers
    GET  /api/runs/{run}/traces?...        a page of the overview's list, filtered and sorted
    GET  /api/trace/{key}                  a trajectory's cards, its parent and forks
    GET  /api/trace/{key}/tokens           its tokens, masks and logprobs
    GET  /api/trace/{key}/group            its GRPO group side by side
    POST /api/fork                         continue a trace after an edit (NDJSON events as it goes)
    GET  /files/{run}/{path}               a file of the run directory (and nothing outside it)

A trace's key is `run.file.position`: the run's number, 0 for its traces.jsonl or 1 for its
forks.jsonl, and the record's position in that file.

Safe by default: trace text reaches the page as JSON and is put in the page as text, never
as HTML (the page sets `textContent` only, and the Content-Security-Policy forbids inline
script); only the run directories' files are served; the fork endpoint takes a bounded JSON
body of known fields; requests must name a host the server answers as (no DNS rebinding).
"""

from __future__ import annotations

import contextlib
import json
import threading
from dataclasses import dataclass, field
from pathlib import Path

from fastapi import FastAPI, HTTPException, Query, Request
from fastapi.responses import FileResponse, JSONResponse, StreamingResponse
from fastapi.staticfiles import StaticFiles
from starlette.middleware.trustedhost import TrustedHostMiddleware

from agent.fork import check_fork
from agent.traces import TraceWriter, record_to_trajectory
from eval.debugger.forking import (ForkRequest, Toolbox, first_new_step, fork_record, fork_stream, live_cards,
                                   next_fork_id, rollout_config)
from eval.debugger.index import TraceIndex
from eval.debugger.rows import Filters, select, trace_id
from eval.debugger.sources import RunFiles, read_metrics, run_settings, tokenizer_source
from eval.debugger.views import group_view, tokens_view, trajectory_view

STATIC = Path(__file__).parent / "static"
MAX_BODY = 64 * 1024  # bytes of a request body
PAGE_LIMIT = 200  # rows of one page of the list, at most
SECURITY_HEADERS = {
    "Content-Security-Policy": "default-src 'none'; script-src 'self'; style-src 'self'; img-src 'self' data:; "
                               "connect-src 'self'; base-uri 'none'; form-action 'none'; frame-ancestors 'none'",
    "X-Content-Type-Options": "nosniff",
    "Referrer-Policy": "no-referrer",
    "X-Frame-Options": "DENY",
}


@dataclass
class Run:
    files: RunFiles
    traces: TraceIndex
    forks: TraceIndex
    settings: dict
    tokenizer_path: str | None
    write_lock: threading.Lock = field(default_factory=threading.Lock)
    _tokenizer: object = None

    def index(self, which: int) -> TraceIndex:
        return self.forks if which else self.traces

    def tokenizer(self):
        if self._tokenizer is None and self.tokenizer_path:
            from transformers import AutoTokenizer

            self._tokenizer = AutoTokenizer.from_pretrained(self.tokenizer_path)
        return self._tokenizer


class Follower(threading.Thread):
    """Indexes the files in the background, a few MB at a time so the first pages come at once,
    then looks for appended lines every `interval` seconds."""

    def __init__(self, indexes: list[TraceIndex], interval: float):
        super().__init__(daemon=True, name="trace-follower")
        self.indexes, self.interval, self.stop = indexes, interval, threading.Event()

    def run(self) -> None:
        while not self.stop.is_set():
            busy = False
            for index in self.indexes:
                index.refresh(max_bytes=8 << 20)
                busy = busy or not index.done
            if not busy:
                self.stop.wait(self.interval)


def build_runs(files: list[RunFiles], tokenizer: str | None = None) -> list[Run]:
    runs = []
    for f in files:
        source = tokenizer or tokenizer_source(f)
        runs.append(Run(f, TraceIndex(f.traces), TraceIndex(f.forks), run_settings(f), str(source) if source else None))
    return runs


def create_app(runs: list[Run], toolbox: Toolbox, *, follow: float | None = 1.0,
               allowed_hosts: tuple[str, ...] = ("127.0.0.1", "localhost")) -> FastAPI:
    """The app over `runs`. `follow`: seconds between looks for appended lines, by a background
    thread; None indexes on each request instead (tests)."""
    indexes = [i for r in runs for i in (r.traces, r.forks)]
    rollout_lock = threading.Lock()
    follower = Follower(indexes, follow) if follow is not None else None

    @contextlib.asynccontextmanager
    async def lifespan(app):
        if follower:
            follower.start()
        yield
        if follower:
            follower.stop.set()

    app = FastAPI(title="searchrl trace debugger", docs_url=None, redoc_url=None, lifespan=lifespan)
    app.add_middleware(TrustedHostMiddleware, allowed_hosts=list(allowed_hosts))

    def fresh() -> None:
        if follower is None:
            for index in indexes:
                index.refresh()

    @app.middleware("http")
    async def guard(request: Request, call_next):
        length = request.headers.get("content-length")
        if request.method not in ("GET", "HEAD") and (length is None or not length.isdigit() or int(length) > MAX_BODY):
            return JSONResponse({"detail": f"a request body must state its length and be at most {MAX_BODY} bytes"},
                                status_code=413)
        response = await call_next(request)
        response.headers.update(SECURITY_HEADERS)
        return response

    def run_at(n: int) -> Run:
        if not 0 <= n < len(runs):
            raise HTTPException(404, f"no run {n}: this server has runs 0..{len(runs) - 1}")
        return runs[n]

    def locate(key: str) -> tuple[Run, int, int]:
        try:
            r, which, position = (int(x) for x in key.split("."))
        except ValueError:
            raise HTTPException(400, f"trace key {key!r}: expected run.file.position, e.g. 0.0.12") from None
        if which not in (0, 1):
            raise HTTPException(400, f"trace key {key!r}: the file is 0 (traces) or 1 (forks)")
        return run_at(r), which, position

    def load(key: str) -> dict:
        fresh()
        run, which, position = locate(key)
        try:
            return run.index(which).record(position)
        except IndexError as error:
            raise HTTPException(404, str(error)) from None

    def key_of(run: Run, trace_id: str | None) -> str | None:
        n = runs.index(run)
        for which in (0, 1):
            position = run.index(which).by_id.get(trace_id) if trace_id else None
            if position is not None:
                return f"{n}.{which}.{position}"
        return None

    @app.get("/", include_in_schema=False)
    def page():
        return FileResponse(STATIC / "index.html")

    app.mount("/static", StaticFiles(directory=STATIC), name="static")

    @app.get("/api/runs")
    def list_runs():
        fresh()
        return {
            "runs": [{"name": r.files.name, "traces": len(r.traces.offsets), "forks": len(r.forks.offsets),
                      "indexing": not r.traces.done, "indexed_bytes": r.traces.indexed_bytes, "size": r.traces.size,
                      "bad_lines": r.traces.bad_lines[:5], **read_metrics(r.files), "facets": r.traces.facet_lists(),
                      "files": sorted(p.name for p in r.files.root.iterdir()
                                      if p.suffix in (".json", ".md", ".png") and p.is_file()),
                      "tokenizer": r.tokenizer_path is not None} for r in runs],
            "policies": sorted(toolbox.policies),
            "retrievers": sorted(toolbox.retrievers),
        }

    @app.get("/api/runs/{n}/traces")
    def list_traces(n: int, origin: str = Query("run", pattern="^(run|forks)$"), step: int | None = None,
                    reward_min: float | None = None, reward_max: float | None = None, correct: bool | None = None,
                    finish: str | None = Query(None, max_length=40), category: str | None = Query(None, max_length=40),
                    hops: int | None = None, q: str = Query("", max_length=200),
                    sort: str = Query("position", pattern="^(position|reward|advantage|step)$"), desc: bool = False,
                    offset: int = Query(0, ge=0), limit: int = Query(50, ge=1, le=PAGE_LIMIT)):
        fresh()
        run = run_at(n)
        which = 1 if origin == "forks" else 0
        index = run.index(which)
        rows = select(index.snapshot(), Filters(step, reward_min, reward_max, correct, finish or None, category or None,
                                                 hops, q, sort, desc))
        page_rows = [{k: v for k, v in row.items() if k != "text"} | {"key": f"{n}.{which}.{row['position']}",
                      "forks": len(index.children.get(row["id"], ())) + len(run.forks.children.get(row["id"], ()))
                      if which == 0 else len(run.forks.children.get(row["id"], ()))}
                     for row in rows[offset: offset + limit]]
        return {"total": len(rows), "indexed": len(index.offsets), "indexing": not index.done, "offset": offset,
                "rows": page_rows}

    @app.get("/api/trace/{key}")
    def trace(key: str):
        record = load(key)
        run, _, _ = locate(key)
        view = trajectory_view(record)
        view["key"], view["run"] = key, run.files.name
        view["parent_key"] = key_of(run, view["parent"])
        view["children"] = [{"key": f"{runs.index(run)}.1.{p}", **{k: row[k] for k in ("id", "answer", "em", "fork_step")}}
                            for p in run.forks.children.get(view["id"], []) for row in [run.forks.rows[p]]]
        view["group_size"] = len(run.traces.groups.get(view["group"], [])) if view["parent"] is None else None
        view["tokenizer"] = run.tokenizer_path is not None
        return view

    @app.get("/api/trace/{key}/tokens")
    def tokens(key: str):
        record = load(key)
        run, _, _ = locate(key)
        return {"key": key, **tokens_view(record, run.tokenizer())}

    @app.get("/api/trace/{key}/group")
    def group(key: str):
        record = load(key)
        run, which, _ = locate(key)
        index = run.index(which)
        positions = index.groups.get(record.get("group_id"), [])
        view = group_view([index.record(p) for p in positions])
        keys = {index.rows[p]["id"]: f"{runs.index(run)}.{which}.{p}" for p in positions}
        for sample in view["samples"]:
            sample["key"] = keys.get(sample["id"])
        view["key"] = key
        return view

    @app.post("/api/fork")
    def fork(request: Request, body: ForkRequest):
        if request.headers.get("content-type", "").split(";")[0].strip() != "application/json":
            raise HTTPException(415, "the fork endpoint takes application/json")
        parent = load(body.key)
        run, _, _ = locate(body.key)
        fork = body.to_fork()
        if body.policy not in toolbox.policies:
            raise HTTPException(400, f"unknown policy {body.policy!r}; this server offers {sorted(toolbox.policies)}")
        if body.retriever and body.retriever not in toolbox.retrievers:
            raise HTTPException(400, f"unknown retriever {body.retriever!r}; this server offers {sorted(toolbox.retrievers)}")
        try:
            check_fork(record_to_trajectory(parent), fork)
        except ValueError as error:
            raise HTTPException(400, str(error)) from None
        return StreamingResponse(fork_events(run, parent, fork, body), media_type="application/x-ndjson")

    def fork_events(run: Run, parent: dict, fork, body: ForkRequest):
        def line(event: dict) -> bytes:
            return (json.dumps(event) + "\n").encode()

        yield line({"event": "status", "message": f"forking step {fork.step} with {body.policy}"})
        try:
            engine = toolbox.engine(body.policy)
            retriever = toolbox.retriever(body.retriever) if body.retriever else None
            cfg = rollout_config(run.settings, body.temperature)
            sent, traj = first_new_step(fork), None
            with rollout_lock:  # one continuation at a time: engines are not shared between threads
                for traj in fork_stream(parent, fork, engine, retriever, cfg, body.seed, policy=body.policy):
                    cards = live_cards(traj, parent)
                    for card in cards[sent:]:
                        yield line({"event": "step", "card": card})
                    sent = max(sent, len(cards))
            with run.write_lock:
                fork_id = next_fork_id(run.forks, trace_id(parent))
                record = fork_record(parent, traj, fork, engine.tokenizer, fork_id=fork_id, policy=body.policy)
                TraceWriter(run.files.forks).write([record])
                run.forks.refresh()
            yield line({"event": "done", "key": key_of(run, fork_id), "id": fork_id, "finish": traj.finish,
                        "answer": traj.answer, "em": record["eval"]["em"]})
        except (ValueError, KeyError, RuntimeError) as error:
            yield line({"event": "error", "message": str(error.args[0] if error.args else error)})

    @app.get("/files/{n}/{path:path}")
    def run_file(n: int, path: str):
        root = run_at(n).files.root.resolve()
        target = (root / path).resolve()
        if not target.is_relative_to(root) or path.startswith("/"):
            raise HTTPException(403, f"{path!r} is outside the run directory {root}")
        if not target.is_file():
            raise HTTPException(404, f"no file {path!r} in the run directory")
        return FileResponse(target)

    return app
