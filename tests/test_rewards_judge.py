"""ReSeek step rules: ideal JUDGE labels, the JUDGE reward, correctness and utility."""

import pytest

from agent.rollout import Rollout, RolloutConfig
from agent.types import Example, Passage, Step, Trajectory
from fakes import PASSAGES, FixedRetriever, ScriptedEngine
from rewards.judge import (
    CorrectnessReward,
    EmbeddingScorer,
    JudgeReward,
    UtilityReward,
    ideal_judge_label,
    ideal_labels,
)

D1, D2, D3 = PASSAGES  # Orin Kale born in Dastmoor / Orin Kael born in Velmora / Velmora is a city in Dastria
BORN = Example("q1", "Where was Orin Kael born?", ["Velmora"], support=["d2"])


def step(kind, text="x", passages=(), dropped=False):
    return Step(kind, text, (0, 1), list(passages), dropped)


def traj(steps, answer=None):
    return Trajectory("q1", "q1", 0, [], list(steps), answer)


class RecordingScorer:
    """Similarity from a fixed table; remembers what it was asked."""

    def __init__(self, table):
        self.table, self.calls = table, []

    def __call__(self, query, texts):
        self.calls.append((query, list(texts)))
        return [self.table[t] for t in texts]


def refusing_scorer(query, texts):
    raise AssertionError("the scorer must not be asked when labels or the answer decide")


def test_ideal_label_from_support_passages():
    gold_without_answer = Passage("d2", "Orin Kael", "Orin Kael was a painter.")
    assert ideal_judge_label([D1, gold_without_answer], BORN, refusing_scorer) == "useful"
    assert ideal_judge_label([D1], BORN, refusing_scorer) == "not useful"  # the namesake twin
    assert ideal_judge_label([], BORN, refusing_scorer) == "not useful"


def test_ideal_label_from_the_answer_string():
    unlabelled = Example("q2", "Where was Orin Kael born?", ["Velmora", "Velmora City"])
    assert ideal_judge_label([D3], unlabelled, refusing_scorer) == "useful"  # "Velmora is a city ..."
    # The answer must appear as whole words after normalisation: "Velmoran" is not "Velmora".
    near = Passage("d7", "Dialects", "The Velmoran dialect is spoken in the hills.")
    scorer = RecordingScorer({"Dialects The Velmoran dialect is spoken in the hills.": 0.1})
    assert ideal_judge_label([near], unlabelled, scorer) == "not useful"
    assert scorer.calls == [("Where was Orin Kael born? Velmora", ["Dialects The Velmoran dialect is spoken in the hills."])]


def test_ideal_label_from_the_similarity_scorer_without_support_labels():
    unlabelled = Example("q2", "Where was Orin Kael born?", ["Velmora"])
    career = Passage("d4", "Orin Kael", "Orin Kael painted harbours.")
    guild = Passage("d5", "Zentrova Guild", "The guild was founded in 1834.")
    scorer = RecordingScorer({"Orin Kael Orin Kael painted harbours.": 0.6, "Zentrova Guild The guild was founded in 1834.": 0.2})
    assert ideal_judge_label([guild, career], unlabelled, scorer, threshold=0.5) == "useful"  # best 0.6 >= 0.5
    assert ideal_judge_label([guild, career], unlabelled, scorer, threshold=0.7) == "not useful"
    assert ideal_judge_label([guild], unlabelled, scorer, threshold=0.5) == "not useful"  # 0.2 < 0.5


def test_judge_reward_on_a_rolled_out_trajectory(tiny_tokenizer):
    turns = [
        "<search>Orin Kale</search>",  # retrieves d1 and d2: d2 is the gold passage
        "<judge>not useful</judge>",  # wrong: the observation held d2
        "<search>Velmora</search>",  # retrieves d3, which names Velmora
        "<judge>useful</judge>",  # right
        "<answer>Velmora</answer>",
    ]
    rollout = Rollout(ScriptedEngine(tiny_tokenizer, turns), FixedRetriever(PASSAGES), RolloutConfig(passages_per_search=2), tiny_tokenizer)
    [t] = rollout([BORN])
    assert [s.kind for s in t.steps] == ["search", "judge", "search", "judge", "answer"] and t.steps[0].dropped
    assert ideal_labels(t, BORN, refusing_scorer) == [None, "useful", None, "useful", None]
    [score] = JudgeReward(r_match=1.0, r_mismatch=0.25, scorer=refusing_scorer)([t], [BORN])
    assert score.per_step == [0.0, -0.25, 0.0, 1.0, 0.0]
    assert score.value == pytest.approx(0.75)
    assert score.parts == {"judged": 2.0, "matched": 1.0}


