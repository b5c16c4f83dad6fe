"""The agent loop, checked to the token."""

import pytest

from agent.prompts import (NO_RESULTS, OBSERVATION_CLOSE, OBSERVATION_OPEN, SEARCH_FAILED, corrective_message,
                           passage_header, render_prompt_ids)
from agent.rollout import Rollout, RolloutConfig, SearchTally
from agent.types import Example
from fakes import PASSAGES, FailingRetriever, FixedRetriever, ScriptedEngine

EXAMPLE = Example("q1", "Where was Orin Kael born?", ["Velmora"])


def ids(tok, text):
    return tok(text, add_special_tokens=False)["input_ids"]


def observation(tok, passages, max_doc_tokens):
    out = ids(tok, OBSERVATION_OPEN)
    for rank, p in enumerate(passages, 1):
        out += ids(tok, passage_header(rank, p)) + ids(tok, p.text)[:max_doc_tokens] + ids(tok, "\n")
    return out + ids(tok, OBSERVATION_CLOSE)


def run(tok, script, cfg=None, examples=(EXAMPLE,), group_size=1, retriever=None, seed=None):
    engine = ScriptedEngine(tok, script)
    cfg = cfg or RolloutConfig(passages_per_search=2, max_doc_tokens=4)
    rollout = Rollout(engine, FixedRetriever(PASSAGES) if retriever is None else retriever, cfg, tok)
    return rollout(list(examples), group_size, seed=seed), engine


def test_search_judge_drop_search_answer_exact_tokens(tiny_tokenizer):
    tok = tiny_tokenizer
    turns = [
        "<search>Orin Kale</search>",  # retrieves the distractor first
        "<judge>not useful</judge>",
        "<search>Velmora</search>",
        "<judge>useful</judge>",
        "<answer>Velmora</answer>",
    ]
    [traj], engine = run(tok, turns)
    prompt = render_prompt_ids(tok, EXAMPLE.question, "compact")
    t = [ids(tok, x) for x in turns]
    # The protocol tags are single tokens of the embedded tokenizer.
    assert t[0][0] == tok.convert_tokens_to_ids("<search>") and t[0][-1] == tok.convert_tokens_to_ids("</search>")
    obs1 = observation(tok, [PASSAGES[0], PASSAGES[1]], 4)  # "orin" matches d1 and d2
    obs2 = observation(tok, [PASSAGES[2]], 4)  # only d3 has the word "velmora" ("Velmora." is another word)

    assert traj.finish == "answered" and traj.answer == "Velmora"
    assert len(traj.segments) == 2
    seg0, seg1 = traj.segments
    assert seg0.context_ids == prompt
    assert seg0.response_ids == t[0] + obs1 + t[1]
    assert seg0.loss_mask == [1] * len(t[0]) + [0] * len(obs1) + [1] * len(t[1])
    # The dropped observation is gone from every later context; the actions stay.
    assert seg1.context_ids == prompt + t[0] + t[1]
    assert seg1.response_ids == t[2] + obs2 + t[3] + t[4]
    assert seg1.loss_mask == [1] * len(t[2]) + [0] * len(obs2) + [1] * (len(t[3]) + len(t[4]))
    # Sampler logprobs are kept on sampled tokens, zero on injected ones.
    assert seg0.logprobs[: len(t[0])] == pytest.approx([-0.5 - 0.01 * i for i in range(len(t[0]))])
    assert all(lp == 0.0 for lp, m in zip(seg0.logprobs, seg0.loss_mask) if m == 0)
    # The engine was called on exactly the visible contexts.
    assert engine.calls[1] == [prompt + t[0] + obs1]
    assert engine.calls[2] == [prompt + t[0] + t[1]]
    assert engine.calls[4] == [seg1.context_ids + t[2] + obs2 + t[3]]

    kinds = [(s.kind, s.text, s.segment, s.dropped) for s in traj.steps]
    assert kinds == [
        ("search", "Orin Kale", 0, True),
        ("judge", "not useful", 0, False),
        ("search", "Velmora", 1, False),
        ("judge", "useful", 1, False),
        ("answer", "Velmora", 1, False),
    ]
    assert [p.doc_id for p in traj.steps[0].passages] == ["d1", "d2"]
    # Spans index the segment's response ids.
    s = traj.steps
    assert s[0].span == (0, len(t[0]))
    assert s[1].span == (len(t[0]) + len(obs1), len(seg0.response_ids))
    assert seg1.response_ids[slice(*s[4].span)] == t[4]


