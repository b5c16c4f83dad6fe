"""The HTTP server speaks Search-R1's wire format exactly, reads fields as Search-R1's server
does, holds under concurrent load (accept queue, requests taking turns chunk by chunk),
bounds what a request may cost, and survives lone surrogates; the client retries and then
fails with a clear error. Servers run on 127.0.0.1, port 0, in a thread, and stop."""

from __future__ import annotations

import http.client
import json
import socket
import threading
import time
import urllib.error
import urllib.request
from pathlib import Path

import pytest

from retrieval.bm25 import BM25Retriever
from retrieval.client import HTTPRetriever, RetrieverUnavailable
from retrieval.corpus import Corpus, load_corpus
from retrieval.server import Limits, RetrievalServer, SearchScheduler
from retrieval.types import Passage

CORPUS_PATH = Path(__file__).parent / "data" / "retrieval_corpus.jsonl"
RAW_CONTENTS = {row["id"]: row["contents"] for row in map(json.loads, CORPUS_PATH.read_text().splitlines())}


@pytest.fixture(scope="module")
def bm25() -> BM25Retriever:
    return BM25Retriever.build(load_corpus(CORPUS_PATH))


@pytest.fixture(scope="module")
def server(bm25):
    running = RetrievalServer(bm25, "127.0.0.1", 0, limits=Limits(max_queries=8, max_query_chars=100,
                                                                  max_documents=40, max_body_bytes=4096)).start()
    yield running
    running.stop()


def post(url: str, body: bytes | str | dict, path: str = "/retrieve") -> tuple[int, dict]:
    data = body if isinstance(body, bytes) else (body if isinstance(body, str) else json.dumps(body)).encode()
    request = urllib.request.Request(url + path, data=data, headers={"Content-Type": "application/json"})
    try:
        with urllib.request.urlopen(request, timeout=30) as response:
            return response.status, json.loads(response.read())
    except urllib.error.HTTPError as err:
        return err.code, json.loads(err.read())


def get(url: str, path: str) -> tuple[int, dict]:
    try:
        with urllib.request.urlopen(url + path, timeout=10) as response:
            return response.status, json.loads(response.read())
    except urllib.error.HTTPError as err:
        return err.code, json.loads(err.read())


QUERIES = ["Eiffel Tower in Paris", "who wrote Hamlet", "honey from flowers"]


def test_retrieve_with_scores_is_search_r1_format(server, bm25):
    status, body = post(server.url, {"queries": QUERIES, "topk": 2, "return_scores": True})
    assert status == 200 and list(body) == ["result"]
    expected = [[{"document": {"id": p.doc_id, "contents": RAW_CONTENTS[p.doc_id]}, "score": p.score} for p in hits]
                for hits in bm25.search(QUERIES, 2)]
    assert body["result"] == expected
    assert [hits[0]["document"]["id"] for hits in body["result"]] == ["p01", "p18", "p08"]
    # how Search-R1's generation code reads it
    contents = body["result"][1][0]["document"]["contents"]
    assert contents.split("\n")[0] == '"Shakespeare"' and "Hamlet" in "\n".join(contents.split("\n")[1:])


def test_retrieve_without_scores_lists_documents(server, bm25):
    status, body = post(server.url, {"queries": QUERIES[:2], "topk": 3, "return_scores": False})
    assert status == 200
    assert body == {"result": [[{"id": p.doc_id, "contents": RAW_CONTENTS[p.doc_id]} for p in hits]
                               for hits in bm25.search(QUERIES[:2], 3)]}
    # no topk and no return_scores: Search-R1's defaults (server topk, no scores)
    status, body = post(server.url, {"queries": ["largest desert in the world"]})
    assert status == 200 and len(body["result"][0]) == 3 and set(body["result"][0][0]) == {"id", "contents"}
    status, body = post(server.url, {"queries": [], "topk": 3})
    assert (status, body) == (200, {"result": []})


def test_a_query_that_matches_nothing_gets_an_empty_list(server):
    status, body = post(server.url, {"queries": ["zzzz qqqq", "Eiffel"], "topk": 3, "return_scores": True})
    assert status == 200 and body["result"][0] == [] and body["result"][1][0]["document"]["id"] == "p01"


