"""Losses against values worked out by hand on tiny tensors."""

import math

import pytest
import torch

from train.loss import (
    aggregate,
    grads_are_finite,
    high_entropy_mask,
    is_finite_step,
    kl_penalty,
    policy_loss,
    truncated_is_weights,
)

# Ratios r = [1.5, .5, 1.1, .7, (masked)], advantages [1, -1, 1, 1, 5], old logprob -1 everywhere.
RATIOS = [1.5, 0.5, 1.1, 0.7, 3.0]
ADV = torch.tensor([[1.0, -1.0, 1.0, 1.0, 5.0]])
MASK = torch.tensor([[1, 1, 1, 1, 0]])
OLD = torch.full((1, 5), -1.0)


def new_logprobs():
    return (OLD + torch.log(torch.tensor([RATIOS]))).requires_grad_(True)


def test_clipped_loss_asymmetric_bounds_and_zero_gradient_where_clipped():
    # clip_low .2, clip_high .28: r is clipped to [.8, 1.28]. Per-token -min(rA, clip(r)A) = max(-rA, -clip(r)A):
    #   r 1.5, A  1: max(-1.5, -1.28) = -1.28  clipped high -> no gradient
    #   r  .5, A -1: max(  .5,   .8) =   .8    clipped low  -> no gradient
    #   r 1.1, A  1: -1.1                      inside
    #   r  .7, A  1: max(-.7, -.8)  =  -.7     below 1 - clip_low, but A > 0: not clipped
    # token_mean = (-1.28 + .8 - 1.1 - .7) / 4 = -.57
    lp = new_logprobs()
    loss, metrics = policy_loss(lp, OLD, ADV, MASK, clip_low=0.2, clip_high=0.28)
    assert loss.item() == pytest.approx(-0.57, abs=1e-6)
    # d/d lp of -A r / 4 = -A r / 4 where unclipped: token 2 -1.1/4, token 3 -.7/4; 0 elsewhere.
    loss.backward()
    assert lp.grad.tolist()[0] == pytest.approx([0, 0, -0.275, -0.175, 0], abs=1e-6)
    assert metrics["clip_frac_high"] == pytest.approx(0.25)
    assert metrics["clip_frac_low"] == pytest.approx(0.25)
    assert metrics["ratio_mean"] == pytest.approx((1.5 + 0.5 + 1.1 + 0.7) / 4)
    assert metrics["ratio_max"] == pytest.approx(1.5)  # the masked 3.0 is not counted
    k3 = sum(r - 1 - math.log(r) for r in RATIOS[:4]) / 4
    assert metrics["approx_kl"] == pytest.approx(k3, abs=1e-6)


def test_symmetric_clip_and_importance_weights():
    # clip_high .2: token 0 becomes -1.2 -> (-1.2 + .8 - 1.1 - .7) / 4 = -.55.
    loss, _ = policy_loss(new_logprobs(), OLD, ADV, MASK)
    assert loss.item() == pytest.approx(-0.55, abs=1e-6)
    # Weights [2, 1, 1, .5, 9]: (-2.4 + .8 - 1.1 - .35) / 4 = -.7625; the masked 9 is ignored.
    w = torch.tensor([[2.0, 1.0, 1.0, 0.5, 9.0]])
    lp = new_logprobs()
    loss, _ = policy_loss(lp, OLD, ADV, MASK, is_weights_B_T=w)
    assert loss.item() == pytest.approx(-0.7625, abs=1e-6)
    loss.backward()
    assert lp.grad.tolist()[0] == pytest.approx([0, 0, -0.275, -0.0875, 0], abs=1e-6)


def test_policy_loss_with_other_aggregations():
    # Per-token losses with clip .2: [-1.2, .8, -1.1, -.7]; one row, so seq mean = token mean;
    # seq_mean_token_sum_norm with max_tokens 8: -2.2 / (1 * 8) = -.275.
    loss, _ = policy_loss(new_logprobs(), OLD, ADV, MASK, aggregation="seq_mean_token_mean")
    assert loss.item() == pytest.approx(-0.55, abs=1e-6)
    loss, _ = policy_loss(new_logprobs(), OLD, ADV, MASK, aggregation="seq_mean_token_sum_norm", max_tokens=8)
    assert loss.item() == pytest.approx(-0.275, abs=1e-6)