def test_think_step_gets_its_own_span(tiny_tokenizer):
    tok = tiny_tokenizer
    [traj], _ = run(tok, ["<think>Orin Kael was born in</think><answer>Velmora</answer>"])
    think, answer = traj.steps
    seg = traj.segments[0]
    assert think.kind == "think" and think.text == "Orin Kael was born in"
    assert think.span[0] == 0 and answer.span == (think.span[1], len(seg.response_ids))
    assert seg.response_ids[think.span[1] - 1] == tok.convert_tokens_to_ids("</think>")


def test_invalid_output_gets_a_correction_and_the_loop_goes_on(tiny_tokenizer):
    tok = tiny_tokenizer
    [traj], _ = run(tok, ["Velmora I think", "<answer>Velmora</answer>"])
    seg = traj.segments[0]
    bad, fix, good = ids(tok, "Velmora I think"), ids(tok, corrective_message("no action: expected <search>, <judge> or <answer>")), ids(tok, "<answer>Velmora</answer>")
    assert seg.response_ids == bad + fix + good
    assert seg.loss_mask == [1] * len(bad) + [0] * len(fix) + [1] * len(good)
    assert [s.kind for s in traj.steps] == ["invalid", "answer"]
    assert traj.steps[0].error.startswith("no action")
    assert traj.finish == "answered"


def test_judge_without_observation_is_invalid(tiny_tokenizer):
    [traj], _ = run(tiny_tokenizer, ["<judge>useful</judge>", "<answer>x</answer>"])
    assert traj.steps[0].kind == "invalid" and traj.steps[0].error == "judge must directly follow an observation"


def test_too_many_invalid_actions_end_the_trajectory(tiny_tokenizer):
    cfg = RolloutConfig(max_invalid=2)
    [traj], engine = run(tiny_tokenizer, lambda ids, call: "<tool>x</tool>", cfg)
    assert traj.finish == "invalid" and len(engine.calls) == 2
    assert traj.answer is None


def test_max_turns(tiny_tokenizer):
    cfg = RolloutConfig(max_turns=3, passages_per_search=1)
    [traj], engine = run(tiny_tokenizer, lambda ids, call: "<search>Velmora</search>", cfg)
    assert traj.finish == "max_turns" and len(engine.calls) == 3


def test_max_response_tokens_cuts_and_finishes(tiny_tokenizer):
    tok = tiny_tokenizer
    cfg = RolloutConfig(max_response_tokens=6, passages_per_search=1)
    [traj], _ = run(tok, lambda ids, call: "<search>Orin Kael was born in Velmora</search>", cfg)
    assert traj.finish == "max_tokens"
    assert traj.n_response_tokens == 6
    assert traj.segments[0].response_ids == ids(tok, "<search>Orin Kael was born in Velmora</search>")[:6]


def test_observation_that_does_not_fit_finishes_with_max_tokens(tiny_tokenizer):
    cfg = RolloutConfig(max_response_tokens=12, passages_per_search=3, max_doc_tokens=32)
    [traj], _ = run(tiny_tokenizer, lambda ids, call: "<search>Velmora</search>", cfg)
    assert traj.finish == "max_tokens"
    assert all(m == 1 for m in traj.segments[0].loss_mask)  # nothing half-injected


