"""Evaluation metrics and the bootstrap, against values computed by hand."""

import pytest

from agent.types import Example, Passage, Segment, Step, Trajectory
from rewards.bootstrap import bootstrap_ci, paired_bootstrap
from rewards.metrics import (ANSWER_METRICS, ERROR_CATEGORIES, error_category, gold_retrieved, question_row,
                             summarize)

D1 = Passage("d1", "Orin Kale", "Orin Kale was born in Dastmoor.", 0.9)
D2 = Passage("d2", "Orin Kael", "Orin Kael was born in Velmora.", 0.8)
D3 = Passage("d3", "Velmora", "Velmora is a city in Dastria.", 0.7)
EX = Example("q1", "Where was Orin Kael born?", ["Velmora", "the city of Velmora"], support=["d2"],
             meta={"hops": 1, "type": "factoid"})


def search(*passages, dropped=False):
    return Step("search", "Orin Kael", (0, 1), list(passages), dropped=dropped)


def judge(verdict):
    return Step("judge", verdict, (0, 1))


def answer(text):
    return Step("answer", text, (0, 1))


def traj(steps, answer_text=None, finish="answered", example_id="q1", segments=()):
    return Trajectory(example_id, example_id, 0, list(segments), steps, answer_text, finish)


# One trajectory per error category, in ERROR_CATEGORIES order.
TRAJS = [
    traj([search(D1, D2), judge("useful"), answer("The Velmora!")], "The Velmora!"),  # correct; judge right
    traj([search(D1), judge("not useful"), answer("Dastmoor")], "Dastmoor"),  # d2 never retrieved; judge right
    traj([search(D2), judge("not useful"), answer("Orin Kael of Velmora")], "Orin Kael of Velmora"),  # judge wrong
    traj([search(D1)], finish="max_turns"),
    traj([search(D2)], finish="max_tokens"),
    traj([Step("invalid", "<serch>", (0, 1))] * 3, finish="invalid"),
]


def test_every_category_once_and_hand_computed_aggregates():
    assert [error_category(t, EX) for t in TRAJS] == list(ERROR_CATEGORIES)
    m = summarize(TRAJS, [EX] * 6, resamples=200)
    assert m["n"] == 6
    # EM: only "The Velmora!" matches after normalisation (case, punctuation, article).
    assert m["em"] == pytest.approx(1 / 6)
    # F1: 1 for the exact answer; "orin kael of velmora" scores 0.4 against "velmora" (P = 1/4, R = 1)
    # but 4/7 against the alias "city of velmora" (2 shared tokens: P = 2/4, R = 2/3), the best alias.
    assert m["f1"] == pytest.approx((1 + 4 / 7) / 6)
    # cover-EM: the exact answer, and "velmora" inside "orin kael of velmora".
    assert m["cover_em"] == pytest.approx(2 / 6)
    # 14 actions (3 + 3 + 3 + 1 + 1 + 3), of which 3 invalid.
    assert m["valid_action_rate"] == pytest.approx(11 / 14)
    assert m["turns_per_question"] == pytest.approx(14 / 6)
    assert m["searches_per_question"] == pytest.approx(5 / 6)
    # Judges: useful on {d1, d2} (ideal useful), not useful on {d1} (ideal not useful), not useful on {d2} (ideal useful).
    assert m["judged"] == 3 and m["judge_accuracy"] == pytest.approx(2 / 3)
    # d2 retrieved by trajectories 1, 3 and 5 of 6.
    assert m["support_recall"] == pytest.approx(0.5)
    assert m["errors"] == {c: 1 for c in ERROR_CATEGORIES}
    assert m["finish"] == {"answered": 3, "invalid": 1, "max_tokens": 1, "max_turns": 1}
    # The peers' metrics agree with ours on these plain ASCII answers.
    peers = {"squad_em": 1 / 6, "subem": 2 / 6, "acc": 2 / 6, "flashrag_f1": (1 + 4 / 7) / 6}
    assert {k: m[k] for k in peers} == pytest.approx(peers)
    assert m["by_hops"] == {"1": {"n": 6, "em": pytest.approx(1 / 6), "f1": pytest.approx((1 + 4 / 7) / 6),
                                  "cover_em": pytest.approx(2 / 6), **{k: pytest.approx(v) for k, v in peers.items()},
                                  "searches_per_question": pytest.approx(5 / 6)}}
    for name in ("em", "f1", "cover_em", *peers):
        lo, hi = m[f"{name}_ci"]
        assert lo <= m[name] <= hi


