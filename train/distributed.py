"""The processes of a run, through `accelerate`: one, or N under `accelerate launch`.

    accelerate launch --multi_gpu --num_processes 8 train/grpo.py ...           # every GPU of a machine
    accelerate launch --config_file train/accelerate/multi_gpu.yaml train/grpo.py ...
    accelerate launch --config_file train/accelerate/fsdp.yaml train/grpo.py ...            # FSDP2
    accelerate launch --config_file train/accelerate/deepspeed_zero3.yaml train/grpo.py ... # DeepSpeed ZeRO-3
    accelerate launch --multi_gpu --num_processes 2 train/grpo.py --device cpu  # CPUs (gloo)

Data parallel: every process rolls out its share of a step's questions (whole GRPO groups),
trains on its own rows, and the gradients are all-reduced by the engine accelerate wraps
the model in (DDP, FSDP, DeepSpeed); nothing here launches processes or reduces gradients by
hand. What the step needs besides is in `Processes`: sums and maxima of a few numbers (so a
token mean is the mean over every process's tokens), objects gathered for the logs, and the
main process that writes them.

FSDP and DeepSpeed ZeRO shard the trained model's state over the processes (FSDP and ZeRO-3
its weights too), while rollouts and greedy evaluations sample from whole weights in every
process. So each process keeps a whole, frozen copy of the policy (`whole_copy`) that every
update refreshes from the shards (`whole_weights`: torch's full state dict for FSDP2,
`deepspeed.zero.GatheredParameters` for ZeRO-3, both collectives that every process enters
together). The reference model is frozen: it stays a whole copy in each process, outside
FSDP and DeepSpeed, as in data-parallel runs. Checkpoints hold the whole copy's weights and
the optimizer's state gathered whole (`WholeOptimizerState`), and resume with as many
processes. FSDP1, LoRA and the update's demonstrations loss are refused there
(`refuse_unsupported`).
"""

from __future__ import annotations

import contextlib
import copy
import enum
import hashlib
import importlib.util
import os
from collections.abc import Sequence

import torch

SHARDING_ENV = {"ACCELERATE_USE_FSDP": "FSDP", "ACCELERATE_USE_DEEPSPEED": "DeepSpeed"}  # set by accelerate launch


