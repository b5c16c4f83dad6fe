"""Agent-loop speed: generated tokens/s of the rollout loop against a bare batched
`model.generate` producing the same number of tokens with the same model and batch.

    python -m eval.bench.rollout --model data/world-0/tiny/policy-sft --data data/world-0 \
        --index indexes/world-0 --batch 64

Observations are most of a trajectory's tokens, and every token must pass through the
model once, so the table also compares against the ideal agent engine: the same decode plus
a single prefill of the final contexts. The gap to that is what re-reading the context
each turn costs (the engine keeps no KV cache across turns).

The loop's wall time is split into generation (inside the engine), retrieval (inside the
retriever) and bookkeeping (everything else: parsing, token accounting, injection). The
baseline decodes the first-turn prompts of the same questions, left-padded, for exactly as
many new tokens per row as the loop generated on average, so both produce the same total.
Both sides run `--repeats` times alternately and keep their best, so a burst of load from
other processes does not land on one side only.
"""

from __future__ import annotations

import argparse
import math
import time
from pathlib import Path

import torch
from rich.console import Console
from rich.table import Table

console = Console()


class Timed:
    """Wraps an object and adds up the wall time spent in one of its methods."""

    def __init__(self, inner, method: str):
        self.inner, self.method, self.seconds = inner, method, 0.0

    def __getattr__(self, name):
        attr = getattr(self.inner, name)
        if name != self.method:
            return attr

        def timed(*args, **kwargs):
            start = time.perf_counter()
            try:
                return attr(*args, **kwargs)
            finally:
                self.seconds += time.perf_counter() - start

        return timed


def run_loop(engine, retriever, examples, cfg):
    from agent.rollout import Rollout

    timed_engine, timed_retriever = Timed(engine, "generate"), Timed(retriever, "search")
    rollout = Rollout(timed_engine, timed_retriever, cfg, engine.tokenizer)
    start = time.perf_counter()
    trajs = rollout(examples, seed=0)
    total = time.perf_counter() - start
    tokens = sum(t.n_sampled_tokens for t in trajs)
    return {"seconds": total, "generate": timed_engine.seconds, "retrieve": timed_retriever.seconds,
            "tokens": tokens, "turns": sum(sum(s.kind != "think" for s in t.steps) for t in trajs),
            "segments": [seg for t in trajs for seg in t.segments]}


def run_single_prefill(model, tokenizer, segments) -> dict:
    """One forward pass over every final segment: the injected tokens' unavoidable cost."""
    from train.batching import collate_segments

    batch = collate_segments(segments, tokenizer.pad_token_id)
    start = time.perf_counter()
    with torch.inference_mode():
        for i in range(0, batch.input_ids.shape[0], 16):
            model(input_ids=batch.input_ids[i : i + 16], attention_mask=batch.attention_mask[i : i + 16], use_cache=False)
    return {"seconds": time.perf_counter() - start, "tokens": batch.n_tokens}


def run_bare_generate(model, tokenizer, prompts: list[list[int]], new_tokens: int) -> dict:
    pad = tokenizer.pad_token_id
    width = max(len(p) for p in prompts)
    ids = torch.tensor([[pad] * (width - len(p)) + p for p in prompts])
    mask = torch.tensor([[0] * (width - len(p)) + [1] * len(p) for p in prompts])
    start = time.perf_counter()
    with torch.inference_mode():
        out = model.generate(input_ids=ids, attention_mask=mask, do_sample=False, max_new_tokens=new_tokens,
                             min_new_tokens=new_tokens, pad_token_id=pad)
    seconds = time.perf_counter() - start
    return {"seconds": seconds, "tokens": int((out[:, width:] != pad).sum()) if pad is not None else out[:, width:].numel()}


