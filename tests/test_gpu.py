"""GPU checks (`make test-gpu`): the trainer's models and batches on the GPU, the hf engine
against the trainer in bf16, a short GRPO run of the embedded default that checkpoints and
resumes, the same under FSDP2 and DeepSpeed ZeRO through accelerate's example configs, and the
optional vLLM engine and GPU FAISS index.

Marked `gpu`: skipped where CUDA is missing, and left out of the default test run. With
SEARCHRL_TEST_DEVICE=cpu they run on the CPU instead, which checks the code but not the GPU.
Each test records what it measured (`record_property`), which the table `make test-gpu`
prints shows (tests/conftest.py).
"""

import os
import socket
import subprocess
import sys
import time
from pathlib import Path

import pytest
import torch

DEVICE = os.environ.get("SEARCHRL_TEST_DEVICE", "cuda")
pytestmark = [
    pytest.mark.gpu,
    pytest.mark.skipif(DEVICE == "cuda" and not torch.cuda.is_available(), reason="no CUDA device"),
]


def on_device(module) -> bool:
    return all(p.device.type == torch.device(DEVICE).type for p in module.parameters())


def test_policy_reference_and_batches_live_on_the_device(tiny_model_dir, record_property):
    from agent.types import Segment
    from train.batching import collate_segments
    from train.grpo import GRPOConfig, build_trainer
    from train.policy import PolicyConfig
    from train.update import Advantages, policy_update

    cfg = GRPOConfig(policy=PolicyConfig(model=str(tiny_model_dir), device=DEVICE))
    trainer = build_trainer(cfg, str(tiny_model_dir), retriever=None)
    assert on_device(trainer.policy.model) and on_device(trainer.policy.reference)
    assert trainer.sampler.device.type == torch.device(DEVICE).type
    segs = [Segment([5, 6, 7], [8 + i, 9, 10, 11], [1, 1, 0, 1], [-2.0, -1.5, 0.0, -3.0]) for i in range(4)]
    batch = collate_segments(segs, pad_id=0)
    adv_B_T = torch.tensor([[0, 0, 0, a, a, 0, a] for a in (1.0, -0.5, 0.7, -1.2)])
    started = time.perf_counter()
    stats = policy_update(trainer.policy, Advantages(batch, adv_B_T, [0.0] * 4), cfg.loss, cfg.optim, trainer.optimizer,
                          temperature=1.0, seed=0, autocast=trainer.precision.autocast, forward=trainer.forward)
    record_property("update_s", round(time.perf_counter() - started, 3))
    record_property("precision", trainer.precision.name)
    assert stats["grad_norm"] > 0 and torch.isfinite(torch.tensor(stats["loss"]))
    assert on_device(trainer.policy.model)  # the step ran where the weights are


def test_hf_engine_greedy_ids_are_the_trainers_argmax_and_its_logprobs_match_in_bf16(tiny_model_dir, record_property):
    from transformers import AutoModelForCausalLM, AutoTokenizer

    from agent.engines.base import SamplingParams
    from agent.engines.hf import HFEngine
    from agent.types import Segment
    from fakes import sharpen
    from train.batching import collate_segments, token_logprobs
    from train.policy import autocast_to

    tok = AutoTokenizer.from_pretrained(tiny_model_dir)
    # Weights at a trained model's scale: peaked enough for varied greedy text, without the
    # very large activations that bf16 would round by more than a trained model sees.
    # Weights at about a trained model's scale: peaked enough for varied greedy text, without the
    # very large activations of the std-0.15 models other tests use, which bf16 rounds coarsely.
    model = sharpen(AutoModelForCausalLM.from_pretrained(tiny_model_dir), std=0.05).to(DEVICE, torch.bfloat16).eval()
    engine = HFEngine(model, tok)
    prompts = [tok(t, add_special_tokens=False)["input_ids"] for t in
               ["Orin Kael was born in", "Where was", "Mira Solen wrote The Ashen Lantern in 1901. Where"]]
    started = time.perf_counter()
    gens = engine.generate(prompts, SamplingParams(max_new_tokens=24, temperature=0.0))
    seconds = time.perf_counter() - started
    record_property("tokens_per_s", round(sum(len(g.token_ids) for g in gens) / seconds, 1))
    segs = [Segment(p, g.token_ids, [1] * len(g.token_ids), g.logprobs) for p, g in zip(prompts, gens)]
    batch = collate_segments(segs, tok.pad_token_id).to(DEVICE)
    with torch.no_grad(), autocast_to(torch.device(DEVICE), torch.bfloat16):
        logits = model(input_ids=batch.input_ids, attention_mask=batch.attention_mask).logits.float()
        trainer_lp = token_logprobs(model, batch, 1.0)
    mask = batch.loss_mask.bool()
    logits_K_V = logits[:, :-1][mask[:, 1:]]  # the trainer's logits at each generated position
    ids_K = batch.input_ids[mask]
    top2_K = logits_K_V.topk(2, dim=-1).values
    # Greedy ids are the trainer's argmax, but where bf16 rounds two logits to a tie: the KV-cache
    # decode and the full forward sum in other orders, so a near-tie may go either way.
    near_tie_K = (top2_K[:, 0] - top2_K[:, 1]) < 0.01 * top2_K[:, 0].abs().clamp(min=1)
    agree_K = logits_K_V.argmax(-1) == ids_K
    record_property("positions", len(ids_K))
    record_property("near_ties", int(near_tie_K.sum()))
    assert (agree_K | near_tie_K).all() and agree_K.float().mean() > 0.95
    # bf16 rounds each layer's output: the two paths' logprobs differ by about its precision
    # (2^-8 of a logit) at uncertain tokens, and by far less where the policy is sure.
    gap_K = (trainer_lp[mask] - batch.old_logprobs[mask]).abs()[agree_K]
    record_property("logprob_gap_mean", f"{gap_K.mean().item():.1e}")
    record_property("logprob_gap_max", f"{gap_K.max().item():.1e}")
    assert gap_K.mean().item() < 1e-3 and gap_K.max().item() < 0.1


