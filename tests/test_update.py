"""The GRPO update's math on hand-built batches: rows left out or merged, the KL term, bf16
autocast, settled groups, std scaling, truncated importance sampling and minibatches."""

import pytest
import torch


def test_rows_without_advantage_are_left_out_of_the_update(tiny_model_dir):
    """Skipping all-zero rows gives exactly the update of a batch holding only the others."""
    import torch

    from agent.types import Segment
    from train.batching import collate_segments
    from train.grpo import GRPOConfig
    from train.policy import load_policy
    from train.update import Advantages, policy_update

    segs = [Segment(context_ids=[5, 6, 7], response_ids=[8 + i, 9, 10 + i, 11], loss_mask=[1, 1, 0, 1],
                    logprobs=[-2.0, -1.5, 0.0, -3.0]) for i in range(4)]
    adv_rows = torch.tensor([[0.0] * 7, [0, 0, 0, 1.0, 1.0, 0, 1.0], [0.0] * 7, [0, 0, 0, -0.5, -0.5, 0, -0.5]])

    def updated(rows, skip):
        policy = load_policy(tiny_model_dir, need_reference=False, dtype="float32")
        cfg = GRPOConfig(skip_zero_advantage=skip, kl_coef=0.0, learning_rate=1e-2, temperature=1.0)
        batch = collate_segments([segs[r] for r in rows], pad_id=0)
        optimizer = torch.optim.AdamW(policy.model.parameters(), lr=cfg.learning_rate)
        stats = policy_update(policy, Advantages(batch, adv_rows[rows], [0.0] * len(rows)), cfg, optimizer, seed=0)
        return torch.cat([p.detach().flatten() for p in policy.model.parameters()]), stats

    skipped, stats = updated([0, 1, 2, 3], skip=True)
    only_signal, _ = updated([1, 3], skip=False)
    everything, _ = updated([0, 1, 2, 3], skip=False)
    assert stats["rows_trained"] == 0.5
    torch.testing.assert_close(skipped, only_signal)
    assert not torch.allclose(skipped, everything)  # the token mean differs: zero rows dilute it
    untouched, stats = updated([0, 2], skip=True)
    assert stats["rows_trained"] == 0.0 and "loss" not in stats



@pytest.mark.parametrize("aggregation", ["token_mean", "seq_mean_token_mean", "dr_grpo"])
def test_identical_rows_trained_once_give_the_update_of_the_whole_batch(tiny_model_dir, aggregation):
    """A trajectory sampled three times and trained once with count 3 moves the weights as
    the three copies do (KL and entropy terms included), and the logged metrics agree."""
    import torch

    from agent.types import Segment
    from train.batching import collate_segments
    from train.grpo import GRPOConfig
    from train.policy import load_policy
    from train.update import Advantages, policy_update

    segs = [Segment(context_ids=[5, 6, 7], response_ids=[8 + i, 9, 10 + i, 11], loss_mask=[1, 1, 0, 1],
                    logprobs=[-2.0, -1.5, 0.0, -3.0]) for i in (0, 1, 0, 2, 0)]
    adv_B_T = torch.tensor([[0, 0, 0, a, a, 0, a] for a in (1.0, -0.5, 1.0, 0.3, 1.0)])
    batch = collate_segments(segs, pad_id=0)

    def updated(merge):
        policy = load_policy(tiny_model_dir, need_reference=True, dtype="float32")
        with torch.no_grad():
            for p in policy.model.parameters():
                p.add_(0.01 * torch.randn(p.shape, generator=torch.Generator().manual_seed(p.numel())))
        cfg = GRPOConfig(merge_duplicate_rows=merge, aggregation=aggregation, kl_coef=0.1, entropy_coef=0.01,
                         autocast="none", learning_rate=1e-2, temperature=1.0)
        optimizer = torch.optim.SGD(policy.model.parameters(), lr=cfg.learning_rate)
        stats = policy_update(policy, Advantages(batch, adv_B_T, [0.0] * 5), cfg, optimizer, seed=0)
        return torch.cat([p.detach().flatten() for p in policy.model.parameters()]), stats

    merged, stats = updated(True)
    whole, stats_whole = updated(False)
    assert stats["rows_distinct"] == 3 / 5 and stats_whole["rows_distinct"] == 1.0
    torch.testing.assert_close(merged, whole)
    for key in ("loss", "entropy", "kl_ref", "approx_kl", "ratio_mean", "grad_norm"):
        assert stats[key] == pytest.approx(stats_whole[key], rel=1e-4, abs=1e-7), key



