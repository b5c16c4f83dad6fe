"""`eval.compare` on run directories written by the real evaluation loop (scripted policies)."""

import json
import re
import shutil

import pytest

from agent.rollout import Rollout, RolloutConfig
from agent.types import Example
from eval.compare import compare, main, paired_test, per_question_em, read_training_log, won_lost
from eval.run import evaluate
from fakes import PASSAGES, FixedRetriever, ScriptedEngine

EXAMPLES = [
    Example("c1", "Where was Orin Kael born?", ["Velmora"], support=["d2"], meta={"hops": 1}),
    Example("c2", "Where was Orin Kale born?", ["Dastmoor"], support=["d1"], meta={"hops": 1}),
    Example("c3", "Which country is Velmora in?", ["Dastria"], support=["d3"], meta={"hops": 2}),
    Example("c4", "Who was born in Velmora?", ["Orin Kael"], support=["d2"], meta={"hops": 2}),
]


def write_run(tok, out, answers: dict[str, str]):
    """A run dir where the policy searches its question once, then answers `answers[question]`."""

    def script(prompt_ids, call):
        question = next(q for q in answers if q in tok.decode(prompt_ids, skip_special_tokens=False))
        return f"<search>{question}</search>" if call == 0 else f"<answer>{answers[question]}</answer>"

    rollout = Rollout(ScriptedEngine(tok, script), FixedRetriever(PASSAGES), RolloutConfig(passages_per_search=2, temperature=0.0), tok)
    return evaluate(EXAMPLES, rollout, out, batch_size=4, config={"policy": out.name}, resamples=200)


@pytest.fixture(scope="module")
def runs(tiny_tokenizer, tmp_path_factory):
    root = tmp_path_factory.mktemp("runs")
    gold = {ex.question: ex.answers[0] for ex in EXAMPLES}
    write_run(tiny_tokenizer, root / "good", gold)
    write_run(tiny_tokenizer, root / "half", gold | {EXAMPLES[1].question: "Velmora", EXAMPLES[3].question: "nobody"})
    return root


def test_per_question_em_and_paired_difference(runs):
    from agent.traces import read_traces

    good = per_question_em(read_traces(runs / "good" / "traces.jsonl"))
    half = per_question_em(read_traces(runs / "half" / "traces.jsonl"))
    assert good == {"c1": 1.0, "c2": 1.0, "c3": 1.0, "c4": 1.0}
    assert half == {"c1": 1.0, "c2": 0.0, "c3": 1.0, "c4": 0.0}
    test = paired_test(good, half, resamples=200)
    assert test["diff"] == -0.5 and test["n"] == 4
    assert test["ci"][0] <= -0.5 <= test["ci"][1]
    # Only the shared ids are paired; with none shared there is no test.
    assert paired_test(good, {"c1": 0.0}, resamples=50)["diff"] == -1.0
    assert paired_test(good, {"x": 1.0}) is None
    # half lost two of good's four right answers and had none of its wrong ones to win.
    assert won_lost(good, half) == {"won": 0, "lost": 2, "reference_right": 4, "reference_wrong": 0,
                                    "won_rate": 0.0, "lost_rate": 0.5}
    assert won_lost(half, good) == {"won": 2, "lost": 0, "reference_right": 2, "reference_wrong": 2,
                                    "won_rate": 1.0, "lost_rate": 0.0}
    # Both ways at once, a mean EM of several samples counting as right above 0.5, on shared ids only.
    ref, run = {"a": 1.0, "b": 0.0, "c": 0.75, "d": 0.0, "x": 1.0}, {"a": 0.0, "b": 1.0, "c": 0.5, "d": 0.25}
    assert won_lost(ref, run) == {"won": 1, "lost": 2, "reference_right": 2, "reference_wrong": 2,
                                  "won_rate": 0.5, "lost_rate": 1.0}
    # A record without a stored score is scored from its answer.
    assert per_question_em([{"example_id": "c1", "answer": "velmora", "golden_answers": ["Velmora"]}]) == {"c1": 1.0}


def test_compare_writes_markdown_and_plots(runs, tmp_path):
    log = runs / "half" / "metrics.jsonl"
    log.write_text('{"step": 1, "reward": 0.25, "em": 0.5}\n{"step": 2, "reward": 0.5}\n{"note": "eval"}\n{"step": 3, "rew')
    assert read_training_log(log) == {"reward": [(1, 0.25), (2, 0.5)], "em": [(1, 0.5)]}  # cut last line skipped
    out = tmp_path / "cmp" / "compare.md"
    result = compare([runs / "good", runs / "half"], out, resamples=200)
    [test] = result["tests"]
    assert (test["run"], test["reference"], test["diff"]) == ("half", "good", -0.5)
    text = out.read_text()
    assert "| good | good | 4 | 1.000 |" in text and "| half | half | 4 | 0.500 |" in text
    assert "| half | good | 4 | -0.500 |" in text and "| 0/0 (0%) | 2/4 (50%) |" in text
    assert (test["won"], test["lost"], test["lost_rate"]) == (0, 2, 0.5)
    assert (tmp_path / "cmp" / "compare-em-by-hops.png").stat().st_size > 1000
    assert (tmp_path / "cmp" / "compare-training.png").stat().st_size > 1000
    assert "![EM by hop count](compare-em-by-hops.png)" in text


def test_identical_runs_differ_by_nothing(runs, tmp_path):
    shutil.copytree(runs / "good", tmp_path / "again")
    [test] = compare([runs / "good", tmp_path / "again"], resamples=100)["tests"]
    assert (test["diff"], test["ci"], test["p_value"]) == (0.0, (0.0, 0.0), 1.0)


def test_errors_name_the_file(runs, tmp_path):
    with pytest.raises(SystemExit, match=re.escape(str(tmp_path / "nope" / "metrics.json"))):
        main([str(runs / "good"), str(tmp_path / "nope")])
    (tmp_path / "broken").mkdir()
    (tmp_path / "broken" / "metrics.json").write_text('{"n": 4,\n "em": }')
    with pytest.raises(SystemExit, match="metrics.json line 2"):
        main([str(tmp_path / "broken")])
    bad_log = tmp_path / "metrics.jsonl"
    bad_log.write_text('{"step": 1}\n{oops\n{"step": 2}\n')
    with pytest.raises(ValueError, match="metrics.jsonl line 2"):
        read_training_log(bad_log)
    assert json.loads((runs / "good" / "metrics.json").read_text())["errors"]["correct"] == 4
