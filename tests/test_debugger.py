"""The trace debugger's index, rows, views and web API, on a small scripted run."""

import hashlib
import json

import pytest
from fastapi.testclient import TestClient

from debugger_run import PASSAGES, write_run
from eval.debugger.app import build_runs, create_app
from eval.debugger.forking import Toolbox
from eval.debugger.index import TraceIndex
from eval.debugger.rows import Filters, select
from eval.debugger.sources import find_runs
from eval.debugger.views import parting_steps
from fakes import FixedRetriever, ScriptedEngine


@pytest.fixture
def run_dir(tiny_tokenizer, tmp_path):
    write_run(tmp_path / "run", tiny_tokenizer)
    tiny_tokenizer.save_pretrained(tmp_path / "tokenizer")
    return tmp_path / "run"


@pytest.fixture
def client(run_dir, tiny_tokenizer):
    from retrieval.cache import CachedRetriever

    runs = build_runs(find_runs([run_dir]), str(run_dir.parent / "tokenizer"))
    # an empty cache has length 0: a retriever must not be taken for absent because it is falsy
    toolbox = Toolbox({"scripted": ScriptedEngine(tiny_tokenizer, lambda ids, call: "<answer>Velmora</answer>")},
                      {"fixed": CachedRetriever(FixedRetriever(PASSAGES), 100)})
    return TestClient(create_app(runs, toolbox, follow=None, allowed_hosts=("testserver",)))


def digest(path):
    return hashlib.sha256(path.read_bytes()).hexdigest()


# -- the index ---------------------------------------------------------------------------------


def test_index_follows_appends_waits_for_whole_lines_and_restarts_when_cut(tmp_path):
    path = tmp_path / "traces.jsonl"
    rec = lambda i: json.dumps({"group_id": f"g{i}", "sample": 0, "question": f"question {i}", "steps": []}) + "\n"
    path.write_text(rec(0) + rec(1))
    index = TraceIndex(path)
    assert index.refresh() == 2 and index.record(1)["question"] == "question 1"
    with open(path, "a") as f:
        f.write(rec(2) + rec(3)[:10])  # a line still being written
    assert index.refresh() == 1 and len(index.offsets) == 3
    with open(path, "a") as f:
        f.write(rec(3)[10:] + "not json\n")
    assert index.refresh() == 1 and index.record(3)["question"] == "question 3"
    assert index.bad_lines == [f"{path} line 5: not valid JSON (Expecting value at column 1)"]
    path.write_text(rec(7))  # a resumed run cut the file
    assert index.refresh() == 1 and [r["id"] for r in index.rows] == ["g7/0"] and index.by_id == {"g7/0": 0}
    with pytest.raises(IndexError, match="no trace at position 5"):
        index.record(5)


def test_index_reads_in_bounded_steps(tmp_path):
    path = tmp_path / "traces.jsonl"
    path.write_text("".join(json.dumps({"group_id": "g", "sample": i, "pad": "x" * 100}) + "\n" for i in range(50)))
    index = TraceIndex(path)
    first = index.refresh(max_bytes=500)
    assert 0 < first < 50 and not index.done
    assert first + index.refresh() == 50 and index.done and index.groups["g"] == list(range(50))


# -- rows and filters ---------------------------------------------------------------------------


def test_filters_and_sorting(client, run_dir):
    index = TraceIndex(run_dir / "traces.jsonl")
    index.refresh()
    rows = index.snapshot()
    assert len(rows) == 18
    wrong = select(rows, Filters(correct=False, step=2))
    assert len(wrong) == 6 and all(r["em"] == 0 and r["step"] == 2 for r in wrong)
    assert [r["answer"] for r in select(rows, Filters(text="dastmoor"))] == ["Dastmoor"] * 6  # answers are searched
    # queries and answers are searched too: question 3's sample 0 answered "Velmora", sample 1 searched it
    assert {(r["question"], r["sample"]) for r in select(rows, Filters(text="velmora country"))} == {
        ("Which country is Velmora in?", 0), ("Which country is Velmora in?", 1), ("Which country is Velmora in?", 2),
        ("In which country was Orin Kael born?", 0), ("In which country was Orin Kael born?", 1)}
    top = select(rows, Filters(sort="advantage", descending=True))
    assert [r["advantage"] for r in top] == sorted((r["advantage"] for r in rows), reverse=True)
    assert all(0.15 <= r["reward"] <= 0.25 for r in select(rows, Filters(reward_min=0.15, reward_max=0.25)))
    assert {r["category"] for r in select(rows, Filters(hops=2))} == {"correct", "wrong_with_gold", "gold_not_retrieved"}
    with pytest.raises(ValueError, match="sort must be one of"):
        Filters(sort="question")


