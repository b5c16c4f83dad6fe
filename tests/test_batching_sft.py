"""Segments -> tensors, and the masked SFT loss."""

import math
import random

import pytest
import torch

from agent.types import Segment
from train.batching import collate_segments, merge_duplicate_rows, sft_losses, token_logprobs
from train.sft import length_batches

SEGS = [
    Segment(context_ids=[5, 6, 7], response_ids=[8, 9, 10], loss_mask=[1, 0, 1], logprobs=[-0.1, 0.0, -0.3]),
    Segment(context_ids=[5], response_ids=[11, 12], loss_mask=[1, 1], logprobs=[-0.2, -0.4]),
]


def test_collate_exact_layout():
    b = collate_segments(SEGS, pad_id=0)
    assert b.input_ids.tolist() == [[5, 6, 7, 8, 9, 10], [5, 11, 12, 0, 0, 0]]
    assert b.attention_mask.tolist() == [[1] * 6, [1, 1, 1, 0, 0, 0]]
    assert b.loss_mask.tolist() == [[0, 0, 0, 1, 0, 1], [0, 1, 1, 0, 0, 0]]
    expected = torch.tensor([[0, 0, 0, -0.1, 0, -0.3], [0, -0.2, -0.4, 0, 0, 0]])
    assert torch.allclose(b.old_logprobs, expected)
    assert b.n_tokens == 9


def test_collate_cuts_context_from_the_left_only():
    b = collate_segments(SEGS[:1], pad_id=0, max_len=4)
    assert b.input_ids.tolist() == [[7, 8, 9, 10]]
    assert b.loss_mask.tolist() == [[0, 1, 0, 1]]
    with pytest.raises(ValueError, match="does not fit max_len=2"):
        collate_segments(SEGS[:1], pad_id=0, max_len=2)


class UniformLM(torch.nn.Module):
    """Logits fixed per (position, token): lets the loss be computed by hand."""

    def __init__(self, vocab=16):
        super().__init__()
        self.vocab = vocab
        self.bias = torch.nn.Parameter(torch.zeros(vocab))

    def forward(self, input_ids, attention_mask=None, use_cache=False):
        B, L = input_ids.shape
        logits = self.bias.expand(B, L, self.vocab).clone()
        logits[..., 3] += 2.0  # token 3 is e^2 times as likely as the others

        class Out:
            pass

        out = Out()
        out.logits = logits
        return out


def test_merge_duplicate_rows_keeps_one_of_each_identical_row_with_its_count():
    def seg(response, logprobs=(-1.0, -2.0), mask=(1, 1)):
        return Segment(context_ids=[5, 6], response_ids=list(response), loss_mask=list(mask), logprobs=list(logprobs))

    segs = [seg([7, 8]), seg([7, 8]), seg([7, 8], logprobs=(-1.0, -2.5)), seg([7, 8], mask=(1, 0)), seg([7], (-1.0,), (1,)),
            seg([7, 8]), seg([7, 9]), seg([7, 8])]
    adv_B_T = torch.zeros(8, 4)
    adv_B_T[:, 2:] = 1.0
    adv_B_T[7, 2:] = -1.0  # same tokens, other advantage: a row of its own
    batch = collate_segments(segs, pad_id=0)
    merged, adv, counts = merge_duplicate_rows(batch, adv_B_T)
    assert counts.tolist() == [3, 1, 1, 1, 1, 1]
    torch.testing.assert_close(merged.input_ids, batch.input_ids[[0, 2, 3, 4, 6, 7]])
    torch.testing.assert_close(merged.old_logprobs, batch.old_logprobs[[0, 2, 3, 4, 6, 7]])
    torch.testing.assert_close(adv, adv_B_T[[0, 2, 3, 4, 6, 7]])
    assert merged.attention_mask[3].tolist() == [1, 1, 1, 0]  # row 4: row 0 cut short, a row of its own


def test_masked_loss_and_logprobs_against_hand_values():
    model = UniformLM()
    seg = Segment(context_ids=[1, 2], response_ids=[3, 4, 3], loss_mask=[1, 0, 1], logprobs=[0.0] * 3)
    batch = collate_segments([seg], pad_id=0)
    z = 15 + math.exp(2)
    lp3, lp_other = 2 - math.log(z), -math.log(z)
    # Only the two sampled '3' tokens count: mean NLL = -lp3.
    assert sft_losses(model, batch)[0].item() == pytest.approx(-lp3, rel=1e-6)
    lp = token_logprobs(model, batch, temperature=1.0)
    assert lp[0].tolist() == pytest.approx([0.0, lp_other, lp3, lp_other, lp3], rel=1e-6)
    # Temperature divides the logits before the softmax.
    zt = 15 + math.exp(4)
    assert token_logprobs(model, batch, temperature=0.5)[0, 2].item() == pytest.approx(4 - math.log(zt), rel=1e-6)


