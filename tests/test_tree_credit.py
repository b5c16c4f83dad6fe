"""Outcome credit from a group's shared prefixes (train/tree_credit.py), by hand and as the
trainer places it on a batch's rows."""

import random

import pytest
import torch

from train.tree_credit import common_prefix_length, tree_advantage_rows, tree_outcome_advantages


def test_common_prefix_length():
    assert common_prefix_length([1, 2, 3], [1, 2, 4]) == 2
    assert common_prefix_length([1, 2], [1, 2, 3]) == 2
    assert common_prefix_length([], [1]) == 0
    assert common_prefix_length([5], [6]) == 0


def test_credit_lands_where_samples_part_by_hand():
    """Four samples: A and B part from C and D at token 1; A and B part at token 3.
    Rewards A=1, B=0, C=1, D=1 (mean 0.75).
    Root -> after token 1: {A, B} mean 0.5 (A, B: 0.5 - 0.75 = -0.25), {C, D} mean 1 (+0.25).
    {A, B} -> after token 3: A 1 (+0.5), B 0 (-0.5). C and D never part: nothing more."""
    streams = [[1, 2, 3, 4], [1, 2, 3, 9], [1, 7, 8, 8], [1, 7, 8, 8]]
    sampled = [[1, 1, 1, 1]] * 4
    rewards = torch.tensor([1.0, 0.0, 1.0, 1.0])
    adv = tree_outcome_advantages(streams, sampled, rewards, torch.tensor([0, 0, 0, 0]), scale_by_std=False)
    assert adv == [[0.0, -0.25, 0.0, 0.5], [0.0, -0.25, 0.0, -0.5], [0.0, 0.25, 0.0, 0.0], [0.0, 0.25, 0.0, 0.0]]
    # scaled by the group's unbiased std: squared deviations 0.0625 x 3 + 0.5625 = 0.75, / 3, sqrt = 0.5
    scaled = tree_outcome_advantages(streams, sampled, rewards, torch.tensor([0, 0, 0, 0]))
    for got, want in zip(scaled, adv):
        assert got == pytest.approx([v / (0.5 + 1e-6) for v in want])


def test_each_trajectory_adds_up_to_its_reward_minus_the_group_mean():
    """On random groups of branching samples the credit telescopes: a trajectory's advantages
    sum to r - mean(group), as GRPO's unscaled outcome advantage."""
    rng = random.Random(0)
    for _ in range(50):
        n_groups, streams, groups, rewards = rng.randint(1, 3), [], [], []
        for g in range(n_groups):
            trunk = [rng.randrange(4) for _ in range(rng.randint(1, 5))]
            for _ in range(rng.randint(2, 6)):
                # each sample copies a random part of the trunk, then goes its own way (a distinct end id)
                cut = rng.randint(0, len(trunk))
                streams.append(trunk[:cut] + [rng.randrange(4) for _ in range(rng.randint(0, 4))] + [100 + len(streams)])
                groups.append(g)
                rewards.append(float(rng.randint(0, 2)))
        sampled = [[1] * len(s) for s in streams]
        adv = tree_outcome_advantages(streams, sampled, torch.tensor(rewards), torch.tensor(groups), scale_by_std=False)
        for n, row in enumerate(adv):
            mates = [rewards[m] for m in range(len(streams)) if groups[m] == groups[n]]
            assert sum(row) == pytest.approx(rewards[n] - sum(mates) / len(mates), abs=1e-9)


def test_shared_and_settled_get_nothing():
    streams = [[1, 2, 3], [1, 2, 4], [5, 6], [5, 7]]
    sampled = [[1, 1, 1]] * 2 + [[1, 1]] * 2
    # group 0 scored alike; group 1 is a single sample (group 2 holds the last)
    adv = tree_outcome_advantages(streams, sampled, torch.tensor([1.0, 1.0, 0.0, 1.0]), torch.tensor([0, 0, 1, 2]))
    assert adv == [[0.0] * 3, [0.0] * 3, [0.0] * 2, [0.0] * 2]


def test_a_parting_on_an_injected_token_goes_to_the_sampled_token_before_it():
    """Sample B stopped a turn where A went on: they part on an injected id (position 2),
    which cannot carry credit; the last sampled token before it (position 1) does."""
    streams = [[1, 2, 50, 51, 3], [1, 2, 60, 61, 4]]
    sampled = [[1, 1, 0, 0, 1], [1, 1, 0, 0, 1]]
    adv = tree_outcome_advantages(streams, sampled, torch.tensor([1.0, 0.0]), torch.tensor([0, 0]), scale_by_std=False)
    assert adv == [[0.0, 0.5, 0.0, 0.0, 0.0], [0.0, -0.5, 0.0, 0.0, 0.0]]


def test_bad_shapes_are_refused():
    with pytest.raises(ValueError, match="one stream, mask, reward and group id"):
        tree_outcome_advantages([[1]], [[1]], torch.tensor([1.0, 0.0]), torch.tensor([0, 0]))
    with pytest.raises(ValueError, match="trajectory 0: 2 stream ids but 1 mask"):
        tree_outcome_advantages([[1, 2]], [[1]], torch.tensor([1.0]), torch.tensor([0]))