def test_judge_skips_its_own_think_step_and_ignores_a_judge_without_observation():
    steps = [step("judge", "useful"), step("search", "Orin Kale", [D1]), step("think", "wrong person"),
             step("judge", "not useful")]
    [score] = JudgeReward(r_match=0.5, r_mismatch=0.5, scorer=refusing_scorer)([traj(steps)], [BORN])
    assert score.per_step == [0.0, 0.0, 0.0, 0.5]  # d1 is not gold: 'not useful' matches


def test_judge_reward_uses_the_scorer_when_support_is_missing():
    unlabelled = Example("q2", "Where was Orin Kael born?", ["Velmora"])
    career = Passage("d4", "Orin Kael", "Orin Kael painted harbours.")
    scorer = RecordingScorer({"Orin Kael Orin Kael painted harbours.": 0.9})
    steps = [step("search", "Orin Kael", [career]), step("judge", "not useful")]
    [score] = JudgeReward(r_match=1.0, r_mismatch=0.5, threshold=0.5, scorer=scorer)([traj(steps)], [unlabelled])
    assert score.per_step == [0.0, -0.5]


def test_correctness_shares_the_reward_over_first_retrievals_of_support():
    two_hop = Example("q3", "Which country is Orin Kael's birthplace in?", ["Dastria"], support=["d2", "d3"])
    steps = [step("search", "a", [D1, D2], dropped=True), step("judge", "not useful"), step("search", "b", [D2]),
             step("search", "c", [D3, D2]), step("answer", "Dastria")]
    [score] = CorrectnessReward(r_correct=1.0)([traj(steps, "Dastria")], [two_hop])
    # d2 first at step 0 (dropped or not, it was retrieved): 1/2; step 2 repeats it: 0; d3 new at step 3: 1/2.
    assert score.per_step == [0.5, 0.0, 0.0, 0.5, 0.0]
    assert score.value == 1.0


def test_correctness_without_support_rewards_the_first_search_holding_the_answer():
    unlabelled = Example("q2", "Where was Orin Kael born?", ["Velmora"])
    steps = [step("search", "a", [D1]), step("search", "b", [D2]), step("search", "c", [D3])]
    [score] = CorrectnessReward(r_correct=2.0)([traj(steps)], [unlabelled])
    assert score.per_step == [0.0, 2.0, 0.0]


CHAIN = [
    {"query": "Orin Kael birthplace", "answer": "Velmora", "support": ["d2"]},
    {"query": "Velmora country", "answer": "Dastria", "support": ["d3"]},
]
TWO_HOP = Example("q3", "Which country is Orin Kael's birthplace in?", ["Dastria"], ["d2", "d3"], {"chain": CHAIN})


def test_utility_credits_the_bridge_and_the_answer_source():
    steps = [step("search", "Orin Kael", [D1, D2]), step("judge", "useful"), step("search", "Velmora country", [D3]),
             step("judge", "useful"), step("answer", "Dastria")]
    [score] = UtilityReward(r_utility=1.0)([traj(steps, "Dastria")], [TWO_HOP])
    # Step 0 supplied the bridge "Velmora" that the query of step 2 carries; step 2 supplied "Dastria".
    assert score.per_step == [0.5, 0.0, 0.5, 0.0, 0.0]
    assert score.value == 1.0


def test_utility_ignores_dropped_observations_and_wrong_answers():
    steps = [step("search", "Orin Kael", [D1, D2], dropped=True), step("judge", "not useful"),
             step("search", "Velmora country", [D3]), step("answer", "Dastria")]
    # The dropped observation cannot have fed anything; d3 holds both "Velmora" (no later query
    # carries it) and the final answer.
    [score] = UtilityReward(r_utility=1.0)([traj(steps, "Dastria")], [TWO_HOP])
    assert score.per_step == [0.0, 0.0, 1.0, 0.0]
    [wrong] = UtilityReward(r_utility=1.0)([traj(steps, "Velmora")], [TWO_HOP])
    assert wrong.per_step == [0.0] * 4 and wrong.value == 0.0


def test_judge_refuses_a_scorer_that_is_not_callable():
    with pytest.raises(ValueError, match="judge.scorer must be a callable"):
        JudgeReward(scorer=0.5)


@pytest.mark.slow
def test_minilm_scorer_separates_the_stated_fact_from_unrelated_passages():
    scorer = EmbeddingScorer()
    unlabelled = Example("q2", "Where was Orin Kael born?", ["Velmora"])
    fact = Passage("d4", "Orin Kael", "Orin Kael was born in a harbour town.")
    unrelated = Passage("d5", "Ashen Lantern", "The Ashen Lantern is a novel about a lighthouse keeper.")
    assert ideal_judge_label([fact], unlabelled, scorer) == "useful"
    assert ideal_judge_label([unrelated], unlabelled, scorer) == "not useful"
