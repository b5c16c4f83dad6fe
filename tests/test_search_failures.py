"""Failed searches are counted, and a run stops or pauses on them instead of training on an
outage: the HTTP client (kept-alive connections, retries), the guard around a rollout, the
GRPO entry point end to end, and `eval.run`'s exit."""

import json
import re
import socket
import threading
from http.server import BaseHTTPRequestHandler, ThreadingHTTPServer

import pytest
from fakes import PASSAGES, FixedRetriever, ScriptedEngine

from agent.rollout import Rollout, RolloutConfig, SearchesFailed, SearchTally
from agent.traces import read_traces
from agent.types import Example
from retrieval.client import HTTPRetriever, RetrieverUnavailable
from train.search_guard import SearchGuard

EXAMPLE = Example("q1", "Where was Orin Kael born?", ["Velmora"])


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


# -- the guard around a rollout --------------------------------------------------------------


class FlakyRetriever(FixedRetriever):
    """Raises while `down`; `health()` raises while down too, and brings it back up after
    `recover_after` checks."""

    def __init__(self, recover_after: int | None = None):
        super().__init__(PASSAGES)
        self.down, self.recover_after, self.checks = True, recover_after, 0

    def search(self, queries, k):
        if self.down:
            raise ConnectionError("index offline")
        return super().search(queries, k)

    def health(self):
        self.checks += 1
        if self.recover_after is not None and self.checks >= self.recover_after:
            self.down = False
        if self.down:
            raise ConnectionError("still offline")
        return {"status": "ok"}


def search_then_answer(tokenizer):
    """A scripted policy: search until an observation arrives, then answer."""
    closing = tokenizer.convert_tokens_to_ids("</information>")
    return ScriptedEngine(tokenizer, lambda ids, call: "<answer>Velmora</answer>" if closing in ids
                          else "<search>Velmora</search>")


def guard(on_failure, logs, threshold=0.0):
    return SearchGuard(threshold, on_failure, log=logs.append, first_wait=0.001, max_wait=0.004)


def test_stop_raises_with_the_count_and_the_cause(tiny_tokenizer):
    rollout = Rollout(search_then_answer(tiny_tokenizer), FlakyRetriever(), RolloutConfig(passages_per_search=1))
    with pytest.raises(SearchesFailed, match=r"2 of 2 searches of step 1 failed \(search failed: ConnectionError: "
                                             r"index offline\)"):
        guard("stop", []).rollout(lambda: rollout([EXAMPLE], 2), rollout.retriever, "step 1")


def test_failures_within_the_threshold_are_counted_and_kept(tiny_tokenizer):
    rollout = Rollout(search_then_answer(tiny_tokenizer), FlakyRetriever(), RolloutConfig(passages_per_search=1))
    trajs, tally, paused = guard("stop", [], threshold=1.0).rollout(lambda: rollout([EXAMPLE], 2), rollout.retriever,
                                                                     "step 1")
    assert tally == SearchTally(searches=2, failed=2, first_error="search failed: ConnectionError: index offline")
    assert paused == 0 and all(t.steps[0].error == tally.first_error for t in trajs)


def test_pause_waits_for_health_with_backoff_then_rolls_out_again(tiny_tokenizer):
    retriever = FlakyRetriever(recover_after=3)  # two failed health checks, the third answers
    rollout = Rollout(search_then_answer(tiny_tokenizer), retriever, RolloutConfig(passages_per_search=1))
    logs = []
    trajs, tally, paused = guard("pause", logs).rollout(lambda: rollout([EXAMPLE], 2), retriever, "step 1")
    assert tally == SearchTally(searches=2, failed=0, first_error=None) and paused > 0
    assert all(t.steps[0].passages and t.answer == "Velmora" for t in trajs)
    assert retriever.checks == 3
    assert [line.split(" s ")[0] for line in logs if line.startswith("waiting")] == [
        "waiting 0.001", "waiting 0.002", "waiting 0.004"]  # doubled each time, up to max_wait


