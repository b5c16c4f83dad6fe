"""Advantage estimators against values worked out by hand on tiny tensors."""

import math

import pytest
import torch

from agent.types import Segment, Step, Trajectory
from rewards.base import Score
from train.advantages import (
    ADVANTAGE_ESTIMATORS,
    discounted_returns,
    gae_advantages,
    grpo_outcome_advantages,
    process_advantages,
    reinforce_pp_advantages,
    rloo_advantages,
    step_grouped_advantages,
    whiten,
)
from train.batching import collate_segments
from train.placement import place_step_rewards, response_values_to_rows

# Rewards [1, 0, 0, 1 | 1, 1 | 0.7]: a group of four, a group of two that all agree, a group of one.
REWARDS = torch.tensor([1.0, 0.0, 0.0, 1.0, 1.0, 1.0, 0.7])
GROUPS = torch.tensor([0, 0, 0, 0, 1, 1, 2])


def close(actual, expected, tol=1e-5):
    assert torch.allclose(torch.as_tensor(actual).float(), torch.tensor(expected).float(), atol=tol), actual


# -- outcome estimators -----------------------------------------------------------------------


def test_grpo_with_and_without_std():
    # Group 0: mean 0.5; unbiased var = 4 * 0.25 / 3 = 1/3, std = 0.577350; +-0.5 / 0.577350 = +-0.866025.
    # Group 1: both 1 -> r - mean = 0 (0 / (0 + eps)). Group 2: a group of one -> 0.
    a = 0.5 / math.sqrt(1 / 3)
    close(grpo_outcome_advantages(REWARDS, GROUPS), [a, -a, -a, a, 0, 0, 0])
    # Dr.GRPO: no division by std.
    close(grpo_outcome_advantages(REWARDS, GROUPS, scale_by_std=False), [0.5, -0.5, -0.5, 0.5, 0, 0, 0])
    close(ADVANTAGE_ESTIMATORS["grpo"](REWARDS, GROUPS), [a, -a, -a, a, 0, 0, 0])


def test_group_ids_need_not_be_contiguous_or_sorted():
    # Same as group 0 above, interleaved with a second group under ids 7 and 3.
    r = torch.tensor([1.0, 5.0, 0.0, 3.0])
    g = torch.tensor([7, 3, 7, 3])
    close(grpo_outcome_advantages(r, g, scale_by_std=False), [0.5, 1.0, -0.5, -1.0])


def test_rloo_leave_one_out():
    # Group 0, r = 1: others (0, 0, 1) mean 1/3 -> 2/3; r = 0: others (1, 0, 1) mean 2/3 -> -2/3.
    # Group 1: 1 - 1 = 0; group of one: 0.
    close(rloo_advantages(REWARDS, GROUPS), [2 / 3, -2 / 3, -2 / 3, 2 / 3, 0, 0, 0])


def test_reinforce_pp_global_and_with_group_baseline():
    r, g = REWARDS[:6], GROUPS[:6]
    # Global: mean 4/6 = 2/3; unbiased var = (4 (1/3)^2 + 2 (2/3)^2) / 5 = 4/15, std 0.516398.
    # 1 -> (1/3) / 0.516398 = 0.645497; 0 -> -(2/3) / 0.516398 = -1.290994.
    hi, lo = (1 / 3) / math.sqrt(4 / 15), -(2 / 3) / math.sqrt(4 / 15)
    close(reinforce_pp_advantages(r), [hi, lo, lo, hi, hi, hi])
    close(ADVANTAGE_ESTIMATORS["reinforce_pp"](r, g), [hi, lo, lo, hi, hi, hi])
    # Baseline: group means out first -> [.5, -.5, -.5, .5, 0, 0]; mean 0, var = 4 * .25 / 5 = 0.2.
    b = 0.5 / math.sqrt(0.2)
    close(reinforce_pp_advantages(r, g), [b, -b, -b, b, 0, 0])
    close(ADVANTAGE_ESTIMATORS["reinforce_pp_baseline"](r, g), [b, -b, -b, b, 0, 0])


def test_whiten_over_mask():
    # Kept [1, 2, 3]: mean 2, unbiased std 1 -> [-1, 0, 1]; the masked 100 is ignored and set to 0.
    close(whiten(torch.tensor([1.0, 2.0, 3.0, 100.0]), torch.tensor([1, 1, 1, 0])), [-1, 0, 1, 0])
    close(whiten(torch.tensor([4.0, 9.0]), torch.tensor([1, 0])), [0, 0])  # one value: no spread