def test_exact_kl_refuses_a_vocabulary_too_large_to_hold_and_unknown_estimators_are_refused(tiny_model_dir, monkeypatch):
    import torch

    import train.update
    from agent.types import Segment
    from train.batching import collate_segments
    from train.grpo import GRPOConfig
    from train.policy import load_policy
    from train.update import Advantages, policy_update

    with pytest.raises(ValueError, match="kl_estimator must be one of k1, k2, k3, full; got 'k4'"):
        GRPOConfig(kl_estimator="k4")
    policy = load_policy(tiny_model_dir, need_reference=True, dtype="float32")
    segs = [Segment(context_ids=[5, 6], response_ids=[8, 9, 10], loss_mask=[1, 0, 1], logprobs=[-2.0, 0.0, -3.0])]
    batch = collate_segments(segs, pad_id=0)
    monkeypatch.setattr(train.update, "FULL_KL_MAX_BYTES", 1000)  # 2 positions x the vocabulary x 4 bytes is more
    cfg = GRPOConfig(kl_coef=0.1, kl_estimator="full")
    with pytest.raises(ValueError, match="2 trained positions x .* use k3"):
        policy_update(policy, Advantages(batch, torch.zeros(batch.input_ids.shape), [0.0]), cfg,
                      torch.optim.SGD(policy.model.parameters(), lr=0.0), seed=0)


@pytest.mark.parametrize("estimator", ["k3", "full"])
def test_the_kl_term_pulls_a_moved_policy_back_to_its_reference(tiny_model_dir, estimator):
    """With no advantage at all, the update is the KL term's alone: it shrinks the KL."""
    import torch

    from agent.types import Segment
    from train.batching import collate_segments
    from train.grpo import GRPOConfig
    from train.policy import load_policy
    from train.update import Advantages, policy_update

    torch.manual_seed(0)
    policy = load_policy(tiny_model_dir, need_reference=True, dtype="float32")
    with torch.no_grad():
        for p in policy.model.parameters():
            p.add_(0.005 * torch.randn_like(p))
    segs = [Segment(context_ids=[5, 6, 7], response_ids=[8 + i, 9, 10 + i, 11], loss_mask=[1, 1, 0, 1],
                    logprobs=[-2.0, -1.5, 0.0, -3.0]) for i in range(4)]
    batch = collate_segments(segs, pad_id=0)
    cfg = GRPOConfig(kl_coef=1.0, kl_estimator=estimator, skip_zero_advantage=True, temperature=1.0)
    optimizer = torch.optim.SGD(policy.model.parameters(), lr=0.02)  # small plain gradient steps
    advantages = Advantages(batch, torch.zeros(batch.input_ids.shape), [0.0] * len(segs))
    kls = []
    for _ in range(5):
        stats = policy_update(policy, advantages, cfg, optimizer, seed=0)
        kls.append(stats["kl_ref"])
        assert stats["rows_trained"] == 1.0  # rows are not skipped while a KL term trains them
        assert stats["reference_s"] > 0
    # k3 on the batch's fixed tokens moves them fast; the exact KL's gradient spreads over the vocabulary
    shrink = {"k3": 0.5, "full": 0.8}[estimator]
    assert kls[0] > 0 and all(b < a for a, b in zip(kls, kls[1:])) and kls[-1] < shrink * kls[0], kls



