"""The embedded default policy: a BPE tokenizer trained on the generated world and a
small Qwen2 causal LM, saved as an ordinary Hugging Face model directory.

Protocol tags are single special tokens, so a tiny model emits `</search>` in one step
and the rollout engine can stop on a token id instead of a string.
"""

from __future__ import annotations

from collections.abc import Iterable
from dataclasses import dataclass
from pathlib import Path

from agent.actions import NOT_USEFUL, PROTOCOL_TAGS, USEFUL
from agent.oracle import UNKNOWN
from agent.prompts import NO_RESULTS

# Bumped whenever the texts or the recipe of the tokenizer change, so a cached one is not reused.
TOKENIZER_VERSION = 3

QWEN2_PRETOKENIZE_REGEX = (
    r"""(?i:'s|'t|'re|'ve|'m|'ll|'d)|[^\r\n\p{L}\p{N}]?\p{L}+|\p{N}| ?[^\s\p{L}\p{N}]+[\r\n]*|\s*[\r\n]+|\s+(?!\S)|\s+"""
)
PAD, EOS, IM_START, IM_END = "<|pad|>", "<|endoftext|>", "<|im_start|>", "<|im_end|>"

# A plain ChatML template: system / user / assistant turns between <|im_start|> ... <|im_end|>.
CHAT_TEMPLATE = (
    "{% for message in messages %}"
    "{{ '<|im_start|>' + message['role'] + '\n' + message['content'] + '<|im_end|>\n' }}"
    "{% endfor %}"
    "{% if add_generation_prompt %}{{ '<|im_start|>assistant\n' }}{% endif %}"
)


def train_tokenizer(texts: Iterable[str], vocab_size: int = 4096):
    """Train a byte-level BPE tokenizer on `texts`; returns a `PreTrainedTokenizerFast`."""
    from tokenizers import AddedToken, Regex, Tokenizer, decoders, models, normalizers, pre_tokenizers, trainers
    from transformers import PreTrainedTokenizerFast

    specials = [PAD, EOS, IM_START, IM_END, *PROTOCOL_TAGS]
    tok = Tokenizer(models.BPE())
    # The exact pipeline of Qwen2's tokenizer: `AutoTokenizer` rebuilds a Qwen2 model
    # directory's tokenizer with it, so training with anything else would change the ids.
    tok.normalizer = normalizers.NFC()
    tok.pre_tokenizer = pre_tokenizers.Sequence([
        pre_tokenizers.Split(Regex(QWEN2_PRETOKENIZE_REGEX), behavior="isolated", invert=False),
        pre_tokenizers.ByteLevel(add_prefix_space=False, use_regex=False),
    ])
    tok.decoder = decoders.ByteLevel()
    trainer = trainers.BpeTrainer(
        vocab_size=vocab_size,
        special_tokens=specials,
        initial_alphabet=pre_tokenizers.ByteLevel.alphabet(),
        show_progress=False,
    )
    tok.train_from_iterator(texts, trainer=trainer)
    fast = PreTrainedTokenizerFast(
        tokenizer_object=tok,
        pad_token=PAD,
        eos_token=EOS,
        additional_special_tokens=[IM_START, IM_END, *PROTOCOL_TAGS],
    )
    # Numbers split into pairs of digits, each one token (Qwen2's pre-tokenizer splits them
    # into single digits, and `AutoTokenizer` rebuilds it, so the pairs are added tokens).
    # A year of single digits is four tokens that every other year also contains: the
    # 4-layer model never learned to copy one from a passage and answered every year
    # question with the same memorised year. "1652" is now "16" "52" and copies like a name,
    # the last pair reliably, the first mostly not (docs/experiments/2026-12-01-year-tokenizers.md: a
    # token per year, or pairs carrying their leading space, copied worse).
    fast.add_tokens([AddedToken(f"{i:02d}", normalized=False) for i in range(100)])
    fast.chat_template = CHAT_TEMPLATE
    fast.padding_side = "left"
    return fast