def test_pause_with_nothing_listening_resumes_once_the_server_is_up(tiny_tokenizer):
    port = free_port()
    client = HTTPRetriever(f"http://127.0.0.1:{port}", timeout=1, retries=1, backoff=0.001)
    rollout = Rollout(search_then_answer(tiny_tokenizer), client, RolloutConfig(passages_per_search=1))
    servers = []

    def log(line):  # the server comes up while the run waits
        if line.startswith("waiting") and not servers:
            servers.append(StubServer(port))

    try:
        trajs, tally, _ = SearchGuard(0.0, "pause", log=log, first_wait=0.001).rollout(
            lambda: rollout([EXAMPLE], 2), client, "step 1")
    finally:
        client.close()
        for server in servers:
            server.stop()
    assert tally.failed == 0 and [t.steps[0].passages[0].doc_id for t in trajs] == ["d3", "d3"]


def test_nothing_listening_is_counted_as_failed_searches(tiny_tokenizer):
    url = f"http://127.0.0.1:{free_port()}"
    client = HTTPRetriever(url, timeout=1, retries=1, backoff=0.001)
    trajs = Rollout(search_then_answer(tiny_tokenizer), client, RolloutConfig(passages_per_search=1))([EXAMPLE], 3)
    tally = SearchTally.of(trajs)
    assert (tally.searches, tally.failed) == (3, 3)
    assert f"{url}/retrieve unavailable after 2 attempts: ConnectError" in tally.first_error


# -- the GRPO entry point ----------------------------------------------------------------------


class OutageAtFirstSearch:
    """An index that answers the start-up health check, then is down from its first search on;
    `recover_after` health checks during the outage bring it back (None: never)."""

    def __init__(self, recover_after: int | None = None):
        self.inner, self.recover_after = None, recover_after
        self.searched, self.down, self.checks = False, True, 0

    def search(self, queries, k):
        self.searched = True
        if self.down:
            raise ConnectionError("index offline")
        return self.inner.search(queries, k)

    def health(self):
        if self.searched:
            self.checks += 1
            self.down = self.down and (self.recover_after is None or self.checks < self.recover_after)
            if self.down:
                raise ConnectionError("still offline")
        return {"status": "ok"}


@pytest.fixture
def scripted_run(trainer_world, tiny_model_dir, monkeypatch, tmp_path):
    """`train.grpo.main` for one step on the trainer world, its rollouts sampled by a scripted
    policy that searches once then answers, and its index behind an `OutageAtFirstSearch`;
    returns (run(outage, extra args...) -> summary, the output directory)."""
    import retrieval
    from train import grpo, search_guard

    real_open = retrieval.open_retriever

    class ScriptedSampler(ScriptedEngine):
        def update_weights(self, weights):
            pass

    monkeypatch.setattr(grpo, "make_sampler", lambda cfg, policy, *a: ScriptedSampler(
        policy.tokenizer, search_then_answer(policy.tokenizer).script))
    monkeypatch.setattr(search_guard, "sleep", lambda seconds: None)
    out = tmp_path / "run"

    def run(outage, *extra):
        outage.inner = real_open(trainer_world / "bm25")
        monkeypatch.setattr(retrieval, "open_retriever", lambda path, *a, **k: outage)
        return grpo.main(["--model", str(tiny_model_dir), "--data", str(trainer_world / "world"),
                          "--index", str(trainer_world / "bm25"), "--output_dir", str(out), "--max_steps", "1",
                          "--questions_per_step", "2", "--group_size", "2", "--oversample", "1", "--max_turns", "2",
                          "--max_new_tokens", "12", "--eval_questions", "0", "--test_questions", "0", "--resume", "false",
                          *extra])

    return run, out


def steps(out):
    return [r for r in read_traces(out / "metrics.jsonl") if r["step"] > 0] if (out / "metrics.jsonl").exists() else []


