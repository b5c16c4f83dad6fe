"""What the warm start trains on: demonstrations that never show a held-out entity."""

import pytest

from agent.data.world import WorldConfig, generate_world, write_world
from train.demos import extra_world_demonstrations, extra_world_dir, held_out_names, without_names
from train.sft import SFTConfig, rollout_config
from train.tiny import tokenizer_for_world


@pytest.fixture(scope="module")
def world(tmp_path_factory):
    root = tmp_path_factory.mktemp("sftdata") / "world"
    write_world(generate_world(WorldConfig(seed=4, entities=300)), root)
    return root


def demo_text(tok, demo) -> str:
    return "".join(tok.decode(s.context_ids + s.response_ids) for s in demo.segments)


def test_held_out_names_are_the_dev_and_test_entities(world):
    import json

    entities = json.loads((world / "world.json").read_text())["entities"]
    held = held_out_names(world)
    assert {e["name"] for e in entities if e["split"] in ("dev", "test")} <= held
    assert not {e["name"] for e in entities if e["split"] == "train"} & held
    assert held_out_names(world / "missing") == set()


def test_extra_world_drops_every_demonstration_naming_a_held_out_entity(world):
    tok = tokenizer_for_world(world, vocab_size=1024)
    held = held_out_names(world)
    # The data world's own seed regenerates the same names: every dev/test name clashes.
    rcfg = rollout_config(SFTConfig(data=str(world), passages_per_search=2))
    demos, n = extra_world_demonstrations(extra_world_dir(world, 300, seed=4), world, tok, rcfg)
    assert 0 < len(demos) < 0.9 * n
    for demo in demos:
        text = demo_text(tok, demo)
        assert not any(name in text for name in held), demo.example_id
    # A fresh seed: few or no collisions, nearly everything kept, and cached on disk.
    fresh = extra_world_dir(world, 300, seed=77)
    demos, n = extra_world_demonstrations(fresh, world, tok, rcfg)
    assert len(demos) >= 0.8 * n
    assert (world / "tiny" / "extra-world-77-300" / "test.jsonl").exists()
    # Only a seeded sample of its questions is rolled out when asked.
    few, n_few = extra_world_demonstrations(fresh, world, tok, rcfg, questions=60)
    again, _ = extra_world_demonstrations(fresh, world, tok, rcfg, questions=60)
    assert n_few == 60 < n and 0.8 * 60 <= len(few) <= 60
    assert [d.example_id for d in few] == [d.example_id for d in again]
    assert {d.example_id for d in few} <= {d.example_id for d in demos}


def test_without_names_checks_question_answers_and_passages():
    from agent.types import Example, Step, Trajectory
    from retrieval.types import Passage

    ex = [Example("q1", "Where is Orin Kael?", ["Velmora"]), Example("q2", "Where is Ada Lorn?", ["Tesk"])]
    seen = Passage("d1", "Ada Lorn", "Ada Lorn met Zed Quill in Tesk.", 1.0)
    trajs = [Trajectory("q1", "q1", 0, [], [Step("search", "Orin Kael", (0, 1))]),
             Trajectory("q2", "q2", 0, [], [Step("search", "Ada Lorn", (0, 1), passages=[seen])])]
    assert without_names(trajs, ex, set()) == trajs
    assert [t.example_id for t in without_names(trajs, ex, {"Zed Quill"})] == ["q1"]
    assert [t.example_id for t in without_names(trajs, ex, {"Velmora"})] == ["q2"]


def test_pretraining_texts_leave_out_held_out_names(world):
    from train.demos import pretraining_texts

    held = held_out_names(world)
    texts = pretraining_texts(extra_world_dir(world, 300, seed=4), world)
    assert texts
    assert not any(name in text for text in texts for name in held)
    fresh = pretraining_texts(extra_world_dir(world, 300, seed=77), world)
    assert len(fresh) > len(texts)


