"""Forks of a trajectory continue from exactly the tokens the policy saw, with the edit masked."""

import copy

import pytest

from agent.fork import Fork, cut_before, prefix_for
from agent.prompts import OBSERVATION_CLOSE, OBSERVATION_OPEN, passage_header, render_prompt_ids, user_message
from agent.rollout import Rollout, RolloutConfig
from agent.types import Example, Passage
from fakes import PASSAGES, FixedRetriever, ScriptedEngine

EXAMPLE = Example("q1", "Where was Orin Kael born?", ["Velmora"])
CFG = RolloutConfig(passages_per_search=2, max_doc_tokens=4)
TURNS = ["<search>Orin Kale</search>", "<judge>not useful</judge>", "<search>Velmora</search>",
         "<judge>useful</judge>", "<answer>Velmora</answer>"]


def ids(tok, text):
    return tok(text, add_special_tokens=False)["input_ids"]


def observation(tok, passages, max_doc_tokens=4):
    out = ids(tok, OBSERVATION_OPEN)
    for rank, p in enumerate(passages, 1):
        out += ids(tok, passage_header(rank, p)) + ids(tok, p.text)[:max_doc_tokens] + ids(tok, "\n")
    return out + ids(tok, OBSERVATION_CLOSE)


def rollout(tok, script):
    engine = ScriptedEngine(tok, script)
    return Rollout(engine, FixedRetriever(PASSAGES), CFG, tok), engine


@pytest.fixture
def original(tiny_tokenizer):
    r, _ = rollout(tiny_tokenizer, TURNS)
    [traj] = r([EXAMPLE])
    return traj


def fork(tok, traj, f, script):
    r, engine = rollout(tok, script)
    before = copy.deepcopy(traj)
    [out] = r.continue_from([(traj, EXAMPLE, f)])
    assert traj == before  # the original is never changed
    return out, engine


def test_query_edit_is_injected_and_searched(tiny_tokenizer, original):
    tok = tiny_tokenizer
    out, engine = fork(tok, original, Fork(2, "query", "Orin Kael"), ["<answer>Velmora</answer>"])
    seg0, seg1 = out.segments
    assert seg0 == original.segments[0]  # the segment before the drop is kept whole, masks and logprobs too
    query = ids(tok, "<search> Orin Kael </search>")
    obs = observation(tok, [PASSAGES[0], PASSAGES[1]])
    answer = ids(tok, "<answer>Velmora</answer>")
    assert seg1.context_ids == original.segments[1].context_ids
    assert seg1.response_ids == query + obs + answer
    assert seg1.loss_mask == [0] * (len(query) + len(obs)) + [1] * len(answer)
    assert seg1.logprobs[: len(query)] == [0.0] * len(query)
    # the policy's next context is the edited prefix's ids, token for token
    assert engine.calls == [[seg1.context_ids + query + obs]]
    assert [(s.kind, s.text, s.segment) for s in out.steps] == [
        ("search", "Orin Kale", 0), ("judge", "not useful", 0), ("search", "Orin Kael", 1), ("answer", "Velmora", 1)]
    assert out.steps[0].dropped and out.finish == "answered" and out.answer == "Velmora"
    assert [p.doc_id for p in out.steps[2].passages] == ["d1", "d2"]


def test_passages_edit_keeps_the_sampled_query(tiny_tokenizer, original):
    tok = tiny_tokenizer
    mine = (Passage("x1", "<b>Velmora</b>", "Orin Kael was born in Velmora.", 1.0),)
    out, engine = fork(tok, original, Fork(0, "passages", passages=mine), ["<judge>useful</judge>", "<answer>Velmora</answer>"])
    [seg] = out.segments  # 'useful' drops nothing
    query, obs = ids(tok, TURNS[0]), observation(tok, mine)
    judge, answer = ids(tok, "<judge>useful</judge>"), ids(tok, "<answer>Velmora</answer>")
    assert seg.response_ids == query + obs + judge + answer
    assert seg.loss_mask == [1] * len(query) + [0] * len(obs) + [1] * (len(judge) + len(answer))
    assert seg.logprobs[: len(query)] == original.segments[0].logprobs[: len(query)]  # the sampler's own
    assert engine.calls[0] == [seg.context_ids + query + obs]
    assert out.steps[0].passages == list(mine) and not out.steps[0].dropped
    assert [s.kind for s in out.steps] == ["search", "judge", "answer"]  # the judge judged the new observation


