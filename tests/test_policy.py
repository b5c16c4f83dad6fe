import torch

from train.batching import collate_segments, token_logprobs
from agent.types import Segment
from train.policy import load_policy


def batch(tok):
    ids = tok("Orin Kael was born in Velmora", add_special_tokens=False)["input_ids"]
    return collate_segments([Segment(ids[:2], ids[2:], [1] * (len(ids) - 2), [0.0] * (len(ids) - 2))], tok.pad_token_id)


def test_lora_reference_is_the_base_with_the_adapter_off(tiny_model_dir):
    policy = load_policy(str(tiny_model_dir), lora_r=4, dtype=torch.float32)
    b = batch(policy.tokenizer)
    with torch.no_grad():
        base = token_logprobs(policy.model, b)
    # Train the adapter a little: the policy moves, the reference does not.
    opt = torch.optim.SGD([p for p in policy.model.parameters() if p.requires_grad], lr=1.0)
    for _ in range(3):
        opt.zero_grad()
        (-token_logprobs(policy.model, b)[b.loss_mask.bool()].mean()).backward()
        opt.step()
    with torch.no_grad():
        moved = token_logprobs(policy.model, b)
        with policy.as_reference() as ref:
            reference = token_logprobs(ref, b)
    assert not torch.allclose(moved, base)
    assert torch.allclose(reference, base, atol=1e-6)
    assert policy.reference is None  # no second copy held


def test_full_finetuning_reference_is_a_frozen_copy(tiny_model_dir):
    policy = load_policy(str(tiny_model_dir), dtype=torch.float32)
    assert policy.reference is not policy.model
    assert not any(p.requires_grad for p in policy.reference.parameters())
    assert load_policy(str(tiny_model_dir), need_reference=False).reference is None


def test_the_sampler_is_the_policy_or_a_bf16_copy_that_tracks_it(tiny_model_dir):
    from agent.engines.hf import HFEngine
    from train.policy import sampler_model

    policy = load_policy(str(tiny_model_dir), need_reference=False, dtype=torch.float32)
    assert sampler_model(policy, None) is policy.model
    assert sampler_model(policy, torch.float32) is policy.model  # already in that dtype
    sampler = sampler_model(policy, torch.bfloat16)
    assert sampler is not policy.model
    assert all(p.dtype == torch.bfloat16 and not p.requires_grad for p in sampler.parameters())
    trained = dict(policy.model.named_parameters())
    for name, p in sampler.named_parameters():
        assert torch.equal(p, trained[name].detach().to(torch.bfloat16)), name
    # One optimizer step moves the policy; syncing the engine brings the copy along.
    before = {name: p.detach().clone() for name, p in sampler.named_parameters()}
    b = batch(policy.tokenizer)
    opt = torch.optim.SGD(policy.model.parameters(), lr=1.0)
    (-token_logprobs(policy.model, b)[b.loss_mask.bool()].mean()).backward()
    opt.step()
    engine = HFEngine(sampler, policy.tokenizer)
    assert engine.update_weights(policy.model) > 0
    changed = [name for name, p in sampler.named_parameters() if not torch.equal(p, before[name])]
    assert changed  # the step moved weights by more than bf16 rounding
    for name, p in sampler.named_parameters():
        assert torch.equal(p, trained[name].detach().to(torch.bfloat16)), name


def test_a_lora_model_samples_itself(tiny_model_dir):
    from train.policy import sampler_model

    lora = load_policy(str(tiny_model_dir), lora_r=4, dtype=torch.float32)
    assert sampler_model(lora, torch.bfloat16) is lora.model


def test_lora_sampler_weights_are_the_merged_model(tiny_model_dir):
    """What a separate sampler loads under LoRA: base + adapter delta, under plain model
    names, giving the adapted model's logits; the trained base is left as it was."""
    from transformers import AutoModelForCausalLM

    from train.policy import load_policy, sampler_weights

    policy = load_policy(tiny_model_dir, lora_r=4, dtype=torch.float32)
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

