"""Policy specs of the evaluation runner -> (engine, tokenizer).

    oracle          the scripted expert (`agent.oracle`); needs reasoning chains
                    (`metadata.chain`: a generated world, or a QA file that has them)
    tiny            the embedded policy warm-started for the world of `--data`
                    (DATA/tiny/policy-sft, built by `python train/sft.py --data DATA`)
    openai:URL      a model behind an OpenAI-compatible completions endpoint, e.g. a vLLM
                    server (`--model-name` is the served name, `--tokenizer` the local
                    tokenizer, default the served name)
    anything else   a Hugging Face model directory or hub id (hub ids need the model in
                    the local cache: evaluation never downloads)
"""

from __future__ import annotations

from pathlib import Path

from agent.types import Example


def world_dir(data: Path) -> Path:
    """The directory that holds a dataset's corpus and tiny policy: DATA itself or its parent."""
    return data if data.is_dir() else data.parent


def build_oracle(examples: list[Example], data: Path, corpus_path: Path | None, prompt_style: str,
                 tokenizer_path: str | None = None):
    """(engine, tokenizer) of the scripted expert over `examples`."""
    from agent.oracle import OracleEngine
    from retrieval.corpus import load_corpus

    world = world_dir(data)
    corpus_path = corpus_path or world / "corpus.jsonl"
    if not corpus_path.exists():
        raise SystemExit(f"the oracle reads passage titles from a corpus: {corpus_path} not found (pass --corpus)")
    corpus = load_corpus(corpus_path)
    if tokenizer_path:
        tokenizer = _load_tokenizer(tokenizer_path)
    else:
        from train.tiny import tokenizer_for_world

        tokenizer = tokenizer_for_world(world)
    try:
        engine = OracleEngine(tokenizer, examples, lambda doc_id: corpus.passage(doc_id).title, prompt_style=prompt_style)
    except ValueError as error:
        raise SystemExit(f"--policy oracle on {data}: {error}") from None
    return engine, tokenizer


def build_model(spec: str, data: Path, *, model_name: str | None = None, tokenizer_path: str | None = None,
                device: str = "auto"):
    """(engine, tokenizer) for `tiny`, `openai:URL`, or a model directory / hub id (on `device`)."""
    if spec.startswith("openai:"):
        from agent.engines import make_engine

        if not model_name:
            raise SystemExit(f"{spec}: pass --model-name, the model name the server serves")
        tokenizer = _load_tokenizer(tokenizer_path or model_name)
        try:
            engine = make_engine(spec, model=model_name, tokenizer=tokenizer)
        except ValueError as error:
            raise SystemExit(str(error)) from None
        return engine, engine.tokenizer
    from train.tiny import is_embedded, tiny_policy_dir

    if is_embedded(spec):
        path = tiny_policy_dir(world_dir(data), spec)
        if not path.exists():
            raise SystemExit(f"no {spec} policy at {path}: `python train/grpo.py --model {spec} --data {data}` builds it")
        spec = str(path)
    from agent.engines.hf import HFEngine
    from train.hardware import pick_device

    try:
        engine = HFEngine.from_pretrained(spec, device=pick_device(device))
    except OSError as error:
        raise SystemExit(f"cannot load the model {spec!r} (a model directory, or a hub id in the local cache): "
                         f"{error}") from None
    return engine, engine.tokenizer


def _load_tokenizer(path_or_id: str):
    from transformers import AutoTokenizer

    try:
        return AutoTokenizer.from_pretrained(path_or_id)
    except OSError as error:
        raise SystemExit(f"cannot load the tokenizer {path_or_id!r} (a directory, or a hub id in the local cache): "
                         f"{error}") from None