def test_length_batches_cover_every_segment_once():
    segs = [Segment([1] * n, [2] * n, [1] * n, [0.0] * n) for n in range(1, 40)]
    batches = length_batches(segs, 8, random.Random(0))
    flat = [id(s) for b in batches for s in b]
    assert sorted(flat) == sorted(id(s) for s in segs)
    spreads = [max(len(s.context_ids) for s in b) - min(len(s.context_ids) for s in b) for b in batches]
    assert max(spreads) <= 8  # similar lengths together


def test_sft_loss_decreases_on_a_tiny_run(tiny_model_dir):
    from transformers import AutoModelForCausalLM, AutoTokenizer

    from train.sft import SFTConfig, train_sft

    tok = AutoTokenizer.from_pretrained(tiny_model_dir)
    model = AutoModelForCausalLM.from_pretrained(tiny_model_dir)
    prompt = tok("Where was Orin Kael born?", add_special_tokens=False)["input_ids"]
    action = tok("<search>Orin Kael</search>", add_special_tokens=False)["input_ids"]
    injected = tok("<information>Velmora</information>", add_special_tokens=False)["input_ids"]
    answer = tok("<answer>Velmora</answer>", add_special_tokens=False)["input_ids"]
    seg = Segment(prompt, action + injected + answer, [1] * len(action) + [0] * len(injected) + [1] * len(answer), [0.0] * (len(action) + len(injected) + len(answer)))
    batch = collate_segments([seg], tok.pad_token_id)
    before = sft_losses(model, batch)[0].item()
    cfg = SFTConfig(max_steps=30, batch_size=4, learning_rate=3e-3, log_every=10)
    history = train_sft(model, tok, [seg] * 8, cfg)
    after = sft_losses(model, batch)[0].item()
    assert after < 0.5 * before, (before, after)
    assert [h["step"] for h in history] == [10, 20, 30]


def test_context_loss_covers_the_other_real_tokens_only():
    from train.batching import sft_losses

    model = UniformLM()
    long = Segment(context_ids=[1, 2], response_ids=[3, 4, 3], loss_mask=[1, 0, 1], logprobs=[0.0] * 3)
    short = Segment(context_ids=[1], response_ids=[3], loss_mask=[1], logprobs=[0.0])  # padded by 3
    batch = collate_segments([long, short], pad_id=0)
    z = 15 + math.exp(2)
    lp3, lp_other = 2 - math.log(z), -math.log(z)
    policy, context = sft_losses(model, batch)
    # policy tokens: the three sampled '3's; context tokens: '2' and the injected '4' (pads excluded)
    assert policy.item() == pytest.approx(-lp3, rel=1e-6)
    assert context.item() == pytest.approx(-lp_other, rel=1e-6)


def test_precision_resolves_to_weights_autocast_and_sampler_dtypes():
    from train.policy import PolicyConfig, resolve_precision

    bf16 = torch.bfloat16
    fp32, mixed, half = (resolve_precision(n, "cpu") for n in ("fp32", "bf16-mixed", "bf16"))
    assert (fp32.weights, fp32.autocast, fp32.sampler) == (torch.float32, None, None)
    assert (mixed.weights, mixed.autocast, mixed.sampler) == (torch.float32, bf16, bf16)
    assert (half.weights, half.autocast, half.sampler) == (bf16, bf16, None)
    assert resolve_precision("auto", "cpu").name in ("fp32", "bf16-mixed")
    with pytest.raises(ValueError, match="precision must be one of auto, fp32, bf16-mixed, bf16, got 'fp8'"):
        PolicyConfig(precision="fp8")


@pytest.mark.parametrize("flags, cap, kernels", [
    ({"avx512_bf16", "amx_bf16"}, None, "amx"),
    ({"avx512_bf16", "amx_bf16"}, "all", "amx"),
    ({"avx512_bf16", "amx_bf16"}, "AVX512_CORE_BF16", "avx512_bf16"),
    ({"avx512_bf16", "amx_bf16"}, "AVX2", "emulated"),
    ({"avx512_bf16"}, None, "avx512_bf16"),
    ({"avx512_bf16"}, "AVX512_CORE_AMX", "avx512_bf16"),
    ({"avx2"}, None, "emulated"),
    ({"avx512_bf16", "amx_bf16"}, "NOT_AN_ISA", "amx"),
])
def test_bf16_kernels_follow_cpu_flags_and_onednn_cap(monkeypatch, flags, cap, kernels):
    import train.hardware as hardware
    from train.policy import resolve_precision

    monkeypatch.setattr(hardware, "_cpu_flags", lambda: flags)
    if cap is None:
        monkeypatch.delenv("ONEDNN_MAX_CPU_ISA", raising=False)
    else:
        monkeypatch.setenv("ONEDNN_MAX_CPU_ISA", cap)
    assert hardware.cpu_bf16_kernels() == kernels
    # precision "auto" takes bf16 (mixed, float32 weights) only where a kernel computes it natively
    expected = "fp32" if kernels == "emulated" else "bf16-mixed"
    assert resolve_precision("auto", "cpu").name == expected
    assert hardware.machine()["bf16_kernels"] == kernels