def test_parting_steps():
    a, b = ("search", "x"), ("answer", "y")
    assert parting_steps([[a, b], [a, b], [a]]) == [2, 2, 1]
    assert parting_steps([[a], [b]]) == [0, 0]


# -- the API ------------------------------------------------------------------------------------


def test_runs_and_list(client):
    runs = client.get("/api/runs").json()
    [run] = runs["runs"]
    assert run["traces"] == 18 and run["forks"] == 0 and not run["indexing"]
    assert [c["step"] for c in run["curves"]] == [1, 2] and run["facets"]["steps"] == [1, 2]
    assert runs["policies"] == ["scripted"] and runs["retrievers"] == ["fixed"]
    page = client.get("/api/runs/0/traces", params={"correct": "true", "sort": "reward", "desc": "true", "limit": 4}).json()
    assert page["total"] == 6 and len(page["rows"]) == 4 and all(r["em"] == 1 for r in page["rows"])
    assert page["rows"][0]["key"] == "0.0.0" and "text" not in page["rows"][0]
    assert client.get("/api/runs/0/traces", params={"limit": 1000}).status_code == 422
    assert client.get("/api/runs/3/traces").status_code == 404


def test_trajectory_view_marks_gold_dropped_judge_labels_and_step_values(client):
    t = client.get("/api/trace/0.0.1").json()  # step 1, question 1, sample 1: search, drop, search, wrong answer
    assert t["question"] == "Where was Orin Kael born?" and t["answer"] == "Dastmoor" and t["em"] == 0
    assert t["category"] == "wrong_with_gold" and t["group_size"] == 3 and t["advantage"] == pytest.approx(-0.2667)
    search, judge, search2, answer = t["cards"]
    assert search["dropped"] and [p["gold"] for p in search["passages"]] == [False, True, False]
    assert judge["text"] == "not useful" and judge["ideal"] == "useful"
    assert (search["reward"], search["advantage"]) == (0.1, pytest.approx(-0.1667))
    assert answer["em"] == 0 and not any(c["edited"] for c in t["cards"])
    assert client.get("/api/trace/0.0.99").status_code == 404
    assert client.get("/api/trace/nope").status_code == 400


def test_tokens_view_shows_masks_logprobs_and_step_marks(client, tiny_tokenizer):
    t = client.get("/api/trace/0.0.1/tokens").json()
    seg0 = t["segments"][0]
    ids_, texts, masks, logprobs = zip(*seg0["tokens"])
    assert texts[0] == "<search>" and masks[:4] == (1, 1, 1, 1) and logprobs[:2] == (-0.5, -0.51)
    assert "<information>" in texts and all(m == 0 and lp == 0 for t_, m, lp in zip(texts, masks, logprobs) if t_ == "<information>")
    assert [s["kind"] for s in seg0["steps"]] == ["search", "judge"] and len(t["segments"]) == 2
    assert t["sampled"] == sum(masks) + sum(m for *_, m, _ in t["segments"][1]["tokens"])
    assert seg0["context_text"].startswith("<|im_start|>user")


def test_group_view_lines_up_the_samples(client):
    g = client.get("/api/trace/0.0.10/group").json()
    assert g["group"] == "s2:q1" and [s["sample"] for s in g["samples"]] == [0, 1, 2]
    assert [s["key"] for s in g["samples"]] == ["0.0.9", "0.0.10", "0.0.11"]
    assert [s["parts_at"] for s in g["samples"]] == [1, 1, 0]  # 0 and 1 share the first search; 2 thinks first


