"""Test doubles: an engine that emits scripted text, and a retriever over fixed passages."""

from __future__ import annotations

from collections.abc import Callable

import torch

from agent.engines.base import Generation, SamplingParams
from retrieval.types import Passage


class ScriptedEngine:
    """Emits, for each prompt, the text `script(prompt_ids, call_index)` as forced tokens.

    Logprobs are a recognisable function of position so tests can check they are kept.
    """

    exact_tokens = True

    def __init__(self, tokenizer, script: Callable[[list[int], int], str] | list[str]):
        self.tokenizer = tokenizer
        self.script = script if callable(script) else (lambda ids, call: script[call])
        self.calls: list[list[list[int]]] = []
        self.params: list[SamplingParams] = []

    def generate(self, prompts, params):
        call = len(self.calls)
        self.calls.append([list(p) for p in prompts])
        self.params.append(params)
        out = []
        for ids in prompts:
            new = self.tokenizer(self.script(ids, call), add_special_tokens=False)["input_ids"]
            finish = "stop" if len(new) <= params.max_new_tokens else "length"
            new = new[: params.max_new_tokens]
            out.append(Generation(new, [-0.5 - 0.01 * i for i in range(len(new))], finish))
        return out


class FixedRetriever:
    """Returns passages whose title or text shares a word with the query, in corpus order."""

    def __init__(self, passages: list[Passage]):
        self.passages = passages
        self.calls: list[list[str]] = []

    def search(self, queries, k):
        self.calls.append(list(queries))
        results = []
        for q in queries:
            words = set(q.lower().split())
            hits = [p for p in self.passages if words & set((p.title + " " + p.text).lower().split())]
            results.append(hits[:k])
        return results


class FailingRetriever:
    def search(self, queries, k):
        raise TimeoutError("retriever timed out after 5.0 s")


PASSAGES = [
    Passage("d1", "Orin Kale", "Orin Kale was born in Dastmoor.", 0.9),
    Passage("d2", "Orin Kael", "Orin Kael was born in Velmora.", 0.8),
    Passage("d3", "Velmora", "Velmora is a city in Dastria.", 0.7),
]


def sharpen(model, std: float = 0.15, seed: int = 0):
    """Redraw a random model's weights at a larger scale. A fresh init (std 0.02) gives
    near-uniform logits, so greedy decoding repeats one token and two engines' argmax can
    tie; sharper logits give varied continuations whose stops land at checkable places."""
    gen = torch.Generator().manual_seed(seed)
    with torch.no_grad():
        for name, param in model.named_parameters():
            if "norm" not in name:
                param.normal_(0.0, std, generator=gen)
    return model.eval()


def world_with_index(root, *, seed: int, entities: int, method: str, world_name: str = "world", index_name: str | None = None):
    """Write a generated world under `root` and build its `method` index beside it."""
    from agent.data.world import WorldConfig, generate_world, write_world
    from retrieval.build import build_index

    write_world(generate_world(WorldConfig(seed=seed, entities=entities)), root / world_name)
    build_index(root / world_name / "corpus.jsonl", root / (index_name or method), method, progress=False)
    return root
