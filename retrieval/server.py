"""HTTP retrieval server (FastAPI on uvicorn), wire-compatible with Search-R1's `retrieval_server.py`.

    python -m retrieval.server --index indexes/world-0 --port 8000

    POST /retrieve  {"queries": ["..."], "topk": 3, "return_scores": true}
      -> {"result": [[{"document": {"id": "...", "contents": "\"Title\"\\ntext"}, "score": 0.83}, ...], ...]}
         with "return_scores": false (the default, as in Search-R1), each inner list holds
         the documents alone: [[{"id": "...", "contents": "..."}, ...], ...]
    GET  /health        -> {"status": "ok", ...}
    GET  /openapi.json  the schema of both

Fields are read the way Search-R1's server reads them (pydantic, lax): a missing, null or 0
"topk" means the server's --topk, "3" and 3.0 mean 3, and "return_scores" takes 1/0 as
well as true/false; so Search-R1 and verl search-tool clients work unchanged. A result list
may hold fewer than topk documents (BM25 returns only passages that match).

How it holds under load:
1. Searches run on --workers threads (FAISS, torch and numpy release the GIL), in chunks of
   at most --chunk-queries queries, the waiting requests taking turns chunk by chunk
   (`retrieval.scheduler`); so a small request is answered after a chunk of a large one, not
   after all of it.
2. A request's cost is bounded (`Limits`): queries, characters per query, topk, documents
   in the answer and body bytes (chunked bodies included); past a bound the answer is a 413
   that names it. The result cache is bounded in entries and bytes (`retrieval.cache`).
3. The listening socket queues up to --backlog connections, so a burst of clients that
   open a connection per request waits to be accepted instead of being reset.
4. A lone surrogate (a JSON escape like "\\ud800") in a query or a passage becomes U+FFFD,
   the replacement character, instead of breaking the search or the response.

Bad requests get a 4xx JSON `{"error": "..."}`: 400 for a malformed body, 413 past a bound.
A failing retriever gets a 500 with the cause, and the server keeps serving.
"""

from __future__ import annotations

import argparse
import asyncio
import contextlib
import json
import logging
import socket
import sys
import threading
from dataclasses import dataclass

from fastapi import FastAPI, Request
from fastapi.responses import JSONResponse, Response
from pydantic import BaseModel, ValidationError
from starlette.concurrency import run_in_threadpool
from starlette.exceptions import HTTPException

from retrieval.scheduler import SearchScheduler
from retrieval.types import Passage, Retriever

__all__ = ["RetrievalServer", "SearchScheduler", "Limits", "RetrieveRequest", "create_app", "format_result",
           "clean_text", "main"]

DEFAULT_TOPK = 3
BACKLOG = 2048  # connections the kernel holds for accept(); Linux caps it at net.core.somaxconn


@dataclass(frozen=True)
class Limits:
    """What one request may ask for; past a bound the answer is a 413 that names it.

    The defaults admit Search-R1's largest call (512 prompts x 5 samples = 2,560 queries).
    """

    max_queries: int = 4096
    max_query_chars: int = 4096  # encoders read a few hundred tokens; longer text is not a query
    max_topk: int = 1000
    max_documents: int = 100_000  # queries x topk: what the answer may hold
    max_body_bytes: int = 16 * 2**20


class RetrieveRequest(BaseModel):
    """The body of POST /retrieve, as Search-R1's `QueryRequest` (lax: "3" and 3.0 are 3)."""

    queries: list[str]
    topk: int | None = None
    return_scores: bool | None = False


class BadRequest(HTTPException):
    """A request the server refuses: 400 unless a bound was passed (413)."""

    def __init__(self, message: str, status: int = 400):
        super().__init__(status, message)


# ----------------------------------------------------------------------------- text

def clean_text(text: str) -> str:
    """`text` with every lone surrogate replaced by U+FFFD (they have no UTF-8 form)."""
    try:
        text.encode("utf-8")
        return text
    except UnicodeEncodeError:
        return text.encode("utf-16-le", "surrogatepass").decode("utf-16-le", "replace")