def test_fork_streams_saves_a_linked_trace_and_leaves_the_run_alone(client, run_dir):
    before = digest(run_dir / "traces.jsonl")
    body = {"key": "0.0.1", "step": 0, "edit": "query", "text": "Velmora", "policy": "scripted", "retriever": "fixed"}
    events = [json.loads(line) for line in client.post("/api/fork", json=body).text.splitlines()]
    assert [e["event"] for e in events] == ["status", "step", "step", "done"]
    assert events[1]["card"]["text"] == "Velmora" and events[1]["card"]["edited"]
    assert [p["id"] for p in events[1]["card"]["passages"]] == ["d3"]  # searched with the chosen retriever
    assert events[-1] == {"event": "done", "key": "0.1.0", "id": "s1:q1/1+1", "finish": "answered", "answer": "Velmora",
                          "em": 1.0}
    assert digest(run_dir / "traces.jsonl") == before
    [saved] = [json.loads(line) for line in (run_dir / "forks.jsonl").read_text().splitlines()]
    assert saved["parent"] == "s1:q1/1" and saved["fork"]["edit"] == "query" and saved["step"] == 1
    assert saved["segments"][0]["loss_mask"][:6] == [0] * 6  # the edited query is injected
    parent = client.get("/api/trace/0.0.1").json()
    assert parent["children"] == [{"key": "0.1.0", "id": "s1:q1/1+1", "answer": "Velmora", "em": 1.0, "fork_step": 0}]
    child = client.get("/api/trace/0.1.0").json()
    assert child["parent_key"] == "0.0.1" and child["cards"][0]["edited"]
    again = [json.loads(x) for x in client.post("/api/fork", json=body | {"key": "0.1.0", "edit": "message",
                                                                          "step": 1, "text": "sure?"}).text.splitlines()]
    assert again[-1]["id"] == "s1:q1/1+1+1"
    assert client.get("/api/runs/0/traces", params={"origin": "forks"}).json()["total"] == 2


@pytest.mark.parametrize("change, status", [
    ({"evil": 1}, 422),  # unknown field
    ({"text": "x" * 5000}, 422),  # too long
    ({"key": "../../etc"}, 422),
    ({"policy": "/tmp/model"}, 400),  # only the offered policies
    ({"retriever": "http://elsewhere:8000"}, 400),
    ({"edit": "passages", "step": 1}, 400),  # step 1 is a judge
    ({"step": 9}, 400),
])
def test_fork_requests_are_validated(client, run_dir, change, status):
    body = {"key": "0.0.1", "step": 0, "edit": "query", "text": "Velmora", "policy": "scripted", "retriever": "fixed"}
    response = client.post("/api/fork", json=body | change)
    assert response.status_code == status, response.text
    assert not (run_dir / "forks.jsonl").exists()


def test_fork_takes_json_only_and_bounded_bodies(client):
    body = json.dumps({"key": "0.0.1", "step": 0, "edit": "query", "text": "V", "policy": "scripted"})
    assert client.post("/api/fork", content=body, headers={"content-type": "text/plain"}).status_code in (415, 422)
    assert client.post("/api/fork", content="x" * 70_000, headers={"content-type": "application/json"}).status_code == 413


def test_files_outside_the_run_directory_are_refused(client, run_dir):
    assert client.get("/files/0/metrics.jsonl").status_code == 200
    for path in ("..%2F..%2Fetc%2Fpasswd", "%2e%2e/%2e%2e/etc/passwd", "..%2Frun%2F..%2F..%2Fetc%2Fhostname"):
        assert client.get(f"/files/0/{path}").status_code in (403, 404)
    assert client.get("/files/0/%2e%2e/tokenizer/tokenizer.json").status_code == 403  # a sibling of the run
    assert client.get("/static/..%2F..%2Fapp.py").status_code == 404


def test_page_headers_and_hosts(client, run_dir):
    page = client.get("/")
    assert page.status_code == 200 and "script-src 'self'" in page.headers["content-security-policy"]
    assert "unsafe-inline" not in page.headers["content-security-policy"]
    assert client.get("/static/app.js").headers["x-content-type-options"] == "nosniff"
    assert client.get("/api/runs", headers={"host": "attacker.example"}).status_code == 400  # no DNS rebinding