@pytest.mark.parametrize("fields, topk, scores", [
    ({"topk": 0}, 3, False),  # 0 means the server's default, as `if not request.topk` in Search-R1
    ({"topk": None}, 3, False),
    ({"topk": "2"}, 2, False),
    ({"topk": 2.0}, 2, False),
    ({"topk": 1, "return_scores": 1}, 1, True),
    ({"topk": 1, "return_scores": 0}, 1, False),
    ({"topk": 1, "return_scores": "true"}, 1, True),
    ({"topk": 1, "return_scores": None}, 1, False),
])
def test_fields_are_read_as_search_r1_reads_them(server, fields, topk, scores):
    status, body = post(server.url, {"queries": ["largest desert in the world"], **fields})
    assert status == 200 and len(body["result"][0]) == topk
    assert ("score" in body["result"][0][0]) is scores


def test_health(server):
    status, body = get(server.url, "/health")
    assert status == 200 and body["status"] == "ok" and body["passages"] == 20


def test_openapi_schema_describes_retrieve(server):
    status, schema = get(server.url, "/openapi.json")
    body = schema["paths"]["/retrieve"]["post"]["requestBody"]["content"]["application/json"]["schema"]
    assert status == 200 and body["required"] == ["queries"] and set(body["properties"]) == {
        "queries", "topk", "return_scores"}
    assert {"400", "413"} <= set(schema["paths"]["/retrieve"]["post"]["responses"])


@pytest.mark.parametrize("body, status, words", [
    (b"{not json", 400, "not valid JSON"),
    (b"", 400, "not valid JSON"),
    ([1, 2], 400, "JSON object"),
    ({"topk": 3}, 400, 'missing field "queries"'),
    ({"queries": "just one string"}, 400, 'field "queries": Input should be a valid list'),
    ({"queries": ["ok", 7]}, 400, 'field "queries"[1]: Input should be a valid string'),
    ({"queries": ["q"], "topk": -2}, 400, '"topk" must be a positive integer'),
    ({"queries": ["q"], "topk": 2.5}, 400, 'field "topk"'),
    ({"queries": ["q"], "topk": "three"}, 400, 'field "topk"'),
    ({"queries": ["q"], "return_scores": "maybe"}, 400, 'field "return_scores"'),
    ({"queries": ["q"] * 9, "topk": 1}, 413, "at most 8"),
    ({"queries": ["q" * 101]}, 413, '"queries"[0] has 101 characters; at most 100'),
    ({"queries": ["q"], "topk": 1001}, 413, "at most 1000"),
    ({"queries": ["q"] * 5, "topk": 9}, 413, "45 documents; at most 40"),
    ({"queries": ["q" * 90] * 50}, 413, "exceeds 4096"),  # refused before it is parsed
])
def test_bad_requests_get_4xx_json(server, body, status, words):
    got_status, got = post(server.url, body)
    assert got_status == status and words in got["error"]


def test_unknown_routes_and_methods(server):
    assert get(server.url, "/nope")[0] == 404
    assert get(server.url, "/retrieve")[0] == 405
    assert post(server.url, {"queries": ["q"]}, path="/search")[0] == 404
    assert get(server.url, "/health")[0] == 200  # still serving


def test_keep_alive_and_chunked_bodies(server):
    connection = http.client.HTTPConnection("127.0.0.1", server.port, timeout=10)
    for query in ("volcano", "chess"):  # two requests on one connection
        connection.request("POST", "/retrieve", json.dumps({"queries": [query], "topk": 1}),
                           {"Content-Type": "application/json"})
        response = connection.getresponse()
        assert response.status == 200 and len(json.loads(response.read())["result"][0]) == 1
    body = json.dumps({"queries": ["volcano", "chess"], "topk": 1}).encode()
    connection.request("POST", "/retrieve", iter([body[:7], body[7:]]), {"Content-Type": "application/json"},
                       encode_chunked=True)  # Transfer-Encoding: chunked, no Content-Length
    response = connection.getresponse()
    assert response.status == 200 and [len(hits) for hits in json.loads(response.read())["result"]] == [1, 1]
    too_big = json.dumps({"queries": ["x" * 90] * 50}).encode()  # over max_body_bytes, in chunks
    connection.request("POST", "/retrieve", iter([too_big[i:i + 1000] for i in range(0, len(too_big), 1000)]),
                       {"Content-Type": "application/json"}, encode_chunked=True)
    response = connection.getresponse()
    assert response.status == 413 and "exceeds 4096" in json.loads(response.read())["error"]
    connection.close()