def test_keys_absent_without_labels_or_judges():
    ex = Example("q1", "Where was Orin Kael born?", ["Velmora"])  # no support labels
    m = summarize([traj([search(D2), answer("Velmora")], "Velmora")], [ex], resamples=10)
    assert "support_recall" not in m and "judge_accuracy" not in m and "by_hops" not in m


def test_judge_without_an_observation_has_no_label():
    t = traj([judge("useful"), answer("Velmora")], "Velmora")
    row = question_row(t, EX)
    assert row["judged"] == 0 and row["judge_labels"] == [None, None]


def test_gold_evidence_per_hop_alternatives_without_labels():
    # Hop 1 is stated in d1 or d2 (alternatives), hop 2 only in d3.
    ex = Example("q2", "?", ["Dastria"], support=["d1", "d2", "d3"],
                 meta={"chain": [{"query": "a", "answer": "x", "support": ["d1", "d2"]},
                                 {"query": "b", "answer": "Dastria", "support": ["d3"]}]})
    both_hops = traj([search(D2), search(D3), answer("Velmora")], "Velmora", example_id="q2")
    assert gold_retrieved(both_hops, ex) and error_category(both_hops, ex) == "wrong_with_gold"
    assert question_row(both_hops, ex)["support_recall"] == pytest.approx(2 / 3)  # d1 never retrieved
    first_hop_only = traj([search(D1, D2), answer("Velmora")], "Velmora", example_id="q2")
    assert error_category(first_hop_only, ex) == "gold_not_retrieved"
    # Without any labels, the evidence counts as retrieved when a passage holds a gold answer.
    bare = Example("q2", "?", ["Dastria"])
    assert error_category(both_hops, bare) == "wrong_with_gold"
    assert error_category(first_hop_only, bare) == "gold_not_retrieved"


def test_tokens_and_forced_actions():
    # prompt 3 ids; response: forced search (4 ids) + observation (2) + sampled answer (3).
    seg = Segment([1, 2, 3], [10, 11, 12, 13, 20, 21, 30, 31, 32], [0, 0, 0, 0, 0, 0, 1, 1, 1], [0.0] * 9)
    t = traj([Step("search", "q", (0, 4), [D2]), Step("answer", "Velmora", (6, 9))], "Velmora", segments=[seg])
    row = question_row(t, EX, seconds=0.25)
    assert row["sampled_tokens"] == 3 and row["total_tokens"] == 12
    # The forced search is a search, not a turn of the policy.
    assert row["searches"] == 1 and row["turns"] == 1 and row["seconds"] == 0.25


def test_latency_search_budget_and_group_order():
    exs = [Example(f"q{h}", "?", ["Velmora"], meta={"hops": h}) for h in (10, 2, 1)]
    trajs = [traj([search(D2)] * h + [answer("Velmora")], "Velmora", example_id=f"q{h}") for h in (10, 2, 1)]
    m = summarize(trajs, exs, latencies=[0.5, 1.0, 1.5], search_budget=4, resamples=10)
    assert m["seconds_per_question"] == pytest.approx(1.0)
    assert m["over_search_budget"] == 1  # only the 10-search trajectory
    assert list(m["by_hops"]) == ["1", "2", "10"]


def test_mismatched_inputs_are_errors():
    with pytest.raises(ValueError, match="2 trajectories but 1 examples"):
        summarize(TRAJS[:2], [EX])
    with pytest.raises(ValueError, match="paired with example"):
        question_row(traj([], example_id="other"), EX)
    with pytest.raises(ValueError, match="finish 'answered'"):
        error_category(traj([], None, finish="answered"), EX)


# ----------------------------------------------------------------------------- ours and the peers'