def test_bf16_autocast_update_follows_the_float32_one(tiny_model_dir):
    """Under bf16 autocast the update starts at ratio 1 up to rounding and moves the weights
    the way the float32 update does; without it the first ratio is exactly 1."""
    import torch

    from agent.types import Segment
    from train.batching import collate_segments, token_logprobs
    from train.grpo import GRPOConfig
    from train.policy import load_policy
    from train.update import Advantages, policy_update

    torch.manual_seed(0)
    ids = [torch.randint(5, 200, (12,)).tolist() for _ in range(6)]
    plain = collate_segments([Segment(context_ids=r[:6], response_ids=r[6:], loss_mask=[1] * 6,
                                     logprobs=[0.0] * 6) for r in ids], pad_id=0)
    sampler = load_policy(tiny_model_dir, need_reference=False, dtype="float32").model
    with torch.no_grad():
        old_B_L = token_logprobs(sampler, plain, 1.0)
    segs = [Segment(context_ids=r[:6], response_ids=r[6:], loss_mask=[1] * 6, logprobs=old_B_L[i, 6:12].tolist())
            for i, r in enumerate(ids)]
    batch = collate_segments(segs, pad_id=0)
    adv_B_T = torch.tensor([[0.0] * 6 + [s] * 6 for s in (1.0, -1.0, 0.5, -0.5, 1.0, -1.0)])

    def moved(autocast):
        policy = load_policy(tiny_model_dir, need_reference=True, dtype="float32")
        before = torch.cat([p.detach().flatten() for p in policy.model.parameters()])
        cfg = GRPOConfig(autocast=autocast, kl_coef=0.1, learning_rate=1e-3, temperature=1.0)
        optimizer = torch.optim.SGD(policy.model.parameters(), lr=cfg.learning_rate)
        stats = policy_update(policy, Advantages(batch, adv_B_T, [0.0] * 6), cfg, optimizer, seed=0)
        return torch.cat([p.detach().flatten() for p in policy.model.parameters()]) - before, stats

    exact, stats32 = moved("none")
    rounded, stats16 = moved("bf16")
    assert stats32["ratio_mean"] == pytest.approx(1.0, abs=1e-6) and stats32["approx_kl"] == pytest.approx(0.0, abs=1e-6)
    assert stats16["ratio_mean"] == pytest.approx(1.0, abs=0.02) and stats16["ratio_mean"] != stats32["ratio_mean"]
    assert torch.nn.functional.cosine_similarity(exact, rounded, dim=0) > 0.95
    with pytest.raises(ValueError, match="autocast"):
        moved("fp8")



def test_settled_groups_carry_no_advantage_and_leave_the_update(tiny_model_dir):
    """A group whose samples all scored alike gets no advantage (its step rewards included)
    and, without KL or entropy terms, its rows are not trained on."""
    import torch

    from agent.types import Segment, Step, Trajectory
    from rewards.base import Score
    from train.grpo import GRPOConfig
    from train.policy import load_policy
    from train.update import advantages_for, policy_update, settled_groups

    ids = torch.tensor([0, 0, 1, 1, 2, 2])
    assert settled_groups([1.0, 1.0, 0.0, 1.0, 0.5, 0.5], ids).tolist() == [True, True, False, False, True, True]

    def traj(group, sample, ok):
        seg = Segment(context_ids=[5, 6], response_ids=[7, 8, 9, 10], loss_mask=[1, 1, 1, 1], logprobs=[-1.0] * 4)
        steps = [Step(kind="search", text="q", span=(0, 2)), Step(kind="answer", text="a" if ok else "b", span=(2, 4))]
        return Trajectory(example_id="e", group_id=group, sample=sample, segments=[seg], steps=steps,
                          answer="a" if ok else "b")

    trajs = [traj("g0", 0, True), traj("g0", 1, True), traj("g1", 0, True), traj("g1", 1, False)]
    # the settled group's searches differ, so its step rewards alone would give it an advantage
    scores = [Score(1.5, [0.5, 1.0]), Score(1.5, [0.0, 1.5]), Score(1.0, [0.0, 1.0]), Score(0.0, [0.0, 0.0])]
    cfg = GRPOConfig(skip_settled_groups=True, kl_coef=0.0)
    kept = advantages_for(trajs, scores, cfg, pad_id=0)
    full = advantages_for(trajs, scores, GRPOConfig(), pad_id=0)
    assert full.adv_B_T[:2].abs().sum() > 0
    assert kept.adv_B_T[:2].abs().sum() == 0
    torch.testing.assert_close(kept.adv_B_T[2:], full.adv_B_T[2:])
    policy = load_policy(tiny_model_dir, need_reference=False, dtype="float32")
    optimizer = torch.optim.AdamW(policy.model.parameters(), lr=1e-3)
    stats = policy_update(policy, kept, cfg, optimizer, seed=0)
    assert stats["rows_trained"] == 0.5



def test_scale_by_std_false_centres_the_group_rewards_only():
    import torch

    from agent.types import Segment, Step, Trajectory
    from rewards.base import Score
    from train.grpo import GRPOConfig
    from train.update import advantages_for

    def traj(sample, ok):
        seg = Segment(context_ids=[5, 6], response_ids=[7, 8, 9, 10], loss_mask=[1, 1, 1, 1], logprobs=[-1.0] * 4)
        steps = [Step(kind="search", text="q", span=(0, 2)), Step(kind="answer", text="a" if ok else "b", span=(2, 4))]
        return Trajectory(example_id="e", group_id="g", sample=sample, segments=[seg], steps=steps,
                          answer="a" if ok else "b")

    trajs, scores = [traj(0, True), traj(1, False)], [Score(1.0, [0.0, 0.0]), Score(0.0, [0.0, 0.0])]
    centred = advantages_for(trajs, scores, GRPOConfig(scale_by_std=False, outcome_credit="sequence"), pad_id=0).adv_B_T
    scaled = advantages_for(trajs, scores, GRPOConfig(outcome_credit="sequence"), pad_id=0).adv_B_T
    # rewards 1 and 0: r - mean = +-0.5; divided by their std (0.7071) = +-0.7071; negatives x0.3
    torch.testing.assert_close(centred, torch.tensor([[0.0, 0.0] + [0.5] * 4, [0.0, 0.0] + [-0.15] * 4]))  # prompt: 0
    torch.testing.assert_close(scaled, torch.tensor([[0.0, 0.0] + [0.70711] * 4, [0.0, 0.0] + [-0.21213] * 4]),
                               atol=1e-4, rtol=0)



