"""The processes of a run, through `accelerate`: one, or N under `accelerate launch`.

    accelerate launch --multi_gpu --num_processes 8 train/grpo.py ...           # every GPU of a machine
    accelerate launch --config_file train/accelerate/multi_gpu.yaml train/grpo.py ...
    accelerate launch --multi_gpu --num_processes 2 train/grpo.py --device cpu  # CPUs (gloo)

Data parallel: every process rolls out its share of a step's questions (whole GRPO groups),
trains on its own rows, and the gradients are all-reduced by the engine accelerate wraps
the model in (DDP, FSDP, DeepSpeed); nothing here launches processes or reduces gradients by
hand. What the step needs besides is in `Processes`: sums and maxima of a few numbers (so a
token mean is the mean over every process's tokens), objects gathered for the logs, and the
main process that writes them.

FSDP and DeepSpeed ZeRO-3 shard the weights over the processes; rollouts here sample from
whole weights in each process, so those runs are refused at start-up rather than run wrong.
"""

from __future__ import annotations

import hashlib
import os
from collections.abc import Sequence

import torch


class Processes:
    """This run's processes as the trainer sees them; one process without an `accelerator`."""

    def __init__(self, accelerator=None):
        self.accelerator = accelerator
        self.n = accelerator.num_processes if accelerator is not None else 1
        self.index = accelerator.process_index if accelerator is not None else 0

    @staticmethod
    def launched(cpu: bool = False) -> "Processes":
        """The processes `accelerate launch` (or torchrun) started, or this one alone; `cpu`
        keeps every process on the CPU (gloo) where GPUs exist."""
        world = int(os.environ.get("WORLD_SIZE", "1"))
        if world <= 1:
            return ONE
        from accelerate import Accelerator

        procs = Processes(Accelerator(cpu=cpu))
        if procs.n != world:  # N copies of one run would write over each other's logs and checkpoints
            raise RuntimeError(f"WORLD_SIZE is {world} but accelerate set up {procs.n} process(es) "
                               f"({procs.accelerator.distributed_type.value}); launch with accelerate launch --multi_gpu "
                               f"--num_processes {world}")
        if procs.sharded:
            raise ValueError(f"{procs.accelerator.distributed_type.value} shards the trained weights over the processes, "
                             "and rollouts sample from whole weights in every process: run data parallel "
                             "(accelerate launch --multi_gpu, or train/accelerate/multi_gpu.yaml)")
        return procs

    @property
    def device(self) -> torch.device:
        return self.accelerator.device

    def prepare(self, module: torch.nn.Module, optimizer):
        """`module` (the update's forward) and `optimizer` as accelerate wraps them for this run:
        DDP all-reduces the gradients in the backward. One process: as they are."""
        if self.n == 1:
            return module, optimizer
        return self.accelerator.prepare(module, optimizer)

    @property
    def is_main(self) -> bool:
        return self.index == 0

    @property
    def sharded(self) -> bool:
        """The trained weights are sharded across processes (FSDP, DeepSpeed ZeRO-3): a process
        does not hold the whole model, so rollouts need a full copy."""
        if self.accelerator is None:
            return False
        from accelerate.utils import DistributedType

        return self.accelerator.distributed_type in (DistributedType.FSDP, DistributedType.DEEPSPEED)

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
        if self.n > 1:
            self.wait()
            torch.distributed.destroy_process_group()

    def backward(self, loss: torch.Tensor) -> None:
        if self.accelerator is not None:
            self.accelerator.backward(loss)
        else:
            loss.backward()

    def clip_grad_norm(self, params, max_norm: float) -> float:
        if self.accelerator is not None:
            return float(self.accelerator.clip_grad_norm_(params, max_norm))
        return float(torch.nn.utils.clip_grad_norm_(params, max_norm))


ONE = Processes()