# Where our answer metrics and Search-R1's / FlashRAG's part, each value worked out by hand from
# their rules: ours drop curly quotes and match whole words; theirs keep curly quotes and match
# substrings; FlashRAG's F1 scores yes / no against anything else 0 and two empty answers 0.
PARTING = [
    # prediction, golds, {em, cover_em, f1} (ours), {squad_em, subem, acc, flashrag_f1} (peers)
    ("“Velmora”", ["Velmora"], (1, 1, 1), (0, 1, 1, 0)),  # curly quotes stay in theirs: still a substring
    ("O’Neill", ["O'Neill"], (1, 1, 1), (0, 0, 0, 0)),  # a curly apostrophe parts the word in theirs
    ("他出生于北京市", ["北京"], (0, 0, 0), (0, 1, 1, 0)),  # CJK has no spaces: no whole word to match
    ("the 1990s", ["1990"], (0, 0, 0), (0, 1, 1, 0)),  # a gold inside a word
    ("yes it is", ["yes"], (0, 1, 0.5), (0, 1, 1, 0)),  # yes / no: F1 0 in FlashRAG unless exact
    ("no", ["no way"], (0, 0, 2 / 3), (0, 0, 0, 0)),
    ("Yes.", ["yes"], (1, 1, 1), (1, 1, 1, 1)),
    ("The", ["A"], (1, 0, 1), (1, 1, 1, 0)),  # both normalise to nothing: F1 1 in ours, 0 in FlashRAG
    ("Paris", ["The"], (0, 0, 0), (0, 1, 1, 0)),  # an empty gold is a substring of anything
]


@pytest.mark.parametrize("prediction, golds, ours, peers", PARTING)
def test_our_metrics_and_the_peers_part_where_their_rules_do(prediction, golds, ours, peers):
    names = ("em", "cover_em", "f1", "squad_em", "subem", "acc", "flashrag_f1")
    got = {name: ANSWER_METRICS[name](prediction, golds) for name in names}
    assert got == pytest.approx(dict(zip(names, ours + peers)))


@pytest.mark.parametrize("name", sorted(ANSWER_METRICS))
def test_a_bare_string_gold_is_one_answer(name):
    metric = ANSWER_METRICS[name]
    for prediction in ("P", "s", "Paris", "in Paris", None):
        assert metric(prediction, "Paris") == metric(prediction, ["Paris"]), prediction
    assert metric("s", "Paris") == 0.0  # not the letter s of Paris


# ----------------------------------------------------------------------------- bootstrap

VALUES = [1.0, 0.0, 1.0, 1.0, 0.0, 1.0, 0.0, 1.0, 1.0, 1.0] * 5  # mean 0.7


def test_bootstrap_is_seeded_and_contains_the_mean():
    ci = bootstrap_ci(VALUES, resamples=1000, seed=3)
    assert ci == bootstrap_ci(VALUES, resamples=1000, seed=3)
    assert ci != bootstrap_ci(VALUES, resamples=1000, seed=4)
    assert ci[0] < 0.7 < ci[1]
    # The normal approximation of the interval: 0.7 +- 1.96 * sqrt(0.7 * 0.3 / 50) = 0.7 +- 0.127.
    assert ci[0] == pytest.approx(0.573, abs=0.04) and ci[1] == pytest.approx(0.827, abs=0.04)


def test_bootstrap_hand_cases():
    assert bootstrap_ci([0.4] * 7, resamples=50) == (pytest.approx(0.4), pytest.approx(0.4))
    # Two values: resampled means are 0, 0.5, 1 with probabilities 1/4, 1/2, 1/4, so the 2.5% and
    # 97.5% quantiles are 0 and 1.
    assert bootstrap_ci([0.0, 1.0], resamples=1000, seed=0) == (0.0, 1.0)


def test_paired_bootstrap_identical_and_opposite_runs():
    same = paired_bootstrap(VALUES, VALUES, resamples=500, seed=0)
    assert same == {"diff": 0.0, "ci": (0.0, 0.0), "p_value": 1.0, "n": 50}
    flipped = paired_bootstrap([0.0] * 30, [1.0] * 30, resamples=999, seed=0)
    assert flipped["diff"] == 1.0 and flipped["ci"] == (1.0, 1.0)
    assert flipped["p_value"] == pytest.approx(1 / 1000)  # no resample is as far from 1 as 0 is


def test_bootstrap_input_errors():
    with pytest.raises(ValueError, match="non-empty"):
        bootstrap_ci([])
    with pytest.raises(ValueError, match="equal lengths"):
        paired_bootstrap([1.0], [1.0, 0.0])
