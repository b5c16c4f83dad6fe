"""Building rewards from specs: weights, parts, per-step sums, user code, and refusals."""

import pytest

from agent.types import Example, Passage, Step, Trajectory
from rewards.base import Score
from rewards.registry import COMPONENTS, RewardSpecError, build_reward, known_rewards

GOLD, CITY = Passage("d2", "Orin Kael", "Orin Kael was born in Velmora."), Passage("d3", "Velmora", "A city in Dastria.")
EXAMPLE = Example("q1", "Where was Orin Kael born?", ["Velmora"], support=["d2"])


def trajectory(answer="Velmora"):
    steps = [Step("search", "Orin Kael", (0, 1), [GOLD]), Step("judge", "useful", (1, 2)),
             Step("search", "Velmora", (2, 3), [CITY]), Step("answer", answer, (3, 4))]
    return Trajectory("q1", "q1", 0, [], steps, answer)


def refusing_scorer(query, texts):
    raise AssertionError("support labels decide here")


# A user's own reward function and class, named by dotted path in the specs below.
def answer_length(traj, example, *, scale=1.0):
    return scale * len(traj.answer or "")


class FirstStepBonus:
    def __init__(self, bonus=1.0):
        self.bonus = bonus
        self.step = None

    def __call__(self, trajectories, examples):
        return [Score(self.bonus, [self.bonus] + [0.0] * (len(t.steps) - 1) if t.steps else []) for t in trajectories]

    def set_step(self, step):
        self.step = step


def test_weighted_sum_of_values_parts_and_per_step():
    reward = build_reward([
        {"name": "em", "weight": 2.0},
        {"name": "search_penalty", "weight": 0.5, "budget": 1, "per_search": 1.0},
        {"name": "judge", "weight": 0.25, "r_match": 0.5, "scorer": refusing_scorer},
    ])
    [score] = reward([trajectory()], [EXAMPLE])
    # em 1 -> 2 * 1; the 2nd search is over budget: -1 -> 0.5 * -1 on step 2;
    # the judge calls d2 (gold) useful: +0.5 -> 0.25 * 0.5 on step 1.
    assert score.value == pytest.approx(2.0 - 0.5 + 0.125)
    assert score.per_step == pytest.approx([0.0, 0.125, -0.5, 0.0])
    assert score.parts == {"em": 1.0, "search_penalty": -1.0, "judge": 0.5, "judge/judged": 1.0,
                           "judge/matched": 1.0, "total": score.value}


def test_outcome_only_specs_have_no_per_step_values():
    [score] = build_reward(["em", {"name": "f1", "weight": 0.5}])([trajectory("Orin Kael")], [EXAMPLE])
    assert score.per_step is None and score.value == 0.0


def test_dotted_paths_to_a_user_function_and_class():
    reward = build_reward([
        {"name": "test_rewards_registry.answer_length", "weight": 0.1, "scale": 2.0},
        {"name": "test_rewards_registry.FirstStepBonus", "bonus": 3.0, "label": "bonus"},
    ])
    assert reward.labels == ["answer_length", "bonus"]
    [score] = reward([trajectory()], [EXAMPLE])
    assert score.value == pytest.approx(0.1 * 2.0 * len("Velmora") + 3.0)
    assert score.per_step == [3.0, 0.0, 0.0, 0.0]
    reward.set_step(7)
    assert reward.components[1][2].step == 7


def test_wrappers_take_nested_specs_and_pass_the_training_step_down():
    reward = build_reward([
        {"name": "trust", "process": [{"name": "correctness"}], "w0": 1.0, "w1": 0.0, "anneal_steps": 10},
        {"name": "par", "reward": "f1", "reference": {"name": "em"}, "weight": 0.5},
        {"name": "ensemble", "mode": "min", "members": ["em", {"name": "format", "label": "fmt"}]},
    ])
    reward.set_step(5)
    trust = reward.components[0][2]
    assert trust.process_weight == 0.5
    [score] = reward([trajectory(), trajectory("Dastria")], [EXAMPLE, EXAMPLE])[:1]
    # trust: EM correct/incorrect pair with equal correctness values (both retrieve d2): AUC 1/2, trust 0.
    assert score.parts["trust"] == 1.0 and score.parts["trust/trust"] == 0.0
    assert score.parts["par"] == 0.5  # f1 1 against an em reference of 1
    assert score.parts["ensemble/em"] == 1.0 and score.parts["ensemble/fmt"] == 1.0
    assert score.value == pytest.approx(1.0 + 0.5 * 0.5 + 1.0)


@pytest.mark.parametrize("specs, fragments", [
    ([{"name": "f2"}], ["rewards[0]: unknown reward 'f2'; known: em, f1, cover_em, format, length_penalty, "
                        "search_penalty, judge, correctness, utility, grounding, info_gain, par, trust, ensemble"]),
    ([{"name": "f1"}, {"name": "judge", "r_mach": 0.5}],
     ["rewards[1]: reward 'judge' has no parameter 'r_mach'; its parameters: r_match, r_mismatch, threshold, scorer"]),
    ([{"name": "judge", "r_match": "high"}], ["rewards[0] (judge): judge.r_match must be a number, got 'high'"]),
    ([{"name": "f1", "weight": "1.0"}], ["rewards[0] (f1): weight must be a number, got '1.0'"]),
    ([{"name": "f1", "weight": True}], ["weight must be a number, got True"]),
    ([{"name": "em", "strict": True}], ["reward 'em' has no parameter 'strict'; its parameters: none"]),
    ([{"name": "par"}], ["reward 'par' needs parameter 'reward'"]),
    ([{"name": "trust", "process": [{"name": "jugde"}]}], ["rewards[0].process[0]: unknown reward 'jugde'"]),
    ([{"name": "mypkg.rewards.my_fn"}], ["cannot import 'mypkg.rewards.my_fn' (No module named 'mypkg'); known: em"]),
    ([{"name": "test_rewards_registry.no_such_fn"}],
     ["module 'test_rewards_registry' has no 'no_such_fn'; it defines: ", "answer_length", "FirstStepBonus"]),
    ([{"name": "test_rewards_registry.answer_length", "scal": 2}],
     ["reward 'answer_length' has no parameter 'scal'; its parameters: scale"]),
    ([{"name": "f1"}, {"name": "f1"}], ["rewards[1]: a second component labelled 'f1'"]),
    ([{"name": "f1", "label": "total"}], ["label must be a non-empty string other than 'total'"]),
    ([{"weight": 1.0}], ["a reward spec needs a 'name'"]),
    ([], ["expected a non-empty list of reward specs"]),
    ([{"name": "search_penalty", "budget": -2}], ["search_penalty.budget must be >= 0, got -2"]),
    ([{"name": "info_gain", "corpus": "/nonexistent/corpus.jsonl"}], ["rewards[0] (info_gain): ", "/nonexistent/corpus.jsonl"]),
])
def test_bad_specs_are_refused_at_construction(specs, fragments):
    with pytest.raises(RewardSpecError) as refused:
        build_reward(specs)
    for fragment in fragments:
        assert fragment in str(refused.value)


def test_known_rewards_list_their_parameters():
    known = known_rewards()
    assert list(known) == list(COMPONENTS)
    assert known["judge"] == ["r_match", "r_mismatch", "threshold", "scorer"]
    assert known["info_gain"] == ["redundancy_weight", "corpus"]
    assert known["em"] == []
