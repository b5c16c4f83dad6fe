"""The trainer recomputes exactly the logprobs the sampler reported, token for token."""

import pytest
import torch

from agent.engines.base import SamplingParams
from agent.rollout import Rollout, RolloutConfig
from agent.types import Example
from fakes import PASSAGES, FixedRetriever
from train.batching import collate_segments, token_logprobs


@pytest.fixture(scope="module")
def model_and_engine(tiny_model_dir):
    from agent.engines.hf import HFEngine

    engine = HFEngine.from_pretrained(str(tiny_model_dir))
    return engine.model, engine


@pytest.mark.parametrize("temperature", [0.0, 0.7, 1.0])
def test_rollout_logprobs_match_trainer_forward(model_and_engine, temperature):
    model, engine = model_and_engine
    # A random model emits junk: that exercises invalid actions and corrective injections,
    # which must be masked out and must not shift the alignment of later sampled tokens.
    examples = [Example("a", "Where was Orin Kael born?", ["Velmora"]), Example("b", "Who wrote The Ashen Lantern?", ["Mira Solen"])]
    cfg = RolloutConfig(temperature=temperature, max_turns=3, max_new_tokens=12, passages_per_search=2, max_doc_tokens=8)
    trajs = Rollout(engine, FixedRetriever(PASSAGES), cfg)(examples, group_size=3, seed=5)
    segments = [seg for t in trajs for seg in t.segments]
    assert sum(sum(s.loss_mask) for s in segments) > 50
    assert any(m == 0 for s in segments for m in s.loss_mask)  # injected tokens present
    batch = collate_segments(segments, pad_id=engine.tokenizer.pad_token_id)
    mask = batch.loss_mask.bool()
    for only_loss in (False, True):  # the full head, and the head on the trained tokens only
        with torch.no_grad():
            recomputed = token_logprobs(model, batch, temperature, only_loss=only_loss)
        diff = (recomputed[mask] - batch.old_logprobs[mask]).abs().max().item()
        assert diff < 1e-4, (only_loss, diff)
        if only_loss:
            assert not recomputed[~mask].any()


def test_greedy_rollout_is_deterministic_and_seeded_sampling_reproduces(model_and_engine):
    _, engine = model_and_engine
    examples = [Example("a", "Where was Orin Kael born?", ["Velmora"])]

    def ids(seed, temperature):
        cfg = RolloutConfig(temperature=temperature, max_turns=2, max_new_tokens=10)
        return [s.response_ids for t in Rollout(engine, FixedRetriever(PASSAGES), cfg)(examples, 4, seed=seed)
                for s in t.segments]

    assert ids(1, 1.0) == ids(1, 1.0)
    assert ids(1, 1.0) != ids(2, 1.0)
    greedy = ids(None, 0.0)
    assert greedy == ids(7, 0.0)


def test_prefix_cache_changes_nothing_but_the_work(tiny_model_dir):
    """Rows continue from the previous turn's KV states: same ids and logprobs as a cold
    prefill of every context, and most prompt tokens come from the store."""
    from transformers import AutoModelForCausalLM, AutoTokenizer

    from agent.engines.hf import HFEngine
    from fakes import sharpen

    tok = AutoTokenizer.from_pretrained(tiny_model_dir)
    model = sharpen(AutoModelForCausalLM.from_pretrained(tiny_model_dir))
    examples = [Example("a", "Where was Orin Kael born?", ["Velmora"]), Example("b", "Who wrote The Ashen Lantern?", ["x"])]
    cfg = RolloutConfig(temperature=0.8, max_turns=4, max_new_tokens=8, passages_per_search=2, max_doc_tokens=6)

    def roll(prefix_cache):
        engine = HFEngine(model, tok, prefix_cache=prefix_cache)
        trajs = Rollout(engine, FixedRetriever(PASSAGES), cfg)(examples, group_size=3, seed=11)
        return trajs, engine

    cold, cold_engine = roll(False)
    warm, warm_engine = roll(True)
    assert cold_engine.prefix_tokens_reused == 0
    assert warm_engine.prefix_tokens_reused > 100
    for a, b in zip(cold, warm):
        assert [s.response_ids for s in a.segments] == [s.response_ids for s in b.segments]
        for sa, sb in zip(a.segments, b.segments):
            assert max((abs(x - y) for x, y in zip(sa.logprobs, sb.logprobs)), default=0.0) < 1e-4
    # Changed weights invalidate the store: nothing stale is reused.
    engine = warm_engine
    with torch.no_grad():
        next(model.parameters()).mul_(1.0)
    before = engine.prefix_tokens_reused
    engine.generate([warm[0].segments[-1].full_ids], SamplingParams(max_new_tokens=2))
    assert engine.prefix_tokens_reused == before


