"""Batch-invariant sampling: a row's samples depend on its prompt and the seed only."""

import math

import torch

from agent.engines.base import SamplingParams
from agent.engines.sampling import _truncated, row_keys, sample_next, uniform_noise


def test_row_keys_part_identical_prompts_and_are_stable():
    keys = row_keys([[5, 6], [5, 6], [7]], seed=3)
    assert len(set(keys)) == 3 and all(0 <= k < 2**63 for k in keys)
    assert keys == row_keys([[5, 6], [5, 6], [7]], seed=3)  # no per-process hash randomness
    assert row_keys([[7]], seed=3) == keys[2:]  # a prompt's key ignores the other prompts
    assert row_keys([[5, 6]], seed=4) != keys[:1]


def test_gumbel_max_draws_from_the_softmax():
    probs = torch.tensor([0.1, 0.2, 0.3, 0.4])
    keys_B = torch.tensor(row_keys([[i] for i in range(20_000)], seed=0))
    ids, logprobs = sample_next(probs.log().expand(20_000, 4), SamplingParams(temperature=1.0), keys_B, step=0)
    freq = torch.bincount(ids, minlength=4).float() / len(ids)
    torch.testing.assert_close(freq, probs, atol=0.012, rtol=0)
    torch.testing.assert_close(logprobs, probs.log()[ids])
    u = uniform_noise(keys_B[:100], step=5, vocab=1000)
    assert 0 < u.min() and u.max() < 1 and abs(u.mean().item() - 0.5) < 0.01
    assert not torch.equal(u, uniform_noise(keys_B[:100], step=6, vocab=1000))


def test_temperature_and_truncation_by_hand():
    logits = torch.tensor([[0.0, 1.0, 2.0, 3.0]])
    # top-k 2 keeps ids 3 and 2; top-p 0.7 of softmax(logits) (.032, .087, .237, .644) keeps 3 and 2 too
    assert torch.isinf(_truncated(logits, 2, 1.0)[0, :2]).all() and _truncated(logits, 2, 1.0)[0, 2:].tolist() == [2, 3]
    assert _truncated(logits, 0, 0.7)[0].tolist() == [-math.inf, -math.inf, 2.0, 3.0]
    assert _truncated(logits, 0, 0.5)[0].tolist() == [-math.inf, -math.inf, -math.inf, 3.0]
    keys_B = torch.tensor(row_keys([[i] for i in range(2000)], seed=1))
    ids, logprobs = sample_next(logits.expand(2000, 4), SamplingParams(temperature=2.0, top_k=2), keys_B, step=0)
    assert set(ids.tolist()) == {2, 3}
    # logprobs stay those of the untruncated softmax at the temperature
    torch.testing.assert_close(logprobs, torch.log_softmax(logits[0] / 2.0, -1)[ids])


def test_a_row_samples_the_same_alone_in_a_batch_and_in_chunks(tiny_model_dir):
    from transformers import AutoModelForCausalLM, AutoTokenizer

    from agent.engines.hf import HFEngine
    from fakes import sharpen

    tok = AutoTokenizer.from_pretrained(tiny_model_dir)
    model = sharpen(AutoModelForCausalLM.from_pretrained(tiny_model_dir))
    prompts = [tok(t, add_special_tokens=False)["input_ids"] for t in
               ["Orin Kael was born in", "Where", "Where", "The Zentrova Guild was founded"]]
    params = SamplingParams(max_new_tokens=12, temperature=0.9, seed=7)

    def ids(engine, batch):
        return [g.token_ids for g in engine.generate(batch, params)]

    whole = ids(HFEngine(model, tok), prompts)
    assert whole[1] != whole[2]  # identical prompts still sample independently
    assert ids(HFEngine(model, tok, max_batch_size=1), prompts) == whole
    assert ids(HFEngine(model, tok), prompts[2:]) == [whole[1], whole[3]]  # the first "Where" of this call
    assert ids(HFEngine(model, tok), [prompts[3], prompts[0]]) == [whole[3], whole[0]]
    assert ids(HFEngine(model, tok), prompts) == whole
    assert [g.token_ids for g in HFEngine(model, tok).generate(prompts[:1], SamplingParams(
        max_new_tokens=12, temperature=0.9, seed=8))] != whole[:1]