def test_context_term_trains_on_injected_text_and_is_logged(tiny_model_dir):
    from transformers import AutoModelForCausalLM, AutoTokenizer

    from train.batching import sft_losses
    from train.sft import SFTConfig, heldout_loss, train_sft

    tok = AutoTokenizer.from_pretrained(tiny_model_dir)
    prompt = tok("Where was Orin Kael born?", add_special_tokens=False)["input_ids"]
    injected = tok("<information>Orin Kael was born in Velmora.</information>", add_special_tokens=False)["input_ids"]
    answer = tok("<answer> Velmora </answer>", add_special_tokens=False)["input_ids"]
    seg = Segment(prompt, injected + answer, [0] * len(injected) + [1] * len(answer), [0.0] * (len(injected) + len(answer)))
    batch = collate_segments([seg], tok.pad_token_id)
    results = {}
    for weight in (0.0, 1.0):
        model = AutoModelForCausalLM.from_pretrained(tiny_model_dir)
        cfg = SFTConfig(max_steps=20, batch_size=2, learning_rate=3e-3, log_every=10, context_lm_weight=weight,
                        precision="fp32", heldout_every=20)
        history = train_sft(model, tok, [seg] * 4, cfg, heldout=[seg])
        with torch.no_grad():
            results[weight] = sft_losses(model, batch)[1].item()
        assert ("context_loss" in history[-1]) == (weight > 0)
        assert [h["step"] for h in history if "heldout_loss" in h] == [20]
        assert history[-1]["heldout_loss"] == pytest.approx(heldout_loss(model, [seg], tok.pad_token_id, 1024), rel=1e-5)
    # Only the weighted run learns the injected text.
    assert results[1.0] < results[0.0] - 1.0, results


def test_save_atomic_replaces_the_model_directory_whole(tiny_model_dir, tmp_path):
    import json

    from transformers import AutoModelForCausalLM, AutoTokenizer

    from train.checkpoint import save_atomic

    model, tok = AutoModelForCausalLM.from_pretrained(tiny_model_dir), AutoTokenizer.from_pretrained(tiny_model_dir)
    out = tmp_path / "policy-sft"
    out.mkdir()
    (out / "stale.txt").write_text("from an older build")
    save_atomic(model, tok, out, {"recipe": 5})
    assert not (out / "stale.txt").exists()
    assert json.loads((out / "training.json").read_text()) == {"recipe": 5}
    reloaded = AutoModelForCausalLM.from_pretrained(out)
    torch.testing.assert_close(reloaded.state_dict(), model.state_dict())
    assert [p.name for p in tmp_path.iterdir()] == ["policy-sft"]  # no temporary left behind


def test_saving_a_model_draws_no_transformers_bar_and_restores_the_setting(tiny_model_dir, tmp_path, capfd):
    import huggingface_hub.utils as hub
    from transformers import AutoModelForCausalLM, AutoTokenizer
    from transformers.utils import logging as hf_logging

    from train.checkpoint import save_atomic

    model, tok = AutoModelForCausalLM.from_pretrained(tiny_model_dir), AutoTokenizer.from_pretrained(tiny_model_dir)
    capfd.readouterr()
    model.save_pretrained(tmp_path / "plain")
    assert "Writing model shards" in capfd.readouterr().err  # what save_atomic keeps off the console
    save_atomic(model, tok, tmp_path / "quiet")
    assert "Writing model shards" not in capfd.readouterr().err
    assert hf_logging.is_progress_bar_enabled()
    hf_logging.disable_progress_bar()
    try:
        save_atomic(model, tok, tmp_path / "quiet-off")
        assert not hf_logging.is_progress_bar_enabled()  # a user's choice to silence bars is kept
    finally:
        hf_logging.enable_progress_bar()
    hub.disable_progress_bars()  # the hub's bars off, transformers' on: both kept
    try:
        save_atomic(model, tok, tmp_path / "hub-off")
        assert hf_logging.is_progress_bar_enabled() and hub.are_progress_bars_disabled()
    finally:
        hub.enable_progress_bars()
