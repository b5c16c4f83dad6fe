"""The GRPO update's math on hand-built batches: merged rows, the KL term, bf16 autocast,
std scaling, truncated importance sampling, minibatches, forking tokens and the SFT term."""

import pytest
import torch

from train.loss import LossConfig
from train.update import Advantages, OptimConfig, policy_update


def update(policy, batch, adv_B_T, optimizer, *, autocast=None, demos=None, optim=None, **loss):
    """`policy_update` of `batch` with the given `LossConfig` fields, at temperature 1."""
    return policy_update(policy, Advantages(batch, adv_B_T, [0.0] * batch.input_ids.shape[0]), LossConfig(**loss),
                         OptimConfig(**(optim or {})), optimizer, temperature=1.0, seed=0, autocast=autocast, demos=demos)


@pytest.mark.parametrize("aggregation", ["token_mean", "seq_mean_token_mean", "seq_mean_token_sum_norm"])
def test_identical_rows_trained_once_give_the_update_of_the_whole_batch(tiny_model_dir, aggregation):
    """A trajectory sampled three times and trained once with count 3 moves the weights as
    the three copies do (KL and entropy terms included), and the logged metrics agree."""
    from agent.types import Segment
    from train.batching import collate_segments
    from train.policy import load_policy
    from train.update import train_rows

    segs = [Segment(context_ids=[5, 6, 7], response_ids=[8 + i, 9, 10 + i, 11], loss_mask=[1, 1, 0, 1],
                    logprobs=[-2.0, -1.5, 0.0, -3.0]) for i in (0, 1, 0, 2, 0)]
    adv_B_T = torch.tensor([[0, 0, 0, a, a, 0, a] for a in (1.0, -0.5, 1.0, 0.3, 1.0)])
    batch = collate_segments(segs, pad_id=0)

    def updated(merge):
        policy = load_policy(tiny_model_dir, need_reference=True, dtype=torch.float32)
        with torch.no_grad():
            for p in policy.model.parameters():
                p.add_(0.01 * torch.randn(p.shape, generator=torch.Generator().manual_seed(p.numel())))
        optimizer = torch.optim.SGD(policy.model.parameters(), lr=1e-2)
        loss = LossConfig(aggregation=aggregation, kl_coef=0.1, entropy_coef=0.01)
        if merge:
            stats = policy_update(policy, Advantages(batch, adv_B_T, [0.0] * 5), loss, OptimConfig(), optimizer,
                                  temperature=1.0, seed=0)
        else:  # the baseline: every row trained, each standing for itself
            stats = train_rows(policy, batch, adv_B_T, torch.ones(5), loss, OptimConfig(), optimizer, temperature=1.0,
                               seed=0, max_tokens=int(batch.attention_mask.sum(1).max()))
        return torch.cat([p.detach().flatten() for p in policy.model.parameters()]), stats

    merged, stats = updated(True)
    whole, stats_whole = updated(False)
    assert stats["rows_distinct"] == 3 / 5
    torch.testing.assert_close(merged, whole)
    for key in ("loss", "entropy", "kl_ref", "approx_kl", "ratio_mean", "grad_norm"):
        assert stats[key] == pytest.approx(stats_whole[key], rel=1e-4, abs=1e-7), key


@pytest.mark.parametrize("estimator", ["k2", "k3"])
def test_the_kl_term_pulls_a_moved_policy_back_to_its_reference(tiny_model_dir, estimator):
    """With no advantage at all, the update is the KL term's alone: it shrinks the KL."""
    from agent.types import Segment
    from train.batching import collate_segments
    from train.policy import load_policy

    torch.manual_seed(0)
    policy = load_policy(tiny_model_dir, need_reference=True, dtype=torch.float32)
    with torch.no_grad():
        for p in policy.model.parameters():
            p.add_(0.005 * torch.randn_like(p))
    segs = [Segment(context_ids=[5, 6, 7], response_ids=[8 + i, 9, 10 + i, 11], loss_mask=[1, 1, 0, 1],
                    logprobs=[-2.0, -1.5, 0.0, -3.0]) for i in range(4)]
    batch = collate_segments(segs, pad_id=0)
    optimizer = torch.optim.SGD(policy.model.parameters(), lr=0.02)  # small plain gradient steps
    kls = []
    for _ in range(5):
        stats = update(policy, batch, torch.zeros(batch.input_ids.shape), optimizer, kl_coef=1.0, kl_estimator=estimator)
        kls.append(stats["kl_ref"])
        assert stats["reference_s"] > 0
    assert kls[0] > 0 and all(b < a for a, b in zip(kls, kls[1:])) and kls[-1] < 0.5 * kls[0], kls
    with pytest.raises(ValueError, match="kl_estimator must be one of k1, k2, k3, got 'full'"):
        LossConfig(kl_estimator="full")


