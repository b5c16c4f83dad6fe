"""The GRPO entry point end to end on a small world with a random tiny model."""

import json

import pytest
import torch

from agent.traces import read_traces
from fakes import world_with_index
from train.grpo import main, next_questions


@pytest.fixture(scope="module")
def setup(tmp_path_factory):
    return world_with_index(tmp_path_factory.mktemp("grpo"), seed=2, entities=300, method="bm25")


def args(setup, tiny_model_dir, out, steps):
    return ["--model", str(tiny_model_dir), "--data", str(setup / "world"), "--index", str(setup / "bm25"),
            "--output_dir", str(out), "--max_steps", str(steps), "--questions_per_step", "2", "--group_size", "3",
            "--max_turns", "2", "--max_new_tokens", "6", "--eval_every", "0", "--eval_questions", "3",
            "--test_questions", "3", "--save_every", "1", "--learning_rate", "1e-3", "--temperature", "1.0"]


def metrics(out):
    return [r for r in read_traces(out / "metrics.jsonl") if r["step"] > 0]


def test_grpo_runs_logs_and_checkpoints(setup, tiny_model_dir):
    out = setup / "run"
    # a random model earns no reward; the entropy bonus makes its weights move nonetheless
    summary = main(args(setup, tiny_model_dir, out, 2) + ["--lr_schedule", "linear", "--entropy_coef", "0.01"])
    assert {"test_before", "test_after"} <= set(summary)
    assert summary["final_model"] == {"path": str(out / "final"), "averaged_steps": 2}
    rows = metrics(out)
    assert [r["step"] for r in rows] == [1, 2]
    # the schedule moves once per step of questions, however many minibatches a step takes
    assert [r["lr"] for r in rows] == pytest.approx([1e-3, 5e-4])
    assert {"reward", "em", "approx_kl", "entropy", "searches", "valid", "pass_at_group", "zero_variance_groups"} <= set(rows[0])
    assert sorted(p.name for p in out.glob("checkpoint-*")) == ["checkpoint-1", "checkpoint-2"]
    traces = read_traces(out / "traces.jsonl")
    assert [t["step"] for t in traces] == [1] * 6 + [2] * 6
    assert all("advantage" in t and "reward" in t for t in traces)
    assert (out / "curves.png").exists()
    # the final model is the average of the weights after steps 1 and 2 (both in the last 20)
    final, w1, w2 = (weights(out / d) for d in ("final", "checkpoint-1", "checkpoint-2"))
    assert any(not torch.equal(w1[k], w2[k]) for k in w1)
    for k in final:
        torch.testing.assert_close(final[k], (w1[k] + w2[k]) / 2)


def weights(path):
    from safetensors.torch import load_file

    return load_file(str(path / "model.safetensors"))


def test_only_the_last_steps_are_averaged(setup, tiny_model_dir):
    out = setup / "avg-last"
    main(args(setup, tiny_model_dir, out, 3) + ["--average_last", "2", "--keep_last", "5", "--entropy_coef", "0.01"])
    final, w1, w2, w3 = (weights(out / d) for d in ("final", "checkpoint-1", "checkpoint-2", "checkpoint-3"))
    assert any(not torch.equal(w1[k], w2[k]) for k in w1)
    for k in final:
        torch.testing.assert_close(final[k], (w2[k] + w3[k]) / 2)
    no_avg = setup / "avg-none"
    assert main(args(setup, tiny_model_dir, no_avg, 1) + ["--average_last", "0"])["final_model"]["averaged_steps"] == 0
    last, final = weights(no_avg / "checkpoint-1"), weights(no_avg / "final")
    assert all(torch.equal(last[k], final[k]) for k in last)


def test_lr_schedule_is_checked_by_name(setup, tiny_model_dir):
    with pytest.raises(ValueError, match="lr_schedule.*'cosin'"):
        main(args(setup, tiny_model_dir, setup / "bad-lr", 1) + ["--lr_schedule", "cosin"])