def test_a_search_r1_batch_of_2560_queries_is_served(bm25):
    """Search-R1's GRPO script: 512 prompts x 5 samples per retrieval call, at the server's defaults."""
    running = RetrievalServer(bm25, "127.0.0.1", 0).start()
    try:
        queries = [f"{QUERIES[i % 3]} {i}" for i in range(2560)]
        status, body = post(running.url, {"queries": queries, "topk": 3, "return_scores": True})
        assert status == 200 and len(body["result"]) == 2560
        assert [[hit["document"]["id"] for hit in hits] for hits in body["result"]] == \
            [[p.doc_id for p in hits] for hits in bm25.search(queries, 3)]
    finally:
        running.stop()


def test_lone_surrogates_in_queries_and_passages_do_not_break_the_response():
    corpus = Corpus(["ok", "bad"], ["Paris", "Broken"], ["Paris is in France.", "Broken text \ud800 here."])
    running = RetrievalServer(BM25Retriever.build(corpus), "127.0.0.1", 0).start()
    try:
        # json.dumps escapes the surrogate as "\ud800", which a JSON parser turns back into one
        status, body = post(running.url, {"queries": ["Paris \ud800", "broken text"], "topk": 1})
        assert status == 200
        assert body["result"] == [[{"id": "ok", "contents": '"Paris"\nParis is in France.'}],
                                  [{"id": "bad", "contents": '"Broken"\nBroken text \ufffd here.'}]]
    finally:
        running.stop()


# ----------------------------------------------------------------------------- load

class GatedRetriever:
    """Logs each call's queries; the first call for "big" queries waits for `release`, the
    later ones for `resume`, so a test decides when the big request may go on."""

    def __init__(self):
        self.calls: list[list[str]] = []
        self.big_started, self.release, self.resume = threading.Event(), threading.Event(), threading.Event()

    def search(self, queries, k):
        self.calls.append(list(queries))
        if queries[0].startswith("big"):
            first = not self.big_started.is_set()
            self.big_started.set()
            assert (self.release if first else self.resume).wait(30)
        return [[Passage(q, "", f"text of {q}", 1.0)] for q in queries]


def test_scheduler_takes_requests_in_turns_chunk_by_chunk():
    gated = GatedRetriever()
    scheduler = SearchScheduler(gated, workers=1, chunk=2)
    try:
        big = scheduler.submit([f"big {i}" for i in range(6)], 1)
        assert gated.big_started.wait(30)
        small = scheduler.submit(["small"], 1)  # arrives while the big request's first chunk runs
        gated.release.set()
        assert [p.doc_id for hits in small.result(30) for p in hits] == ["small"]  # the big one is not done
        assert not big.done()
        gated.resume.set()
        assert [p.doc_id for hits in big.result(30) for p in hits] == [f"big {i}" for i in range(6)]
        assert gated.calls == [["big 0", "big 1"], ["small"], ["big 2", "big 3"], ["big 4", "big 5"]]
    finally:
        scheduler.close()


class FailingChunk:
    def search(self, queries, k):
        if "poison" in queries:
            raise RuntimeError("shard offline")
        return [[Passage(q, "", "", 1.0)] for q in queries]


def test_scheduler_fails_the_request_whose_chunk_failed_and_goes_on():
    scheduler = SearchScheduler(FailingChunk(), workers=2, chunk=2)
    try:
        bad = scheduler.submit(["a", "b", "poison", "c", "d", "e"], 1)
        with pytest.raises(RuntimeError, match="shard offline"):
            bad.result(30)
        assert [hits[0].doc_id for hits in scheduler.submit(["x", "y", "z"], 1).result(30)] == ["x", "y", "z"]
    finally:
        scheduler.close()


def test_a_small_request_is_answered_while_a_large_one_is_in_progress():
    gated = GatedRetriever()
    running = RetrievalServer(gated, "127.0.0.1", 0, workers=1, chunk_queries=2).start()
    finished: list[str] = []

    def ask(name: str, queries: list[str]) -> None:
        status, body = post(running.url, {"queries": queries, "topk": 1})
        assert status == 200 and len(body["result"]) == len(queries)
        finished.append(name)

    try:
        large = threading.Thread(target=ask, args=("large", [f"big {i}" for i in range(6)]))
        large.start()
        assert gated.big_started.wait(30)
        small = threading.Thread(target=ask, args=("small", ["small"]))
        small.start()
        deadline = time.monotonic() + 30  # a hang guard only: the small request joins the line
        while running.scheduler.waiting() < 1 and time.monotonic() < deadline:
            time.sleep(0.01)
        gated.release.set()
        small.join(30)
        assert finished == ["small"] and large.is_alive()  # answered while the large one waits to go on
        gated.resume.set()
        large.join(30)
        assert finished == ["small", "large"]
        assert gated.calls == [["big 0", "big 1"], ["small"], ["big 2", "big 3"], ["big 4", "big 5"]]
    finally:
        running.stop()