def test_bf16_autocast_update_follows_the_float32_one(tiny_model_dir):
    """Under bf16 autocast the update starts at ratio 1 up to rounding and moves the weights
    the way the float32 update does; without it the first ratio is exactly 1."""
    from agent.types import Segment
    from train.batching import collate_segments, token_logprobs
    from train.policy import load_policy

    torch.manual_seed(0)
    ids = [torch.randint(5, 200, (12,)).tolist() for _ in range(6)]
    plain = collate_segments([Segment(context_ids=r[:6], response_ids=r[6:], loss_mask=[1] * 6,
                                     logprobs=[0.0] * 6) for r in ids], pad_id=0)
    sampler = load_policy(tiny_model_dir, need_reference=False, dtype=torch.float32).model
    with torch.no_grad():
        old_B_L = token_logprobs(sampler, plain, 1.0)
    segs = [Segment(context_ids=r[:6], response_ids=r[6:], loss_mask=[1] * 6, logprobs=old_B_L[i, 6:12].tolist())
            for i, r in enumerate(ids)]
    batch = collate_segments(segs, pad_id=0)
    adv_B_T = torch.tensor([[0.0] * 6 + [s] * 6 for s in (1.0, -1.0, 0.5, -0.5, 1.0, -1.0)])

    def moved(autocast):
        policy = load_policy(tiny_model_dir, need_reference=True, dtype=torch.float32)
        before = torch.cat([p.detach().flatten() for p in policy.model.parameters()])
        optimizer = torch.optim.SGD(policy.model.parameters(), lr=1e-3)
        stats = update(policy, batch, adv_B_T, optimizer, autocast=autocast, kl_coef=0.1)
        return torch.cat([p.detach().flatten() for p in policy.model.parameters()]) - before, stats

    exact, stats32 = moved(None)
    rounded, stats16 = moved(torch.bfloat16)
    assert stats32["ratio_mean"] == pytest.approx(1.0, abs=1e-6) and stats32["approx_kl"] == pytest.approx(0.0, abs=1e-6)
    assert stats16["ratio_mean"] == pytest.approx(1.0, abs=0.02) and stats16["ratio_mean"] != stats32["ratio_mean"]
    assert torch.nn.functional.cosine_similarity(exact, rounded, dim=0) > 0.95


def test_scale_by_std_false_centres_the_group_rewards_only():
    from agent.types import Example, Segment, Step, Trajectory, TrajectoryGroup
    from rewards.base import Score
    from train.advantages import AdvantageConfig
    from train.update import advantages_for

    def traj(sample, ok):
        seg = Segment(context_ids=[5, 6], response_ids=[7, 8, 9, 10], loss_mask=[1, 1, 1, 1], logprobs=[-1.0] * 4)
        steps = [Step(kind="search", text="q", span=(0, 2)), Step(kind="answer", text="a" if ok else "b", span=(2, 4))]
        return Trajectory(example_id="e", group_id="g", sample=sample, segments=[seg], steps=steps,
                          answer="a" if ok else "b")

    group = TrajectoryGroup(Example("e", "?", ["a"]), [traj(0, True), traj(1, False)],
                            [Score(1.0, [0.0, 0.0]), Score(0.0, [0.0, 0.0])])
    for estimator in ("process", "grpo"):  # the outcome part alone here: both agree
        centred = advantages_for([group], AdvantageConfig(estimator, scale_by_std=False, outcome_credit="sequence"),
                                 pad_id=0).adv_B_T
        scaled = advantages_for([group], AdvantageConfig(estimator, outcome_credit="sequence"), pad_id=0).adv_B_T
        # rewards 1 and 0: r - mean = +-0.5; divided by their std (0.7071) = +-0.7071; negatives x0.3
        torch.testing.assert_close(centred, torch.tensor([[0.0, 0.0] + [0.5] * 4, [0.0, 0.0] + [-0.15] * 4]))
        torch.testing.assert_close(scaled, torch.tensor([[0.0, 0.0] + [0.70711] * 4, [0.0, 0.0] + [-0.21213] * 4]),
                                   atol=1e-4, rtol=0)
    with pytest.raises(ValueError, match="estimator must be one of process, grpo, rloo"):
        AdvantageConfig("dr_grpo")


