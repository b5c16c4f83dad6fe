"""Load the policy to train and its reference.

- Any Hugging Face causal LM directory or hub id, or `tiny`: the embedded policy of the
  world, built and warm-started once (`train.prepare`).
- LoRA through `peft` when `lora_r > 0`: the reference is the same model with the adapter
  disabled, so no second copy is held.
- Full fine-tuning otherwise: the reference is a frozen copy, made only when a KL term
  needs it.
- Gradient checkpointing and bf16 where the hardware supports them.
"""

from __future__ import annotations

import contextlib
import copy
import functools
import os
from dataclasses import dataclass
from pathlib import Path

import torch


@dataclass
class Policy:
    model: torch.nn.Module  # the trained model (a PeftModel with LoRA)
    tokenizer: object
    reference: torch.nn.Module | None  # a frozen copy, or None (LoRA: adapter disabled; or no KL)
    lora: bool = False

    @contextlib.contextmanager
    def as_reference(self):
        """The model computing reference logprobs, inside this context."""
        if self.lora:
            with self.model.disable_adapter():
                yield self.model
        else:
            if self.reference is None:
                raise ValueError("no reference model: the policy was loaded without one (kl_coef = 0)")
            yield self.reference


def rollout_model(policy: Policy, setting: str) -> torch.nn.Module:
    """The model rollouts sample from: the trained model itself, or a copy of it in bf16.

    `auto` makes the bf16 copy where the trained model is float32 on hardware that computes
    bf16 natively (`autocast_dtype`): the tiny default's rollouts then take 1.23-1.38x less
    time on a 2-core AVX512-BF16 CPU (eval/bench/train.py, README), and the
    copy costs one weight copy per step (`HFEngine.update_weights`). The sampler is then not
    exactly the trainer, as with vLLM: old logprobs are the sampler's, and the ratio of the
    first pass is 1 up to bf16 rounding, which the clip absorbs. `same` shares the model
    (weight sync is free); `bf16` forces the copy. LoRA always shares the model.
    """
    if setting not in ("auto", "same", "bf16"):
        raise ValueError(f"rollout_dtype must be auto, same or bf16, got {setting!r}")
    weight = next(policy.model.parameters())
    if policy.lora or setting == "same" or weight.dtype == torch.bfloat16:
        return policy.model
    if setting == "auto" and autocast_dtype("auto", weight.device) != torch.bfloat16:
        return policy.model
    return copy.deepcopy(policy.model).to(torch.bfloat16).eval().requires_grad_(False)


def sampler_weights(policy: Policy) -> dict[str, torch.Tensor]:
    """The trained weights as a plain model's state dict, under Hugging Face names: what a
    rollout engine that holds its own copy (vLLM, the bf16 copy) loads after every update.

    Full fine-tuning: the model's own state dict. LoRA: the base weights with each adapter's
    delta added (W + B A * scaling, peft's `get_delta_weight`), computed aside, so the
    trained base weights are never merged and unmerged in place (that would round them).
    """
    if not policy.lora:
        return policy.model.state_dict()
    from peft.tuners.lora import LoraLayer

    inner = policy.model.get_base_model()
    adapter = policy.model.active_adapter
    out = {k.replace(".base_layer.", "."): v for k, v in inner.state_dict().items() if "lora_" not in k}
    with torch.no_grad():
        for name, module in inner.named_modules():
            if isinstance(module, LoraLayer) and adapter in module.lora_A and not module.disable_adapters:
                base = module.get_base_layer().weight
                out[f"{name}.weight"] = base + module.get_delta_weight(adapter).to(base.dtype)
    return out


def pick_dtype(name: str) -> torch.dtype:
    if name == "auto":
        return torch.bfloat16 if torch.cuda.is_available() and torch.cuda.is_bf16_supported() else torch.float32
    return {"float32": torch.float32, "bfloat16": torch.bfloat16, "float16": torch.float16}[name]


def autocast_dtype(setting: str, device: torch.device) -> torch.dtype | None:
    """bf16 when asked, or for `auto` where the hardware computes it natively; else None."""
    if setting not in ("auto", "bf16", "none"):
        raise ValueError(f"autocast must be auto, bf16 or none, got {setting!r}")
    if setting == "none":
        return None
    if setting == "bf16":
        return torch.bfloat16
    if device.type == "cuda":
        return torch.bfloat16 if torch.cuda.is_bf16_supported() else None
    return torch.bfloat16 if device.type == "cpu" and _cpu_has_bf16() else None


def autocast_to(device: torch.device, dtype: torch.dtype | None):
    """`torch.autocast` to `dtype` on `device`, or a context that changes nothing for None."""
    return torch.autocast(device.type, dtype=dtype or torch.float32, enabled=dtype is not None)


@functools.lru_cache(maxsize=1)
def _cpu_flags() -> frozenset[str]:
    try:
        with open("/proc/cpuinfo", encoding="utf-8") as f:
            return frozenset(next((line for line in f if line.startswith("flags")), "").split())
    except OSError:
        return frozenset()