def test_chunks_cut_to_their_longest_row_give_each_row_its_own_logprobs(model_and_engine):
    """Rows of mixed lengths, in any order, get the logprobs and entropies they get alone."""
    from agent.types import Segment

    model, engine = model_and_engine
    lengths = [5, 31, 9, 17, 2, 23, 12]
    segments = [Segment(context_ids=[5 + (i * 7 + k) % 50 for k in range(3)],
                        response_ids=[7 + (i * 3 + k) % 40 for k in range(n)], loss_mask=[1] * n, logprobs=[0.0] * n)
                for i, n in enumerate(lengths)]
    pad = engine.tokenizer.pad_token_id
    batch = collate_segments(segments, pad_id=pad)
    with torch.no_grad():
        lp, ent = token_logprobs(model, batch, 0.7, chunk=3, with_entropy=True)
        for b, seg in enumerate(segments):
            alone_lp, alone_ent = token_logprobs(model, collate_segments([seg], pad_id=pad), 0.7, with_entropy=True)
            n = alone_lp.shape[1]
            torch.testing.assert_close(lp[b, :n], alone_lp[0], atol=1e-5, rtol=1e-5)
            torch.testing.assert_close(ent[b, :n], alone_ent[0], atol=1e-5, rtol=1e-5)
    # Gradients reach the model through the reordering.
    model.zero_grad()
    (-token_logprobs(model, batch, 0.7, chunk=3)[batch.loss_mask.bool()].mean()).backward()
    assert any(p.grad is not None and p.grad.abs().sum() > 0 for p in model.parameters())
    model.zero_grad()


def test_head_on_trained_tokens_only_matches_the_full_head_and_its_gradients(model_and_engine):
    """`only_loss` runs the output head where loss_mask is set: same logprobs, entropies
    and gradients there as the full forward, zeros elsewhere."""
    from agent.types import Segment

    model, engine = model_and_engine
    segments = [Segment(context_ids=[5 + (i * 7 + k) % 50 for k in range(4)],
                        response_ids=[7 + (i * 3 + k) % 40 for k in range(n)],
                        loss_mask=[int((k + i) % 3 != 0) for k in range(n)], logprobs=[0.0] * n)
                for i, n in enumerate([6, 19, 3, 11, 25])]
    batch = collate_segments(segments, pad_id=engine.tokenizer.pad_token_id)
    mask = batch.loss_mask.bool()
    grads = []
    for only_loss in (False, True):
        model.zero_grad()
        lp, ent = token_logprobs(model, batch, 0.7, chunk=2, with_entropy=True, only_loss=only_loss)
        (-(lp[mask].mean()) + 0.1 * ent[mask].mean()).backward()
        grads.append([p.grad.clone() for p in model.parameters()])
        if only_loss:
            torch.testing.assert_close(lp[mask], full_lp[mask], atol=1e-5, rtol=1e-5)
            torch.testing.assert_close(ent[mask], full_ent[mask], atol=1e-5, rtol=1e-5)
            assert not lp[~mask].any() and not ent[~mask].any()
        full_lp, full_ent = lp.detach(), ent.detach()
    model.zero_grad()
    for full_g, sliced_g in zip(*grads):
        torch.testing.assert_close(sliced_g, full_g, atol=1e-6, rtol=1e-4)


def test_head_on_trained_tokens_only_keeps_the_full_forward_for_scaled_logits(model_and_engine):
    from train.batching import _body_and_head

    model, _ = model_and_engine
    assert _body_and_head(model) is not None
    model.config.final_logit_softcapping = 30.0  # Gemma 2 caps its logits after the head
    try:
        assert _body_and_head(model) is None
    finally:
        model.config.final_logit_softcapping = None
