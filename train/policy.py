"""The policy to train: its config, its precision, its reference and its sampler copy.

- Any Hugging Face causal LM directory or hub id, or `tiny`: the embedded policy of the
  world, built and warm-started once (`train.prepare`).
- LoRA through `peft` when `lora_r > 0`: the reference is the same model with the adapter
  disabled, so no second copy is held.
- Full fine-tuning otherwise: the reference is a frozen copy, made only when a KL term
  needs it.
- One `precision` choice decides the weights' dtype, bf16 autocast of the training
  forwards and the dtype of the copy that samples rollouts; the attention kernels are
  picked for the model (`training_attention`).
"""

from __future__ import annotations

import contextlib
import copy
from dataclasses import dataclass
from pathlib import Path

import torch

from train.config import check_fields, doc
from train.hardware import cpu_bf16_kernels

PRECISIONS = ("auto", "fp32", "bf16-mixed", "bf16")
ROLLOUT_ENGINES = ("hf", "vllm")
DEVICES = ("auto", "cpu", "cuda")


@dataclass
class PolicyConfig:
    """The trained model, how it computes, and the engine that samples its rollouts."""

    model: str = doc("tiny (the embedded default, 3.5M parameters, built and cached on first use) | tiny-large "
                     "(the same recipe at 25M parameters, for a GPU) | a Hugging Face model directory or hub id", "tiny")
    lora_r: int = doc("LoRA rank (0 = full fine-tuning); with LoRA the reference is the model with its adapter "
                      "off, so no second copy is held", 0, ge=0)
    precision: str = doc(
        "auto | fp32 | bf16-mixed | bf16. fp32: everything in float32. bf16-mixed: float32 weights, bf16 autocast "
        "of the update's and the reference's forwards, rollouts sampled by a bf16 copy synced after every update. "
        "bf16: weights and compute in bf16 (no float32 master weights). auto: bf16-mixed on a GPU that computes "
        "bf16 and on a CPU with native bf16 kernels (AVX512-BF16 or AMX), fp32 elsewhere", "auto", choices=PRECISIONS)
    device: str = doc("auto (this process's GPU where CUDA exists, else the CPU) | cpu | cuda: where the policy, "
                      "its reference, the sampler and the batches live", "auto", choices=DEVICES)
    gradient_checkpointing: bool = doc("recompute activations in the backward pass: less memory, more compute", False)
    rollout_engine: str = doc("hf (in-process, over the trained model or its bf16 copy) | vllm (an in-process "
                              "vllm.LLM loaded with the trained weights, LoRA merged, after every update; greedy "
                              "evaluations stay on hf)", "hf", choices=ROLLOUT_ENGINES)
    vllm_gpu_memory_utilization: float = doc("rollout_engine=vllm: share of the GPU's memory vLLM may take (the "
                                             "trainer needs the rest)", 0.4, gt=0, le=1)

    def __post_init__(self) -> None:
        check_fields(self)


@dataclass(frozen=True)
class Precision:
    """What `PolicyConfig.precision` resolves to on a device."""

    name: str  # fp32 | bf16-mixed | bf16
    weights: torch.dtype  # dtype the trained weights are held in
    autocast: torch.dtype | None  # autocast of the update's and the reference's forwards (None = off)
    sampler: torch.dtype | None  # dtype of a copy that samples the rollouts (None = the trained model samples)


def resolve_precision(name: str, device: torch.device | str = "cpu") -> Precision:
    """`auto` is bf16-mixed (float32 master weights, bf16 compute) on a GPU that computes bf16
    and on a CPU with native bf16 kernels (a 4-layer d=256 model trains about twice as fast
    there), fp32 elsewhere."""
    device = torch.device(device)
    if name == "auto":
        if device.type == "cuda":
            name = "bf16-mixed" if torch.cuda.is_bf16_supported() else "fp32"
        else:
            name = "bf16-mixed" if device.type == "cpu" and cpu_bf16_kernels() != "emulated" else "fp32"
    if name == "fp32":
        return Precision(name, torch.float32, None, None)
    if name == "bf16-mixed":
        return Precision(name, torch.float32, torch.bfloat16, torch.bfloat16)
    if name == "bf16":
        return Precision(name, torch.bfloat16, torch.bfloat16, None)
    raise ValueError(f"precision must be one of {', '.join(PRECISIONS)}, got {name!r}")


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