def test_bad_shapes_are_refused():
    with pytest.raises(ValueError, match="1-D tensors of one length"):
        grpo_outcome_advantages(REWARDS, GROUPS[:3])


# -- placing rewards on tokens --------------------------------------------------------------

# Segment 0: a think (0-1) and a search (2-4) whose last token 4 is the injected observation
# (4-6), then a judge (7-8). Segment 1 (after 'not useful'): the answer (0-3), whose last
# token 3 is injected. Step 2 covers only injected tokens.
SEG0 = Segment([1, 2], [10, 11, 12, 13, 14, 15, 16, 17, 18], [1, 1, 1, 1, 0, 0, 0, 1, 1], [-0.5] * 4 + [0.0] * 3 + [-0.5] * 2)
SEG1 = Segment([1, 2, 10], [20, 21, 22, 23], [1, 1, 1, 0], [-0.5] * 3 + [0.0])
STEPS = [
    Step("think", "t", (0, 2), segment=0),
    Step("search", "q", (2, 5), segment=0),
    Step("invalid", "x", (4, 6), segment=0),
    Step("judge", "not useful", (7, 9), segment=0),
    Step("answer", "a", (0, 4), segment=1),
]
TRAJ = Trajectory("q1", "g1", 0, [SEG0, SEG1], STEPS, "a", "answered")
SCORE = Score(2.0, [0.1, 0.2, 0.3, -0.4, 0.5])


def test_place_step_rewards_by_hand():
    placed = place_step_rewards(TRAJ, SCORE)
    # think -> its last token 1; search -> token 4 is injected, so 3; step 2 has no sampled
    # token: dropped (n_dropped 1); judge -> 8; answer -> token 3 injected, so 2.
    # Outcome = 2.0 - (0.1 + 0.2 + 0.3 - 0.4 + 0.5) = 1.3, on the last sampled token (seg 1, 2).
    assert placed.rewards[0] == pytest.approx([0, 0.1, 0, 0.2, 0, 0, 0, 0, -0.4])
    assert placed.rewards[1] == pytest.approx([0, 0, 0.5 + 1.3, 0])
    assert placed.step_index == [[-1, 0, -1, 1, -1, -1, -1, -1, 3], [-1, -1, 4, -1]]
    assert placed.outcome == pytest.approx(1.3)
    assert placed.n_dropped == 1


def test_place_without_outcome_and_outcome_only():
    placed = place_step_rewards(TRAJ, SCORE, include_outcome=False)
    assert placed.rewards[1] == pytest.approx([0, 0, 0.5, 0])
    assert placed.outcome == pytest.approx(1.3)
    # Outcome-only score: the whole value at the end; step ends are still marked.
    placed = place_step_rewards(TRAJ, Score(1.0))
    assert placed.rewards == [[0.0] * 9, [0, 0, 1.0, 0]]
    assert placed.step_index[1] == [-1, -1, 4, -1]
    assert placed.n_dropped == 0


def test_outcome_goes_to_an_earlier_segment_when_the_last_has_no_sampled_token():
    tail = Segment([1], [30, 31], [0, 0], [0.0, 0.0])
    traj = Trajectory("q1", "g1", 0, [SEG0, tail], STEPS[:4])
    placed = place_step_rewards(traj, Score(1.0))
    assert placed.rewards == [[0, 0, 0, 0, 0, 0, 0, 0, 1.0], [0, 0]]
    nothing = Trajectory("q1", "g1", 0, [tail], [])
    assert place_step_rewards(nothing, Score(1.0)).n_dropped == 1


def test_place_refuses_mismatched_scores_and_spans():
    with pytest.raises(ValueError, match="3 per-step rewards for 5 steps"):
        place_step_rewards(TRAJ, Score(1.0, [0.0] * 3))
    bad = Trajectory("q1", "g1", 0, [SEG1], [Step("answer", "a", (2, 9), segment=0)])
    with pytest.raises(ValueError, match=r"step 0 has span \(2, 9\), outside segment 0's 4"):
        place_step_rewards(bad, Score(1.0))