def test_resume_matches_an_uninterrupted_run(setup, tiny_model_dir):
    def run(out, steps):  # the entropy bonus moves a random model's weights, so the average has work to do
        return main(args(setup, tiny_model_dir, out, steps) + ["--entropy_coef", "0.01"])

    straight = setup / "straight"
    run(straight, 3)
    resumed = setup / "resumed"
    run(resumed, 2)
    # A step that was logged but not checkpointed is redone on resume, not duplicated.
    (resumed / "checkpoint-2").rename(resumed / "killed-before-checkpoint")
    run(resumed, 3)
    a, b = metrics(straight), metrics(resumed)
    assert [r["step"] for r in b] == [1, 2, 3]
    for ra, rb in zip(a, b):
        for key in ("reward", "em", "loss", "approx_kl", "entropy", "grad_norm"):
            assert ra[key] == pytest.approx(rb[key], rel=1e-5, abs=1e-7), (ra["step"], key)
    steps = [t["step"] for t in read_traces(resumed / "traces.jsonl")]
    assert steps == [1] * 6 + [2] * 6 + [3] * 6
    # the weight average is restored with the checkpoint, so the final models agree
    a, b = weights(straight / "final"), weights(resumed / "final")
    for k in a:
        torch.testing.assert_close(a[k], b[k], rtol=1e-5, atol=1e-7)


def test_data_cursor_walks_epochs_without_repeats():
    items = list(range(5))
    seen, cursor = [], {"epoch": 0, "pos": 0}
    for _ in range(5):
        batch, cursor = next_questions(items, cursor, 2, seed=0)
        seen += batch
    assert sorted(seen[:5]) == items and sorted(seen[5:10]) == items
    assert cursor == {"epoch": 2, "pos": 0}


def test_unknown_reward_is_refused(setup, tiny_model_dir):
    bad = args(setup, tiny_model_dir, setup / "bad", 1) + ["--rewards", json.dumps([{"name": "f2"}])]
    with pytest.raises(Exception, match="f2"):
        main(bad)


@pytest.mark.slow
def test_sigkill_mid_training_then_rerun_resumes_exactly(setup, tiny_model_dir):
    """The real thing: SIGKILL the trainer process mid-run, rerun the same command."""
    import os
    import signal
    import subprocess
    import sys
    import time

    straight = setup / "sig-straight"
    main(args(setup, tiny_model_dir, straight, 4))
    out = setup / "sig-killed"
    from pathlib import Path

    script = Path(__file__).resolve().parents[1] / "train" / "grpo.py"
    cmd = [sys.executable, str(script), *args(setup, tiny_model_dir, out, 4)]
    env = {**os.environ, "OMP_NUM_THREADS": "1"}
    proc = subprocess.Popen(cmd, env=env, stdout=subprocess.DEVNULL, stderr=subprocess.DEVNULL)
    deadline = time.time() + 300
    while time.time() < deadline and not (out / "checkpoint-2").exists():
        time.sleep(0.05)
    proc.send_signal(signal.SIGKILL)
    proc.wait(timeout=30)
    assert (out / "checkpoint-2").exists(), "the run did not reach step 2 in time"
    subprocess.run(cmd, env=env, check=True, stdout=subprocess.DEVNULL, stderr=subprocess.DEVNULL, timeout=600)
    a, b = metrics(straight), metrics(out)
    assert [r["step"] for r in b] == [1, 2, 3, 4]
    for ra, rb in zip(a, b):
        for key in ("reward", "em", "loss", "entropy", "grad_norm"):
            assert ra[key] == pytest.approx(rb[key], rel=1e-5, abs=1e-7), (ra["step"], key)
    steps = [t["step"] for t in read_traces(out / "traces.jsonl")]
    assert steps == sorted(steps) and [steps.count(s) for s in (1, 2, 3, 4)] == [6, 6, 6, 6]


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


