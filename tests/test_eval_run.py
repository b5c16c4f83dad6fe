"""The evaluation runner end to end: the oracle on a small generated world, the one-turn
baselines to the token and end to end on the hand-written small QA set, and CLI errors."""

import json
from pathlib import Path

import datasets
import pytest

from agent.prompts import OBSERVATION_CLOSE, OBSERVATION_OPEN, passage_header, render_prompt_ids
from agent.rollout import RolloutConfig
from agent.traces import read_traces
from agent.types import Example
from eval.baselines import OneTurnRollout
from eval.report import main as report_main
from eval.run import main, parse_args
from fakes import PASSAGES, FixedRetriever, ScriptedEngine, world_with_index
from retrieval.build import build_index
from rewards.metrics import ANSWER_METRICS


@pytest.fixture(scope="module")
def world(tmp_path_factory):
    return world_with_index(tmp_path_factory.mktemp("world"), seed=1, entities=300, method="bm25", world_name="w")


def test_oracle_eval_writes_metrics_and_traces(world):
    out = world / "run"
    metrics = main(["--policy", "oracle", "--data", str(world / "w"), "--split", "test",
                    "--index", str(world / "bm25"), "--out", str(out), "--limit", "40"])
    saved = json.loads((out / "metrics.json").read_text())
    assert saved["n"] == 40 and saved == {**metrics, "seconds": saved["seconds"]}
    assert {"em", "f1", "cover_em", "by_hops", "valid_action_rate", "support_recall"} <= set(saved)
    assert saved["valid_action_rate"] == 1.0
    # BM25 finds the oracle's sub-queries in a small world: it should almost always answer right.
    assert saved["em"] >= 0.9
    traces = read_traces(out / "traces.jsonl")
    assert len(traces) == 40
    first = traces[0]
    assert first["question"] and first["golden_answers"] and first["steps"][0]["kind"] == "search"
    assert first["messages"][-1]["role"] == "assistant"
    em = sum(t["answer"] is not None and t["answer"].lower() in [a.lower() for a in t["golden_answers"]] for t in traces) / 40
    assert em == pytest.approx(saved["em"])
    assert sum(saved["errors"].values()) == 40 and saved["errors"]["correct"] == round(40 * saved["em"])
    assert saved["judge_accuracy"] > 0.5 and saved["config"]["policy"] == "oracle"
    assert all(t["eval"]["em"] in (0.0, 1.0) for t in traces)
    assert (out / "report.md").read_text().startswith("# oracle on ")


def test_missing_tiny_policy_is_a_clear_error(world):
    with pytest.raises(SystemExit, match="no tiny policy at"):
        main(["--policy", "tiny", "--data", str(world / "w"), "--index", str(world / "bm25"), "--out", str(world / "x")])


# ----------------------------------------------------------------------------- baselines and CLI errors

DATA = Path(__file__).parent / "data"
QA_SMALL = DATA / "qa_small.jsonl"
EXAMPLE = Example("q1", "Where was Orin Kael born?", ["Velmora"], support=["d2"])


@pytest.fixture(scope="module")
def small_index(tmp_path_factory):
    out = tmp_path_factory.mktemp("small") / "bm25"
    build_index(DATA / "corpus_small.jsonl", out, "bm25", progress=False)
    return out


def ids(tok, text):
    return tok(text, add_special_tokens=False)["input_ids"]


def test_rag_rollout_exact_tokens(tiny_tokenizer):
    tok = tiny_tokenizer
    engine = ScriptedEngine(tok, ["Velmora</answer>"])
    retriever = FixedRetriever(PASSAGES)
    cfg = RolloutConfig(passages_per_search=2, max_doc_tokens=4, temperature=0.0)
    [traj] = OneTurnRollout(engine, retriever, cfg, tok, retrieve=True)([EXAMPLE])
    search = ids(tok, f"<search> {EXAMPLE.question} </search>")
    obs = ids(tok, OBSERVATION_OPEN)
    for rank, p in enumerate(PASSAGES[:2], 1):  # d1 and d2 share words with the question, d3 none
        obs += ids(tok, passage_header(rank, p)) + ids(tok, p.text)[:4] + ids(tok, "\n")
    obs += ids(tok, OBSERVATION_CLOSE)
    forced = search + obs + ids(tok, "<answer>")
    sampled = ids(tok, "Velmora</answer>")
    [seg] = traj.segments
    assert seg.context_ids == render_prompt_ids(tok, EXAMPLE.question, "compact")
    assert seg.response_ids == forced + sampled
    assert seg.loss_mask == [0] * len(forced) + [1] * len(sampled)
    assert retriever.calls == [[EXAMPLE.question]]  # one batched call, the question as the query
    assert [s.kind for s in traj.steps] == ["search", "answer"]
    assert [p.doc_id for p in traj.steps[0].passages] == ["d1", "d2"]
    assert traj.steps[1].span == (len(search + obs), len(forced + sampled))
    assert traj.answer == "Velmora" and traj.finish == "answered"
    assert engine.calls == [[seg.context_ids + forced]]