def _traj(sample, segments, answer_ok):
    from agent.types import Segment, Step, Trajectory

    segs = [Segment(context_ids=ctx, response_ids=ids, loss_mask=mask, logprobs=[-1.0 if m else 0.0 for m in mask])
            for ctx, ids, mask in segments]
    steps = [Step(kind="search", text="q", span=(0, 2)),
             Step(kind="answer", text="a" if answer_ok else "b", span=(0, len(segs[-1].response_ids)),
                  segment=len(segs) - 1)]
    return Trajectory(example_id="e", group_id="g", sample=sample, segments=segs, steps=steps,
                      answer="a" if answer_ok else "b")


def test_rows_follow_segments_across_a_dropped_observation():
    """A trajectory of two segments (a 'not useful' judge rebuilt its context) is one stream:
    its second segment's tokens take the credit of where they stand in it."""
    one = _traj(0, [([5], [1, 2, 40, 41], [1, 1, 0, 0]), ([5, 1, 2], [3, 7], [1, 1])], True)
    two = _traj(1, [([5], [1, 2, 40, 41], [1, 1, 0, 0]), ([5, 1, 2], [3, 8], [1, 1])], False)
    rows = tree_advantage_rows([one, two], torch.tensor([1.0, 0.0]), torch.tensor([0, 0]), scale_by_std=False)
    assert rows == [[0.0, 0.0, 0.0, 0.0], [0.0, 0.5], [0.0, 0.0, 0.0, 0.0], [0.0, -0.5]]


def test_the_trainer_places_tree_credit_in_place_of_the_sequence_advantage():
    """advantage=process with outcome_credit=tree: the outcome part of every token is the tree
    credit (0 where the samples agree), the process part is the same as with sequence credit."""
    from agent.types import Example, TrajectoryGroup
    from rewards.base import Score
    from train.advantages import AdvantageConfig
    from train.update import advantages_for

    trajs = [_traj(0, [([5, 6], [1, 2, 3, 4], [1, 1, 1, 1])], True),
             _traj(1, [([5, 6], [1, 2, 3, 9], [1, 1, 1, 1])], False)]

    def advantages(scores, credit):
        group = TrajectoryGroup(Example("e", "?", ["a"]), trajs, scores)
        acfg = AdvantageConfig(scale_by_std=False, negative_weight=1.0, outcome_credit=credit)
        return advantages_for([group], acfg, pad_id=0).adv_B_T

    scores = [Score(1.0, [0.0, 0.0]), Score(0.0, [0.0, 0.0])]
    sequence, tree = advantages(scores, "sequence"), advantages(scores, "tree")
    torch.testing.assert_close(sequence, torch.tensor([[0.0, 0.0, 0.5, 0.5, 0.5, 0.5], [0.0, 0.0, -0.5, -0.5, -0.5, -0.5]]))
    torch.testing.assert_close(tree, torch.tensor([[0.0, 0.0, 0.0, 0.0, 0.0, 0.5], [0.0, 0.0, 0.0, 0.0, 0.0, -0.5]]))
    # with step rewards, the process part adds to both alike
    stepped = [Score(1.5, [0.5, 0.0]), Score(0.0, [0.0, 0.0])]
    seq2, tree2 = advantages(stepped, "sequence"), advantages(stepped, "tree")
    torch.testing.assert_close(seq2 - sequence, tree2 - tree)
    assert (seq2 - sequence).abs().sum() > 0


def test_unknown_outcome_credit_is_refused():
    from train.advantages import AdvantageConfig

    with pytest.raises(ValueError, match="outcome_credit must be one of tree, sequence, got 'trie'"):
        AdvantageConfig(outcome_credit="trie")


def test_the_docstring_example_holds():
    import doctest

    import train.tree_credit

    result = doctest.testmod(train.tree_credit)
    assert result.attempted == 2 and result.failed == 0  # the call and its printed value


def test_process_advantages_refuse_outcome_credit_off_sampled_tokens():
    from train.advantages import process_advantages

    mask = torch.tensor([[0, 1, 1, 0, 1]])
    no_steps, at_no_step = torch.zeros(1, 5), torch.full((1, 5), -1)
    placed = torch.tensor([[0.0, 0.0, 0.5, 0.0, 0.0]])
    adv = process_advantages(torch.tensor([1.0]), torch.tensor([0]), no_steps, at_no_step, mask, torch.tensor([0]),
                             outcome_advantages_B_T=placed)
    torch.testing.assert_close(adv, placed)  # no step rewards: the outcome credit as given
    with pytest.raises(ValueError, match="outcome_advantages_B_T is set on 1 positions with loss_mask 0"):
        process_advantages(torch.tensor([1.0]), torch.tensor([0]), no_steps, at_no_step, mask, torch.tensor([0]),
                           outcome_advantages_B_T=torch.tensor([[0.0, 0.0, 0.5, 0.2, 0.0]]))
    with pytest.raises(ValueError, match="expected 2-D tensors of one shape"):
        process_advantages(torch.tensor([1.0]), torch.tensor([0]), no_steps, at_no_step, mask, torch.tensor([0]),
                           outcome_advantages_B_T=torch.zeros(1, 4))