def test_a_grpo_run_of_the_embedded_default_checkpoints_and_resumes(tmp_path_factory, record_property):
    """The embedded default built on the device (world, BM25 index, tokenizer, pretraining and
    SFT), 2 GRPO steps, then resumed to 3: one checkpoint a step, each step logged once."""
    from agent.data.world import ensure_world
    from agent.traces import read_traces
    from retrieval.build import ensure_index
    from train.grpo import main

    root = tmp_path_factory.mktemp("gpu-default")
    data = ensure_world(root / "world-0")
    index = ensure_index(data / "corpus.jsonl", root / "bm25", method="bm25")  # no faiss needed
    out = root / "run"
    argv = ["--data", str(data), "--index", str(index), "--output_dir", str(out), "--device", DEVICE,
            "--test_questions", "50", "--eval_questions", "50", "--save_every", "1", "--keep_last", "5"]
    started = time.perf_counter()
    main(argv + ["--max_steps", "2"])
    record_property("build_and_2_steps_s", round(time.perf_counter() - started, 1))
    summary = main(argv + ["--max_steps", "3"])
    rows = [r for r in read_traces(out / "metrics.jsonl") if r["step"] > 0]
    assert [r["step"] for r in rows] == [1, 2, 3]
    assert sorted(p.name for p in out.glob("checkpoint-*")) == ["checkpoint-1", "checkpoint-2", "checkpoint-3"]
    assert summary["test_after"]["step"] == 3
    assert summary["machine"]["cuda"] is not None or DEVICE == "cpu"
    step_s = sum(r["rollout_s"] + r["reward_s"] + r["update_s"] for r in rows) / len(rows)
    record_property("step_s", round(step_s, 2))
    record_property("tokens_per_s", round(sum(r["tokens_per_s"] for r in rows) / len(rows), 1))