class Processes:
    """This run's processes as the trainer sees them; one process without an `accelerator`."""

    def __init__(self, accelerator=None):
        self.accelerator = accelerator
        self.n = accelerator.num_processes if accelerator is not None else 1
        self.index = accelerator.process_index if accelerator is not None else 0

    @staticmethod
    def launched(cpu: bool = False, lora: bool = False, demos: bool = False) -> Processes:
        """The processes `accelerate launch` (or torchrun) started, or this one alone; `cpu`
        keeps every process on the CPU (gloo) where GPUs exist. A config that asks for FSDP or
        DeepSpeed gets it, on GPUs, even for one process; runs with `lora` or with the update's
        demonstrations loss (`demos`) are refused there (`refuse_unsupported`)."""
        world = int(os.environ.get("WORLD_SIZE", "1"))
        wanted = [name for env, name in SHARDING_ENV.items() if os.environ.get(env, "").lower() == "true"]
        if world <= 1 and not wanted:
            return ONE
        if "DeepSpeed" in wanted and importlib.util.find_spec("deepspeed") is None:
            raise SystemExit("the accelerate config asks for DeepSpeed, which is not installed: pip install deepspeed")
        from accelerate import Accelerator

        procs = Processes(Accelerator(cpu=cpu))
        if procs.n != world:  # N copies of one run would write over each other's logs and checkpoints
            raise RuntimeError(f"WORLD_SIZE is {world} but accelerate set up {procs.n} process(es) "
                               f"({procs.accelerator.distributed_type.value}); launch with accelerate launch --multi_gpu "
                               f"--num_processes {world}")
        if wanted and not procs.sharded:
            where = "--device cpu keeps this run on the CPU" if cpu else "this machine has none"
            raise SystemExit(f"accelerate runs {wanted[0]} on GPUs only ({where}): run it on GPUs, or run data "
                             "parallel (accelerate launch --multi_gpu)")
        if procs.sharded:
            refuse_unsupported(procs.accelerator, lora=lora, demos=demos)
        if procs.accelerator.state.deepspeed_plugin is not None:  # every process loads whole weights, never partitioned
            from transformers.integrations import unset_hf_deepspeed_config

            unset_hf_deepspeed_config()
        return procs

    @property
    def device(self) -> torch.device:
        return self.accelerator.device

    @property
    def sharded(self) -> bool:
        """The trained model's state is sharded over the processes (FSDP; DeepSpeed ZeRO, whose
        stage 3 shards the weights too): rollouts then read a whole copy (`whole_copy`)."""
        if self.accelerator is None:
            return False
        from accelerate.utils import DistributedType

        return self.accelerator.distributed_type in (DistributedType.FSDP, DistributedType.DEEPSPEED)

    def prepare(self, module: torch.nn.Module, optimizer, max_grad_norm: float = 1.0):
        """`module` (the update's `LogprobsForward`) and `optimizer` as accelerate wraps them for
        this run: DDP all-reduces the gradients in the backward; FSDP shards the weights (in
        place: the model inside `module` holds shards afterwards); DeepSpeed takes the optimizer
        step inside the backward, clipping at `max_grad_norm`. One process without FSDP or
        DeepSpeed: as they are."""
        if self.accelerator is None:
            return module, optimizer
        plugin = self.accelerator.state.deepspeed_plugin
        if plugin is not None:
            plugin.deepspeed_config["gradient_clipping"] = max_grad_norm
            if plugin.is_auto("train_micro_batch_size_per_gpu"):  # read from a dataloader, which there is none of
                plugin.deepspeed_config["train_micro_batch_size_per_gpu"] = 1
        module, optimizer = self.accelerator.prepare(module, optimizer)
        if self.accelerator.is_fsdp2:
            forward_root_first(module, self.device)
        return module, optimizer

    def checkpointed(self, optimizer, model: torch.nn.Module):
        """`optimizer` as a checkpoint reads and writes it: itself, or where this run shards its
        state a `WholeOptimizerState` of it (over `model`'s parameters)."""
        return WholeOptimizerState(self, optimizer, model) if self.sharded else optimizer

    @property
    def is_main(self) -> bool:
        return self.index == 0

    def sum(self, values: Sequence[float], device=None) -> list[float]:
        """Each value summed over the processes."""
        if self.n == 1:
            return [float(v) for v in values]
        t = torch.tensor([float(v) for v in values], dtype=torch.float64, device=device or self.accelerator.device)
        return self.accelerator.reduce(t, reduction="sum").tolist()

    def max(self, values: Sequence[float], device=None) -> list[float]:
        """Each value's maximum over the processes."""
        if self.n == 1:
            return [float(v) for v in values]
        t = torch.tensor([float(v) for v in values], dtype=torch.float64, device=device or self.accelerator.device)
        return self.accelerator.gather(t[None]).amax(dim=0).tolist()

    def share(self, local: float) -> float:
        """How much this process's `local` part of a mean weighs against the others' when the
        processes' gradients are averaged: n x local / total (1 for one process)."""
        if self.n == 1:
            return 1.0
        total = self.sum([local])[0]
        return self.n * local / total if total > 0 else 0.0

    def mean(self, value: float) -> float:
        """The mean of `value` over the processes."""
        return value if self.n == 1 else self.sum([value])[0] / self.n

    def weighted_mean(self, value: float, weight: float, maximum: bool = False) -> float:
        """`value` averaged over the processes weighted by `weight` (their tokens), or its
        maximum over those with weight."""
        if self.n == 1:
            return value
        if maximum:
            return self.max([value if weight > 0 else float("-inf")])[0]
        total, weights = self.sum([value * weight, weight])
        return total / weights if weights > 0 else 0.0

    def gather(self, obj) -> list:
        """Every process's `obj`, in process order (on every process)."""
        if self.n == 1:
            return [obj]
        from accelerate.utils import gather_object

        return gather_object([obj])

    def weights_agree(self, params) -> bool:
        """Whether every process holds bit-identical `params` (data parallel keeps them so)."""
        digest = hashlib.sha256()
        for p in params:
            digest.update(p.detach().cpu().contiguous().view(torch.uint8).numpy().tobytes())
        return len(set(self.gather(digest.hexdigest()))) == 1

    def wait(self) -> None:
        if self.n > 1:
            self.accelerator.wait_for_everyone()

    def close(self) -> None:
        """Wait for every process, then take the process group down: a process that leaves while
        another is still in a collective (or with the group alive) aborts at exit."""
        if self.accelerator is not None:
            self.wait()
            torch.distributed.destroy_process_group()

    def backward(self, loss: torch.Tensor) -> None:
        if self.accelerator is not None:
            self.accelerator.backward(loss)
        else:
            loss.backward()

    def clip_grad_norm(self, params, max_norm: float) -> float:
        """Clip the gradients' global norm and return it (DeepSpeed clipped in the backward:
        the norm it measured, nan before it measured one)."""
        if self.accelerator is None:
            return float(torch.nn.utils.clip_grad_norm_(params, max_norm))
        norm = self.accelerator.clip_grad_norm_(params, max_norm)
        return float("nan") if norm is None else float(norm)