def test_pretraining_lowers_the_loss_on_its_text(tiny_model_dir):
    import torch
    from transformers import AutoModelForCausalLM, AutoTokenizer

    from train.sft import pretrain

    tok = AutoTokenizer.from_pretrained(tiny_model_dir)
    model = AutoModelForCausalLM.from_pretrained(tiny_model_dir)
    texts = ["Orin Kael was born in Velmora. Orin Kael wrote The Pale Voyige."] * 20
    x = torch.tensor([tok(texts[0] + "\n\n" + texts[0], add_special_tokens=False)["input_ids"]])

    def loss():
        with torch.no_grad():
            return model(input_ids=x, labels=x).loss.item()

    before = loss()
    cfg = SFTConfig(pretrain_steps=20, pretrain_rows=4, learning_rate=3e-3, log_every=10, precision="fp32")
    history = pretrain(model, tok, texts, cfg, row_len=32)
    assert [h["step"] for h in history] == [10, 20]
    assert loss() < before - 2.0, before
    with pytest.raises(ValueError, match="fewer than one row of 256"):
        pretrain(model, tok, ["short"], cfg)


def test_missing_retriever_misses_a_seeded_share_with_the_next_ranked_passages():
    from fakes import PASSAGES, FixedRetriever
    from train.demos import MissingRetriever

    inner = FixedRetriever(PASSAGES)
    queries = ["Orin Kael born Velmora Dastria", "Kael Orin Velmora born"]
    assert MissingRetriever(inner, 0.0).search(queries, 1) == inner.search(queries, 1)
    always = MissingRetriever(inner, 0.999999)
    assert always.search(queries, 1) == [found[1:2] for found in inner.search(queries, 2)]
    sometimes = MissingRetriever(inner, 0.15, seed=3)
    share = sum(sometimes.misses(f"query {i}") for i in range(4000)) / 4000
    assert abs(share - 0.15) < 0.02
    assert [sometimes.misses(f"query {i}") for i in range(50)] == [sometimes.misses(f"query {i}") for i in range(50)]
    assert [sometimes.misses(f"query {i}") for i in range(50)] != [MissingRetriever(inner, 0.15, seed=4).misses(f"query {i}") for i in range(50)]
    with pytest.raises(ValueError, match=r"miss rate must be in \[0, 1\), got 1.5"):
        MissingRetriever(inner, 1.5)


def test_demonstrations_with_misses_show_the_judge_recovering(world):
    tok = tokenizer_for_world(world, vocab_size=1024)

    def recoveries(rate):
        rcfg = rollout_config(SFTConfig(data=str(world), passages_per_search=2))
        demos, _ = extra_world_demonstrations(extra_world_dir(world, 300, seed=21), world, tok, rcfg, miss_rate=rate)
        found = 0
        for demo in demos:
            kinds = [(s.kind, s.text.strip()) for s in demo.steps]
            for i, (kind, text) in enumerate(kinds[:-1]):
                if kind == "judge" and text == "not useful":
                    assert kinds[i + 1][0] == "search"  # dropped, then searched again
                    found += 1
        return found, len(demos)

    without, n_without = recoveries(0.0)
    with_misses, n_with = recoveries(0.3)
    assert with_misses > max(3 * without, 10)
    assert 0.5 * n_without < n_with < n_without  # some misses are never recovered: those demonstrations go


def test_a_new_tiny_model_trains_with_eager_attention_and_the_same_values(world, tiny_model_dir):
    import torch

    from train.batching import collate_segments
    from train.batching import sft_losses
    from train.sft import load_policy_for_sft

    model, tok = load_policy_for_sft(SFTConfig(model="tiny", data=str(world), tiny_hidden_size=64, tiny_layers=2))
    assert model.config._attn_implementation == "eager"
    pretrained, _ = load_policy_for_sft(SFTConfig(model=str(tiny_model_dir)))
    assert pretrained.config._attn_implementation == "sdpa"  # a given model keeps its default
    # Only the kernels differ: the same loss on padded rows of different lengths.
    from agent.types import Segment

    segments = [Segment(list(range(5, 5 + n)), list(range(40, 46)), [1] * 6, [0.0] * 6) for n in (3, 17, 9)]
    batch = collate_segments(segments, tok.pad_token_id)
    with torch.no_grad():
        eager = sft_losses(model, batch)
        model.set_attn_implementation("sdpa")
        sdpa = sft_losses(model, batch)
    for a, b in zip(eager, sdpa):
        assert abs(a.item() - b.item()) < 1e-5
