"""The GRPO entry point end to end on a small world with a random tiny model."""

import dataclasses
import json
import shutil

import pytest
import torch

from agent.traces import read_traces
from fakes import world_with_index
from agent.rollout import RolloutConfig
from train.grpo import main
from train.questions import next_questions


@pytest.fixture(scope="module")
def setup(trainer_world):
    return trainer_world


def args(setup, tiny_model_dir, out, steps):
    return ["--model", str(tiny_model_dir), "--data", str(setup / "world"), "--index", str(setup / "bm25"),
            "--output_dir", str(out), "--max_steps", str(steps), "--questions_per_step", "2", "--group_size", "3",
            "--max_turns", "2", "--max_new_tokens", "6", "--eval_every", "0", "--eval_questions", "3",
            "--test_questions", "3", "--save_every", "1", "--learning_rate", "1e-3", "--temperature", "1.0",
            "--oversample", "1"]


def metrics(out):
    return [r for r in read_traces(out / "metrics.jsonl") if r["step"] > 0]


def test_grpo_runs_logs_and_checkpoints(setup, tiny_model_dir):
    out = setup / "run"
    # a random model earns no reward; the entropy bonus makes its weights move nonetheless
    summary = main(args(setup, tiny_model_dir, out, 2) + ["--lr_schedule", "linear", "--entropy_coef", "0.01"])
    assert {"test_before", "test_after"} <= set(summary)
    assert summary["final_model"] == {"path": str(out / "final"), "averaged_steps": 2, "averaged_from_step": 1}
    rows = metrics(out)
    assert [r["step"] for r in rows] == [1, 2]
    # the schedule moves once per step of questions, however many minibatches a step takes
    assert [r["lr"] for r in rows] == pytest.approx([1e-3, 5e-4])
    assert {"reward", "em", "approx_kl", "entropy", "searches", "valid", "pass_at_group", "zero_variance_groups"} <= set(rows[0])
    assert sorted(p.name for p in out.glob("checkpoint-*")) == ["checkpoint-1", "checkpoint-2"]
    traces = read_traces(out / "traces.jsonl")
    assert [t["step"] for t in traces] == [1] * 6 + [2] * 6
    assert all("advantage" in t and "reward" in t for t in traces)
    trained = [t for t in traces if t["advantage"] is not None]
    assert trained and all(len(t["step_advantages"]) == len(t["steps"]) for t in trained)
    assert all(len(t["step_rewards"]) == len(t["steps"]) for t in traces)  # the default rewards place step values
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
    # trained on to 5 steps, the window is steps 4-5: the average of steps 2-3 is not handed over
    summary = main(args(setup, tiny_model_dir, out, 5) + ["--average_last", "2", "--keep_last", "5", "--entropy_coef", "0.01"])
    assert summary["final_model"]["averaged_steps"] == 2 and summary["final_model"]["averaged_from_step"] == 4
    final, w4, w5 = (weights(out / d) for d in ("final", "checkpoint-4", "checkpoint-5"))
    for k in final:
        torch.testing.assert_close(final[k], (w4[k] + w5[k]) / 2)
    # a window that still starts where the stored average does keeps it: steps 4-6
    summary = main(args(setup, tiny_model_dir, out, 6) + ["--average_last", "3", "--keep_last", "5", "--entropy_coef", "0.01"])
    assert summary["final_model"]["averaged_steps"] == 3 and summary["final_model"]["averaged_from_step"] == 4
    final, w6 = weights(out / "final"), weights(out / "checkpoint-6")
    for k in final:
        torch.testing.assert_close(final[k], (w4[k] + w5[k] + w6[k]) / 3)
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
    assert run(resumed, 2)["test_after"]["step"] == 2
    # A step that was logged but not checkpointed is redone on resume, not duplicated.
    (resumed / "checkpoint-2").rename(resumed / "killed-before-checkpoint")
    summary = run(resumed, 3)
    # the final test evaluation is of the model after step 3, not the one the first call left
    assert summary["test_after"] == main(args(setup, tiny_model_dir, straight, 3))["test_after"]
    assert summary["test_after"]["step"] == 3
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