ONE = Processes()


def refuse_unsupported(accelerator, lora: bool, demos: bool) -> None:
    """One line and exit for what a sharded run does not support."""
    kind = accelerator.distributed_type.value
    if accelerator.distributed_type.value == "FSDP" and not accelerator.is_fsdp2:
        raise SystemExit("FSDP1 is not supported: set fsdp_version: 2 in the accelerate config (train/accelerate/fsdp.yaml)")
    if lora:
        raise SystemExit(f"LoRA under {kind} is not supported (its reference is the sharded model with the adapter off): "
                         "LoRA's few trained parameters need no sharding, so run it data parallel (accelerate launch "
                         "--multi_gpu, or train/accelerate/multi_gpu.yaml)")
    if demos:
        raise SystemExit(f"loss.sft_coef under {kind} is not supported: the demonstrations' loss is a forward that a "
                         "process without a right demonstration skips, and each forward of a sharded model is a "
                         "collective of every process: run it data parallel (accelerate launch --multi_gpu)")


def whole_copy(model: torch.nn.Module) -> torch.nn.Module:
    """A frozen copy of `model`, made before accelerate shards it: what a sharded run's rollouts,
    greedy evaluations and checkpoints read, refreshed after every update (`whole_weights`)."""
    return copy.deepcopy(model).eval().requires_grad_(False)


def sharded_by(model: torch.nn.Module) -> str | None:
    """How `model`'s weights are sharded over processes: "fsdp" (FSDP2 units inside it),
    "zero3" (DeepSpeed ZeRO-3 parameters), or None (whole)."""
    from torch.distributed.fsdp import FSDPModule

    if hasattr(next(model.parameters(), None), "ds_id"):
        return "zero3"
    return "fsdp" if any(isinstance(m, FSDPModule) for m in model.modules()) else None


@contextlib.contextmanager
def whole_weights(model: torch.nn.Module):
    """`model`'s state dict with whole tensors, inside this context: FSDP2's shards gathered
    (torch's full state dict), DeepSpeed ZeRO-3's partitioned parameters gathered (and
    released at the end of the context), or a whole model's own state dict. Gathering is a
    collective: every process enters the context together."""
    how = sharded_by(model)
    if how == "fsdp":
        from torch.distributed.checkpoint import state_dict as dcp

        yield dcp.get_model_state_dict(model, options=dcp.StateDictOptions(full_state_dict=True))
    elif how == "zero3":
        import deepspeed

        with deepspeed.zero.GatheredParameters(list(model.parameters())):
            yield model.state_dict()
    else:
        yield model.state_dict()