def test_truncated_importance_sampling_weights_tokens_by_the_trainer_over_sampler_ratio(tiny_model_dir):
    """With tis_cap, the first pass's ratio is 1 against the trainer's own logprobs and each
    token's loss is weighted by min(pi_trainer / pi_sampler, cap): the loss is then
    -sum(w A) / n. Computed from the same forward (one pass of one minibatch) or from a
    pass before the update (two passes), the weights agree."""
    from agent.types import Segment
    from train.batching import collate_segments, token_logprobs
    from train.loss import truncated_is_weights
    from train.policy import load_policy

    segs = [Segment(context_ids=[5, 6, 7], response_ids=[8 + i, 9, 10 + i, 11], loss_mask=[1, 1, 0, 1],
                    logprobs=[-2.0 - i, -1.5, 0.0, -9.0 + i]) for i in range(3)]
    adv_B_T = torch.tensor([[0, 0, 0, a, a, 0, a] for a in (1.0, -0.5, 0.7)])
    batch = collate_segments(segs, pad_id=0)
    mask = batch.loss_mask > 0
    policy = load_policy(tiny_model_dir, need_reference=False, dtype=torch.float32)
    with torch.no_grad():
        trainer_B_T = token_logprobs(policy.model, batch, temperature=1.0)
    w_B_T = truncated_is_weights(batch.old_logprobs, trainer_B_T, cap=2.0)
    assert (w_B_T[mask] == 2.0).any() and (w_B_T[mask] < 2.0).any()  # some truncated, some not
    expected = float(-(w_B_T * adv_B_T)[mask].sum() / mask.sum())

    def first_pass(passes):
        policy = load_policy(tiny_model_dir, need_reference=False, dtype=torch.float32)
        optimizer = torch.optim.SGD(policy.model.parameters(), lr=0.0)  # the weights stay: every pass is the first
        return update(policy, batch, adv_B_T, optimizer, kl_coef=0.0, tis_cap=2.0, optim={"updates_per_batch": passes})

    for stats in (first_pass(1), first_pass(2)):
        assert stats["loss"] == pytest.approx(expected, rel=1e-5)
        assert stats["ratio_mean"] == pytest.approx(1.0) and stats["clip_frac_high"] == 0.0
        gap = (trainer_B_T - batch.old_logprobs)[mask].abs()
        assert stats["sampler_gap"] == pytest.approx(float(gap.mean()), rel=1e-5)
        assert stats["sampler_gap_max"] == pytest.approx(float(gap.max()), rel=1e-5)
        assert stats["tis_truncated"] == pytest.approx(float((w_B_T[mask] == 2.0).float().mean()))
    off = load_policy(tiny_model_dir, need_reference=False, dtype=torch.float32)  # tis_cap 0: the sampler's ratio
    stats = update(off, batch, adv_B_T, torch.optim.SGD(off.model.parameters(), lr=0.0), kl_coef=0.0, tis_cap=0.0)
    assert "sampler_gap" not in stats and stats["loss"] != pytest.approx(expected, rel=1e-3)


def test_minibatches_split_a_pass_evenly():
    from train.update import minibatch_count

    sizes = lambda n, k: [len(mb) for mb in torch.tensor_split(torch.arange(n), minibatch_count(n, k))]  # noqa: E731
    assert sizes(83, 64) == [42, 41] and sizes(128, 64) == [64, 64] and sizes(5, 128) == [5]
    assert minibatch_count(0, 8) == 0
    with pytest.raises(ValueError, match="minibatch_rows must be >= 1"):
        minibatch_count(3, 0)


def test_the_policy_gradient_on_forking_tokens_only_is_the_update_with_the_rest_of_the_advantages_zeroed(tiny_model_dir):
    """`entropy_top_share` < 1 trains the policy gradient on the highest-entropy tokens only:
    the same weights as the full update of advantages zeroed on every other token (the KL
    term and the token mean still cover every sampled token), and unlike the full update."""
    from agent.types import Segment
    from train.batching import collate_segments, token_logprobs
    from train.loss import high_entropy_mask
    from train.policy import load_policy

    segs = [Segment(context_ids=[5, 6, 7], response_ids=[8 + i, 9, 10 + i, 11, 12 + i], loss_mask=[1, 1, 0, 1, 1],
                    logprobs=[-2.0, -1.5, 0.0, -3.0, -1.0]) for i in range(4)]
    batch = collate_segments(segs, pad_id=0)
    adv_B_T = torch.tensor([[0, 0, 0, a, a, 0, a, a] for a in (1.0, -0.5, 0.7, -1.2)])

    def updated(adv, share):
        policy = load_policy(tiny_model_dir, need_reference=True, dtype=torch.float32)
        with torch.no_grad():
            for p in policy.model.parameters():
                p.add_(0.01 * torch.randn(p.shape, generator=torch.Generator().manual_seed(p.numel())))
        with torch.no_grad():
            _, entropy = token_logprobs(policy.model, batch, 1.0, with_entropy=True, only_loss=True)
        optimizer = torch.optim.SGD(policy.model.parameters(), lr=1e-2)
        stats = update(policy, batch, adv, optimizer, entropy_top_share=share, kl_coef=0.1)
        return torch.cat([p.detach().flatten() for p in policy.model.parameters()]), stats, entropy

    forks_only, stats, entropy = updated(adv_B_T, 0.25)
    forks = high_entropy_mask(entropy, batch.loss_mask, 0.25)
    assert 0 < forks.sum() < batch.loss_mask.sum()
    assert stats["pg_token_share"] == pytest.approx(float(forks.sum() / batch.loss_mask.sum()))
    zeroed, stats_zeroed, _ = updated(adv_B_T * forks, 1.0)
    everything, _, _ = updated(adv_B_T, 1.0)
    torch.testing.assert_close(forks_only, zeroed)
    assert stats["kl_ref"] == pytest.approx(stats_zeroed["kl_ref"])
    assert not torch.allclose(forks_only, everything)
    with pytest.raises(ValueError, match="entropy_top_share"):
        LossConfig(entropy_top_share=0.0)