def test_response_values_to_rows_matches_collate_layout():
    placed = place_step_rewards(TRAJ, SCORE)
    batch = collate_segments([SEG0, SEG1], pad_id=0)
    rows = response_values_to_rows(placed.rewards, batch.attention_mask)
    # Row 0: 2 context positions, then the 9 response values; row 1: 3 context, 4 values, 4 padding.
    close(rows, [[0, 0, 0, 0.1, 0, 0.2, 0, 0, 0, 0, -0.4], [0, 0, 0, 0, 0, 1.8, 0, 0, 0, 0, 0]])
    assert bool((rows[batch.loss_mask == 0] == 0).all())  # rewards only on sampled tokens
    idx = response_values_to_rows(placed.step_index, batch.attention_mask, fill=-1, dtype=torch.long)
    assert idx[1].tolist() == [-1, -1, -1, -1, -1, 4, -1, -1, -1, -1, -1]
    # A context cut from the left by max_len moves nothing in the response.
    cut = collate_segments([SEG0], pad_id=0, max_len=10)
    assert response_values_to_rows(placed.rewards[:1], cut.attention_mask)[0, 2].item() == pytest.approx(0.1)


# -- returns and GAE ------------------------------------------------------------------------

# Trajectory 0 spans rows 0 and 1 (a dropped observation split it), trajectory 1 is row 2.
MASK = torch.tensor([[0, 1, 1, 0, 1], [0, 1, 1, 0, 0], [1, 1, 0, 0, 0]])
TOKEN_REWARDS = torch.tensor([[0, 0, 1.0, 0, 0], [0, 0, 2.0, 0, 0], [0, 3.0, 0, 0, 0]])


def test_discounted_returns_run_across_segments():
    # Trajectory 0's sampled rewards in order: [0, 1, 0 | 0, 2], gamma 0.5, from the end:
    # 2; 0 + .5 * 2 = 1; 0 + .5 * 1 = .5; 1 + .5 * .5 = 1.25; 0 + .5 * 1.25 = .625.
    # Trajectory 1: [0, 3] -> [1.5, 3]. Unsampled positions: 0.
    expected = [[0, 0.625, 1.25, 0, 0.5], [0, 1, 2, 0, 0], [1.5, 3, 0, 0, 0]]
    close(discounted_returns(TOKEN_REWARDS, MASK, 0.5, torch.tensor([0, 0, 1])), expected)
    # Rows of one trajectory need not be adjacent, only in segment order.
    interleaved = discounted_returns(TOKEN_REWARDS[[0, 2, 1]], MASK[[0, 2, 1]], 0.5, torch.tensor([0, 1, 0]))
    close(interleaved, [expected[0], expected[2], expected[1]])
    # Without the trajectory index each row stands alone: row 0 = [0, 1, 0] -> [.5, 1, 0].
    close(discounted_returns(TOKEN_REWARDS, MASK, 0.5)[0], [0, 0.5, 1, 0, 0])


def test_reward_on_an_unsampled_token_is_refused():
    with pytest.raises(ValueError, match="1 positions with loss_mask 0"):
        discounted_returns(torch.tensor([[1.0, 0.0]]), torch.tensor([[0, 1]]))


def test_gae_on_three_tokens():
    # gamma .9, lam .8 (gamma * lam = .72); r = [0, 0, 1], V = [.5, .6, .7], V = 0 after the end.
    # d2 = 1 - .7 = .3                  A2 = .3
    # d1 = .9 * .7 - .6 = .03           A1 = .03 + .72 * .3 = .246
    # d0 = .9 * .6 - .5 = .04           A0 = .04 + .72 * .246 = .21712
    # returns = A + V = [.71712, .846, 1.0]
    adv, ret = gae_advantages(torch.tensor([[0, 0, 1.0]]), torch.tensor([[0.5, 0.6, 0.7]]), torch.ones(1, 3), 0.9, 0.8)
    close(adv, [[0.21712, 0.246, 0.3]])
    close(ret, [[0.71712, 0.846, 1.0]])
    # An injected token in between is skipped, its value ignored; a split into two rows changes nothing.
    adv, ret = gae_advantages(torch.tensor([[0, 0, 0, 1.0]]), torch.tensor([[0.5, 9.9, 0.6, 0.7]]),
                              torch.tensor([[1, 0, 1, 1]]), 0.9, 0.8)
    close(adv, [[0.21712, 0, 0.246, 0.3]])
    adv, _ = gae_advantages(torch.tensor([[0, 0.0], [0, 1.0]]), torch.tensor([[0.5, 0.6], [9.9, 0.7]]),
                            torch.tensor([[1, 1], [0, 1]]), 0.9, 0.8, torch.tensor([0, 0]))
    close(adv, [[0.21712, 0.246], [0, 0.3]])
    # gamma = lam = 1: A = return-to-go - V.
    adv, _ = gae_advantages(torch.tensor([[0, 0, 1.0]]), torch.tensor([[0.5, 0.6, 0.7]]), torch.ones(1, 3), 1.0, 1.0)
    close(adv, [[0.5, 0.4, 0.3]])