def hold_event_loop(running: RetrievalServer) -> threading.Event:
    """Blocks the server's event loop (as a burst of work would) until the returned event is set."""
    release = threading.Event()
    running._server.servers[0].get_loop().call_soon_threadsafe(release.wait, 30)
    return release


def test_the_accept_queue_holds_a_burst_of_connections(bm25, clients=64):
    """While the server accepts nothing, the kernel completes every client's handshake (the
    backlog has room), and once it accepts again every client gets its answer: no resets."""
    running = RetrievalServer(bm25, "127.0.0.1", 0).start()
    connected, answers, errors = [], [], []
    lock = threading.Lock()

    def client(i: int) -> None:
        try:
            connection = http.client.HTTPConnection("127.0.0.1", running.port, timeout=30)
            connection.connect()
            with lock:
                connected.append(i)
            connection.request("POST", "/retrieve", json.dumps({"queries": [QUERIES[i % 3]], "topk": 1}),
                               {"Content-Type": "application/json"})
            response = connection.getresponse()
            answers.append((response.status, json.loads(response.read())["result"][0][0]["id"]))
            connection.close()
        except OSError as err:
            errors.append(repr(err))

    try:
        release = hold_event_loop(running)
        threads = [threading.Thread(target=client, args=(i,)) for i in range(clients)]
        for thread in threads:
            thread.start()
        deadline = time.monotonic() + 20  # a hang guard: with a short queue, handshakes wait for accept()
        while len(connected) < clients and time.monotonic() < deadline:
            time.sleep(0.01)
        handshakes_while_held = len(connected)
        release.set()
        for thread in threads:
            thread.join(30)
        assert handshakes_while_held == clients
        assert errors == [] and len(answers) == clients and {status for status, _ in answers} == {200}
    finally:
        running.stop()


# ----------------------------------------------------------------------------- client

def test_client_returns_the_same_passages_as_the_retriever(server, bm25):
    client = HTTPRetriever(server.url, timeout=10, max_batch=2)  # 3 queries -> 2 requests
    assert client.search(QUERIES, 4) == bm25.search(QUERIES, 4)
    assert HTTPRetriever(server.url + "/retrieve").search(["Sahara"], 1)[0][0].doc_id == "p19"
    assert client.health()["status"] == "ok"
    with pytest.raises(ValueError, match="HTTP 413: .*at most 8"):
        HTTPRetriever(server.url, max_batch=100).search(["q"] * 9, 1)


class FlakyRetriever:
    """Fails the first `failures` calls, then answers."""

    def __init__(self, failures: int):
        self.failures, self.calls = failures, 0
        self.lock = threading.Lock()

    def search(self, queries, k):
        with self.lock:
            self.calls += 1
            if self.calls <= self.failures:
                raise RuntimeError(f"index shard offline (call {self.calls})")
        return [[Passage("d1", "Title", "text", 1.5)] for _ in queries]


def test_server_reports_retriever_failures_as_500_and_client_retries():
    flaky = FlakyRetriever(failures=2)
    running = RetrievalServer(flaky, "127.0.0.1", 0).start()
    try:
        status, body = post(running.url, {"queries": ["q"], "topk": 1})
        assert status == 500 and "index shard offline (call 1)" in body["error"]
        client = HTTPRetriever(running.url, retries=3, backoff=0.01)
        assert client.search(["q"], 1) == [[Passage("d1", "Title", "text", 1.5)]]
        assert flaky.calls == 3  # one 500 above, one retried 500, then success
    finally:
        running.stop()


def test_client_fails_clearly_when_nothing_listens():
    with socket.socket() as probe:  # a port that was free a moment ago
        probe.bind(("127.0.0.1", 0))
        port = probe.getsockname()[1]
    url = f"http://127.0.0.1:{port}"
    client = HTTPRetriever(url, timeout=2, retries=2, backoff=0.05)
    started = time.perf_counter()
    with pytest.raises(RetrieverUnavailable) as caught:
        client.search(["q"], 3)
    elapsed = time.perf_counter() - started
    message = str(caught.value)
    assert f"{url}/retrieve" in message and "after 3 attempts" in message and "refused" in message.lower()
    assert 0.05 + 0.1 <= elapsed < 5  # backed off 0.05 then 0.1 seconds, and gave up
    assert isinstance(caught.value, ConnectionError)