def sampler_model(policy: Policy, dtype: torch.dtype | None) -> torch.nn.Module:
    """The model rollouts sample from: the trained model itself (`dtype` None, LoRA, or weights
    already in `dtype`), else a frozen copy of it in `dtype` (`Precision.sampler`).

    A bf16 copy samples faster where the hardware computes bf16 and costs one weight copy per
    step (`HFEngine.update_weights`). The sampler is then not exactly the trainer, as with
    vLLM: old logprobs are the sampler's, and the ratio of the first pass is 1 up to bf16
    rounding, which the clip absorbs. The copy keeps the model's default attention (SDPA):
    eager attention trains faster but samples no faster.
    """
    weight = next(policy.model.parameters())
    if dtype is None or policy.lora or weight.dtype == dtype:
        return policy.model
    return copy.deepcopy(policy.model).to(dtype).eval().requires_grad_(False)


def make_sampler(pcfg: PolicyConfig, policy: Policy, precision: Precision, model_path: str, engine, seed: int):
    """The engine rollouts sample from: `engine` itself (an `HFEngine` over the trained model),
    an `HFEngine` over its `precision.sampler` copy, or a `VLLMEngine` built from
    `model_path` and loaded with the trained weights (a resumed run's, LoRA merged). Either
    copy is synced with `update_weights(sampler_weights(policy))` after every update. On a GPU
    the vLLM engine sleeps while the trainer updates (its weights offloaded, its KV cache
    freed); with several processes, each owns one engine on its own GPU, since each rolls out
    its own share of the questions from the same synced weights."""
    from agent.engines.hf import HFEngine

    if pcfg.rollout_engine == "hf":
        model = sampler_model(policy, precision.sampler)
        return engine if model is policy.model else HFEngine(model, policy.tokenizer)
    from agent.engines.vllm import VLLMEngine

    weight = next(policy.model.parameters())
    on_gpu = weight.device.type == "cuda"  # each process owns an engine on its own GPU, beside its trainer
    vllm_engine = VLLMEngine(str(model_path), dtype=str(weight.dtype).removeprefix("torch."), seed=seed,
                             enforce_eager=not on_gpu, sleep_mode=on_gpu,
                             gpu_memory_utilization=pcfg.vllm_gpu_memory_utilization)
    vllm_engine.update_weights(sampler_weights(policy))
    return vllm_engine


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


def autocast_to(device: torch.device, dtype: torch.dtype | None):
    """`torch.autocast` to `dtype` on `device`, or a context that changes nothing for None."""
    return torch.autocast(device.type, dtype=dtype or torch.float32, enabled=dtype is not None)


def load_policy(path: str | Path, *, resume_from: str | Path | None = None, lora_r: int = 0, lora_alpha: int = 16,
                lora_targets: str = "all-linear", need_reference: bool = True, gradient_checkpointing: bool = False,
                dtype: torch.dtype = torch.float32, device: str | None = None) -> Policy:
    """Load `path` (a model directory or hub id) in `dtype`; `resume_from` is a checkpoint of it."""
    from transformers import AutoModelForCausalLM, AutoTokenizer

    torch_dtype = dtype
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


def training_attention(tiny: bool) -> str | None:
    """The attention kernels a model trains with: eager for the embedded tiny model, whose
    rows of a few hundred tokens train 10-15% faster with it on a CPU (the backward of
    PyTorch's fused SDPA kernel is the slow part there), with the same values; None (the
    model's default, SDPA) for any other."""
    return "eager" if tiny else None