def test_the_kl_term_pulls_a_moved_policy_back_to_its_reference(tiny_model_dir):
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
    cfg = GRPOConfig(kl_coef=1.0, skip_zero_advantage=True, temperature=1.0)
    optimizer = torch.optim.SGD(policy.model.parameters(), lr=0.02)  # small plain gradient steps
    advantages = Advantages(batch, torch.zeros(batch.input_ids.shape), [0.0] * len(segs))
    kls = []
    for _ in range(5):
        stats = policy_update(policy, advantages, cfg, optimizer, seed=0)
        kls.append(stats["kl_ref"])
        assert stats["rows_trained"] == 1.0  # rows are not skipped while a KL term trains them
        assert stats["reference_s"] > 0
    assert kls[0] > 0 and all(b < a for a, b in zip(kls, kls[1:])) and kls[-1] < 0.5 * kls[0], kls


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


def test_train_bench_splits_a_step_and_compares_bf16(setup, tiny_model_dir):
    """`eval/bench/train.py` runs the trainer's own functions and reports every part of a step."""
    from eval.bench.train import main as bench

    out = bench(["--model", str(tiny_model_dir), "--data", str(setup / "world"), "--index", str(setup / "bm25"),
                 "--questions_per_step", "2", "--group_size", "2", "--max_turns", "2", "--max_new_tokens", "6",
                 "--temperature", "1.0", "--kl_coef", "0.1", "--steps", "1"])
    parts = ("generation", "retrieval", "reference logprobs", "update", "rewards", "advantages", "trace records")
    assert all(out[p] >= 0 for p in parts) and out["generation"] > 0 and out["update"] > 0
    assert out["reference logprobs"] > 0  # the KL term's reference forward
    assert out["bf16"]["float32_s"] > 0 and out["bf16"]["bf16_s"] > 0
    assert 0 < out["bf16"]["logprob_gap_mean"] <= out["bf16"]["logprob_gap_max"] < 1.0
    assert out["merge"]["whole_s"] > 0 and out["merge"]["merged_s"] > 0 and 0 < out["merge"]["rows_distinct"] <= 1
    sampler = out["bf16_sampler"]  # the bf16 copy's rollouts, and its logprobs against the trainer's
    assert sampler["float32_s"] > 0 and sampler["bf16_s"] > 0
    assert 0 < sampler["logprob_gap_mean"] <= sampler["logprob_gap_max"] < 1.0


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
    centred = advantages_for(trajs, scores, GRPOConfig(scale_by_std=False), pad_id=0).adv_B_T
    scaled = advantages_for(trajs, scores, GRPOConfig(), pad_id=0).adv_B_T
    # rewards 1 and 0: r - mean = +-0.5; divided by their std (0.7071) = +-0.7071; negatives x0.3
    torch.testing.assert_close(centred, torch.tensor([[0.0, 0.0] + [0.5] * 4, [0.0, 0.0] + [-0.15] * 4]))  # prompt: 0
    torch.testing.assert_close(scaled, torch.tensor([[0.0, 0.0] + [0.70711] * 4, [0.0, 0.0] + [-0.21213] * 4]),
                               atol=1e-4, rtol=0)


def test_rollouts_sample_from_a_bf16_copy_synced_after_every_update(setup, tiny_model_dir):
    """With --rollout_dtype bf16, step 2's sampler logprobs are those of the bf16 copy of the
    weights after step 1, not of the warm start's: the copy is synced after every update."""
    from transformers import AutoModelForCausalLM, AutoTokenizer

    from agent.traces import record_to_trajectory
    from train.batching import collate_segments, token_logprobs

    out = setup / "bf16-sampler"
    main(args(setup, tiny_model_dir, out, 2) + ["--rollout_dtype", "bf16", "--learning_rate", "3e-2",
                                                 "--entropy_coef", "0.01"])
    step2 = [record_to_trajectory(r) for r in read_traces(out / "traces.jsonl") if r["step"] == 2]
    pad_id = AutoTokenizer.from_pretrained(str(tiny_model_dir)).pad_token_id
    batch = collate_segments([seg for t in step2 for seg in t.segments], pad_id)
    mask = batch.loss_mask.bool()

    def gap(model_dir) -> float:  # mean |log pi_bf16(model_dir) - sampler logprob| over sampled tokens
        model = AutoModelForCausalLM.from_pretrained(str(model_dir)).to(torch.bfloat16).eval()
        with torch.no_grad():
            logprobs = token_logprobs(model, batch, temperature=1.0)
        return float((logprobs[mask].float() - batch.old_logprobs[mask]).abs().mean())

    synced, stale = gap(out / "checkpoint-1"), gap(tiny_model_dir)
    assert synced < 0.05 < stale, (synced, stale)


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