def format_result(results: list[list[Passage]], return_scores: bool) -> dict:
    """Search-R1's response body: documents are {"id", "contents"} rows of the corpus."""
    if return_scores:
        return {"result": [[{"document": {"id": p.doc_id, "contents": p.contents}, "score": p.score}
                            for p in passages] for passages in results]}
    return {"result": [[{"id": p.doc_id, "contents": p.contents} for p in passages] for passages in results]}


def json_bytes(payload: dict) -> bytes:
    """UTF-8 JSON; a passage holding a lone surrogate gets U+FFFD in its place."""
    return clean_text(json.dumps(payload, ensure_ascii=False)).encode("utf-8")


# ----------------------------------------------------------------------------- the app

def _describe(error: dict) -> str:
    """One line for a pydantic error: which field, what was wrong, what was sent."""
    loc = list(error["loc"])
    if not loc:
        return f'body must be a JSON object like {{"queries": ["..."], "topk": 3}}: {error["msg"]}'
    where = f'field "{loc[0]}"' + "".join(f"[{part}]" for part in loc[1:])
    if error["type"] == "missing":
        return f"missing {where}" + (" (a list of strings)" if loc == ["queries"] else "")
    return f"{where}: {error['msg']}, got {json.dumps(error.get('input'), default=str)[:80]}"


async def _read_body(request: Request, limit: int) -> bytes:
    """The whole body (Content-Length or chunked), refused with a 413 once past `limit` bytes."""
    declared = request.headers.get("content-length")
    if declared is not None and declared.isdigit() and int(declared) > limit:
        raise BadRequest(f"body of {declared} bytes exceeds {limit}", 413)
    chunks, size = [], 0
    async for chunk in request.stream():
        size += len(chunk)
        if size > limit:
            raise BadRequest(f"body exceeds {limit} bytes", 413)
        chunks.append(chunk)
    return b"".join(chunks)


def parse_request(body: bytes, default_topk: int, limits: Limits) -> tuple[list[str], int, bool]:
    """(queries, topk, return_scores) from a /retrieve body, or `BadRequest` saying what is wrong."""
    try:
        payload = json.loads(body)
    except ValueError as err:
        raise BadRequest(f"body is not valid JSON: {err}") from None
    try:
        request = RetrieveRequest.model_validate(payload)
    except ValidationError as err:
        raise BadRequest(_describe(err.errors()[0])) from None
    queries = request.queries
    if len(queries) > limits.max_queries:
        raise BadRequest(f'field "queries" has {len(queries)} queries; at most {limits.max_queries} per request '
                         f"(split the batch)", 413)
    longest = max(range(len(queries)), key=lambda i: len(queries[i]), default=None)
    if longest is not None and len(queries[longest]) > limits.max_query_chars:
        raise BadRequest(f'field "queries"[{longest}] has {len(queries[longest])} characters; at most '
                         f"{limits.max_query_chars} per query", 413)
    topk = request.topk or default_topk  # Search-R1: a missing, null or 0 topk is the default
    if topk < 0:
        raise BadRequest(f'field "topk" must be a positive integer (or 0 for the default), got {topk}')
    if topk > limits.max_topk:
        raise BadRequest(f'field "topk" is {topk}; at most {limits.max_topk}', 413)
    if len(queries) * topk > limits.max_documents:
        raise BadRequest(f"{len(queries)} queries x topk {topk} asks for {len(queries) * topk} documents; at most "
                         f"{limits.max_documents} per request (split the batch)", 413)
    return [clean_text(q) for q in queries], topk, bool(request.return_scores)


def _error(status: int, message: str) -> JSONResponse:
    return JSONResponse({"error": message}, status_code=status)


