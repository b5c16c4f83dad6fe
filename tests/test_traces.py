import json

import pytest

from agent.rollout import Rollout, RolloutConfig
from agent.traces import TraceWriter, read_traces, record_to_trajectory, trajectory_record
from agent.types import Example
from fakes import PASSAGES, FixedRetriever, ScriptedEngine

EX = Example("q1", "Where was Orin Kael born?", ["Velmora"], support=["d2"], meta={"hops": 1})


@pytest.fixture
def trajs(tiny_tokenizer):
    script = ["<search>Orin Kael</search>", "<judge>not useful</judge>", "<answer>Velmora</answer>"]
    engine = ScriptedEngine(tiny_tokenizer, script)
    return Rollout(engine, FixedRetriever(PASSAGES), RolloutConfig(passages_per_search=2), tiny_tokenizer)([EX])


def test_record_roundtrip(trajs, tiny_tokenizer, tmp_path):
    rec = trajectory_record(trajs[0], EX, tiny_tokenizer, step=7, rewards={"em": 1.0})
    writer = TraceWriter(tmp_path / "traces.jsonl")
    writer.write([rec])
    [back] = read_traces(tmp_path / "traces.jsonl")
    assert back["step"] == 7 and back["rewards"] == {"em": 1.0}
    assert back["question"] == EX.question and back["golden_answers"] == ["Velmora"]
    assert back["steps"][0]["passages"][0] == {"id": "d1", "title": "Orin Kale", "text": "Orin Kale was born in Dastmoor.", "score": 0.9}
    assert back["messages"][0] == {"role": "user", "content": EX.question}
    assert back["messages"][-1]["role"] == "assistant"
    assert back["messages"][-1]["content"].endswith("<answer>Velmora</answer>")
    rebuilt = record_to_trajectory(back)
    assert rebuilt.segments == trajs[0].segments
    assert rebuilt.steps == trajs[0].steps


def test_killed_write_never_breaks_the_reader(trajs, tmp_path):
    path = tmp_path / "traces.jsonl"
    rec = trajectory_record(trajs[0], EX)
    TraceWriter(path).write([rec, rec])
    line = json.dumps(rec)
    with open(path, "a") as f:
        f.write(line[: len(line) // 2])  # a write killed midway
    with pytest.warns(UserWarning, match="truncated last line 3"):
        assert len(read_traces(path)) == 2
    # The next writer cuts the partial line before appending: nothing lost, nothing doubled.
    TraceWriter(path).write([rec])
    records = read_traces(path)
    assert len(records) == 3 and all(r == json.loads(line) for r in records)


def test_corrupt_middle_line_names_the_line(tmp_path):
    path = tmp_path / "traces.jsonl"
    path.write_text('{"a": 1}\nnot json\n{"a": 2}\n')
    with pytest.raises(ValueError, match=r"traces.jsonl line 2: not valid JSON"):
        read_traces(path)