def test_three_aggregations_by_hand():
    # Rows: [1, 2, 3 | masked 0], [4 | masked], and a row with no tokens (NaN on it must not leak).
    loss = torch.tensor([[1.0, 2.0, 3.0, 0.0], [4.0, 0.0, 0.0, 0.0], [float("nan"), 9.0, 9.0, 9.0]])
    mask = torch.tensor([[1, 1, 1, 0], [1, 0, 0, 0], [0, 0, 0, 0]])
    # token_mean: (1 + 2 + 3 + 4) / 4 = 2.5
    assert aggregate(loss, mask, "token_mean").item() == pytest.approx(2.5)
    # seq_mean_token_mean: rows 2 and 4, the empty row left out -> 3
    assert aggregate(loss, mask, "seq_mean_token_mean").item() == pytest.approx(3.0)
    # seq_mean_token_sum_norm: 10 / (3 rows * 5) = .666667
    assert aggregate(loss, mask, "seq_mean_token_sum_norm", max_tokens=5).item() == pytest.approx(10 / 15)
    with pytest.raises(ValueError, match="needs max_tokens"):
        aggregate(loss, mask, "seq_mean_token_sum_norm")
    with pytest.raises(ValueError, match="aggregation must be one of"):
        aggregate(loss, mask, "mean")


def test_row_counts_weigh_as_repeated_rows():
    # The first row stands for 3 identical rows and the second for 1: by hand,
    # token_mean (3 * (1 + 2 + 3) + 4) / (3 * 3 + 1) = 2.2; seq_mean (3 * 2 + 4) / 4 = 2.5;
    # seq_mean_token_sum_norm 22 / (4 rows * 5) = 1.1. The same values as the batch with the row repeated.
    loss = torch.tensor([[1.0, 2.0, 3.0, 0.0], [4.0, 0.0, 0.0, 0.0]])
    mask = torch.tensor([[1, 1, 1, 0], [1, 0, 0, 0]])
    counts = torch.tensor([3.0, 1.0])
    repeated = [0, 0, 0, 1]
    for mode, by_hand in (("token_mean", 2.2), ("seq_mean_token_mean", 2.5), ("seq_mean_token_sum_norm", 1.1)):
        merged = aggregate(loss, mask, mode, max_tokens=5, counts_B=counts)
        assert merged.item() == pytest.approx(by_hand)
        assert aggregate(loss[repeated], mask[repeated], mode, max_tokens=5).item() == pytest.approx(by_hand)
    with pytest.raises(ValueError, match="counts_B"):
        aggregate(loss, mask, counts_B=torch.ones(3))


def test_policy_loss_and_its_metrics_with_row_counts_match_the_repeated_batch():
    lp = (OLD + torch.log(torch.tensor([RATIOS, [1.0, 1.4, 0.6, 1.0, 1.0]]))).requires_grad_(True)
    old, adv, mask = OLD.expand(2, 5), torch.cat([ADV, -ADV]), torch.cat([MASK, MASK])
    merged, m_merged = policy_loss(lp, old, adv, mask, 0.2, 0.28, counts_B=torch.tensor([1.0, 2.0]))
    merged.backward()
    grad = lp.grad.clone()
    lp.grad = None
    rows = [0, 1, 1]
    full, m_full = policy_loss(lp[rows], old[rows], adv[rows], mask[rows], 0.2, 0.28)
    full.backward()
    assert merged.item() == pytest.approx(full.item())
    assert m_merged == pytest.approx(m_full)
    torch.testing.assert_close(grad, lp.grad)


def test_kl_estimators_by_hand():
    # pi = .5, ref = .25 on the token: d = ln .25 - ln .5 = -ln 2.
    # k1 = ln 2 = .693147; k2 = (ln 2)^2 / 2 = .240227; k3 = e^d - d - 1 = .5 + ln 2 - 1 = .193147.
    lp, ref = torch.log(torch.tensor([[0.5, 0.3]])), torch.log(torch.tensor([[0.25, 0.3]]))
    ln2 = math.log(2)
    assert kl_penalty(lp, ref, "k1").tolist()[0] == pytest.approx([ln2, 0], abs=1e-6)
    assert kl_penalty(lp, ref, "k2").tolist()[0] == pytest.approx([ln2**2 / 2, 0], abs=1e-6)
    assert kl_penalty(lp, ref, "k3").tolist()[0] == pytest.approx([0.5 + ln2 - 1, 0], abs=1e-6)
    # Same aggregation as the policy loss: token mean over the two tokens -> k3 / 2.
    assert aggregate(kl_penalty(lp, ref), torch.ones(1, 2)).item() == pytest.approx((ln2 - 0.5) / 2, abs=1e-6)
    with pytest.raises(ValueError, match="kl kind must be one of"):
        kl_penalty(lp, ref, "k4")