def test_a_run_directory_without_traces_is_named():
    with pytest.raises(ValueError, match="no such file or directory"):
        find_runs(["/nonexistent/run"])


def test_the_server_follows_a_run_as_it_writes(run_dir):
    import time

    lines = (run_dir / "traces.jsonl").read_text().splitlines(keepends=True)
    (run_dir / "traces.jsonl").write_text("".join(lines[:9]))
    app = create_app(build_runs(find_runs([run_dir])), Toolbox({}, {}), follow=0.05, allowed_hosts=("testserver",))
    with TestClient(app) as client:  # the background indexer runs while the app does
        counts = []
        for line in lines[9:]:
            with open(run_dir / "traces.jsonl", "a") as f:
                f.write(line)
            deadline = time.monotonic() + 5
            while client.get("/api/runs").json()["runs"][0]["traces"] < len(counts) + 10 and time.monotonic() < deadline:
                time.sleep(0.02)
            counts.append(client.get("/api/runs").json()["runs"][0]["traces"])
        assert counts == list(range(10, 19))
        assert client.get("/api/runs/0/traces", params={"step": 2}).json()["total"] == 9


def test_fork_with_edited_passages_and_a_message(client, run_dir):
    mine = [{"id": "p1", "title": "A note", "text": "Orin Kael was born in Velmora."}]
    body = {"key": "0.0.0", "step": 0, "edit": "passages", "passages": mine, "policy": "scripted", "retriever": ""}
    events = [json.loads(line) for line in client.post("/api/fork", json=body).text.splitlines()]
    assert events[1]["card"]["passages"] == [{"id": "p1", "title": "A note", "text": "Orin Kael was born in Velmora.",
                                              "score": 0.0, "gold": False}]
    assert not events[1]["card"]["edited"]  # the query is the policy's own; only the observation was put in
    saved = json.loads((run_dir / "forks.jsonl").read_text().splitlines()[0])
    assert saved["fork"]["passages"] == mine and saved["answer"] == "Velmora"
    body = {"key": "0.0.0", "step": 1, "edit": "message", "text": "Sure?", "policy": "scripted"}
    events = [json.loads(line) for line in client.post("/api/fork", json=body).text.splitlines()]
    assert [e["card"]["index"] for e in events if e["event"] == "step"] == [2]  # the message goes after the answer
    assert events[-1]["id"] == "s1:q1/0+2"


def test_sources_read_a_training_runs_settings_policies_and_metrics(tmp_path):
    from eval.debugger.sources import find_runs, model_dirs, read_metrics, run_settings

    run = tmp_path / "grpo"
    for step in (2, 10):
        (run / f"checkpoint-{step}").mkdir(parents=True)
        (run / f"checkpoint-{step}" / "config.json").write_text("{}")
    (run / "checkpoint-10" / "config.json.train").write_text(json.dumps(
        {"data": "data/w", "index": "indexes/w", "policy": {"model": "tiny"}, "rollout": {"passages_per_search": 2}}))
    (run / "traces.jsonl").write_text("")
    (run / "metrics.jsonl").write_text('{"step": 0, "dev_em": 0.2}\n{"step": 1, "reward": 0.5, "em": 0.25, "lr": 1}\n{"step": 2')
    (run / "summary.json").write_text(json.dumps({"test_before": {"em": 0.2}, "test_after": {"em": 0.3}}))
    [files] = find_runs([run])
    assert run_settings(files) == {"data": "data/w", "index": "indexes/w", "policy": "tiny", "passages_per_search": 2,
                                   "max_turns": None, "max_new_tokens": None}
    assert list(model_dirs(files)) == ["checkpoint-10", "checkpoint-2"]  # newest first
    assert read_metrics(files) == {"curves": [{"step": 0, "dev_em": 0.2}, {"step": 1, "reward": 0.5, "em": 0.25}],
                                   "summary": {"test EM before": 0.2, "test EM after": 0.3}}