def test_the_supervised_term_on_demonstrations_adds_its_gradient_to_the_step(tiny_model_dir):
    """With no advantage and no KL term, an update with `sft_coef` and demonstrations is
    one plain gradient step on sft_coef x their mean cross-entropy, and logs that value."""
    from agent.types import Segment
    from train.batching import collate_segments
    from train.policy import load_policy
    from train.batching import sft_losses

    segs = [Segment(context_ids=[5, 6, 7], response_ids=[8 + i, 9, 10 + i, 11], loss_mask=[1, 1, 0, 1],
                    logprobs=[-2.0, -1.5, 0.0, -3.0]) for i in range(3)]
    batch = collate_segments(segs, pad_id=0)
    demos = collate_segments([Segment(context_ids=[5, 9], response_ids=[13, 14, 15], loss_mask=[1, 0, 1],
                                      logprobs=[0.0] * 3), Segment(context_ids=[6], response_ids=[16, 17],
                                                                  loss_mask=[1, 1], logprobs=[0.0] * 2)], pad_id=0)
    policy = load_policy(tiny_model_dir, need_reference=False, dtype=torch.float32)
    before = [p.detach().clone() for p in policy.model.parameters()]
    policy.model.zero_grad()
    expected_nll = sft_losses(policy.model, demos)[0]
    (0.5 * expected_nll).backward()
    grads = [p.grad.clone() if p.grad is not None else torch.zeros_like(p) for p in policy.model.parameters()]
    policy.model.zero_grad()
    optimizer = torch.optim.SGD(policy.model.parameters(), lr=0.1)
    stats = update(policy, batch, torch.zeros(batch.input_ids.shape), optimizer, demos=demos, sft_coef=0.5, kl_coef=0.0,
                   optim={"max_grad_norm": 1e9})
    assert stats["demo_nll"] == pytest.approx(expected_nll.item(), rel=1e-5)
    for p, p0, g in zip(policy.model.parameters(), before, grads):
        torch.testing.assert_close(p.detach(), p0 - 0.1 * g)
    assert any(g.abs().sum() > 0 for g in grads)


def test_per_step_advantages_are_the_means_over_each_steps_sampled_tokens():
    from agent.types import Segment, Step, Trajectory
    from train.batching import collate_segments

    # two segments (a drop after step 1); step 1's span holds an injected token
    seg0 = Segment([5, 6], [7, 8, 9, 10], loss_mask=[1, 1, 0, 1], logprobs=[-1.0, -1.0, 0.0, -1.0])
    seg1 = Segment([5, 6, 7], [11, 12], loss_mask=[1, 1], logprobs=[-1.0, -1.0])
    traj = Trajectory("q", "q", 0, [seg0, seg1], [Step("search", "a", (0, 2)), Step("judge", "b", (2, 4)),
                                                  Step("answer", "c", (0, 2), segment=1)])
    batch = collate_segments([seg0, seg1], pad_id=0)
    adv_B_T = torch.tensor([[0, 0, 1.0, 3.0, 0, 0.5], [0, 0, 0, -2.0, -4.0, 0]])
    assert Advantages(batch, adv_B_T, [0.0]).per_step([traj]) == [[2.0, 0.5, -3.0]]
    injected = Trajectory("q", "q", 0, [seg0], [Step("search", "a", (2, 3))])
    assert Advantages(collate_segments([seg0], 0), adv_B_T[:1], [0.0]).per_step([injected]) == [[None]]