def main(argv=None) -> dict:
    p = argparse.ArgumentParser(prog="python -m eval.bench.rollout", description=__doc__.split("\n\n")[0])
    p.add_argument("--model", required=True, help="model directory (e.g. the warm-started tiny policy)")
    p.add_argument("--data", type=Path, required=True, help="generated world or QA file")
    p.add_argument("--split", default="dev")
    p.add_argument("--index", type=Path, required=True)
    p.add_argument("--batch", type=int, default=64, help="questions rolled out together")
    p.add_argument("--repeats", type=int, default=3)
    p.add_argument("--temperature", type=float, default=0.0)
    args = p.parse_args(argv)

    from agent.engines.hf import HFEngine
    from agent.prompts import render_prompt_ids
    from agent.rollout import RolloutConfig
    from agent.data.qa import load_qa
    from retrieval import open_retriever

    engine = HFEngine.from_pretrained(args.model)
    examples = load_qa(args.data, args.split)[: args.batch]
    retriever = open_retriever(args.index)
    cfg = RolloutConfig(temperature=args.temperature)
    prompts = [render_prompt_ids(engine.tokenizer, ex.question, cfg.prompt_style) for ex in examples]
    retriever.search([ex.question for ex in examples], cfg.passages_per_search)  # warm the encoder, not the cache's answers
    loops, bares, prefills = [], [], []
    for _ in range(args.repeats):
        if hasattr(retriever, "clear"):
            retriever.clear()
        loops.append(run_loop(engine, retriever, examples, cfg))
        per_row = math.ceil(loops[-1]["tokens"] / len(examples))
        bares.append(run_bare_generate(engine.model, engine.tokenizer, prompts, per_row))
        prefills.append(run_single_prefill(engine.model, engine.tokenizer, loops[-1]["segments"]))
    loop = min(loops, key=lambda r: r["seconds"])
    bare = min(bares, key=lambda r: r["seconds"])
    prefill = min(prefills, key=lambda r: r["seconds"])
    ideal_s = bare["seconds"] + prefill["seconds"]
    loop_tps, bare_tps = loop["tokens"] / loop["seconds"], bare["tokens"] / bare["seconds"]
    bookkeeping = loop["seconds"] - loop["generate"] - loop["retrieve"]

    table = Table(title=f"agent loop vs bare generate · batch {len(examples)} · {args.model}")
    for col in ("", "tokens", "seconds", "tokens/s"):
        table.add_column(col, justify="right")
    table.add_row("agent loop", str(loop["tokens"]), f"{loop['seconds']:.2f}", f"{loop_tps:.0f}")
    table.add_row("model.generate", str(bare["tokens"]), f"{bare['seconds']:.2f}", f"{bare_tps:.0f}")
    table.add_row("ratio", "", "", f"{loop_tps / bare_tps:.2f}x")
    table.add_row("generate + one prefill of the final contexts", str(bare["tokens"]), f"{ideal_s:.2f}",
                  f"{bare['tokens'] / ideal_s:.0f}")
    table.add_row("ratio to that", "", "", f"{loop_tps / (bare['tokens'] / ideal_s):.2f}x")
    console.print(table)
    shares = Table(title="where the agent loop's time goes")
    for col in ("part", "seconds", "share"):
        shares.add_column(col, justify="right")
    for name, sec in (("generation", loop["generate"]), ("retrieval", loop["retrieve"]), ("bookkeeping", bookkeeping)):
        shares.add_row(name, f"{sec:.2f}", f"{sec / loop['seconds']:.1%}")
    console.print(shares)
    console.print(f"{loop['turns']} actions over {len(examples)} questions · {prefill['tokens']} tokens in the final "
                  f"contexts, {loop['tokens']} of them sampled")
    return {"loop_tokens_per_s": loop_tps, "generate_tokens_per_s": bare_tps, "ratio": loop_tps / bare_tps,
            "ideal_ratio": loop_tps / (bare["tokens"] / ideal_s), "generation_s": loop["generate"], "retrieval_s": loop["retrieve"], "bookkeeping_s": bookkeeping}


if __name__ == "__main__":
    main()
