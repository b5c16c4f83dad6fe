"""The OpenAI-compatible engine against a fake completions server on 127.0.0.1."""

from __future__ import annotations

import json
import socket
import threading
import time
from http.server import BaseHTTPRequestHandler, ThreadingHTTPServer

import pytest

from agent.engines.base import SamplingParams
from agent.engines.openai import OpenAIEngine


class FakeCompletions(BaseHTTPRequestHandler):
    """Answers each prompt with its reply text `n` times; records every request body."""

    reply = " Velmora</answer> tail"
    delay = 0.0

    def do_POST(self):
        body = json.loads(self.rfile.read(int(self.headers["Content-Length"])))
        self.server.requests.append((self.path, body))
        time.sleep(self.delay)
        text, finish, matched = self.reply, "length", None
        for stop in body.get("stop", []):
            if stop in text:  # like vLLM: the stop string is cut unless asked for, and named
                keep = len(stop) if body.get("include_stop_str_in_output") else 0
                text, finish, matched = text[: text.index(stop) + keep], "stop", stop
                break
        choices = [{"index": i, "text": text, "finish_reason": finish, "stop_reason": matched} for i in range(body["n"])]
        payload = json.dumps({"choices": choices}).encode()
        self.send_response(200)
        self.send_header("Content-Type", "application/json")
        self.send_header("Content-Length", str(len(payload)))
        self.end_headers()
        try:
            self.wfile.write(payload)
        except (BrokenPipeError, ConnectionResetError):
            pass  # the client gave up waiting, as the timeout test wants

    def log_message(self, *args):
        pass


@pytest.fixture
def fake_server():
    server = ThreadingHTTPServer(("127.0.0.1", 0), FakeCompletions)
    server.requests = []
    thread = threading.Thread(target=server.serve_forever, kwargs={"poll_interval": 0.05}, daemon=True)
    thread.start()
    yield server
    server.shutdown()
    server.server_close()
    thread.join(timeout=5)


def test_openai_engine_round_trip(fake_server, tiny_tokenizer):
    url = f"http://127.0.0.1:{fake_server.server_address[1]}"
    engine = OpenAIEngine(url, "tiny", tokenizer=tiny_tokenizer, api_key="k", timeout=5)
    prompt = tiny_tokenizer.encode("Where was Orin Kael born? <answer>")
    params = SamplingParams(max_new_tokens=7, temperature=0.5, stop_strings=("</answer>",), seed=3)
    gens = engine.generate([prompt, prompt, prompt[:3]], params)
    assert not engine.exact_tokens
    assert [g.meta["text"] for g in gens] == [" Velmora</answer>"] * 3
    assert gens[0].token_ids == tiny_tokenizer.encode(" Velmora</answer>") and gens[0].logprobs == [0.0] * len(gens[0].token_ids)
    assert all(g.finish == "stop" for g in gens)
    bodies = sorted((body for _, body in fake_server.requests), key=lambda b: -b["n"])
    assert [path for path, _ in fake_server.requests] == ["/v1/completions"] * 2  # identical prompts sent once
    assert bodies[0]["prompt"] == "Where was Orin Kael born? <answer>" and bodies[0]["n"] == 2
    assert bodies[0]["stop"] == ["</answer>"] and bodies[0]["max_tokens"] == 7 and bodies[0]["temperature"] == 0.5
    assert {b["seed"] for b in bodies} == {3, 4} and bodies[0]["include_stop_str_in_output"] is True


def test_openai_engine_without_vllm_fields_still_keeps_the_stop(fake_server, tiny_tokenizer):
    url = f"http://127.0.0.1:{fake_server.server_address[1]}"
    engine = OpenAIEngine(url, "tiny", tokenizer=tiny_tokenizer, vllm_extras=False)
    answer_end = tiny_tokenizer.convert_tokens_to_ids("</answer>")
    [gen] = engine.generate([[5, 6]], SamplingParams(max_new_tokens=7, stop_token_ids=(answer_end,)))
    [(_, body)] = fake_server.requests
    assert body["stop"] == ["</answer>"] and "stop_token_ids" not in body and "include_stop_str_in_output" not in body
    assert gen.meta["text"] == " Velmora</answer>" and gen.token_ids[-1] == answer_end and gen.finish == "stop"


def test_openai_engine_reports_length(fake_server, tiny_tokenizer):
    engine = OpenAIEngine(f"http://127.0.0.1:{fake_server.server_address[1]}/v1", "tiny", tokenizer=tiny_tokenizer)
    [gen] = engine.generate([[5, 6]], SamplingParams(max_new_tokens=3))
    assert gen.finish == "length" and gen.meta["text"] == FakeCompletions.reply


def test_openai_engine_names_the_url_when_nothing_listens(tiny_tokenizer):
    with socket.socket() as sock:  # a port that was free a moment ago
        sock.bind(("127.0.0.1", 0))
        port = sock.getsockname()[1]
    engine = OpenAIEngine(f"http://127.0.0.1:{port}", "tiny", tokenizer=tiny_tokenizer, timeout=1, retries=1, retry_delay=0)
    with pytest.raises(ConnectionError, match=f"127.0.0.1:{port}/v1/completions after 2 attempt"):
        engine.generate([[5]], SamplingParams(max_new_tokens=2))


def test_openai_engine_times_out_with_the_url(fake_server, tiny_tokenizer, monkeypatch):
    monkeypatch.setattr(FakeCompletions, "delay", 0.5)
    url = f"http://127.0.0.1:{fake_server.server_address[1]}"
    engine = OpenAIEngine(url, "tiny", tokenizer=tiny_tokenizer, timeout=0.1, retries=0)
    with pytest.raises(ConnectionError, match=f"127.0.0.1:{fake_server.server_address[1]}/v1/completions.*timed out"):
        engine.generate([[5]], SamplingParams(max_new_tokens=2))
