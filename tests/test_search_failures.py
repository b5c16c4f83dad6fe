"""Failed searches are counted, and a run stops or pauses on them instead of training on an
outage: the HTTP client (kept-alive connections, retries), the guard around a rollout, the
GRPO entry point end to end, and `eval.run`'s exit."""

import json
import socket
import threading
from http.server import BaseHTTPRequestHandler, ThreadingHTTPServer

import pytest

from retrieval.client import HTTPRetriever, RetrieverUnavailable


def free_port() -> int:
    """A port that was free a moment ago: nothing listens there."""
    with socket.socket() as probe:
        probe.bind(("127.0.0.1", 0))
        return probe.getsockname()[1]


class StubServer:
    """A Search-R1-style server on 127.0.0.1 that counts the TCP connections it accepts and
    answers 500 to the next `failures` searches."""

    def __init__(self, port: int = 0, failures: int = 0):
        stub = self
        self.connections, self.failures = 0, failures

        class Handler(BaseHTTPRequestHandler):
            protocol_version = "HTTP/1.1"  # keep-alive

            def setup(self):
                stub.connections += 1
                super().setup()

            def do_GET(self):
                self.reply(200, {"status": "ok"})

            def do_POST(self):
                queries = json.loads(self.rfile.read(int(self.headers["Content-Length"])))["queries"]
                if stub.failures:
                    stub.failures -= 1
                    self.reply(500, {"error": "index shard offline"})
                else:
                    self.reply(200, {"result": [[{"document": {"id": "d3", "contents": '"Velmora"\nVelmora is a city.'},
                                                   "score": 1.0}] for _ in queries]})

            def reply(self, status, body):
                data = json.dumps(body).encode()
                self.send_response(status)
                self.send_header("Content-Type", "application/json")
                self.send_header("Content-Length", str(len(data)))
                self.end_headers()
                self.wfile.write(data)

            def log_message(self, *args):
                pass

        self.httpd = ThreadingHTTPServer(("127.0.0.1", port), Handler)
        self.url = f"http://127.0.0.1:{self.httpd.server_address[1]}"
        threading.Thread(target=self.httpd.serve_forever, daemon=True).start()

    def stop(self):
        self.httpd.shutdown()
        self.httpd.server_close()


@pytest.fixture
def stub():
    server = StubServer()
    yield server
    server.stop()


# -- the client ------------------------------------------------------------------------------


def test_the_client_keeps_one_connection_alive_across_requests(stub):
    client = HTTPRetriever(stub.url, timeout=5)
    for query in ("Velmora", "Orin Kael", "Dastria"):
        assert client.search([query], 1)[0][0].doc_id == "d3"
    assert client.health() == {"status": "ok"}
    client.close()
    assert stub.connections == 1  # not a connection per request


def test_the_client_retries_5xx_with_backoff_then_answers(stub):
    stub.failures = 2
    client = HTTPRetriever(stub.url, timeout=5, retries=2, backoff=0.001)
    assert client.search(["Velmora"], 1)[0][0].title == "Velmora"
    stub.failures = 3  # one more than its retries
    with pytest.raises(RetrieverUnavailable, match="after 3 attempts: HTTP 500: index shard offline"):
        client.search(["Velmora"], 1)
    client.close()