def test_context_window_budget(tiny_tokenizer):
    prompt_len = len(render_prompt_ids(tiny_tokenizer, EXAMPLE.question, "compact"))
    cfg = RolloutConfig(max_context_tokens=prompt_len + 3)
    [traj], _ = run(tiny_tokenizer, lambda ids, call: "<search>Velmora</search>", cfg)
    assert traj.finish == "max_tokens" and len(traj.segments[0].full_ids) == prompt_len + 3


def test_length_finish_is_an_unclosed_action(tiny_tokenizer):
    cfg = RolloutConfig(max_new_tokens=3, max_invalid=1)
    [traj], _ = run(tiny_tokenizer, lambda ids, call: "<search>Orin Kael born in</search>", cfg)
    assert traj.steps[0].kind == "invalid" and traj.steps[0].error == "unclosed <search>"


def test_groups_and_batched_search(tiny_tokenizer):
    examples = [EXAMPLE, Example("q2", "Where is Velmora?", ["Dastria"])]
    script = lambda ids, call: "<search>Velmora</search>" if call == 0 else "<answer>x</answer>"
    retriever = FixedRetriever(PASSAGES)
    trajs, engine = run(tiny_tokenizer, script, examples=examples, group_size=3, retriever=retriever)
    assert [(t.example_id, t.group_id, t.sample) for t in trajs] == [
        ("q1", "q1", 0), ("q1", "q1", 1), ("q1", "q1", 2),
        ("q2", "q2", 0), ("q2", "q2", 1), ("q2", "q2", 2),
    ]
    assert retriever.calls == [["Velmora"] * 6]  # every query of the turn in one call
    assert len(engine.calls[0]) == 6


def test_repeated_example_gets_distinct_groups(tiny_tokenizer):
    trajs, _ = run(tiny_tokenizer, lambda ids, call: "<answer>x</answer>", examples=[EXAMPLE, EXAMPLE], group_size=2)
    assert [t.group_id for t in trajs] == ["q1", "q1", "q1#1", "q1#1"]


def test_failing_retriever_is_a_recorded_outcome(tiny_tokenizer):
    tok = tiny_tokenizer
    script = ["<search>Velmora</search>", "<answer>x</answer>"]
    [traj], _ = run(tok, script, retriever=FailingRetriever())
    assert traj.finish == "answered"
    assert traj.steps[0].error == "search failed: TimeoutError: retriever timed out after 5.0 s"  # the trace says why
    assert traj.steps[0].passages == []
    # the policy reads a plain line saying so, not the exception
    assert traj.segments[0].response_ids == ids(tok, script[0]) + ids(tok, OBSERVATION_OPEN) + ids(tok, SEARCH_FAILED) \
        + ids(tok, OBSERVATION_CLOSE) + ids(tok, script[1])
    assert SearchTally.of([traj]) == SearchTally(searches=1, failed=1, first_error=traj.steps[0].error)


class ShortRetriever(FixedRetriever):
    """Answers every batch with one result list too few."""

    def search(self, queries, k):
        return super().search(queries, k)[:-1]


def test_fewer_result_lists_than_queries_fail_the_whole_call(tiny_tokenizer):
    examples = [EXAMPLE, Example("q2", "Where is Velmora?", ["Dastria"])]
    script = lambda ids, call: "<search>Velmora</search>" if call == 0 else "<answer>x</answer>"
    trajs, _ = run(tiny_tokenizer, script, examples=examples, retriever=ShortRetriever(PASSAGES))
    searches = [t.steps[0] for t in trajs]
    # no list can be matched to its query: every search of the call failed, none got another's passages
    assert [s.error for s in searches] == ["search failed: the retriever answered 2 queries with 1 result lists"] * 2
    assert all(s.passages == [] for s in searches)
    assert all(tiny_tokenizer.decode(ids(tiny_tokenizer, SEARCH_FAILED)) in tiny_tokenizer.decode(t.segments[0].response_ids)
               for t in trajs)
    assert SearchTally.of(trajs).failure_rate == 1.0