def test_a_steps_failed_searches_are_counted_in_its_record_and_marked_in_its_traces(scripted_run):
    run, out = scripted_run
    run(OutageAtFirstSearch(), "--retrieval_failure_threshold", "1")  # every search may fail: counted, trained on
    [record] = steps(out)
    assert record["searches"] == 1.0 and record["search/failed"] == 4 and record["search/failure_rate"] == 1.0
    traces = read_traces(out / "traces.jsonl")
    searches = [s for t in traces for s in t["steps"] if s["kind"] == "search"]
    assert len(searches) == 4 and all(s["error"] == "search failed: ConnectionError: index offline" for s in searches)
    assert all("<information>Search failed.</information>" in "".join(t["segment_texts"]) for t in traces)


def test_stop_ends_the_run_before_the_update(scripted_run):
    run, out = scripted_run
    with pytest.raises(SystemExit, match=r"^error: 4 of 4 searches of step 1 failed \(search failed: ConnectionError"):
        run(OutageAtFirstSearch(), "--on_retrieval_failure", "stop")
    assert steps(out) == [] and not list(out.glob("checkpoint-*"))  # nothing logged or saved of the step


def test_pause_waits_until_the_retriever_answers_then_trains_the_step(scripted_run):
    run, out = scripted_run
    outage = OutageAtFirstSearch(recover_after=2)  # the first health check fails, the second answers
    summary = run(outage)  # on_retrieval_failure is pause by default
    [record] = steps(out)
    assert record["search/failed"] == 0 and "search/paused_s" in record and outage.checks == 2
    assert (out / "checkpoint-1").is_dir() and summary["final_model"]["path"] == str(out / "final")
    assert all(s["error"] is None for t in read_traces(out / "traces.jsonl") for s in t["steps"])


def test_a_server_that_does_not_answer_at_start_up_stops_the_run(trainer_world, tiny_model_dir, monkeypatch):
    import retrieval
    from train.grpo import main

    url = f"http://127.0.0.1:{free_port()}"
    monkeypatch.setattr(retrieval, "open_retriever", lambda path, *a, **k: HTTPRetriever(path, timeout=1, retries=1,
                                                                                          backoff=0.001))
    with pytest.raises(SystemExit, match=f"^error: retrieval server at {url}/health unavailable after 2 attempts"):
        main(["--model", str(tiny_model_dir), "--data", str(trainer_world / "world"), "--index", url,
              "--output_dir", str(trainer_world / "down"), "--max_steps", "1"])


def test_bad_failure_settings_are_refused():
    from train.grpo import main

    with pytest.raises(ValueError, match=r"retrieval_failure_threshold must be a number in \[0, 1\], got 1.5"):
        main(["--retrieval_failure_threshold", "1.5"])
    with pytest.raises(ValueError, match=re.escape("on_retrieval_failure must be one of stop, pause, got 'retry'")):
        main(["--on_retrieval_failure", "retry"])


# -- eval.run ----------------------------------------------------------------------------------


def test_eval_run_exits_non_zero_naming_the_url_when_searches_fail(trainer_world, tmp_path, monkeypatch):
    import retrieval
    from eval.run import main

    url = f"http://127.0.0.1:{free_port()}"
    monkeypatch.setattr(retrieval, "open_retriever", lambda path, *a, **k: HTTPRetriever(path, timeout=1, retries=1,
                                                                                          backoff=0.001))
    out = tmp_path / "run"
    out.mkdir()
    (out / "metrics.json").write_text("{}")  # an earlier evaluation's: must not pass for this one's
    with pytest.raises(SystemExit) as stopped:
        main(["--policy", "oracle", "--data", str(trainer_world / "world"), "--index", url, "--out", str(out),
              "--limit", "3"])
    message = str(stopped.value.code)  # a message: the exit status is 1
    # the oracle searches each hop's query, then the question: 2 searches a question, all failed
    assert message.startswith(f"error: searching {url}: 6 of 6 searches of questions 1-3 failed") and "\n" not in message
    assert not (out / "metrics.json").exists()
    traces = read_traces(out / "traces.jsonl")  # the failing batch's traces, each failed search marked
    assert len(traces) == 3 and all(s["error"].startswith("search failed: RetrieverUnavailable")
                                    for t in traces for s in t["steps"] if s["kind"] == "search")
