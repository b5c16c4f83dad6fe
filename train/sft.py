"""Supervised warm start on demonstrations: the loss falls only on tokens the policy
produces (`loss_mask` 1), never on the prompt or on injected observations.

    python train/sft.py                                  # tiny model, generated world
    python train/sft.py --model Qwen/Qwen2.5-0.5B-Instruct --data data/world-0 \
        --index indexes/world-0 --output_dir outputs/sft-qwen
    python train/sft.py --model PATH --demos demos.jsonl # demonstrations in the trace format

Demonstrations default to the scripted oracle's trajectories on the *train* split (its
judges of distractors included), rolled out with the policy's own tokenizer, so their
token ids are exactly what this model will see. Only correctly answered ones are kept,
and none that shows a dev/test entity (retrieval over the whole corpus returns their
passages as distractors). The tiny model also trains on the demonstrations of a second,
freshly named world, so that names must be copied rather than recalled, with an auxiliary
loss on the injected text (`context_lm_weight`) and bf16 autocast where the CPU has it.
"""

from __future__ import annotations

import math
import os
import random
import time
from dataclasses import asdict, dataclass
from pathlib import Path

import torch
from rich.console import Console

from agent.rollout import Rollout, RolloutConfig
from agent.types import Segment
from retrieval import cli
from train.batching import collate_segments, sft_losses
from train.checkpoint import save_atomic
from train.config import check_fields, doc, parse_config
from train.demos import (extra_world_demonstrations, extra_world_dir, held_out_names, oracle_demonstrations, pretraining_texts,
                         progress_bar, training_segments, without_names)
from train.hardware import machine, pick_device
from train.policy import autocast_to, resolve_precision, training_attention

console = Console(stderr=True)

# Version of the embedded policy's recipe (format, tokenizer, data, schedule): a cached
# tiny policy built by another version is rebuilt rather than reused.
TINY_RECIPE = 6


@dataclass
class SFTConfig:
    """The supervised warm start on demonstrations (the embedded tiny model's build, or a real model's)."""

    model: str = doc("'tiny' (a new embedded model for the world) or a HF model directory / hub id", "tiny")
    data: str = doc("generated world directory (corpus.jsonl, train/dev/test.jsonl)", "data/world-0")
    index: str = doc("retrieval index directory used to roll out demonstrations", "indexes/world-0")
    demos: str | None = doc("traces.jsonl of demonstrations; default: oracle rollouts of the train split", None)
    output_dir: str | None = doc("where the warm-started model directory is written "
                                 "(default: DATA/tiny/policy-sft for the tiny model, else outputs/sft)", None)
    max_steps: int = doc("optimizer steps", 600, ge=1)
    batch_size: int = doc("segments per optimizer step", 12, ge=1)
    learning_rate: float = doc("peak learning rate of the one-cycle schedule", 1.5e-3, gt=0)
    warmup_ratio: float = doc("share of steps spent warming up linearly", 0.05, ge=0, le=1)
    weight_decay: float = doc("AdamW weight decay", 0.0, ge=0)
    max_grad_norm: float = doc("gradient clipping norm", 1.0, gt=0)
    max_len: int = doc("longest training row in tokens (the context is cut from the left)", 1024, ge=2)
    max_demos: int | None = doc("use at most this many demonstrations", None, ge=1)
    passages_per_search: int = doc("passages per search in demonstrations (2 keeps the tiny model's contexts short)", 2,
                                   ge=1)
    retrieval_miss_rate: float = doc(
        "share of the demonstrations' searches that miss: they return the passages ranked just below the top k, "
        "which the oracle judges 'not useful' and searches again, so the policy sees the JUDGE action's "
        "recovery path (seeded by the query's text). 0 = off", 0.0, ge=0, lt=1)
    max_doc_tokens: int = doc("tokens kept of each passage in demonstrations", 64, ge=0)
    tiny_vocab_size: int = doc("BPE vocabulary of a new tiny model's tokenizer (model=tiny only)", 2048, ge=1)
    tiny_hidden_size: int = doc("width of a new tiny model (model=tiny only)", 256, ge=1)
    tiny_layers: int = doc("transformer blocks of a new tiny model (model=tiny only)", 4, ge=1)
    extra_world_entities: int = doc(
        "model=tiny on a generated world: entities of a second, freshly named world whose oracle demonstrations "
        "join the train split's, so the model learns to copy names rather than recall them (0 = none)", 6000, ge=0)
    extra_world_questions: int = doc(
        "questions of that world rolled out as demonstrations, a seeded sample (0 = all)", 0, ge=0)
    pretrain_steps: int = doc(
        "model=tiny: steps of next-token pretraining on the second world's passages before SFT (0 = none). "
        "Names repeat in every passage, so this is where the model learns to copy them", 500, ge=0)
    pretrain_rows: int = doc("rows of 256 tokens per pretraining step", 16, ge=1)
    extra_world_seed: int | None = doc("seed of that world (default: the data world's seed + 1000)", None)
    context_lm_weight: float | None = doc(
        "weight of an auxiliary next-token loss on the injected text (prompt, observations); default: 0.5 for "
        "model=tiny, which has read no text before (a pretrained model has: 0). The SFT loss itself stays on "
        "loss_mask tokens", None, ge=0)
    precision: str = doc("auto | fp32 | bf16-mixed: float32 weights, with bf16 autocast of the forwards for "
                         "bf16-mixed; auto takes bf16-mixed where the GPU or CPU computes bf16 natively", "auto",
                         choices=("auto", "fp32", "bf16-mixed"))
    device: str = doc("auto (a GPU where CUDA exists, else the CPU) | cpu | cuda | cuda:N", "auto")
    heldout_every: int = doc("steps between the masked loss on dev demonstrations (0 = never)", 200, ge=0)
    eval_questions: int = doc("dev questions evaluated (greedy) after training; 0 = none", 200, ge=0)
    log_every: int = doc("steps between loss lines in the log", 25, ge=1)
    seed: int = doc("seed of initialisation, shuffling and sampling", 0, ge=0)

    def __post_init__(self) -> None:
        check_fields(self)


