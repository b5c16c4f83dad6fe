"""`eval.show` prints a trajectory for a terminal; `eval.chat` talks with an agent and forks traces."""

import json

import pytest
from rich.console import Console

from agent.prompts import user_message
from debugger_run import PASSAGES, write_run
from eval import chat, show
from fakes import FixedRetriever, ScriptedEngine


@pytest.fixture
def run_dir(tiny_tokenizer, tmp_path):
    write_run(tmp_path / "run", tiny_tokenizer, steps=1)
    tiny_tokenizer.save_pretrained(tmp_path / "tokenizer")
    return tmp_path / "run"


def printed(argv):
    console = Console(record=True, width=140, color_system=None)
    view = show.main(argv, console=console)
    return view, console.export_text()


def test_show_prints_the_steps_rewards_and_tokens(run_dir):
    view, out = printed([str(run_dir / "traces.jsonl"), "--index", "1", "--tokens", "--tokenizer", str(run_dir.parent / "tokenizer")])
    assert view["id"] == "s1:q1/1"
    for expected in ("Where was Orin Kael born?", "gold: Velmora", "0 · search  dropped by the judge", "★ gold",
                     "ideal: useful ✗", "Dastmoor   EM 0 · F1 0.00", "reward +0.100 · adv -0.167", "advantage -0.267",
                     '<img src=x onerror="window.__pwned=1">', "⟦0 search⟧<search>Orin Kael</search>",
                     "segment 1 · 29 context tokens", "19 sampled tokens"):
        assert expected in out, expected
    _, by_id = printed([str(run_dir / "traces.jsonl"), "--id", "s1:q1/1"])
    assert by_id.splitlines()[:8] == out.splitlines()[:8]


def test_show_prints_markup_in_trace_text_as_written(run_dir, tmp_path):
    record = json.loads((run_dir / "traces.jsonl").read_text().splitlines()[0])
    record["question"] = "[bold red]Where[/] was [link=http://x]Orin[/link] born?"
    (tmp_path / "one.jsonl").write_text(json.dumps(record) + "\n")
    _, out = printed([str(tmp_path / "one.jsonl"), "--index", "-1"])
    assert "[bold red]Where[/] was [link=http://x]Orin[/link] born?" in out


def test_show_names_what_is_missing(run_dir):
    with pytest.raises(SystemExit, match="no trace 's1:q1'; similar ids: s1:q1/0, s1:q1/1, s1:q1/2"):
        show.main([str(run_dir / "traces.jsonl"), "--id", "s1:q1"])
    with pytest.raises(SystemExit, match="has 9 traces; --index 9 is out of range"):
        show.main([str(run_dir / "traces.jsonl"), "--index", "9"])


def test_chat_asks_goes_on_after_a_message_and_saves_both(tiny_tokenizer, tmp_path):
    turns = iter(["<search>Orin Kael</search>", "<answer>Velmora</answer>", "<answer>Velmora, in Dastria</answer>"])
    engine = ScriptedEngine(tiny_tokenizer, lambda ids, call: next(turns))
    messages = iter(["Which country is that in?", ""])
    console = Console(record=True, width=140, color_system=None)
    first, second = chat.main(["--question", "Where was Orin Kael born?", "--gold", "Velmora", "--out", str(tmp_path)],
                              ask=lambda: next(messages), console=console, engine=engine, retriever=FixedRetriever(PASSAGES))
    assert first["id"] == "chat-1/0" and first["answer"] == "Velmora"
    assert second["parent"] == "chat-1/0" and second["id"] == "chat-1/0+1" and second["fork"]["edit"] == "message"
    message = tiny_tokenizer(user_message("Which country is that in?"), add_special_tokens=False)["input_ids"]
    seg, parent_seg = second["segments"][0], first["segments"][0]
    n = len(parent_seg["response_ids"])
    assert seg["response_ids"][:n] == parent_seg["response_ids"] and seg["loss_mask"][:n] == parent_seg["loss_mask"]
    assert seg["response_ids"][n:n + len(message)] == message and seg["loss_mask"][n:n + len(message)] == [0] * len(message)
    assert [json.loads(x)["id"] for x in (tmp_path / "traces.jsonl").read_text().splitlines()] == ["chat-1/0"]
    assert [json.loads(x)["id"] for x in (tmp_path / "forks.jsonl").read_text().splitlines()] == ["chat-1/0+1"]
    out = console.export_text()
    assert "0 · search" in out and "Velmora, in Dastria   EM 0" in out and "saved chat-1/0+1" in out


def test_chat_forks_a_saved_trace_into_its_runs_forks(tiny_tokenizer, run_dir):
    engine = ScriptedEngine(tiny_tokenizer, lambda ids, call: "<answer>Velmora</answer>")
    console = Console(record=True, width=140, color_system=None)
    [record] = chat.main(["--fork", str(run_dir / "traces.jsonl"), "--id", "s1:q1/1", "--step", "0", "--edit", "query",
                          "--text", "Velmora"], ask=lambda: "", console=console, engine=engine,
                         retriever=FixedRetriever(PASSAGES))
    assert record["id"] == "s1:q1/1+1" and record["parent"] == "s1:q1/1" and record["eval"]["em"] == 1.0
    assert [s["text"] for s in record["steps"]] == ["Velmora", "Velmora"]
    assert json.loads((run_dir / "forks.jsonl").read_text())["id"] == "s1:q1/1+1"
    with pytest.raises(SystemExit, match="no trace 'nope'"):
        chat.main(["--fork", str(run_dir / "traces.jsonl"), "--id", "nope", "--text", "x"], engine=engine,
                  retriever=FixedRetriever(PASSAGES), console=console)