def test_lora_sampler_weights_are_the_merged_model(tiny_model_dir):
    """What a separate sampler loads under LoRA: base + adapter delta, under plain model
    names, giving the adapted model's logits; the trained base is left as it was."""
    from transformers import AutoModelForCausalLM

    from train.policy import load_policy, sampler_weights

    policy = load_policy(tiny_model_dir, lora_r=4, dtype="float32")
    with torch.no_grad():  # a trained adapter (peft starts B at 0, a delta of 0)
        for name, p in policy.model.named_parameters():
            if "lora_B" in name:
                p.normal_(0.0, 0.2, generator=torch.Generator().manual_seed(p.numel()))
    base_before = {k: v.clone() for k, v in policy.model.get_base_model().state_dict().items() if "base_layer" in k}
    plain = AutoModelForCausalLM.from_pretrained(str(tiny_model_dir), dtype=torch.float32).eval()
    weights = sampler_weights(policy)
    assert set(weights) == set(plain.state_dict())
    plain.load_state_dict(weights)
    ids = torch.tensor([[5, 6, 7, 8, 9, 10]])
    with torch.no_grad():
        adapted, merged = policy.model(input_ids=ids).logits, plain(input_ids=ids).logits
        original = AutoModelForCausalLM.from_pretrained(str(tiny_model_dir), dtype=torch.float32)(input_ids=ids).logits
    torch.testing.assert_close(merged, adapted, rtol=1e-4, atol=1e-5)
    assert not torch.allclose(merged, original, atol=1e-3)  # the adapter does change the model
    for k, v in policy.model.get_base_model().state_dict().items():
        if k in base_before:
            assert torch.equal(v, base_before[k]), k


def test_tis_on_the_bf16_sampler_logs_its_gap_and_bad_engines_are_refused(setup, tiny_model_dir):
    out = setup / "tis"
    main(args(setup, tiny_model_dir, out, 1) + ["--rollout_dtype", "bf16", "--tis_cap", "2"])
    (row,) = metrics(out)
    assert 0 < row["sampler_gap"] <= row["sampler_gap_max"] < 0.5  # bf16 rounding, not another policy
    assert 0.5 < row["tis_weight"] < 2.0
    with pytest.raises(ValueError, match="rollout_engine must be hf or vllm, got 'sglang'"):
        main(args(setup, tiny_model_dir, setup / "bad-engine", 1) + ["--rollout_engine", "sglang"])
    with pytest.raises(ValueError, match="tis_cap must be >= 0"):
        main(args(setup, tiny_model_dir, setup / "bad-tis", 1) + ["--tis_cap", "-1"])


def test_minibatches_split_a_pass_evenly():
    from train.update import even_minibatches

    sizes = lambda n, k: [len(mb) for mb in even_minibatches(torch.arange(n), k)]  # noqa: E731
    assert sizes(83, 64) == [42, 41] and sizes(128, 64) == [64, 64] and sizes(5, 128) == [5] and sizes(0, 8) == []
    assert torch.equal(torch.cat(even_minibatches(torch.tensor([4, 2, 0, 3, 1]), 2)), torch.tensor([4, 2, 0, 3, 1]))
    with pytest.raises(ValueError, match="minibatch_rows must be >= 1"):
        even_minibatches(torch.arange(3), 0)


def test_periodic_dev_evaluation_is_logged_at_its_steps(setup, tiny_model_dir):
    out = setup / "eval-every"
    main(args(setup, tiny_model_dir, out, 2) + ["--eval_every", "2"])
    rows = read_traces(out / "metrics.jsonl")
    assert [r["step"] for r in rows if "dev_em" in r] == [0, 2]
    assert all(0.0 <= r["dev_em"] <= 1.0 for r in rows if "dev_em" in r)