def rollout_config(cfg: SFTConfig, **overrides) -> RolloutConfig:
    return RolloutConfig(passages_per_search=cfg.passages_per_search, max_doc_tokens=cfg.max_doc_tokens, temperature=0.0, **overrides)


def heldout_loss(model, segments: list[Segment], pad_id: int, max_len: int, autocast: torch.dtype | None = None,
                 batch_size: int = 32) -> float:
    """Masked loss on held-out demonstrations (no gradient): the curve that shows whether
    the model copies names it has never seen or only recalls the ones it trained on."""
    device = next(model.parameters()).device
    was_training, total, weight = model.training, 0.0, 0.0
    model.eval()
    with torch.no_grad(), autocast_to(device, autocast):
        for i in range(0, len(segments), batch_size):
            batch = collate_segments(segments[i : i + batch_size], pad_id, max_len).to(device)
            n = float(batch.loss_mask[:, 1:].sum())
            total += sft_losses(model, batch)[0].item() * n
            weight += n
    model.train(was_training)
    return total / max(weight, 1.0)


def length_batches(segments: list[Segment], batch_size: int, rng: random.Random) -> list[list[Segment]]:
    """Batches of similar length (little padding), in random order."""
    order = sorted(range(len(segments)), key=lambda i: (len(segments[i].context_ids) + len(segments[i].response_ids), rng.random()))
    batches = [[segments[i] for i in order[j : j + batch_size]] for j in range(0, len(order), batch_size)]
    rng.shuffle(batches)
    return batches


def adamw_cosine(model, cfg: SFTConfig, steps: int):
    """(optimizer, scheduler) of both warm-start phases: AdamW and a one-cycle cosine over `steps`."""
    from transformers import get_cosine_schedule_with_warmup

    optimizer = torch.optim.AdamW(model.parameters(), lr=cfg.learning_rate, weight_decay=cfg.weight_decay, betas=(0.9, 0.95))
    return optimizer, get_cosine_schedule_with_warmup(optimizer, math.ceil(cfg.warmup_ratio * steps), steps)