def create_app(scheduler: SearchScheduler, *, default_topk: int = DEFAULT_TOPK, limits: Limits = Limits(),
               info: dict | None = None) -> FastAPI:
    """The app: POST /retrieve through `scheduler`, GET /health, GET /openapi.json."""
    log = logging.getLogger("retrieval.server")
    retriever = scheduler.retriever

    @contextlib.asynccontextmanager
    async def lifespan(app):
        yield
        scheduler.close()

    app = FastAPI(title="searchrl retrieval server", description="Search-R1-compatible retrieval.",
                  docs_url=None, redoc_url=None, lifespan=lifespan)

    @app.exception_handler(HTTPException)
    async def http_error(request: Request, err: HTTPException) -> JSONResponse:
        message = err.detail
        if err.status_code == 404:
            message = f"no route {request.url.path!r}; try POST /retrieve or GET /health"
        elif err.status_code == 405:
            message = f"{request.method} is not allowed on {request.url.path}; use POST /retrieve or GET /health"
        return _error(err.status_code, message)

    schema = RetrieveRequest.model_json_schema()
    error_schema = {"content": {"application/json": {"schema": {
        "type": "object", "properties": {"error": {"type": "string"}}}}}}

    @app.post("/retrieve", openapi_extra={"requestBody": {"required": True, "content": {
        "application/json": {"schema": schema}}}}, responses={
        200: {"description": 'Search-R1\'s {"result": [[document or {"document", "score"}, ...], ...]}'},
        400: {"description": "malformed body", **error_schema},
        413: {"description": "past a bound of `Limits`", **error_schema},
        500: {"description": "the retriever failed", **error_schema}})
    async def retrieve(request: Request) -> Response:
        """Top-k documents for each query, in order (the body is read by hand: any content type, bounded)."""
        body = await _read_body(request, limits.max_body_bytes)
        queries, topk, return_scores = parse_request(body, default_topk, limits)
        try:
            results = await asyncio.wrap_future(scheduler.submit(queries, topk))
        except Exception as err:  # the retriever failed; report it and keep serving
            log.error("search failed: %r", err)
            return _error(500, f"search failed: {type(err).__name__}: {err}")
        content = await run_in_threadpool(lambda: json_bytes(format_result(results, return_scores)))
        return Response(content, media_type="application/json")

    @app.get("/health")
    async def health() -> dict:
        status = {"status": "ok", **(info or {}), "waiting": scheduler.waiting()}
        corpus = getattr(retriever, "corpus", None)
        if corpus is not None:
            status["passages"] = len(corpus)
        if hasattr(retriever, "stats"):
            status["cache"] = retriever.stats()
        return status

    return app


# ----------------------------------------------------------------------------- serving

def bind(host: str, port: int) -> socket.socket:
    """A socket bound to (host, port), not yet listening; port 0 picks a free one."""
    family = socket.AF_INET6 if ":" in host else socket.AF_INET
    sock = socket.socket(family, socket.SOCK_STREAM)
    sock.setsockopt(socket.SOL_SOCKET, socket.SO_REUSEADDR, 1)
    try:
        sock.bind((host, port))
    except OSError:
        sock.close()
        raise
    return sock


class RetrievalServer:
    """The app on uvicorn, in front of one retriever; the socket is bound at construction,
    so `.port` and `.url` are known before serving (port 0 picks a free port).

    `serve()` blocks (the command line); `start()` serves on a thread and `stop()` ends it
    (tests, notebooks).
    """

    def __init__(self, retriever: Retriever, host: str = "127.0.0.1", port: int = 8000, *,
                 default_topk: int = DEFAULT_TOPK, limits: Limits = Limits(), workers: int = 2,
                 chunk_queries: int = 64, backlog: int = BACKLOG, log_requests: bool = False,
                 info: dict | None = None):
        import uvicorn

        self.retriever = retriever
        self.scheduler = SearchScheduler(retriever, workers, chunk_queries)
        self.app = create_app(self.scheduler, default_topk=default_topk, limits=limits, info=info)
        self.socket = bind(host, port)
        # 120 s keep-alive: a pooled client's idle connection outlives a training step's pause.
        config = uvicorn.Config(self.app, backlog=backlog, timeout_keep_alive=120, lifespan="on",
                                log_level="info" if log_requests else "warning", access_log=log_requests)
        self._server = uvicorn.Server(config)
        self._thread: threading.Thread | None = None

    @property
    def port(self) -> int:
        return self.socket.getsockname()[1]

    @property
    def url(self) -> str:
        host = self.socket.getsockname()[0]
        return f"http://[{host}]:{self.port}" if ":" in host else f"http://{host}:{self.port}"

    def serve(self) -> None:
        """Serve until Ctrl-C (uvicorn then finishes the requests in flight)."""
        self._server.run(sockets=[self.socket])

    def start(self) -> "RetrievalServer":
        self._thread = threading.Thread(target=self.serve, name="retrieval-server", daemon=True)
        self._thread.start()
        while not self._server.started:
            if not self._thread.is_alive():
                raise RuntimeError(f"the retrieval server did not start on {self.url}")
            self._thread.join(timeout=0.02)
        return self

    def stop(self) -> None:
        self._server.should_exit = True
        if self._thread is not None:
            self._thread.join(timeout=10)
        self.socket.close()


