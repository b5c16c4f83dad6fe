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
    cfg = RolloutConfig(temperature=temperature, seed=5, max_turns=3, max_new_tokens=12, top_k=2, max_doc_tokens=8)
    trajs = Rollout(engine, FixedRetriever(PASSAGES), cfg)(examples, group_size=3)
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


def test_greedy_samples_carry_the_trainers_logprobs_and_the_greedy_answer(model_and_engine):
    # One sample of each group decoded greedily within a rollout at T = 0.7: its tokens are a
    # plain greedy rollout's, its logprobs the trainer's at 0.7 like the sampled rows'.
    model, engine = model_and_engine
    examples = [Example("a", "Where was Orin Kael born?", ["Velmora"]), Example("b", "Who wrote The Ashen Lantern?", ["Mira Solen"])]
    base = dict(seed=5, max_turns=3, max_new_tokens=12, top_k=2, max_doc_tokens=8)
    mixed = Rollout(engine, FixedRetriever(PASSAGES), RolloutConfig(temperature=0.7, greedy_samples=1, **base))(examples, group_size=3)
    plain = Rollout(engine, FixedRetriever(PASSAGES), RolloutConfig(temperature=0.0, **base))(examples)
    for greedy_traj, sampled in zip(plain, (mixed[0], mixed[3])):
        assert sampled.sample == 0
        assert [s.response_ids for s in sampled.segments] == [s.response_ids for s in greedy_traj.segments]
    segments = [seg for t in mixed for seg in t.segments]
    batch = collate_segments(segments, pad_id=engine.tokenizer.pad_token_id)
    mask = batch.loss_mask.bool()
    with torch.no_grad():
        recomputed = token_logprobs(model, batch, 0.7, only_loss=True)
    assert (recomputed[mask] - batch.old_logprobs[mask]).abs().max().item() < 1e-4
    greedy_rows = torch.tensor([t.sample == 0 for t in mixed for _ in t.segments])
    greedy_logprobs = batch.old_logprobs[greedy_rows][mask[greedy_rows]]
    assert (greedy_logprobs < -1e-3).any()  # at T = 0.7 the argmax is not certain: real logprobs, not zeros


def test_exact_kl_over_the_vocabulary_matches_the_full_softmax(tiny_model_dir):
    """`kl_to` gives sum_v p log(p / q) at every trained position (0 elsewhere), for any
    chunking and for a subset of rows, with gradients; 0 against its own distributions."""
    import copy

    from transformers import AutoModelForCausalLM

    from agent.types import Segment

    torch.manual_seed(0)
    ref = AutoModelForCausalLM.from_pretrained(tiny_model_dir)
    model = copy.deepcopy(ref)
    with torch.no_grad():
        for p in model.parameters():
            p.add_(0.02 * torch.randn_like(p))
    segs = []
    for i in range(5):  # rows of different lengths, injected tokens between sampled ones
        ids = torch.randint(5, 200, (20 + 7 * i,)).tolist()
        segs.append(Segment(context_ids=ids[:8], response_ids=ids[8:], loss_mask=[int(j % 3 > 0) for j in range(len(ids) - 8)],
                            logprobs=[0.0] * (len(ids) - 8)))
    batch = collate_segments(segs, pad_id=0)
    T = 0.7
    with torch.no_grad():
        ref_logprobs, dists = token_logprobs(ref, batch, T, only_loss=True, with_dist=True, chunk=2)
        zp = model(input_ids=batch.input_ids, attention_mask=batch.attention_mask).logits[:, :-1] / T
        zq = ref(input_ids=batch.input_ids, attention_mask=batch.attention_mask).logits[:, :-1] / T
        want = (zp.softmax(-1) * (zp.log_softmax(-1) - zq.log_softmax(-1))).sum(-1)
        want = torch.nn.functional.pad(want, (1, 0)) * batch.loss_mask
    assert dists.logp_K_V.shape == (int(batch.loss_mask.sum()), zq.shape[-1])
    assert torch.allclose(ref_logprobs, token_logprobs(ref, batch, T, only_loss=True), atol=1e-6)
    logprobs, kl = token_logprobs(model, batch, T, only_loss=True, kl_to=dists, chunk=3)
    assert float(want.max()) > 1e-3 and torch.allclose(kl, want, atol=1e-5)
    idx = torch.tensor([3, 1])
    _, kl_rows = token_logprobs(model, batch.rows(idx), T, only_loss=True, kl_to=dists.rows(idx))
    assert torch.allclose(kl_rows, want[idx][:, : kl_rows.shape[1]], atol=1e-5)
    kl.sum().backward()
    assert any(p.grad is not None and p.grad.abs().sum() > 0 for p in model.parameters())
    with torch.no_grad():
        _, self_kl = token_logprobs(ref, batch, T, only_loss=True, kl_to=dists)
    assert float(self_kl.abs().max()) < 1e-5
    with pytest.raises(ValueError, match="only_loss"):
        token_logprobs(ref, batch, T, with_dist=True)


def test_greedy_rollout_is_deterministic_and_seeded_sampling_reproduces(model_and_engine):
    _, engine = model_and_engine
    examples = [Example("a", "Where was Orin Kael born?", ["Velmora"])]

    def ids(seed, temperature):
        cfg = RolloutConfig(temperature=temperature, seed=seed, max_turns=2, max_new_tokens=10)
        return [s.response_ids for t in Rollout(engine, FixedRetriever(PASSAGES), cfg)(examples, 4) for s in t.segments]

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
    cfg = RolloutConfig(temperature=0.8, seed=11, max_turns=4, max_new_tokens=8, top_k=2, max_doc_tokens=6)

    def roll(prefix_cache):
        engine = HFEngine(model, tok, prefix_cache=prefix_cache)
        trajs = Rollout(engine, FixedRetriever(PASSAGES), cfg)(examples, group_size=3)
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