@dataclass(frozen=True)
class TinyModelConfig:
    """Size of the embedded default model."""

    hidden_size: int = 256  # model width
    num_layers: int = 4  # transformer blocks
    num_heads: int = 4  # attention heads
    num_kv_heads: int = 2  # grouped-query KV heads
    intermediate_size: int = 704  # MLP width
    max_positions: int = 2048  # longest context the model is built for

    @classmethod
    def scaled(cls, hidden_size: int, num_layers: int) -> "TinyModelConfig":
        """A config of the given width and depth with 64-wide heads and a 2.75x MLP."""
        heads = max(1, hidden_size // 64)
        return cls(hidden_size, num_layers, heads, max(1, heads // 2), int(hidden_size * 2.75) // 16 * 16)


def build_model(tokenizer, cfg: TinyModelConfig = TinyModelConfig(), seed: int = 0):
    """A randomly initialised `Qwen2ForCausalLM` matching `tokenizer`."""
    import torch
    from transformers import Qwen2Config, Qwen2ForCausalLM

    config = Qwen2Config(
        vocab_size=len(tokenizer),
        hidden_size=cfg.hidden_size,
        intermediate_size=cfg.intermediate_size,
        num_hidden_layers=cfg.num_layers,
        num_attention_heads=cfg.num_heads,
        num_key_value_heads=cfg.num_kv_heads,
        max_position_embeddings=cfg.max_positions,
        tie_word_embeddings=True,
        pad_token_id=tokenizer.pad_token_id,
        eos_token_id=tokenizer.eos_token_id,
        bos_token_id=None,
    )
    torch.manual_seed(seed)
    return Qwen2ForCausalLM(config)


def save_model_dir(model, tokenizer, out_dir: str | Path) -> Path:
    """Save as a normal HF model directory (safetensors + tokenizer + chat template), written
    as every model directory of the project is: `train.checkpoint.save_atomic`."""
    from train.checkpoint import save_atomic

    return save_atomic(model, tokenizer, out_dir)


def world_texts(world_dir: str | Path) -> Iterable[str]:
    """Text to train the embedded tokenizer on: the train questions and the passages that
    support them, nothing of the dev/test entities.

    Why: a token that only dev/test names contain never appears in training, so its
    embedding stays random and the model cannot copy it into a query or an answer; held-out
    names must be spelled with pieces the model has seen.
    """
    import json

    world_dir = Path(world_dir)
    questions, support = [], set()
    with open(world_dir / "train.jsonl", encoding="utf-8") as f:
        for line in f:
            if line.strip():
                rec = json.loads(line)
                questions.append(rec["question"] + " " + " ".join(rec.get("golden_answers", [])))
                support.update(rec.get("metadata", {}).get("support", []))
    yield from questions
    # The protocol's own words, about as often as demonstrations use them, so that
    # `<judge> not useful </judge>` or `<answer> unknown </answer>` are a few tokens, not letters.
    protocol = [f" {USEFUL}", f" {NOT_USEFUL}", f" {UNKNOWN}", NO_RESULTS, "Doc 1 (Title: x)", "Doc 2 (Title: x)"]
    yield from protocol * len(questions)
    with open(world_dir / "corpus.jsonl", encoding="utf-8") as f:
        for line in f:
            if line.strip():
                rec = json.loads(line)
                if rec["id"] in support:
                    yield rec["contents"]


def tokenizer_for_world(world_dir: str | Path, vocab_size: int = 2048, cache_dir: str | Path | None = None):
    """The embedded tokenizer of a generated world, trained once and cached on disk."""
    from transformers import AutoTokenizer

    cache = Path(cache_dir) if cache_dir else Path(world_dir) / "tiny" / f"tokenizer-v{TOKENIZER_VERSION}-{vocab_size}"
    if (cache / "tokenizer.json").exists():
        return AutoTokenizer.from_pretrained(cache)
    from train.checkpoint import atomic_dir

    tokenizer = train_tokenizer(world_texts(world_dir), vocab_size)
    with atomic_dir(cache) as tmp:
        tokenizer.save_pretrained(tmp)
    return AutoTokenizer.from_pretrained(cache)


# The embedded defaults, by the name `--model` takes: (width, transformer blocks). `tiny` (3.5M
# parameters) is the CPU default; `tiny-large` (25M) is sized for a GPU, where its build and
# 160 GRPO steps should take about 10 minutes (an estimate: docs/benchmarks.md). Both are built
# by the same code.
EMBEDDED = {"tiny": (256, 4), "tiny-large": (512, 8)}


def is_embedded(model: str) -> bool:
    """Whether `model` names an embedded default rather than a model directory or hub id."""
    return model in EMBEDDED


def tiny_policy_dir(data_dir: str | Path, model: str = "tiny") -> Path:
    """Where the warm-started embedded policy `model` of a world lives: DATA/tiny/policy-sft
    (and policy-sft-large for tiny-large)."""
    if not is_embedded(model):
        raise ValueError(f"{model!r} is not an embedded default; expected one of {sorted(EMBEDDED)}")
    return Path(data_dir) / "tiny" / ("policy-sft" + model.removeprefix("tiny"))