def test_returns_and_gae_match_a_plain_loop_over_each_trajectory():
    # Random masks, rows shuffled so a trajectory's rows are scattered (kept in segment order).
    gen = torch.Generator().manual_seed(0)
    gamma, lam = 0.9, 0.7
    for _ in range(20):
        B, T = 5, 6
        mask = (torch.rand(B, T, generator=gen) > 0.4).float()
        rewards, values = torch.randn(B, T, generator=gen) * mask, torch.randn(B, T, generator=gen)
        traj = torch.tensor([0, 1, 0, 2, 1])
        want_g, want_a = torch.zeros(B, T), torch.zeros(B, T)
        for n in range(3):
            g = a = next_v = 0.0
            for b, t in reversed([(b, t) for b in range(B) if traj[b] == n for t in range(T) if mask[b, t]]):
                g = rewards[b, t].item() + gamma * g
                a = rewards[b, t].item() + gamma * next_v - values[b, t].item() + gamma * lam * a
                want_g[b, t], want_a[b, t], next_v = g, a, values[b, t].item()
        close(discounted_returns(rewards, mask, gamma, traj), want_g.tolist())
        adv, ret = gae_advantages(rewards, values, mask, gamma, lam, traj)
        close(adv, want_a.tolist())
        close(ret, ((want_a + values) * mask).tolist())


# -- process rewards ------------------------------------------------------------------------

# One question, two samples. Sample 0 spans rows 0 and 1; sample 1 is row 2.
P_MASK = torch.tensor([[1, 1, 0, 1], [1, 1, 0, 0], [1, 1, 1, 0]])
P_STEP_INDEX = torch.tensor([[-1, 0, -1, 1], [-1, 2, -1, -1], [-1, -1, 0, -1]])
P_STEP_REWARDS = torch.tensor([[0, 1.0, 0, 0], [0, 1.0, 0, 0], [0, 0, 0, 0]])
P_TRAJ = torch.tensor([0, 0, 1])
P_GROUPS = torch.tensor([0, 0])


def test_process_advantages_by_hand():
    # Step rewards of the group: sample 0 (1, 0, 1), sample 1 (0). Mean .5, unbiased std
    # sqrt(1/3) -> normalised a = .866025 for a 1, -a for a 0.
    # Sample 0's sampled tokens: [0, a, -a | 0, a] -> sums to go (gamma 1): [a, a, 0, a, a].
    # Sample 1's: [0, 0, -a] -> [-a, -a, -a].
    # Outcome GRPO on [1, 0]: +-.5 / sqrt(.5) = +-.707107 = b. process_weight .5.
    a, b = 0.5 / math.sqrt(1 / 3), 0.5 / math.sqrt(0.5)
    adv = process_advantages(torch.tensor([1.0, 0.0]), P_GROUPS, P_STEP_REWARDS, P_STEP_INDEX, P_MASK, P_TRAJ,
                             process_weight=0.5)
    close(adv, [[b + a / 2, b + a / 2, 0, b], [b + a / 2, b + a / 2, 0, 0], [-b - a / 2] * 3 + [0]])
    # gamma .5 on sample 1: [0, 0, -a] -> [-a/4, -a/2, -a].
    adv = process_advantages(torch.tensor([1.0, 0.0]), P_GROUPS, P_STEP_REWARDS, P_STEP_INDEX, P_MASK, P_TRAJ,
                             process_weight=1.0, gamma=0.5)
    close(adv[2], [-b - a / 4, -b - a / 2, -b - a, 0])


def test_process_advantages_compare_steps_of_the_same_kind():
    # Same trajectories; steps 0 and 2 of sample 0 and step 0 of sample 1 are searches (key 0),
    # step 1 of sample 0 is an answer (key 1). Searches (1, 1, 0): mean 2/3, unbiased std
    # sqrt(1/3) -> c = sqrt(1/3) for a 1, -2c for the 0. The lone answer step gives 0
    # instead of counting as a step that earned 0.
    keys = torch.tensor([[-1, 0, -1, 1], [-1, 0, -1, -1], [-1, -1, 0, -1]])
    c, b = math.sqrt(1 / 3), 0.5 / math.sqrt(0.5)
    adv = process_advantages(torch.tensor([1.0, 0.0]), P_GROUPS, P_STEP_REWARDS, P_STEP_INDEX, P_MASK, P_TRAJ,
                             step_keys_B_T=keys)
    # Sample 0's sampled tokens [0, c, 0 | 0, c] -> to go: [2c, 2c, c | c, c]; sample 1's [0, 0, -2c].
    close(adv, [[b + 2 * c, b + 2 * c, 0, b + c], [b + c, b + c, 0, 0], [-b - 2 * c] * 3 + [0]])