def optimizer_step(loss: torch.Tensor, model, optimizer, scheduler, max_grad_norm: float) -> None:
    optimizer.zero_grad(set_to_none=True)
    loss.backward()
    torch.nn.utils.clip_grad_norm_(model.parameters(), max_grad_norm)
    optimizer.step()
    scheduler.step()


def train_sft(model, tokenizer, segments: list[Segment], cfg: SFTConfig, heldout: list[Segment] | None = None) -> list[dict]:
    """The training loop; returns the logged history ({step, loss, lr, tokens_per_s}, plus
    `context_loss` when that term is on and `heldout_loss` every `heldout_every` steps)."""
    if not segments:
        raise ValueError("no demonstration segments to train on (every demonstration had an empty loss mask)")
    torch.manual_seed(cfg.seed)
    rng = random.Random(cfg.seed)
    model.train()
    optimizer, scheduler = adamw_cosine(model, cfg, cfg.max_steps)
    device = next(model.parameters()).device
    amp = resolve_precision(cfg.precision, device).autocast
    context_weight = cfg.context_lm_weight or 0.0
    history, batches, window, context_window = [], [], [], []
    tokens, start = 0, time.perf_counter()
    with progress_bar() as progress:
        task = progress.add_task("sft", total=cfg.max_steps)
        for step in range(1, cfg.max_steps + 1):
            if not batches:
                batches = length_batches(segments, cfg.batch_size, rng)
            batch = collate_segments(batches.pop(), tokenizer.pad_token_id, cfg.max_len).to(device)
            with autocast_to(device, amp):
                loss, context_loss = sft_losses(model, batch)
            total = loss + context_weight * context_loss if context_weight else loss
            optimizer_step(total, model, optimizer, scheduler, cfg.max_grad_norm)
            tokens += batch.n_tokens
            window.append(loss.item())
            context_window.append(context_loss.item())
            check = bool(heldout) and cfg.heldout_every > 0 and (step % cfg.heldout_every == 0 or step == cfg.max_steps)
            if step % cfg.log_every == 0 or step == cfg.max_steps or check:
                rec = {"step": step, "loss": sum(window) / len(window), "lr": scheduler.get_last_lr()[0],
                       "tokens_per_s": tokens / (time.perf_counter() - start)}
                if context_weight:
                    rec["context_loss"] = sum(context_window) / len(context_window)
                if check:
                    rec["heldout_loss"] = heldout_loss(model, heldout, tokenizer.pad_token_id, cfg.max_len, amp)
                history.append(rec)
                window, context_window = [], []
                progress.update(task, description=f"sft loss {rec['loss']:.3f}")
                progress.console.print(
                    f"step {step:>5} · loss {rec['loss']:.4f}"
                    + (f" · context loss {rec['context_loss']:.3f}" if "context_loss" in rec else "")
                    + (f" · dev loss {rec['heldout_loss']:.4f}" if "heldout_loss" in rec else "")
                    + f" · lr {rec['lr']:.2e} · {rec['tokens_per_s']:.0f} tokens/s",
                    highlight=False,
                )
            progress.advance(task)
    model.eval()
    return history


