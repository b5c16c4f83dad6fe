"""The embedded default: tokenizer and model directory."""

import json

import pytest

from agent.actions import PROTOCOL_TAGS
from agent.data.world import WorldConfig, generate_world, write_world
from train.tiny import TinyModelConfig, build_model, save_model_dir, tokenizer_for_world, world_texts


@pytest.fixture(scope="module")
def world(tmp_path_factory):
    root = tmp_path_factory.mktemp("tiny") / "world"
    write_world(generate_world(WorldConfig(seed=4, entities=600)), root)
    return root


def test_tags_are_single_tokens_and_text_round_trips(world):
    tok = tokenizer_for_world(world, vocab_size=1024)
    for tag in PROTOCOL_TAGS:
        assert len(tok(tag, add_special_tokens=False)["input_ids"]) == 1, tag
    text = '<search>Britos country</search>\n\n<information>Doc 1 (Title: Britos) Britos lies in 1834.</information>'
    assert tok.decode(tok(text, add_special_tokens=False)["input_ids"]) == text
    # Cached: the second call loads what the first saved.
    again = tokenizer_for_world(world, vocab_size=1024)
    assert again(text)["input_ids"] == tok(text)["input_ids"]


def test_numbers_split_into_pairs_of_digits_each_one_token(world):
    tok = tokenizer_for_world(world, vocab_size=1024)
    text = "<answer> 1652 </answer> born in 1652, 7 or 19034."
    ids = tok(text, add_special_tokens=False)["input_ids"]
    assert tok.convert_ids_to_tokens(ids)[1:4] == ["Ġ", "16", "52"]
    assert tok.convert_ids_to_tokens(ids)[-7:] == ["7", "Ġor", "Ġ", "19", "03", "4", "."]
    assert tok.decode(ids) == text and "".join(tok.decode([i]) for i in ids) == text
    # Every pair is in the vocabulary, so a year the training text never held still copies as two tokens.
    assert all(len(tok(f"{i:02d}", add_special_tokens=False)["input_ids"]) == 1 for i in range(100))


def test_held_out_names_are_spelled_with_pieces_seen_in_training(world):
    tok = tokenizer_for_world(world, vocab_size=1024)
    seen = {i for text in world_texts(world) for i in tok(text)["input_ids"]}
    test = [json.loads(line) for line in open(world / "test.jsonl")]
    ids = [i for q in test for i in tok(q["question"] + " " + q["golden_answers"][0])["input_ids"]]
    assert sum(i in seen for i in ids) / len(ids) >= 0.99
    # No dev/test question text went into the tokenizer's training text.
    train_text = "\n".join(world_texts(world))
    assert not any(q["question"] in train_text for q in test)


def test_model_directory_loads_with_auto_classes_and_same_ids(world, tmp_path):
    from transformers import AutoModelForCausalLM, AutoTokenizer

    tok = tokenizer_for_world(world, vocab_size=1024)
    out = save_model_dir(build_model(tok, TinyModelConfig.scaled(64, 2)), tok, tmp_path / "m")
    model = AutoModelForCausalLM.from_pretrained(out)
    loaded = AutoTokenizer.from_pretrained(out)
    assert type(model).__name__ == "Qwen2ForCausalLM"
    assert model.get_input_embeddings().num_embeddings == len(tok)
    sample = open(world / "corpus.jsonl").readline() + " born in 1652."
    # transformers rebuilds a Qwen2 directory's pre-tokenizer: the digit pairs must survive it.
    assert loaded(sample)["input_ids"] == tok(sample)["input_ids"]
    assert loaded.convert_ids_to_tokens(loaded(" 1652.")["input_ids"]) == ["Ġ", "16", "52", "."]


def test_the_larger_embedded_default_is_built_by_the_same_recipe_at_its_size(tmp_path, monkeypatch):
    import train.sft
    from train.prepare import ensure_tiny_policy
    from train.tiny import is_embedded, tiny_policy_dir

    built = []
    monkeypatch.setattr(train.sft, "run", lambda cfg: built.append(cfg))
    for model in ("tiny", "tiny-large"):
        ensure_tiny_policy(tmp_path / "world", tmp_path / "index", model)
    assert [(c.tiny_hidden_size, c.tiny_layers, c.model) for c in built] == [(256, 4, "tiny"), (512, 8, "tiny")]
    assert [c.output_dir for c in built] == [str(tiny_policy_dir(tmp_path / "world", m)) for m in ("tiny", "tiny-large")]
    assert tiny_policy_dir("d").name == "policy-sft" and tiny_policy_dir("d", "tiny-large").name == "policy-sft-large"
    assert is_embedded("tiny-large") and not is_embedded("Qwen/Qwen2.5-0.5B")
    with pytest.raises(ValueError, match="'tiny-xl' is not an embedded default"):
        tiny_policy_dir("d", "tiny-xl")


def test_the_embedded_default_with_a_server_url_builds_no_index(monkeypatch, tmp_path):
    """`--index http://...` with the embedded default: the server holds the index, so nothing
    is built into a directory named after the URL."""
    import agent.data.world
    import retrieval.build
    import train.prepare

    def no_build(*args, **kwargs):
        raise AssertionError(f"ensure_index called with {args}")

    monkeypatch.setattr(agent.data.world, "ensure_world", lambda data_dir: tmp_path)
    monkeypatch.setattr(retrieval.build, "ensure_index", no_build)
    monkeypatch.setattr(train.prepare, "ensure_tiny_policy", lambda data, index, model, **kw: (data, index, model))
    url = "http://127.0.0.1:8000"
    assert train.prepare.ensure_default(tmp_path, url) == (tmp_path, url, (tmp_path, url, "tiny"))
