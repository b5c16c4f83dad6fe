"""Reward diagnostics: rank correlation and STARC-style distance between two rewards."""

import math

import pytest

from agent.types import Example, Trajectory
from rewards.base import Score
from rewards.diagnostics import compare_rewards, spearman, starc_distance

EXAMPLE = Example("q", "Who?", ["Orin Kael", "Kael"])
ANSWERS = ["Orin Kael", "Kael of Velmora", "Mira Solen", "Orin", None, "Kael"]
BATCH = [Trajectory("q", "g" if i < 3 else "h", i, [], [], a) for i, a in enumerate(ANSWERS)]


class Negated:
    """-1 x another reward: the exact reverse of its preferences."""

    def __init__(self, reward):
        self.reward = reward

    def __call__(self, trajectories, examples):
        return [Score(-s.value) for s in self.reward(trajectories, examples)]


def test_identical_rewards_agree_perfectly():
    same = compare_rewards([{"name": "f1"}], {"name": "f1", "weight": 3.0}, BATCH, [EXAMPLE] * len(BATCH))
    assert same.spearman == pytest.approx(1.0)
    assert same.distance == pytest.approx(0.0, abs=1e-12)  # a positive scale changes no preference
    assert same.group_spearman == pytest.approx(1.0)


def test_negated_reward_is_the_opposite():
    from rewards.registry import build_reward

    f1 = build_reward(["f1"])
    opposite = compare_rewards(f1, Negated(f1), BATCH, [EXAMPLE] * len(BATCH))
    assert opposite.spearman == pytest.approx(-1.0)
    assert opposite.distance == pytest.approx(2.0)


def test_spearman_and_distance_by_hand():
    a, b = [1.0, 2.0, 3.0, 4.0], [1.0, 3.0, 2.0, 4.0]
    # ranks differ in the middle swap: d = (0, 1, -1, 0), rho = 1 - 6 * 2 / (4 * 15) = 0.8
    assert spearman(a, b) == pytest.approx(0.8)
    # centred: (-1.5, -0.5, 0.5, 1.5) / sqrt(5) and (-1.5, 0.5, -0.5, 1.5) / sqrt(5): differ by (0, -1, 1, 0) / sqrt(5)
    assert starc_distance(a, b) == pytest.approx(math.sqrt(2 / 5))


def test_a_constant_reward_has_no_preferences():
    assert math.isnan(spearman([1.0, 1.0, 1.0], [1.0, 2.0, 3.0]))
    assert starc_distance([0.3, 0.3, 0.3], [1.0, 2.0, 3.0]) == pytest.approx(1.0)
    assert starc_distance([0.3, 0.3], [5.0, 5.0]) == 0.0
    with pytest.raises(ValueError, match="reward vectors differ in length: 2 and 3"):
        spearman([1.0, 2.0], [1.0, 2.0, 3.0])


def test_em_and_f1_rank_the_batch_differently():
    result = compare_rewards(["em"], ["f1"], BATCH, [EXAMPLE] * len(BATCH))
    assert result.values_a == [1.0, 0.0, 0.0, 0.0, 0.0, 1.0]
    # F1 with the best alias: 1; "kael of velmora" vs "kael": P 1/3, R 1 -> 1/2 (vs "orin kael": 2/5);
    # 0; "orin" vs "orin kael": P 1, R 1/2 -> 2/3; 0; 1
    assert result.values_b == pytest.approx([1.0, 1 / 2, 0.0, 2 / 3, 0.0, 1.0])
    assert 0 < result.spearman < 1 and 0 < result.distance < 2
    # Group g: em (1, 0, 0) vs f1 (1, 1/2, 0): centred ranks (1, -1/2, -1/2) and (1, 0, -1),
    # rho = 1.5 / (sqrt(1.5) sqrt(2)) = sqrt(3)/2; group h: (0, 0, 1) vs (2/3, 0, 1), the same.
    assert result.group_spearman == pytest.approx(math.sqrt(3) / 2)
    assert "6 trajectories" in str(result)
