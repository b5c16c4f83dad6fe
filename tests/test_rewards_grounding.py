"""Grounding step rewards: queries and answers copied from the context, worked out by hand."""

import pytest

from agent.types import Example, Passage, Step, Trajectory
from rewards.grounding import GroundingReward, grounding_step_rewards
from rewards.registry import build_reward

EXAMPLE = Example("q1", "Where was the author of The Winter Archive born?", ["Velmora"])
ARCHIVE = Passage("d1", "The Winter Archive", "Nelzoul Thorcei wrote The Winter Archive.")
THORCEI = Passage("d2", "Nelzoul Thorcei", "Nelzoul Thorcei was born in Velmora.")
DECOY = Passage("d3", "Uder Sorkruth", "Uder Sorkruth was born in Dastmoor.")


def trajectory(*steps):
    return Trajectory("q1", "q1", 0, [], list(steps))


def search(query, passages, dropped=False):
    return Step("search", query, (0, 1), list(passages), dropped=dropped)


def answer(text):
    return Step("answer", text, (0, 1))


def test_a_copied_chain_is_grounded_at_every_step():
    # Query 1 "winter archive author": "winter", "archive" are in the question, "author" too.
    # Query 2 "nelzoul thorcei birthplace": the name comes from ARCHIVE, "birthplace" from nowhere: 2/3.
    steps = [search("The Winter Archive author", [ARCHIVE]), Step("judge", "useful", (0, 1)),
             search("Nelzoul Thorcei birthplace", [THORCEI]), answer("Velmora")]
    assert grounding_step_rewards(trajectory(*steps), EXAMPLE) == pytest.approx([1.0, 0.0, 2 / 3, 1.0])


def test_a_miscopied_name_loses_its_words_and_an_answer_must_match_a_whole_run():
    steps = [search("The Winterdader author", [ARCHIVE]),  # "winterdader" is nowhere: 1 of 2 words
             search("Nelvurel Thorcei birthplace", [THORCEI]),  # only "thorcei" was read: 1 of 3
             answer("Nelvurel Thorcei")]  # not a run of any text read
    assert grounding_step_rewards(trajectory(*steps), EXAMPLE) == pytest.approx([0.5, 1 / 3, 0.0])
    # Words from two different texts do not make a grounded answer; a title is a text of its own.
    assert grounding_step_rewards(trajectory(search("x", [ARCHIVE]), answer("Winter Archive Nelzoul")),
                                  EXAMPLE)[1] == 0.0
    assert grounding_step_rewards(trajectory(search("x", [DECOY]), answer("uder sorkruth")), EXAMPLE)[1] == 1.0
    # A part of a word is not a word: "Velmor" is not grounded by "Velmora".
    assert grounding_step_rewards(trajectory(search("x", [THORCEI]), answer("Velmor")), EXAMPLE)[1] == 0.0


def test_only_passages_read_before_the_step_count_and_dropped_ones_leave():
    # The answer comes from a passage the agent dropped after judging it: not in context any more.
    steps = [search("Nelzoul Thorcei", [THORCEI], dropped=True), answer("Velmora")]
    assert grounding_step_rewards(trajectory(*steps), EXAMPLE) == [0.0, 0.0]
    # A query is scored on what was read before it, not on its own results.
    assert grounding_step_rewards(trajectory(search("Velmora", [THORCEI])), EXAMPLE) == [0.0]
    # The question alone grounds an answer (comparison questions name both options).
    assert grounding_step_rewards(trajectory(answer("the Winter Archive")), EXAMPLE) == [1.0]
    # No answer, an empty answer, an empty query: nothing to reward.
    assert grounding_step_rewards(trajectory(answer(""), search("", [])), EXAMPLE) == [0.0, 0.0]


def test_weights_scale_each_kind_and_the_value_is_the_sum_of_steps():
    steps = [search("The Winterdader author", [ARCHIVE]), answer("Nelzoul Thorcei")]
    [score] = GroundingReward(r_search=0.5, r_answer=2.0)([trajectory(*steps)], [EXAMPLE])
    assert score.per_step == pytest.approx([0.25, 2.0])
    assert score.value == pytest.approx(2.25)


def test_registered_and_bad_parameters_are_refused():
    reward = build_reward([{"name": "em"}, {"name": "grounding", "weight": 0.5, "r_search": 0.5}])
    steps = [search("The Winter Archive author", [ARCHIVE]), answer("Nelzoul Thorcei")]
    [score] = reward([Trajectory("q1", "q1", 0, [], steps, answer="Nelzoul Thorcei")], [EXAMPLE])
    assert score.parts["grounding"] == pytest.approx(1.5)
    assert score.per_step == pytest.approx([0.25, 0.5])
    assert score.value == pytest.approx(0.75)  # EM 0 + 0.5 x 1.5
    with pytest.raises(ValueError, match="grounding.r_answer"):
        build_reward([{"name": "grounding", "r_answer": "all"}])