def test_truncated_importance_sampling_weights_tokens_by_the_trainer_over_sampler_ratio(tiny_model_dir):
    """With tis_cap, the first pass's ratio is 1 against the trainer's own logprobs and each
    token's loss is weighted by min(pi_trainer / pi_sampler, cap): the loss is then
    -sum(w A) / n. Computed from the same forward (one pass of one minibatch) or from a
    pass before the update (two passes), the weights agree."""
    from agent.types import Segment
    from train.batching import collate_segments, token_logprobs
    from train.grpo import GRPOConfig
    from train.loss import truncated_is_weights
    from train.policy import load_policy
    from train.update import Advantages, policy_update

    segs = [Segment(context_ids=[5, 6, 7], response_ids=[8 + i, 9, 10 + i, 11], loss_mask=[1, 1, 0, 1],
                    logprobs=[-2.0 - i, -1.5, 0.0, -9.0 + i]) for i in range(3)]
    adv_B_T = torch.tensor([[0, 0, 0, a, a, 0, a] for a in (1.0, -0.5, 0.7)])
    batch = collate_segments(segs, pad_id=0)
    mask = batch.loss_mask > 0
    policy = load_policy(tiny_model_dir, need_reference=False, dtype="float32")
    with torch.no_grad():
        trainer_B_T = token_logprobs(policy.model, batch, temperature=1.0)
    w_B_T = truncated_is_weights(batch.old_logprobs, trainer_B_T, cap=2.0)
    assert (w_B_T[mask] == 2.0).any() and (w_B_T[mask] < 2.0).any()  # some truncated, some not
    expected = float(-(w_B_T * adv_B_T)[mask].sum() / mask.sum())

    def first_pass(passes):
        policy = load_policy(tiny_model_dir, need_reference=False, dtype="float32")
        cfg = GRPOConfig(kl_coef=0.0, tis_cap=2.0, autocast="none", temperature=1.0, updates_per_batch=passes,
                         learning_rate=0.0)
        optimizer = torch.optim.SGD(policy.model.parameters(), lr=0.0)  # the weights stay: every pass is the first
        return policy_update(policy, Advantages(batch, adv_B_T, [0.0] * 3), cfg, optimizer, seed=0)

    for stats in (first_pass(1), first_pass(2)):
        assert stats["loss"] == pytest.approx(expected, rel=1e-5)
        assert stats["ratio_mean"] == pytest.approx(1.0) and stats["clip_frac_high"] == 0.0
        gap = (trainer_B_T - batch.old_logprobs)[mask].abs()
        assert stats["sampler_gap"] == pytest.approx(float(gap.mean()), rel=1e-5)
        assert stats["sampler_gap_max"] == pytest.approx(float(gap.max()), rel=1e-5)
        assert stats["tis_truncated"] == pytest.approx(float((w_B_T[mask] == 2.0).float().mean()))
    off = load_policy(tiny_model_dir, need_reference=False, dtype="float32")  # tis_cap 0: the sampler's ratio
    cfg = GRPOConfig(kl_coef=0.0, tis_cap=0.0, autocast="none", temperature=1.0, learning_rate=0.0)
    stats = policy_update(off, Advantages(batch, adv_B_T, [0.0] * 3), cfg,
                          torch.optim.SGD(off.model.parameters(), lr=0.0), seed=0)
    assert "sampler_gap" not in stats and stats["loss"] != pytest.approx(expected, rel=1e-3)



def test_minibatches_split_a_pass_evenly():
    from train.update import even_minibatches

    sizes = lambda n, k: [len(mb) for mb in even_minibatches(torch.arange(n), k)]  # noqa: E731
    assert sizes(83, 64) == [42, 41] and sizes(128, 64) == [64, 64] and sizes(5, 128) == [5] and sizes(0, 8) == []
    assert torch.equal(torch.cat(even_minibatches(torch.tensor([4, 2, 0, 3, 1]), 2)), torch.tensor([4, 2, 0, 3, 1]))
    with pytest.raises(ValueError, match="minibatch_rows must be >= 1"):
        even_minibatches(torch.arange(3), 0)



