"""`FlakyServer`: a retrieval server for fault injection (`eval.bench.faults`) that answers as
`retrieval.server` does except through its fault windows: down, slow past or within the
client's timeout, HTTP 500, or garbage."""

from __future__ import annotations

import json
import threading
import time
from dataclasses import dataclass

CLIENT = {"timeout": 2.0, "retries": 1, "backoff": 0.05}  # the child's HTTPRetriever (see eval.bench.faults._quick_retries)
DELAYS = {"slow": 1.5 * CLIENT["timeout"], "within": 0.25 * CLIENT["timeout"]}
GARBAGE = (b"<html>502 Bad Gateway</html>", b'{"result": "no"}', b'{"result": []}', b'{"result": [[{"score": 1}]]}')


@dataclass
class Window:
    """A fault of `mode` from the first /retrieve request numbered `at` or later, for `seconds`."""

    mode: str
    at: int
    seconds: float
    started: float | None = None  # monotonic time of the request that began it
    hits: int = 0  # requests it faulted


class FlakyServer:
    """A Search-R1-style retrieval server on 127.0.0.1 over `retriever` (POST /retrieve, GET
    /health, as `retrieval.server` answers them) that fails through its `windows` in turn:
    down (the listening socket closed, kept-alive connections dropped unanswered), slow (each
    answer delayed), 500 (every answer), garbage (answers that are not JSON or not the wire
    format). It counts the /retrieve requests it received."""

    def __init__(self, retriever, windows: list[Window] = ()):
        # imported here: a first request importing FastAPI would outlast the client's timeout
        from retrieval.server import format_result

        self.format_result = format_result
        self.retriever, self.windows, self.requests = retriever, list(windows), 0
        self.lock, self.search_lock, self.active, self.closed = threading.Lock(), threading.Lock(), None, False
        self.httpd = self._serve(0)
        self.port = self.httpd.server_address[1]
        self.url = f"http://127.0.0.1:{self.port}"

    def _serve(self, port: int):
        from http.server import BaseHTTPRequestHandler, ThreadingHTTPServer

        server = self

        class Handler(BaseHTTPRequestHandler):
            protocol_version = "HTTP/1.1"  # keep-alive, as HTTPRetriever's connections are

            def do_GET(self):
                self.answer(None)

            def do_POST(self):
                self.answer(json.loads(self.rfile.read(int(self.headers["Content-Length"]))))

            def answer(self, request: dict | None):
                mode = server.fault(retrieve=request is not None)
                if mode == "down":
                    self.close_connection = True  # no answer: the client sees the connection end
                    return
                if mode in DELAYS:
                    time.sleep(DELAYS[mode])
                if mode == "500":
                    return self.reply(500, json.dumps({"error": "injected fault"}).encode())
                if mode == "garbage":
                    return self.reply(200, GARBAGE[server.requests % len(GARBAGE)])
                self.reply(200, json.dumps(server.result(request)).encode())

            def reply(self, status: int, body: bytes):
                self.send_response(status)
                self.send_header("Content-Type", "application/json")
                self.send_header("Content-Length", str(len(body)))
                self.end_headers()
                try:
                    self.wfile.write(body)
                except (BrokenPipeError, ConnectionResetError):  # a slow answer the client stopped waiting for
                    self.close_connection = True

            def log_message(self, *args):
                pass

        httpd = ThreadingHTTPServer(("127.0.0.1", port), Handler)
        threading.Thread(target=httpd.serve_forever, kwargs={"poll_interval": 0.05}, daemon=True).start()
        return httpd

    def result(self, request: dict | None) -> dict:
        if request is None:
            return {"status": "ok"}
        with self.search_lock:
            results = self.retriever.search(request["queries"], request["topk"])
        return self.format_result(results, request.get("return_scores", False))

    def fault(self, retrieve: bool) -> str | None:
        """The fault this request meets (None: answer it), counting it, and beginning or ending
        a window as it arrives."""
        with self.lock:
            self.requests += retrieve
            now = time.monotonic()
            if self.active and now - self.active.started >= self.active.seconds:
                self.active = None
            if not self.active and self.windows and retrieve and self.requests >= self.windows[0].at:
                self.active = self.windows.pop(0)
                self.active.started = now
                if self.active.mode == "down":
                    threading.Thread(target=self._down, args=(now + self.active.seconds,), daemon=True).start()
            if not self.active:
                return None
            self.active.hits += 1
            return self.active.mode

    def _down(self, until: float) -> None:
        """Close the listening socket until the monotonic time `until`, then listen on the same port again."""
        self.httpd.shutdown()
        self.httpd.server_close()
        time.sleep(max(0.0, until - time.monotonic()))
        with self.lock:
            if not self.closed:
                self.httpd = self._serve(self.port)

    def close(self) -> None:
        with self.lock:
            self.closed = True
        self.httpd.shutdown()
        self.httpd.server_close()