def _cpu_has_bf16() -> bool:
    """x86 CPUs with AVX512-BF16 or AMX run bf16 matmuls about twice as fast as fp32
    (a 4-layer d=256 model trains 1.9x faster on such a CPU); elsewhere bf16 is emulated,
    as it is where `ONEDNN_MAX_CPU_ISA` caps oneDNN below those instructions."""
    return cpu_bf16_kernels() != "emulated"


# oneDNN's ONEDNN_MAX_CPU_ISA values that still allow AMX, and those that allow AVX512-BF16.
_ISA_WITH_AMX = {"ALL", "AVX10_1_512_AMX", "AVX512_CORE_AMX", "AVX10_1_512_AMX_FP16", "AVX512_CORE_AMX_FP16"}
_ISA_WITH_BF16 = _ISA_WITH_AMX | {"AVX512_CORE_BF16", "AVX10_1_512", "AVX512_CORE_FP16"}
_ISA_WITHOUT_BF16 = {"SSE41", "AVX", "AVX2", "AVX2_VNNI", "AVX2_VNNI_2", "AVX512_CORE", "AVX512_CORE_VNNI"}


def cpu_bf16_kernels() -> str:
    """Which kernels compute this CPU's bf16 matmuls: `amx` (AMX tiles), `avx512_bf16`, or
    `emulated`. oneDNN takes AMX where the CPU has it unless `ONEDNN_MAX_CPU_ISA` caps the
    instruction set (`AVX512_CORE_BF16` leaves AMX out). The kernels round differently, so
    the same bf16 training gives other weights on each: a build records which it ran on."""
    flags = _cpu_flags()
    cap = os.environ.get("ONEDNN_MAX_CPU_ISA", "").upper()
    if cap not in _ISA_WITH_BF16 | _ISA_WITHOUT_BF16:
        cap = "ALL"  # unset, or a value oneDNN does not know and ignores
    if "amx_bf16" in flags and cap in _ISA_WITH_AMX:
        return "amx"
    if {"avx512_bf16", "amx_bf16"} & flags and cap in _ISA_WITH_BF16:
        return "avx512_bf16"
    return "emulated"


def load_policy(path: str | Path, *, resume_from: str | Path | None = None, lora_r: int = 0, lora_alpha: int = 16,
                lora_targets: str = "all-linear", need_reference: bool = True, gradient_checkpointing: bool = False,
                dtype: str = "auto", device: str | None = None) -> Policy:
    """Load `path` (a model directory or hub id); `resume_from` is a checkpoint of it."""
    from transformers import AutoModelForCausalLM, AutoTokenizer

    torch_dtype = pick_dtype(dtype)
    source = resume_from if (resume_from and not lora_r) else path
    tokenizer = AutoTokenizer.from_pretrained(source)
    if tokenizer.pad_token_id is None:
        tokenizer.pad_token = tokenizer.eos_token
    model = AutoModelForCausalLM.from_pretrained(source, dtype=torch_dtype)
    if device:
        model.to(device)
    if gradient_checkpointing:
        model.gradient_checkpointing_enable()
        model.config.use_cache = False
    if lora_r:
        from peft import LoraConfig, PeftModel, get_peft_model

        if resume_from:
            model = PeftModel.from_pretrained(model, resume_from, is_trainable=True)
        else:
            targets = lora_targets if lora_targets == "all-linear" else lora_targets.split(",")
            model = get_peft_model(model, LoraConfig(r=lora_r, lora_alpha=lora_alpha, target_modules=targets,
                                                     task_type="CAUSAL_LM"))
        return Policy(model, tokenizer, None, lora=True)
    reference = None
    if need_reference:
        reference = AutoModelForCausalLM.from_pretrained(path, dtype=torch_dtype) if resume_from else copy.deepcopy(model)
        if device:
            reference.to(device)
        reference.eval().requires_grad_(False)
    return Policy(model, tokenizer, reference)


def freeze_embeddings(model) -> None:
    """Leave the token embeddings and the output head (tied or not) out of training."""
    for module in (model.get_input_embeddings(), model.get_output_embeddings()):
        if module is not None:
            module.requires_grad_(False)


def training_attention(setting: str, tiny: bool) -> str | None:
    """The attention implementation a model trains with, or None for its default.

    `auto` is eager attention for the embedded tiny model and the default (SDPA) for any
    other: at the tiny model's rows of a few hundred tokens on a CPU, the backward of
    PyTorch's fused SDPA kernel is the slow part, and eager attention trains 10-15% faster
    with the same values (pretraining, SFT and the GRPO update alike; sampling with the
    KV cache is not faster, so a sampler copy keeps SDPA)."""
    if not setting:
        raise ValueError("attn_implementation must be auto or a transformers attention implementation, got ''")
    if setting == "auto":
        return "eager" if tiny else None
    return setting


def machine() -> dict:
    """What a run's numbers depend on besides its config and seed: torch, the thread count
    (the order floats are summed in) and the bf16 kernels."""
    return {"torch": torch.__version__, "threads": torch.get_num_threads(), "bf16_kernels": cpu_bf16_kernels(),
            "cuda": torch.cuda.get_device_name(0) if torch.cuda.is_available() else None}