def test_text_edit_of_a_judge_undoes_the_drop(tiny_tokenizer, original):
    tok = tiny_tokenizer
    out, engine = fork(tok, original, Fork(1, "text", "<judge>useful</judge>"), ["<answer>Dastmoor</answer>"])
    [seg] = out.segments
    query, obs = ids(tok, TURNS[0]), observation(tok, [PASSAGES[0], PASSAGES[1]])
    judge, answer = ids(tok, "<judge>useful</judge>"), ids(tok, "<answer>Dastmoor</answer>")
    assert seg.response_ids == query + obs + judge + answer
    assert seg.loss_mask == [1] * len(query) + [0] * (len(obs) + len(judge)) + [1] * len(answer)
    assert not out.steps[0].dropped  # the judge that dropped it was cut
    assert engine.calls[0] == [seg.context_ids + query + obs + judge]
    assert out.answer == "Dastmoor"


def test_text_edit_judging_after_a_kept_think_drops_only_the_observation(tiny_tokenizer):
    tok = tiny_tokenizer
    r, _ = rollout(tok, ["<search>Velmora</search>", "<think>hmm</think><judge>useful</judge>", "<answer>x</answer>"])
    [traj] = r([EXAMPLE])
    assert [s.kind for s in traj.steps] == ["search", "think", "judge", "answer"]
    out, engine = fork(tok, traj, Fork(2, "text", "<judge>not useful</judge>"), ["<answer>y</answer>"])
    prompt = render_prompt_ids(tok, EXAMPLE.question, "compact")
    search, think = ids(tok, TURNS[2]), ids(tok, "<think>hmm</think>")
    assert out.segments[1].context_ids == prompt + search + think + ids(tok, "<judge>not useful</judge>")
    assert engine.calls[0] == [out.segments[1].context_ids]
    obs, judge = observation(tok, [PASSAGES[2]]), ids(tok, "<judge>not useful</judge>")
    assert out.segments[0].response_ids == search + obs + think + judge
    assert out.segments[0].loss_mask == [1] * len(search) + [0] * len(obs) + [1] * len(think) + [0] * len(judge)
    assert out.steps[0].dropped


def test_message_after_the_answer_goes_on(tiny_tokenizer, original):
    tok = tiny_tokenizer
    out, engine = fork(tok, original, Fork(4, "message", "Are you sure? Search again."), ["<answer>Dastria</answer>"])
    message = ids(tok, user_message("Are you sure? Search again."))
    last = original.segments[1]
    assert out.segments[0] == original.segments[0]
    assert out.segments[1].response_ids == last.response_ids + message + ids(tok, "<answer>Dastria</answer>")
    assert out.segments[1].loss_mask[len(last.response_ids):][: len(message)] == [0] * len(message)
    assert engine.calls[0] == [last.full_ids + message]
    assert out.answer == "Dastria" and [s.text for s in out.steps][-2:] == ["Velmora", "Dastria"]


def test_stream_yields_after_the_edit_and_every_turn(tiny_tokenizer, original):
    r, _ = rollout(tiny_tokenizer, ["<search>Velmora</search>", "<answer>Velmora</answer>"])
    seen = [[(s.kind, s.text) for s in trajs[0].steps] for trajs in r.stream_from([(original, EXAMPLE, Fork(0, "query", "Orin"))])]
    assert seen[0] == [("search", "Orin")]
    assert seen[1] == [("search", "Orin"), ("search", "Velmora")]
    assert seen[-1][-1] == ("answer", "Velmora")


def test_bad_forks_are_refused(tiny_tokenizer, original):
    with pytest.raises(ValueError, match="that step is a judge, not a search"):
        prefix_for(original, Fork(1, "query", "x"))
    with pytest.raises(ValueError, match=r"steps 0\.\.4"):
        prefix_for(original, Fork(5, "text", "x"))
    with pytest.raises(ValueError, match="Fork.edit must be one of"):
        Fork(0, "delete")
    with pytest.raises(ValueError, match="needs the text"):
        Fork(0, "message", "  ")
    r, _ = rollout(tiny_tokenizer, [])
    r.cfg = RolloutConfig(passages_per_search=2, max_response_tokens=original.n_response_tokens + 2)
    with pytest.raises(ValueError, match="only 2 fit"):
        r.continue_from([(original, EXAMPLE, Fork(4, "message", "a long message that does not fit"))])


def test_cut_before_restores_the_judgeable_observation(original):
    prefix = cut_before(original, 1)
    assert prefix.judgeable == (original.steps[0].span[1], original.steps[1].span[0]) and prefix.judgeable_step == 0
    assert cut_before(original, 2).judgeable is None  # after a judge there is nothing left to judge


def test_stream_of_a_fresh_rollout_ends_where_the_call_does(tiny_tokenizer):
    script = ["<search>Velmora</search>", "<answer>Dastria</answer>"]
    r, _ = rollout(tiny_tokenizer, script)
    seen = [[s.kind for s in trajs[0].steps] for trajs in r.stream([EXAMPLE])]
    assert seen == [["search"], ["search", "answer"], ["search", "answer"]]
    streamed = list(rollout(tiny_tokenizer, script)[0].stream([EXAMPLE]))[-1][0]
    assert streamed == rollout(tiny_tokenizer, script)[0]([EXAMPLE])[0]