def pretrain(model, tokenizer, texts: list[str], cfg: SFTConfig, row_len: int = 256) -> list[dict]:
    """Next-token pretraining on `texts`, shuffled, packed into rows of `row_len` tokens.

    Why: a pretrained LM arrives at SFT able to copy what it has read; the tiny model has
    read nothing, and on demonstrations alone it learns the protocol long before it learns
    to copy names (held-out EM stays near 0 after 1,200 SFT steps). The passages repeat
    their entity's name in every sentence, which teaches exactly that.
    """
    rng = random.Random(cfg.seed)
    texts = list(texts)
    rng.shuffle(texts)
    ids = [i for text in texts for i in tokenizer(text + "\n\n", add_special_tokens=False)["input_ids"]]
    if len(ids) < row_len:
        raise ValueError(f"pretraining text has {len(ids)} tokens, fewer than one row of {row_len}")
    rows_N_L = torch.tensor(ids[: len(ids) // row_len * row_len]).view(-1, row_len)
    device = next(model.parameters()).device
    amp = resolve_precision(cfg.precision, device).autocast
    optimizer, scheduler = adamw_cosine(model, cfg, cfg.pretrain_steps)
    gen = torch.Generator().manual_seed(cfg.seed)
    model.train()
    history, window = [], []
    with progress_bar() as progress:
        task = progress.add_task("pretraining on text", total=cfg.pretrain_steps)
        for step in range(1, cfg.pretrain_steps + 1):
            x_B_L = rows_N_L[torch.randint(0, len(rows_N_L), (cfg.pretrain_rows,), generator=gen)].to(device)
            with autocast_to(device, amp):
                logits_B_L_V = model(input_ids=x_B_L, use_cache=False).logits
            loss = torch.nn.functional.cross_entropy(logits_B_L_V[:, :-1].float().flatten(0, 1), x_B_L[:, 1:].flatten())
            optimizer_step(loss, model, optimizer, scheduler, cfg.max_grad_norm)
            window.append(loss.item())
            if step % cfg.log_every == 0 or step == cfg.pretrain_steps:
                history.append({"step": step, "loss": sum(window) / len(window)})
                window = []
                progress.console.print(f"pretrain step {step:>5} · loss {history[-1]['loss']:.4f}", highlight=False)
            progress.advance(task)
    model.eval()
    return history


def load_policy_for_sft(cfg: SFTConfig):
    """(model, tokenizer): a new embedded model for `tiny`, else a pretrained one."""
    if cfg.model == "tiny":
        from train.tiny import TinyModelConfig, build_model, tokenizer_for_world

        tokenizer = tokenizer_for_world(cfg.data, vocab_size=cfg.tiny_vocab_size)
        size = TinyModelConfig.scaled(cfg.tiny_hidden_size, cfg.tiny_layers)
        model = build_model(tokenizer, size, seed=cfg.seed)
        model.set_attn_implementation(training_attention(tiny=True))
        return model.to(pick_device(cfg.device)), tokenizer
    from transformers import AutoModelForCausalLM, AutoTokenizer

    tokenizer = AutoTokenizer.from_pretrained(cfg.model)
    if tokenizer.pad_token_id is None:
        tokenizer.pad_token = tokenizer.eos_token
    return AutoModelForCausalLM.from_pretrained(cfg.model, dtype=torch.float32).to(pick_device(cfg.device)), tokenizer


def run(cfg: SFTConfig) -> dict:
    """Demonstrations -> SFT -> dev evaluation -> saved model; returns a summary."""
    from agent.traces import read_traces, record_to_trajectory
    from agent.data.qa import load_qa
    from retrieval import open_retriever
    from retrieval.corpus import load_corpus

    os.environ.setdefault("HF_HUB_OFFLINE", "1")
    if cfg.output_dir is None:
        from train.tiny import tiny_policy_dir

        cfg.output_dir = str(tiny_policy_dir(cfg.data)) if cfg.model == "tiny" else "outputs/sft"
    if cfg.context_lm_weight is None:
        cfg.context_lm_weight = 0.5 if cfg.model == "tiny" else 0.0
    torch.manual_seed(cfg.seed)
    model, tokenizer = load_policy_for_sft(cfg)
    retriever = None
    if cfg.demos:
        demos = [record_to_trajectory(r) for r in read_traces(cfg.demos)]
        vocab = len(tokenizer)
        bad = next((i for i, d in enumerate(demos) for s in d.segments if max(s.context_ids + s.response_ids, default=0) >= vocab), None)
        if bad is not None:
            raise ValueError(f"{cfg.demos}: demonstration {bad + 1} has token ids outside the vocabulary of {cfg.model} "
                             f"({vocab} tokens): demonstrations must be tokenized with the policy's tokenizer")
        n_rolled = len(demos)
    else:
        train = load_qa(cfg.data, "train")
        if cfg.max_demos:
            train = train[: cfg.max_demos]
        retriever = open_retriever(cfg.index)
        corpus = load_corpus(Path(cfg.data) / "corpus.jsonl")
        demos = oracle_demonstrations(train, retriever, tokenizer, lambda d: corpus.passage(d).title, rollout_config(cfg),
                                      miss_rate=cfg.retrieval_miss_rate, seed=cfg.seed)
        # Retrieval over the whole corpus also returns dev/test entities' passages as
        # distractors: those demonstrations go, so SFT never reads a held-out entity.
        demos = without_names(demos, train, held_out_names(cfg.data))
        n_rolled = len(train)
        if cfg.model == "tiny" and cfg.extra_world_entities and (Path(cfg.data) / "world.json").exists():
            extra, n_extra = extra_world_demonstrations(
                extra_world_dir(cfg.data, cfg.extra_world_entities, cfg.extra_world_seed), cfg.data, tokenizer,
                rollout_config(cfg), questions=cfg.extra_world_questions, miss_rate=cfg.retrieval_miss_rate, seed=cfg.seed)
            console.print(f"{len(extra)}/{n_extra} demonstrations from a freshly named world of {cfg.extra_world_entities} entities")
            demos, n_rolled = demos + extra, n_rolled + n_extra
    segments = training_segments(demos)
    n_tokens = sum(len(s.context_ids) + len(s.response_ids) for s in segments)
    console.print(f"{len(demos)}/{n_rolled} demonstrations kept · {len(segments)} segments · "
                  f"{n_tokens / max(len(segments), 1):.0f} tokens per segment on average")
    heldout = []
    if cfg.heldout_every and not cfg.demos and (Path(cfg.data) / "dev.jsonl").exists():
        dev = load_qa(cfg.data, "dev")[:100]
        heldout = training_segments(oracle_demonstrations(dev, retriever, tokenizer, lambda d: corpus.passage(d).title,
                                                          rollout_config(cfg)))
    start = time.perf_counter()
    pretrain_history = []
    if cfg.model == "tiny" and cfg.pretrain_steps and cfg.extra_world_entities and not cfg.demos \
            and (Path(cfg.data) / "world.json").exists():
        texts = pretraining_texts(extra_world_dir(cfg.data, cfg.extra_world_entities, cfg.extra_world_seed), cfg.data)
        pretrain_history = pretrain(model, tokenizer, texts, cfg)
    history = train_sft(model, tokenizer, segments, cfg, heldout)
    summary = {"recipe": TINY_RECIPE, "config": asdict(cfg), "demonstrations": len(demos), "segments": len(segments),
               "train_seconds": round(time.perf_counter() - start, 1), "machine": machine(), "pretrain_history": pretrain_history,
               "history": history}
    if cfg.eval_questions:
        summary["dev"] = evaluate_policy(model, tokenizer, cfg, retriever or open_retriever(cfg.index))
        console.print(f"dev EM {summary['dev']['em']:.3f} (n={summary['dev']['n']}) · valid actions {summary['dev']['valid_action_rate']:.3f}")
    save_atomic(model, tokenizer, Path(cfg.output_dir), summary)
    console.print(f"saved {cfg.output_dir}")
    return summary


def evaluate_policy(model, tokenizer, cfg: SFTConfig, retriever, split: str = "dev") -> dict:
    from agent.engines.hf import HFEngine
    from agent.data.qa import load_qa
    from rewards.metrics import summarize

    examples = load_qa(cfg.data, split)[: cfg.eval_questions]
    rollout = Rollout(HFEngine(model, tokenizer), retriever, rollout_config(cfg), tokenizer)
    trajs = []
    for i in range(0, len(examples), 64):
        trajs.extend(rollout(examples[i : i + 64]))
    return summarize(trajs, examples)


def main(argv=None) -> dict:
    return run(parse_config(SFTConfig, argv))


if __name__ == "__main__":
    cli.run(main)
