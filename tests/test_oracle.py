from agent.oracle import OracleEngine
from agent.rollout import Rollout, RolloutConfig
from agent.types import Example
from fakes import PASSAGES, FixedRetriever

TITLES = {p.doc_id: p.title for p in PASSAGES}

TWO_HOP = Example(
    "q2",
    "Which country is the birthplace of Orin Kael in?",
    ["Dastria"],
    support=["d2", "d3"],
    meta={"chain": [
        {"query": "Orin Kael", "answer": "Velmora", "support": ["d2"]},
        {"query": "Velmora", "answer": "Dastria", "support": ["d3"]},
    ]},
)


def rollout(tok, examples, retriever, judge=True, **cfg):
    engine = OracleEngine(tok, examples, TITLES, judge=judge)
    return Rollout(engine, retriever, RolloutConfig(**cfg), tok)(examples)


def test_oracle_follows_the_chain_and_drops_distractors(tiny_tokenizer):
    # "Orin Kael" also matches the near-duplicate "Orin Kale" (d1); one passage per search returns it first.
    [traj] = rollout(tiny_tokenizer, [TWO_HOP], FixedRetriever(PASSAGES), passages_per_search=1)
    steps = [(s.kind, s.text) for s in traj.steps]
    assert steps == [
        ("search", "Orin Kael"),  # brings the distractor d1 only
        ("judge", "not useful"),
        ("search", TWO_HOP.question),  # the retry with the question itself
        ("judge", "not useful"),
        ("answer", "unknown"),  # never saw d2: it does not answer from the label
    ]
    assert traj.answer == "unknown"


def test_oracle_answers_when_every_hop_is_supported(tiny_tokenizer):
    [traj] = rollout(tiny_tokenizer, [TWO_HOP], FixedRetriever(PASSAGES), passages_per_search=2)
    assert [(s.kind, s.text) for s in traj.steps] == [
        ("search", "Orin Kael"),
        ("judge", "useful"),
        ("search", "Velmora"),
        ("judge", "useful"),
        ("answer", "Dastria"),
    ]
    assert all(m == 1 for seg in traj.segments for m, lp in zip(seg.loss_mask, seg.logprobs) if lp != 0.0)
    assert len(traj.segments) == 1 and traj.finish == "answered"


def test_oracle_without_judging(tiny_tokenizer):
    [traj] = rollout(tiny_tokenizer, [TWO_HOP], FixedRetriever(PASSAGES), judge=False, passages_per_search=2)
    assert [s.kind for s in traj.steps] == ["search", "search", "answer"]
    assert traj.answer == "Dastria"


def test_oracle_needs_a_chain(tiny_tokenizer):
    import pytest

    with pytest.raises(ValueError, match="no reasoning chain"):
        OracleEngine(tiny_tokenizer, [Example("x", "q?", ["a"])], TITLES)