def test_direct_rollout_bad_output_is_invalid(tiny_tokenizer):
    engine = ScriptedEngine(tiny_tokenizer, ["<search>Velmora</search>"])
    [traj] = OneTurnRollout(engine, None, RolloutConfig(temperature=0.0), tiny_tokenizer, retrieve=False)([EXAMPLE])
    assert [s.kind for s in traj.steps] == ["invalid"]
    assert traj.steps[0].error == "text outside <think> before the action"
    assert traj.answer is None and traj.finish == "invalid"


def run_small(policy, model_dir, out, *extra):
    return main(["--policy", policy, "--model", str(model_dir), "--data", str(QA_SMALL), "--out", str(out),
                 "--max-new-tokens", "6", "--passages-per-search", "2", "--resamples", "100", *extra])


def test_rag_baseline_end_to_end(tiny_model_dir, small_index, tmp_path):
    out = tmp_path / "rag"
    metrics = run_small("rag", tiny_model_dir, out, "--index", str(small_index))
    assert {p.name for p in out.iterdir()} == {"metrics.json", "traces.jsonl", "report.md"}
    assert json.loads((out / "metrics.json").read_text()) == metrics
    assert {"em", "em_ci", "f1", "f1_ci", "cover_em", "errors", "support_recall", "by_hops", "by_type",
            "valid_action_rate", "turns_per_question", "sampled_tokens_per_question", "total_tokens_per_question",
            "seconds_per_question", "config"} <= set(metrics)
    assert metrics["n"] == 10 and sum(metrics["errors"].values()) == 10
    assert metrics["searches_per_question"] == 1.0 and metrics["turns_per_question"] == 1.0
    traces = read_traces(out / "traces.jsonl")
    assert [t["example_id"] for t in traces] == [f"small-{i}" for i in range(1, 11)]
    for t in traces:
        kinds = [s["kind"] for s in t["steps"]]
        assert kinds in (["search", "answer"], ["search", "invalid"])
        assert t["steps"][0]["text"] == t["question"] and len(t["steps"][0]["passages"]) == 2
        assert sum(t["segments"][0]["loss_mask"]) <= 6  # only the answer turn is sampled
    # A real BM25 index answering a real query: the lighthouse passage for the lighthouse question.
    assert traces[0]["steps"][0]["passages"][0]["id"] == "doc-3"
    assert "# rag" in (out / "report.md").read_text() and "## Outcomes" in (out / "report.md").read_text()


def test_direct_baseline_never_retrieves(tiny_model_dir, tmp_path):
    out = tmp_path / "direct"
    metrics = run_small("direct", tiny_model_dir, out)  # no --index at all
    traces = read_traces(out / "traces.jsonl")
    assert len(traces) == 10
    assert all([s["kind"] for s in t["steps"]] in (["answer"], ["invalid"]) for t in traces)
    assert metrics["searches_per_question"] == 0.0 and metrics["support_recall"] == 0.0
    assert metrics["config"]["index"] is None and (out / "report.md").exists()