@pytest.mark.parametrize("config", ["fsdp", "deepspeed_zero2", "deepspeed_zero3"])
def test_a_sharded_run_on_one_gpu_checkpoints_resumes_and_trains_as_a_plain_one(config, trainer_world, tiny_model_dir,
                                                                                  record_property):
    """`accelerate launch --num_processes 1 --config_file train/accelerate/CONFIG.yaml`: 2 GRPO steps
    of a tiny model that write a checkpoint each, resumed to 3, log the losses of a plain run of 3
    steps on the same GPU and leave the same whole weights in the last checkpoint."""
    if config.startswith("deepspeed"):
        pytest.importorskip("deepspeed", reason="DeepSpeed is not installed (pip install deepspeed)")
    if DEVICE != "cuda":
        pytest.skip("accelerate runs FSDP and DeepSpeed on GPUs only (tests/test_distributed.py has FSDP2 on CPUs)")
    from safetensors.torch import load_file

    from agent.traces import read_traces
    from train.grpo import main

    root = Path(__file__).resolve().parents[1]
    out, plain = trainer_world / f"gpu-{config}", trainer_world / f"gpu-{config}-plain"

    def argv(output_dir, steps):
        return ["--model", str(tiny_model_dir), "--data", str(trainer_world / "world"), "--index",
                str(trainer_world / "bm25"), "--output_dir", str(output_dir), "--max_steps", str(steps),
                "--questions_per_step", "4", "--group_size", "3", "--max_turns", "2", "--max_new_tokens", "6",
                "--eval_questions", "3", "--test_questions", "3", "--save_every", "1", "--keep_last", "5",
                "--learning_rate", "1e-3", "--temperature", "1.0", "--oversample", "1", "--precision", "fp32"]

    def launch(steps):
        with socket.socket() as sock:
            sock.bind(("127.0.0.1", 0))
            port = sock.getsockname()[1]
        cmd = [sys.executable, "-m", "accelerate.commands.launch", "--config_file",
               str(root / "train" / "accelerate" / f"{config}.yaml"), "--num_processes", "1", "--main_process_port",
               str(port), str(root / "train" / "grpo.py"), *argv(out, steps)]
        env = {**os.environ, "PYTHONPATH": os.pathsep.join([str(root), os.environ.get("PYTHONPATH", "")])}
        run = subprocess.run(cmd, env=env, capture_output=True, text=True, timeout=300, check=False)
        assert run.returncode == 0, run.stderr[-3000:]

    started = time.perf_counter()
    launch(2)
    record_property("launch_and_2_steps_s", round(time.perf_counter() - started, 1))
    launch(3)
    main(argv(plain, 3))
    rows = [[r for r in read_traces(d / "metrics.jsonl") if r["step"] > 0] for d in (plain, out)]
    assert [r["step"] for r in rows[1]] == [1, 2, 3]
    for a, b in zip(*rows, strict=True):
        for key in ("reward", "loss", "kl_ref", "entropy", "grad_norm"):
            assert b[key] == pytest.approx(a[key], rel=1e-3, abs=1e-6), (a["step"], key)
    sharded, whole = (load_file(d / "checkpoint-3" / "model.safetensors") for d in (out, plain))
    assert sorted(sharded) == sorted(whole)
    for name, tensor in whole.items():
        torch.testing.assert_close(sharded[name], tensor, rtol=0, atol=1e-4, msg=name)
    record_property("step_s", round(sum(r["rollout_s"] + r["reward_s"] + r["update_s"] for r in rows[1]) / 3, 2))


def test_the_vllm_engine_on_the_device(tiny_model_dir, record_property):
    pytest.importorskip("vllm", reason="vLLM is not installed")
    if DEVICE != "cuda":
        pytest.skip("the vLLM check runs on CUDA (make test-vllm covers vLLM on CPU)")
    from transformers import AutoTokenizer

    from agent.engines.base import SamplingParams
    from agent.engines.hf import HFEngine
    from agent.engines.vllm import VLLMEngine

    tok = AutoTokenizer.from_pretrained(tiny_model_dir)
    prompts = [tok(t, add_special_tokens=False)["input_ids"] for t in ["Orin Kael was born in", "Where was"]]
    params = SamplingParams(max_new_tokens=16, temperature=0.0)
    engine = VLLMEngine(str(tiny_model_dir), dtype="float32", gpu_memory_utilization=0.2, sleep_mode=True)
    started = time.perf_counter()
    ids = [g.token_ids for g in engine.generate(prompts, params)]
    record_property("tokens_per_s", round(sum(map(len, ids)) / (time.perf_counter() - started), 1))
    hf = HFEngine.from_pretrained(str(tiny_model_dir), device=DEVICE)
    assert ids == [g.token_ids for g in hf.generate(prompts, params)]
    engine.sleep()  # weights offloaded, KV cache freed; generate wakes them
    assert [g.token_ids for g in engine.generate(prompts, params)] == ids


def test_a_gpu_faiss_index_answers_as_the_cpu_one(record_property):
    faiss = pytest.importorskip("faiss", reason="faiss is not installed")
    if DEVICE != "cuda" or not hasattr(faiss, "StandardGpuResources"):
        pytest.skip("no GPU build of faiss")
    import numpy as np

    vectors = np.random.default_rng(0).standard_normal((20_000, 64)).astype("float32")
    faiss.normalize_L2(vectors)
    cpu = faiss.IndexFlatIP(64)
    cpu.add(vectors)
    gpu = faiss.index_cpu_to_gpu(faiss.StandardGpuResources(), 0, cpu)
    queries = vectors[:256]
    started = time.perf_counter()
    _, gpu_ids = gpu.search(queries, 10)
    record_property("queries_per_s", round(len(queries) / (time.perf_counter() - started), 1))
    _, cpu_ids = cpu.search(queries, 10)
    assert (gpu_ids[:, 0] == cpu_ids[:, 0]).all()