def test_the_trainers_entropy_is_log_v_when_uniform_and_that_of_a_known_distribution():
    """`token_logprobs(..., with_entropy=True)`: the entropy of the distribution each token
    was drawn from, at the temperature, aligned with the logprobs (0 at position 0)."""
    from types import SimpleNamespace

    from train.batching import TokenBatch, token_logprobs

    class FixedLogits(torch.nn.Module):  # the same next-token logits at every position
        def __init__(self, logits_V):
            super().__init__()
            self.logits_V = logits_V

        def forward(self, input_ids, attention_mask=None, use_cache=False):
            return SimpleNamespace(logits=self.logits_V.expand(*input_ids.shape, -1))

    ids = torch.tensor([[0, 1, 2], [2, 1, 0]])
    batch = TokenBatch(ids, torch.ones_like(ids), torch.ones(2, 3), torch.zeros(2, 3))
    _, h = token_logprobs(FixedLogits(torch.zeros(7)), batch, with_entropy=True, chunk=1)
    torch.testing.assert_close(h, torch.tensor([[0.0, math.log(7), math.log(7)]] * 2))
    # p = (.5, .25, .25): H = .5 ln 2 + 2 * .25 ln 4 = 1.5 ln 2; adding a constant changes nothing.
    lp, h = token_logprobs(FixedLogits(torch.log(torch.tensor([0.5, 0.25, 0.25])) + 3.0), batch, with_entropy=True)
    torch.testing.assert_close(h[:, 1:], torch.full((2, 2), 1.5 * math.log(2)))
    torch.testing.assert_close(lp[0, 1:], torch.log(torch.tensor([0.25, 0.25])))  # tokens 1 and 2
    # at temperature 2 the logits are halved: p ~ (sqrt .5, sqrt .25, sqrt .25)
    _, hot = token_logprobs(FixedLogits(torch.log(torch.tensor([0.5, 0.25, 0.25]))), batch, 2.0, with_entropy=True)
    q = torch.tensor([0.5, 0.25, 0.25]).sqrt()
    q = q / q.sum()
    assert hot[0, 1].item() == pytest.approx(float(-(q * q.log()).sum()), abs=1e-6)


def test_high_entropy_mask_keeps_the_top_share_by_hand():
    # Sampled entropies 0.1 0.5 0.9 | 0.7 0.2 0.4 (the 0.0 and 0.3 are masked out).
    entropy = torch.tensor([[0.1, 0.5, 0.9, 0.0], [0.3, 0.7, 0.2, 0.4]])
    mask = torch.tensor([[1, 1, 1, 0], [0, 1, 1, 1.0]])
    # 40% of 6 tokens is 2.4: the three highest, 0.9 0.7 0.5.
    assert high_entropy_mask(entropy, mask, 0.4).tolist() == [[0, 1, 1, 0], [0, 1, 0, 0]]
    assert high_entropy_mask(entropy, mask, 0.5).tolist() == [[0, 1, 1, 0], [0, 1, 0, 0]]
    assert high_entropy_mask(entropy, mask, 0.1).tolist() == [[0, 0, 1, 0], [0, 0, 0, 0]]
    assert high_entropy_mask(entropy, mask, 1.0).tolist() == mask.tolist()
    # Row 2 standing for 5 rows: 18 tokens, 40% is 7.2; 0.9 (1) 0.7 (6) 0.5 (7) 0.4 (12).
    assert high_entropy_mask(entropy, mask, 0.4, torch.tensor([1.0, 5.0])).tolist() == [[0, 1, 1, 0], [0, 1, 0, 1]]
    # A tie with the last kept token is kept too; a masked position never is, however high.
    tied = torch.tensor([[0.5, 0.5, 0.5, 9.0]])
    assert high_entropy_mask(tied, torch.tensor([[1, 1, 1, 0.0]]), 0.3).tolist() == [[1, 1, 1, 0]]
    for bad in (0.0, 1.5, -0.2):
        with pytest.raises(ValueError, match="top_share"):
            high_entropy_mask(entropy, mask, bad)


def test_truncated_is_weights_cap_and_detach():
    # trainer_old - sampler = [0, ln 1.5, ln 3, -ln 2] -> [1, 1.5, min(3, 2) = 2, .5].
    sampler = torch.tensor([[-1.0, -1.0, -1.0, -1.0]], requires_grad=True)
    trainer = sampler.detach() + torch.log(torch.tensor([[1.0, 1.5, 3.0, 0.5]]))
    w = truncated_is_weights(sampler, trainer, cap=2.0)
    assert w.tolist()[0] == pytest.approx([1.0, 1.5, 2.0, 0.5], abs=1e-6)
    assert not w.requires_grad


def test_non_finite_loss_or_gradient_is_detected():
    layer = torch.nn.Linear(2, 1)
    assert grads_are_finite(layer.parameters())  # no gradients yet: nothing to corrupt
    loss = layer(torch.ones(1, 2)).sum()
    loss.backward()
    assert is_finite_step(loss, layer.parameters())
    assert not is_finite_step(torch.tensor(float("inf")), layer.parameters())
    layer.bias.grad[0] = float("nan")
    assert not grads_are_finite(layer.parameters())
    assert not is_finite_step(loss, layer.parameters())