def test_fewer_result_lists_behind_the_cache_are_the_same_recorded_failure(tiny_tokenizer):
    from retrieval.cache import CachedRetriever

    examples = [EXAMPLE, Example("q2", "Where is Orin Kael?", ["Dastria"])]
    script = lambda ids, call: "<search>Velmora</search>" if call == 0 else "<answer>x</answer>"
    retriever = CachedRetriever(ShortRetriever(PASSAGES))
    trajs, _ = run(tiny_tokenizer, script, examples=examples, group_size=2, retriever=retriever)
    assert [t.steps[0].error for t in trajs] == [
        "search failed: ValueError: the retriever answered 1 queries with 0 result lists"] * 4  # one distinct query
    assert len(retriever) == 0  # nothing cached of it


class EmptyRetriever:
    def search(self, queries, k):
        return [[] for _ in queries]


def test_a_search_that_matches_nothing_says_no_results(tiny_tokenizer):
    tok = tiny_tokenizer
    script = ["<search>Velmora</search>", "<answer>x</answer>"]
    [traj], _ = run(tok, script, retriever=EmptyRetriever())
    assert traj.steps[0].passages == [] and traj.steps[0].error is None
    assert traj.segments[0].response_ids == ids(tok, script[0]) + ids(tok, OBSERVATION_OPEN) + ids(tok, NO_RESULTS) \
        + ids(tok, OBSERVATION_CLOSE) + ids(tok, script[1])
    assert SearchTally.of([traj]) == SearchTally(searches=1, failed=0, first_error=None)


def test_sampling_params_reach_the_engine(tiny_tokenizer):
    cfg = RolloutConfig(temperature=0.7, top_p=0.9, max_new_tokens=17)
    _, engine = run(tiny_tokenizer, lambda ids, call: "<answer>x</answer>", cfg, seed=3)
    p = engine.params[0]
    assert (p.temperature, p.top_p, p.max_new_tokens, p.seed) == (0.7, 0.9, 17, 3 * 1_000_003)
    vocab = tiny_tokenizer.get_vocab()
    assert set(p.stop_token_ids) == {vocab["</search>"], vocab["</judge>"], vocab["</answer>"]}
    assert p.stop_strings == ()


def test_bad_config_is_refused():
    with pytest.raises(ValueError, match="max_turns must be an integer >= 1, got 0"):
        RolloutConfig(max_turns=0)


def test_search_budget(tiny_tokenizer):
    cfg = RolloutConfig(max_searches=1, passages_per_search=1)
    script = ["<search>Velmora</search>", "<search>Orin Kael</search>", "<answer>Velmora</answer>"]
    [traj], engine = run(tiny_tokenizer, script, cfg)
    assert [s.kind for s in traj.steps] == ["search", "invalid", "answer"]
    assert traj.steps[1].error == "search budget of 1 used up: answer now"
    assert len(engine.calls) == 3 and traj.finish == "answered"


@pytest.mark.parametrize("unk", [None, "[UNK]"])
def test_auto_prompt_style_is_compact_only_with_every_protocol_tag_in_the_vocabulary(tiny_tokenizer, unk):
    from tokenizers import Tokenizer, models, pre_tokenizers
    from transformers import PreTrainedTokenizerFast

    from agent.actions import PROTOCOL_TAGS
    from agent.prompts import resolve_style

    assert resolve_style(tiny_tokenizer) == "compact"
    # A general-purpose vocabulary: every tag but the last, which is then unknown (no
    # token at all, or the unknown token).
    words = ["[PAD]", *PROTOCOL_TAGS[:-1], "Where", "was", "born", *([unk] if unk else [])]
    tok = Tokenizer(models.WordLevel({w: i for i, w in enumerate(words)}, unk_token=unk))
    tok.pre_tokenizer = pre_tokenizers.Whitespace()
    fast = PreTrainedTokenizerFast(tokenizer_object=tok, pad_token="[PAD]", unk_token=unk)
    assert resolve_style(fast) == "chat"
    fast.add_tokens([PROTOCOL_TAGS[-1]], special_tokens=True)
    assert resolve_style(fast) == "compact"
