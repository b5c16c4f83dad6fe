"""What a run's numbers depend on besides its config and seed: the machine.

x86 CPUs with AVX512-BF16 or AMX run bf16 matmuls about twice as fast as float32; elsewhere
bf16 is emulated (far slower), as it is where `ONEDNN_MAX_CPU_ISA` caps oneDNN below those
instructions. `precision=auto` (`train.policy.resolve_precision`) asks `cpu_bf16_kernels`.
"""

from __future__ import annotations

import functools
import os

import torch


@functools.lru_cache(maxsize=1)
def _cpu_flags() -> frozenset[str]:
    try:
        with open("/proc/cpuinfo", encoding="utf-8") as f:
            return frozenset(next((line for line in f if line.startswith("flags")), "").split())
    except OSError:
        return frozenset()


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


def pick_device(name: str = "auto") -> torch.device:
    """`auto`: the GPU of this process (its LOCAL_RANK under `accelerate launch` or torchrun)
    where CUDA exists, else the CPU; `cpu`, `cuda` or `cuda:N` as given."""
    if name == "auto":
        if torch.cuda.is_available():
            return torch.device("cuda", int(os.environ.get("LOCAL_RANK", 0)))
        return torch.device("cpu")
    try:
        device = torch.device(name)
    except RuntimeError:
        raise ValueError(f"device must be auto, cpu, cuda or cuda:N, got {name!r}") from None
    if device.type == "cuda" and not torch.cuda.is_available():
        raise ValueError(f"device {name!r}: CUDA is not available here (torch {torch.__version__}); use auto or cpu")
    if device.type not in ("cpu", "cuda"):
        raise ValueError(f"device must be auto, cpu, cuda or cuda:N, got {name!r}")
    return device


def machine() -> dict:
    """What a run's numbers depend on besides its config and seed: torch, the thread count
    (the order floats are summed in) and the bf16 kernels."""
    return {"torch": torch.__version__, "threads": torch.get_num_threads(), "bf16_kernels": cpu_bf16_kernels(),
            "cuda": torch.cuda.get_device_name(0) if torch.cuda.is_available() else None}