def forward_root_first(module: torch.nn.Module, device) -> None:
    """FSDP2 takes the first of its modules to run forward for its root, and the update also
    calls the model inside the prepared `LogprobsForward` directly (its no-grad pass before
    several minibatches): so `module` runs one row first, with no gradient, and then every
    weight is sharded again."""
    from torch.distributed.fsdp import FSDPModule

    ids = torch.ones(1, 2, dtype=torch.long, device=device)
    with torch.no_grad():
        module(ids, torch.ones_like(ids), torch.ones(1, 2, device=device), 1.0)
    for unit in module.modules():
        if isinstance(unit, FSDPModule):
            unit.reshard()


class WholeOptimizerState:
    """A sharded optimizer's state as a checkpoint holds it, whole. `state_dict` gathers it
    (a collective: every process calls it; the main process gets the result): under FSDP2
    torch's full optimizer state dict, keyed by parameter name; under DeepSpeed every
    process's ZeRO partition, in process order, as plain data (`plain`: what `torch.load` reads
    with `weights_only`). `load_state_dict` gives each process its own part back; a run resumes
    with as many processes (`train.checkpoint.resume_run` checks it)."""

    def __init__(self, procs: Processes, optimizer, model: torch.nn.Module):
        self.procs, self.optimizer, self.model = procs, optimizer, model

    def state_dict(self) -> dict:
        if sharded_by(self.model) == "fsdp":
            from torch.distributed.checkpoint import state_dict as dcp

            options = dcp.StateDictOptions(full_state_dict=True, cpu_offload=True)  # to the main process's CPU only
            return dcp.get_optimizer_state_dict(self.model, self.optimizer, options=options)
        from accelerate.utils import send_to_device

        partitions = [None] * self.procs.n if self.procs.is_main else None
        torch.distributed.gather_object(plain(send_to_device(self.optimizer.state_dict(), "cpu")), partitions, dst=0)
        return {"zero_partitions": partitions}

    def load_state_dict(self, state: dict) -> None:
        if sharded_by(self.model) == "fsdp":
            from torch.distributed.checkpoint import state_dict as dcp

            dcp.set_optimizer_state_dict(self.model, self.optimizer, state,
                                         options=dcp.StateDictOptions(full_state_dict=True))
        else:  # a ZeRO optimizer takes every process's partition and keeps its own
            zero = self.optimizer.optimizer  # DeepSpeed's, inside accelerate's wrapper
            self.optimizer.load_state_dict([{**part, "loss_scaler": restored_scaler(zero.loss_scaler, part["loss_scaler"])}
                                            for part in state["zero_partitions"]])


def plain(value):
    """`value` (a ZeRO partition's state dict) with DeepSpeed's objects as plain data, which
    `torch.load(weights_only=True)` reads: its loss scaler and fragment addresses as dicts of
    their fields, its ZeRO stage as its number; tensors and plain values as they are."""
    if isinstance(value, dict):
        return {k: plain(v) for k, v in value.items()}
    if isinstance(value, list | tuple):
        return type(value)(plain(v) for v in value)
    if isinstance(value, enum.Enum):
        return value.value
    if hasattr(value, "__dict__") and not isinstance(value, torch.Tensor):
        return plain(vars(value))
    return value


def restored_scaler(running, fields: dict):
    """DeepSpeed's loss scaler as a checkpoint held it (`plain`): a copy of the `running` one,
    of the same kind (the same config), with the saved `fields` (scale, iteration, ...)."""
    scaler = copy.copy(running)
    vars(scaler).update(fields)
    return scaler