def test_process_advantages_refuse_rewards_off_step_ends():
    off = P_STEP_REWARDS.clone()
    off[2, 0] = 1.0
    with pytest.raises(ValueError, match="away from step ends"):
        process_advantages(torch.tensor([1.0, 0.0]), P_GROUPS, off, P_STEP_INDEX, P_MASK, P_TRAJ)


# GiGPO: one question, two samples with steps 0 and 1; sample 0 has a token after its last step.
G_MASK = torch.tensor([[1, 1, 1, 1, 1], [1, 1, 1, 0, 0]])
G_STEP_INDEX = torch.tensor([[-1, 0, -1, 1, -1], [0, -1, 1, -1, -1]])
G_STEP_REWARDS = torch.tensor([[0, 0.5, 0, 0, 0], [0, 0, 0, 0, 0.0]])
G_OUTCOME = torch.tensor([1.0, 0.0])


def test_step_grouped_advantages_by_hand():
    # Episode: totals [1 + .5, 0] -> minus mean .75 -> [.75, -.75] (no std scaling here).
    # Sample 0's rewards on tokens, outcome on its last sampled token: [0, .5, 0, 0, 1] ->
    # to go [1.5, 1.5, 1, 1, 1]: step 0 (token 1) R = 1.5, step 1 (token 3) R = 1.
    # Sample 1: all 0: R = 0 for both steps.
    # Anchor (group, step 0): [1.5, 0] -> [.75, -.75]; anchor (group, step 1): [1, 0] -> [.5, -.5].
    # Tokens take the step ending at or after them; sample 0's token 4 is after every step.
    adv = step_grouped_advantages(G_OUTCOME, torch.tensor([0, 0]), G_STEP_REWARDS, G_STEP_INDEX, G_MASK,
                                  torch.tensor([0, 1]), scale_by_std=False)
    close(adv, [[1.5, 1.5, 1.25, 1.25, 0.75], [-1.5, -1.25, -1.25, 0, 0]])
    # One anchor for every step: R [1.5, 1, 0, 0], mean .625 -> [.875, .375, -.625, -.625].
    anchors = torch.where(G_STEP_INDEX >= 0, 7, -1)
    adv = step_grouped_advantages(G_OUTCOME, torch.tensor([0, 0]), G_STEP_REWARDS, G_STEP_INDEX, G_MASK,
                                  torch.tensor([0, 1]), anchor_ids_B_T=anchors, scale_by_std=False)
    close(adv, [[1.625, 1.625, 1.125, 1.125, 0.75], [-1.375, -1.375, -1.375, 0, 0]])
    # Different questions: every episode and anchor group has one member -> all 0.
    adv = step_grouped_advantages(G_OUTCOME, torch.tensor([0, 1]), G_STEP_REWARDS, G_STEP_INDEX, G_MASK,
                                  torch.tensor([0, 1]))
    close(adv, torch.zeros(2, 5).tolist())


def test_trajectory_split_into_rows_gets_the_same_step_grouped_advantages():
    # Sample 0 split after its token 2 into a second row (with an injected token in front).
    mask = torch.tensor([[1, 1, 1, 0], [0, 1, 1, 0], [1, 1, 1, 0]])
    step_index = torch.tensor([[-1, 0, -1, -1], [-1, 1, -1, -1], [0, -1, 1, -1]])
    rewards = torch.tensor([[0, 0.5, 0, 0], [0, 0, 0, 0], [0, 0, 0, 0.0]])
    adv = step_grouped_advantages(G_OUTCOME, torch.tensor([0, 0]), rewards, step_index, mask,
                                  torch.tensor([0, 0, 1]), scale_by_std=False)
    close(adv, [[1.5, 1.5, 1.25, 0], [0, 1.25, 0.75, 0], [-1.5, -1.25, -1.25, 0]])


def test_scale_negatives_touches_only_negative_advantages():
    from train.advantages import scale_negatives

    adv = torch.tensor([[1.5, -2.0, 0.0], [-0.5, 0.25, -1.0]])
    close(scale_negatives(adv, 0.3), [[1.5, -0.6, 0.0], [-0.15, 0.25, -0.3]])
    close(scale_negatives(adv, 1.0), adv.tolist())
    close(scale_negatives(adv, 0.0), [[1.5, 0.0, 0.0], [0.0, 0.25, 0.0]])