def main(argv: list[str] | None = None) -> int:
    defaults = Limits()
    parser = argparse.ArgumentParser(prog="python -m retrieval.server", description=__doc__.splitlines()[0])
    parser.add_argument("--index", required=True, help="index directory written by retrieval.build")
    parser.add_argument("--host", default="127.0.0.1", help="address to bind (default: local only)")
    parser.add_argument("--port", type=int, default=8000)
    parser.add_argument("--topk", type=int, default=DEFAULT_TOPK, help="passages per query when a request has no topk")
    parser.add_argument("--max-queries", type=int, default=defaults.max_queries,
                        help="most queries accepted in one request")
    parser.add_argument("--max-query-chars", type=int, default=defaults.max_query_chars,
                        help="most characters accepted in one query")
    parser.add_argument("--workers", type=int, default=2, help="threads that run searches")
    parser.add_argument("--chunk-queries", type=int, default=64,
                        help="most queries searched in one go; larger requests take turns with others chunk by chunk")
    parser.add_argument("--backlog", type=int, default=BACKLOG, help="connections queued for accept()")
    parser.add_argument("--cache-size", type=int, default=10_000, help="LRU result cache entries (0: off)")
    parser.add_argument("--cache-mb", type=float, default=256, help="most memory the result cache may hold, in MiB")
    parser.add_argument("--log-requests", action="store_true", help="log every request to stderr")
    args = parser.parse_args(argv)

    from rich.console import Console

    console = Console(stderr=True)
    from retrieval.cache import CachedRetriever
    from retrieval.index import open_retriever

    limits = Limits(max_queries=args.max_queries, max_query_chars=args.max_query_chars)
    try:
        for name in ("topk", "max_queries", "max_query_chars", "workers", "chunk_queries", "backlog"):
            if getattr(args, name) < 1:
                raise ValueError(f"--{name.replace('_', '-')} must be >= 1, got {getattr(args, name)}")
        if args.cache_size < 0 or args.cache_mb <= 0:
            raise ValueError(f"--cache-size must be >= 0 and --cache-mb > 0, got {args.cache_size} and {args.cache_mb}")
        with console.status(f"loading index {args.index}"):
            retriever = open_retriever(args.index, cache_size=0)
            retriever.search(["warm-up"], 1)  # loads the encoder before the first request needs it
        if args.cache_size:
            retriever = CachedRetriever(retriever, args.cache_size, max_bytes=int(args.cache_mb * 2**20))
        server = RetrievalServer(retriever, args.host, args.port, default_topk=args.topk, limits=limits,
                                 workers=args.workers, chunk_queries=args.chunk_queries, backlog=args.backlog,
                                 log_requests=args.log_requests, info={"index": str(args.index)})
    except (ValueError, FileNotFoundError, OSError) as err:
        console.print(f"[red]error:[/red] {err}")
        return 2
    console.print(f"serving {args.index} at [bold]{server.url}[/bold]  (POST /retrieve, GET /health)")
    server.serve()
    console.print("stopped")
    return 0


if __name__ == "__main__":
    sys.exit(main())