def test_train_bench_times_the_trainers_own_step(setup, tiny_model_dir):
    """`eval/bench/train.py` builds the trainer as `train/grpo.py` does, times `train_step` itself
    part by part, and compares three speed-ups with their baselines on the last batch."""
    from eval.bench.train import main as bench

    base = ["--model", str(tiny_model_dir), "--data", str(setup / "world"), "--index", str(setup / "bm25"),
            "--questions_per_step", "2", "--group_size", "2", "--max_turns", "2", "--max_new_tokens", "6",
            "--temperature", "1.0", "--steps", "1"]
    out = bench(base + ["--kl_coef", "0.1", "--oversample", "1"])
    parts = ("generation", "retrieval", "rollout bookkeeping", "rewards", "reference logprobs", "update", "trace records")
    assert all(out[p] >= 0 for p in parts) and out["generation"] > 0 and out["update"] > 0
    assert out["reference logprobs"] > 0  # the KL term's reference forward
    assert out["bf16"]["float32_s"] > 0 and out["bf16"]["bf16_s"] > 0
    assert 0 < out["bf16"]["logprob_gap_mean"] <= out["bf16"]["logprob_gap_max"] < 1.0
    assert out["merge"]["whole_s"] > 0 and out["merge"]["merged_s"] > 0 and 0 < out["merge"]["rows_distinct"] <= 1
    assert all(v["full_head_s"] > 0 and v["head_on_trained_s"] > 0 for v in out["head"].values())
    assert out["trajectories"] == {"rolled out": 4, "trained on": 4}
    assert out["attention"] == "sdpa"  # a model given by path keeps its default, as in the trainer
    # --oversample: twice the questions rolled out, the trainer's pick of their groups trained
    out = bench(base + ["--oversample", "2"])
    assert out["trajectories"] == {"rolled out": 8, "trained on": 4}