def test_the_policy_gradient_on_forking_tokens_only_is_the_update_with_the_rest_of_the_advantages_zeroed(tiny_model_dir):
    """`entropy_top_share` < 1 trains the policy gradient on the highest-entropy tokens only:
    the same weights as the full update of advantages zeroed on every other token (the KL
    term and the token mean still cover every sampled token), and unlike the full update."""
    import torch

    from agent.types import Segment
    from train.batching import collate_segments, token_logprobs
    from train.grpo import GRPOConfig
    from train.loss import high_entropy_mask
    from train.policy import load_policy
    from train.update import Advantages, policy_update

    segs = [Segment(context_ids=[5, 6, 7], response_ids=[8 + i, 9, 10 + i, 11, 12 + i], loss_mask=[1, 1, 0, 1, 1],
                    logprobs=[-2.0, -1.5, 0.0, -3.0, -1.0]) for i in range(4)]
    batch = collate_segments(segs, pad_id=0)
    adv_B_T = torch.tensor([[0, 0, 0, a, a, 0, a, a] for a in (1.0, -0.5, 0.7, -1.2)])

    def updated(adv, share):
        policy = load_policy(tiny_model_dir, need_reference=True, dtype="float32")
        with torch.no_grad():
            for p in policy.model.parameters():
                p.add_(0.01 * torch.randn(p.shape, generator=torch.Generator().manual_seed(p.numel())))
        cfg = GRPOConfig(entropy_top_share=share, kl_coef=0.1, autocast="none", learning_rate=1e-2, temperature=1.0)
        with torch.no_grad():
            _, entropy = token_logprobs(policy.model, batch, 1.0, with_entropy=True, only_loss=True)
        optimizer = torch.optim.SGD(policy.model.parameters(), lr=cfg.learning_rate)
        stats = policy_update(policy, Advantages(batch, adv, [0.0] * 4), cfg, optimizer, seed=0)
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
        GRPOConfig(entropy_top_share=0.0)


def test_the_supervised_term_on_demonstrations_adds_its_gradient_to_the_step(tiny_model_dir):
    """With no advantage and no KL term, an update with `sft_coef` and demonstrations is
    one plain gradient step on sft_coef x their mean cross-entropy, and logs that value."""
    import torch

    from agent.types import Segment
    from train.batching import collate_segments
    from train.grpo import GRPOConfig
    from train.policy import load_policy
    from train.sft import sft_losses
    from train.update import Advantages, policy_update

    segs = [Segment(context_ids=[5, 6, 7], response_ids=[8 + i, 9, 10 + i, 11], loss_mask=[1, 1, 0, 1],
                    logprobs=[-2.0, -1.5, 0.0, -3.0]) for i in range(3)]
    batch = collate_segments(segs, pad_id=0)
    demos = collate_segments([Segment(context_ids=[5, 9], response_ids=[13, 14, 15], loss_mask=[1, 0, 1],
                                      logprobs=[0.0] * 3), Segment(context_ids=[6], response_ids=[16, 17],
                                                                  loss_mask=[1, 1], logprobs=[0.0] * 2)], pad_id=0)
    cfg = GRPOConfig(sft_coef=0.5, kl_coef=0.0, autocast="none", temperature=1.0, max_grad_norm=1e9)
    policy = load_policy(tiny_model_dir, need_reference=False, dtype="float32")
    before = [p.detach().clone() for p in policy.model.parameters()]
    policy.model.zero_grad()
    expected_nll = sft_losses(policy.model, demos)[0]
    (0.5 * expected_nll).backward()
    grads = [p.grad.clone() if p.grad is not None else torch.zeros_like(p) for p in policy.model.parameters()]
    policy.model.zero_grad()
    optimizer = torch.optim.SGD(policy.model.parameters(), lr=0.1)
    stats = policy_update(policy, Advantages(batch, torch.zeros(batch.input_ids.shape), [0.0] * 3), cfg, optimizer,
                          seed=0, demos=demos)
    assert stats["demo_nll"] == pytest.approx(expected_nll.item(), rel=1e-5)
    for p, p0, g in zip(policy.model.parameters(), before, grads):
        torch.testing.assert_close(p.detach(), p0 - 0.1 * g)
    assert any(g.abs().sum() > 0 for g in grads)