def test_a_search_r1_directory_reports_the_peers_metrics(tiny_model_dir, tmp_path):
    """--data takes Search-R1's train/test.parquet directory; --metrics picks the answer metrics
    the table and report.md show, grouped by data source; metrics.json holds every one."""
    data = tmp_path / "nq_search"
    data.mkdir()
    records = [json.loads(line) for line in QA_SMALL.read_text().splitlines()]
    rows = [{"id": f"test_{i}", "question": r["question"], "golden_answers": r["golden_answers"],
             "data_source": "nq" if i < 6 else "hotpotqa", "ability": "fact-reasoning",
             "prompt": [{"role": "user", "content": f"Answer the given question. ... Question: {r['question']}\n"}],
             "reward_model": {"style": "rule", "ground_truth": {"target": r["golden_answers"]}},
             "extra_info": {"split": "test", "index": i}} for i, r in enumerate(records)]
    datasets.Dataset.from_list(rows).to_parquet(str(data / "test.parquet"))
    out = tmp_path / "run"
    metrics = main(["--policy", "direct", "--model", str(tiny_model_dir), "--data", str(data), "--out", str(out),
                    "--max-new-tokens", "6", "--resamples", "100", "--metrics", "subem,acc,flashrag_f1"])
    assert metrics["n"] == 10 and metrics["config"]["metrics"] == ["subem", "acc", "flashrag_f1"]
    assert {k: m["n"] for k, m in metrics["by_data_source"].items()} == {"nq": 6, "hotpotqa": 4}
    traces = read_traces(out / "traces.jsonl")
    assert [t["example_id"] for t in traces] == [f"{'nq' if i < 6 else 'hotpotqa'}-test_{i}" for i in range(10)]
    for name, metric in ANSWER_METRICS.items():
        scores = [metric(t["answer"], t["golden_answers"]) for t in traces]
        assert [t["eval"][name] for t in traces] == scores and metrics[name] == pytest.approx(sum(scores) / 10)
    report = (out / "report.md").read_text()
    assert "| subEM (Search-R1) [95% CI] |" in report and "| acc (FlashRAG) [95% CI] |" in report
    assert "| EM [95% CI] |" not in report and "## By data source" in report
    report_main([str(out), "--metrics", "squad_em,em"])  # rewritten from metrics.json with other metrics
    report = (out / "report.md").read_text()
    assert "| EM (Search-R1, FlashRAG) [95% CI] |" in report and "| EM [95% CI] |" in report
    assert "subEM" not in report
    with pytest.raises(SystemExit):
        parse_args(["--policy", "direct", "--data", str(data), "--out", str(out), "--metrics", "em,bleu"])


def test_bad_qa_file_names_file_and_line(tiny_model_dir, tmp_path):
    bad = tmp_path / "bad.jsonl"
    lines = QA_SMALL.read_text().splitlines()
    bad.write_text("\n".join([lines[0], lines[1], '{"id": "x", "question": ', lines[3]]) + "\n")
    with pytest.raises(SystemExit) as exc:
        run_small("direct", tiny_model_dir, tmp_path / "out", "--data", str(bad))
    assert str(bad) in str(exc.value) and "line 3" in str(exc.value)
    with pytest.raises(SystemExit, match="no such file"):
        run_small("direct", tiny_model_dir, tmp_path / "out", "--data", str(tmp_path / "missing.jsonl"))


def test_missing_index_is_a_clear_error(tiny_model_dir, tmp_path):
    with pytest.raises(SystemExit, match="pass --index"):
        run_small("rag", tiny_model_dir, tmp_path / "out")
    with pytest.raises(SystemExit) as exc:
        run_small("rag", tiny_model_dir, tmp_path / "out", "--index", str(tmp_path / "no-index"))
    assert str(tmp_path / "no-index") in str(exc.value)


def test_hot_preset_sets_defaults_that_flags_override():
    base = ["--policy", "tiny", "--data", "d", "--out", "o", "--preset", "hot"]
    args = parse_args(base)
    assert (args.passages_per_search, args.max_turns, args.search_budget, args.headline) == (3, 9, 4, "em")
    assert parse_args(base + ["--passages-per-search", "5"]).passages_per_search == 5


def test_qa_file_without_labels(tiny_model_dir, small_index, tmp_path):
    bare = tmp_path / "bare.jsonl"
    records = [json.loads(line) for line in QA_SMALL.read_text().splitlines()[:3]]
    bare.write_text("".join(json.dumps({k: r[k] for k in ("id", "question", "golden_answers")}) + "\n" for r in records))
    metrics = run_small("rag", tiny_model_dir, tmp_path / "bare", "--data", str(bare), "--index", str(small_index))
    assert metrics["n"] == 3 and sum(metrics["errors"].values()) == 3
    assert not {"support_recall", "by_hops", "by_type"} & set(metrics)


def test_openai_policy_needs_a_served_model_name(small_index, tmp_path):
    with pytest.raises(SystemExit, match="pass --model-name"):
        main(["--policy", "openai:http://127.0.0.1:9/v1", "--data", str(QA_SMALL), "--index", str(small_index),
              "--out", str(tmp_path / "out")])