def test_rollouts_sample_from_a_bf16_copy_synced_after_every_update(setup, tiny_model_dir):
    """With --precision bf16-mixed, step 2's sampler logprobs are those of the bf16 copy of the
    weights after step 1, not of the warm start's: the copy is synced after every update."""
    from transformers import AutoModelForCausalLM, AutoTokenizer

    from agent.traces import record_to_trajectory
    from train.batching import collate_segments, token_logprobs

    out = setup / "bf16-sampler"
    main(args(setup, tiny_model_dir, out, 2) + ["--precision", "bf16-mixed", "--learning_rate", "3e-2",
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


def test_tis_on_the_bf16_sampler_logs_its_gap_and_bad_engines_are_refused(setup, tiny_model_dir):
    out = setup / "tis"
    main(args(setup, tiny_model_dir, out, 1) + ["--precision", "bf16-mixed", "--tis_cap", "2"])
    (row,) = metrics(out)
    assert 0 < row["sampler_gap"] <= row["sampler_gap_max"] < 0.5  # bf16 rounding, not another policy
    assert 0.5 < row["tis_weight"] < 2.0
    with pytest.raises(ValueError, match="rollout_engine must be one of hf, vllm, got 'sglang'"):
        main(args(setup, tiny_model_dir, setup / "bad-engine", 1) + ["--rollout_engine", "sglang"])
    with pytest.raises(ValueError, match="tis_cap must be a number >= 0 or none, got -1.0"):
        main(args(setup, tiny_model_dir, setup / "bad-tis", 1) + ["--tis_cap", "-1"])


def test_periodic_dev_evaluation_is_logged_at_its_steps(setup, tiny_model_dir):
    out = setup / "eval-every"
    main(args(setup, tiny_model_dir, out, 2) + ["--eval_every", "2"])
    rows = read_traces(out / "metrics.jsonl")
    assert [r["step"] for r in rows if "dev_em" in r] == [0, 2]
    assert all(0.0 <= r["dev_em"] <= 1.0 for r in rows if "dev_em" in r)


def test_the_supervised_term_trains_on_the_oracles_demonstrations_of_each_steps_questions(setup, tiny_model_dir):
    """`--sft_coef`: every step's update also fits the oracle's right answers to its questions
    (none reading a held-out name), so a random model's cross-entropy on them falls."""
    from agent.data.qa import load_qa
    from retrieval import open_retriever
    from train.demos import StepDemos, held_out_names
    from train.policy import load_policy

    world = setup / "world"
    questions = load_qa(world, "train")[:4]
    held = held_out_names(world)
    tokenizer = load_policy(tiny_model_dir, need_reference=False).tokenizer
    step_demos = StepDemos(world, open_retriever(setup / "bm25"), tokenizer, RolloutConfig(passages_per_search=2), world)
    demos = step_demos(questions + questions[:1])
    assert demos is not None and 1 <= demos.input_ids.shape[0] <= 4 * 4  # each question once, a segment or more
    text = tokenizer.decode(demos.input_ids.flatten().tolist())
    assert not any(name in text for name in held)
    out = setup / "sft-term"
    main(args(setup, tiny_model_dir, out, 4) + ["--sft_coef", "1.0", "--learning_rate", "3e-3", "--questions_per_step", "4"])
    nll = [r["demo_nll"] for r in metrics(out)]
    assert len(nll) == 4 and nll[-1] < nll[0] - 0.5, nll


def test_pick_groups_takes_groups_with_reward_variance_first_then_fills_with_settled_ones():
    from agent.types import Example, Trajectory, TrajectoryGroup
    from rewards.base import Score
    from train.grpo import pick_groups

    # groups a (settled), b (mixed), c (settled), d (mixed): two samples each, in rollout order
    values = {"a": [1.0, 1.0], "b": [0.0, 1.0], "c": [0.0, 0.0], "d": [0.5, 0.2]}
    groups = [TrajectoryGroup(Example(f"q{g}", "?", ["x"]), [Trajectory(f"q{g}", g, i, []) for i in range(2)],
                              [Score(v) for v in vs]) for g, vs in values.items()]
    names = lambda picked: [g.trajectories[0].group_id for g in picked]  # noqa: E731
    assert names(pick_groups(groups, 2)) == ["b", "d"]  # the two mixed groups
    assert names(pick_groups(groups, 3)) == ["a", "b", "d"]  # + the first settled one, order kept
    assert names(pick_groups(groups, 9)) == ["a", "b", "c", "d"]


def test_oversampled_steps_train_on_the_chosen_groups_and_trace_every_rollout(setup, tiny_model_dir):
    out = setup / "oversample"
    main(args(setup, tiny_model_dir, out, 2) + ["--oversample", "2"])
    rows = metrics(out)
    assert [r["groups_trained"] for r in rows] == [2, 2]
    traces = read_traces(out / "traces.jsonl")
    assert [t["step"] for t in traces] == [1] * 12 + [2] * 12  # 4 questions x 3 samples rolled out a step
    for step in (1, 2):
        trained = {t["group_id"] for t in traces if t["step"] == step and t["advantage"] is not None}
        assert len(trained) == 2
        # a group left out carries no advantage on any sample; a trained one on every sample
        for g in {t["group_id"] for t in traces if t["step"] == step}:
            assert len({t["advantage"] is None for t in traces if t["group_id"] == g}) == 1
        # groups whose samples scored differently go first
        by_group = {}
        for t in traces:
            if t["step"] == step:
                by_group.setdefault(t["group_id"], []).append(t["reward"])
        mixed = [g for g, r in by_group.items() if len(set(r)) > 1]
        assert set(mixed[:2]) <= trained
    with pytest.raises(ValueError, match="oversample must be a number >= 1, got 0.5"):
        main(args(setup, tiny_model_dir, setup / "oversample-bad", 1) + ["--oversample", "0.5"])


def test_rollouts_can_come_from_another_worlds_train_split_while_evaluation_stays(setup, tiny_model_dir, monkeypatch):
    import retrieval
    import train.grpo as grpo
    from agent.data.qa import load_qa
    from train.demos import examples_without_names, held_out_names

    other = world_with_index(setup, seed=7, entities=300, method="bm25", world_name="other", index_name="other-bm25")
    opened, used = {}, []  # index path -> retriever; (retriever, temperature) of every Rollout built
    real_open, real_rollout = retrieval.open_retriever, grpo.Rollout

    def open_recorded(path, *a, **k):
        opened[str(path)] = real_open(path, *a, **k)
        return opened[str(path)]

    class RecordedRollout(real_rollout):
        def __init__(self, engine, retriever, cfg, *a, **k):
            used.append((retriever, cfg.temperature))
            super().__init__(engine, retriever, cfg, *a, **k)

    monkeypatch.setattr(retrieval, "open_retriever", open_recorded)
    monkeypatch.setattr(grpo, "Rollout", RecordedRollout)
    out = setup / "other-train"
    summary = main(args(setup, tiny_model_dir, out, 1) + ["--train_data", str(other / "other"),
                                                           "--train_index", str(other / "other-bm25")])
    theirs = {ex.question for ex in load_qa(other / "other", "train")}
    ours = {ex.question for ex in load_qa(setup / "world", "train")}
    asked = {t["question"] for t in read_traces(out / "traces.jsonl")}
    assert asked and asked <= theirs and not asked & ours
    # sampled rollouts search the other world's index; the greedy evaluations the data world's
    train_r, eval_r = opened[str(other / "other-bm25")], opened[str(setup / "bm25")]
    assert {id(r) for r, temp in used if temp > 0} == {id(train_r)}
    assert {id(r) for r, temp in used if temp == 0} == {id(eval_r)}
    assert summary["test_before"]["n"] == 3
    # a train question that names one of the evaluation world's dev/test entities is left out
    name = sorted(held_out_names(setup / "world"))[0]
    examples = load_qa(other / "other", "train")[:3]
    clash = dataclasses.replace(examples[0], question=f"Who founded {name}?")
    assert examples_without_names([clash, *examples[1:]], held_out_names(setup / "world")) == examples[1:]
    with pytest.raises(ValueError, match="train_data and train_index go together"):
        main(args(setup, tiny_model_dir, setup / "half", 1) + ["--train_data", str(other / "other")])


def test_eager_attention_trains_as_sdpa_does(setup, tiny_model_dir, monkeypatch):
    """The attention kernels are a speed choice the trainer makes: the tiny default trains with
    eager attention, a model given by path with its default (SDPA), and step 1 logs the same
    loss and gradient norm either way up to rounding (in float32: bf16 autocast rounds the two
    kernels' tiny gradients differently)."""
    from transformers.models.qwen2 import modeling_qwen2

    import train.grpo as grpo
    from train.policy import training_attention

    assert training_attention(tiny=True) == "eager" and training_attention(tiny=False) is None
    eager_with_grad = []
    eager = modeling_qwen2.eager_attention_forward

    def counted(*a, **k):
        eager_with_grad.append(torch.is_grad_enabled())
        return eager(*a, **k)

    monkeypatch.setattr(modeling_qwen2, "eager_attention_forward", counted)
    runs, trained_eager = {}, {}
    for attention in ("sdpa", "eager"):
        if attention == "eager":  # as for the tiny default
            monkeypatch.setattr(grpo, "training_attention", lambda tiny: "eager")
        out = setup / f"attention-{attention}"
        eager_with_grad.clear()
        main(args(setup, tiny_model_dir, out, 1) + ["--entropy_coef", "0.01", "--precision", "fp32"])
        runs[attention], trained_eager[attention] = metrics(out)[0], sum(eager_with_grad)
    assert trained_eager == {"sdpa": 0, "eager": trained_eager["eager"]} and trained_eager["eager"] > 0
    for key in ("loss", "grad_norm", "entropy", "reward"):
        assert runs["eager"][key] == pytest.approx(runs["sdpa"][key], rel=1e-4, abs=1e-6), key


def test_an_annealed_trust_weight_follows_the_training_step(setup, tiny_model_dir):
    """Trust-GRPO's process weight anneals with the updates done: the trainer tells the reward
    the step before scoring, so step 1 scores with w0 and step 2 with the next weight."""
    spec = [{"name": "trust", "process": [{"name": "judge"}], "w0": 1.0, "w1": 0.0, "anneal_steps": 2}]
    out = setup / "trust-anneal"
    main(args(setup, tiny_model_dir, out, 2) + ["--rewards", json.dumps(spec)])
    rows = metrics(out)
    assert [r["rewards/trust/process_weight"] for r in rows] == [1.0, 0.5]
    traces = read_traces(out / "traces.jsonl")
    assert {t["rewards"]["trust/process_weight"] for t in traces if t["step"] == 2} == {0.5}


def test_resume_falls_back_past_a_damaged_checkpoint_and_a_fresh_start_logs_each_step_once(setup, tiny_model_dir, capsys):
    out = setup / "fallback"
    main(args(setup, tiny_model_dir, out, 2))
    state = out / "checkpoint-2" / "trainer_state.pt"
    state.write_bytes(state.read_bytes()[:100])  # cut short after the fact
    capsys.readouterr()
    main(args(setup, tiny_model_dir, out, 2))
    err = capsys.readouterr().err
    assert f"skipped {out / 'checkpoint-2'}: trainer_state.pt has 100 bytes" in err
    assert f"resumed from {out / 'checkpoint-1'} (step 1;" in err
    assert [r["step"] for r in metrics(out)] == [1, 2]
    assert [t["step"] for t in read_traces(out / "traces.jsonl")] == [1] * 6 + [2] * 6
    # a run killed before its first checkpoint starts afresh, and logs each step once
    for checkpoint in out.glob("checkpoint-*"):
        shutil.rmtree(checkpoint)
    main(args(setup, tiny_model_dir, out, 1))
    assert [r["step"] for r in metrics(out)] == [1]
    assert [t["step"] for t in read_traces(out / "traces.jsonl")] == [1] * 6
