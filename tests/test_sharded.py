"""Training with sharded weights (FSDP2, DeepSpeed ZeRO) as the trainer does it, on CPUs.

accelerate turns FSDP and DeepSpeed on only on accelerators, so the core is checked here with
torch's own FSDP2 (`fully_shard`) over two gloo processes: the shards gathered whole after an
optimizer step are the weights an unsharded model reaches on the same batch, the rollout
copy receives them, the optimizer's state goes into a checkpoint whole and comes back, and
a sharded forward takes each process's rows in one call whatever their number. The trainer
end to end under accelerate's FSDP2 on CPUs is `test_distributed.py`'s slow test.
"""

import copy
import os
import socket
from datetime import timedelta
from types import SimpleNamespace

import pytest
import torch
import torch.distributed as dist
import torch.multiprocessing as mp


def free_port() -> int:
    with socket.socket() as sock:
        sock.bind(("127.0.0.1", 0))
        return sock.getsockname()[1]


def batch_of(rank: int, n_rows: int, vocab: int):
    """`n_rows` rows of this process (a different count on each, so one process would call a
    chunked forward more often than the other)."""
    from train.batching import TokenBatch

    gen = torch.Generator().manual_seed(100 + rank)
    ids = torch.randint(5, vocab, (n_rows, 9), generator=gen)
    mask = torch.ones_like(ids)
    loss = torch.zeros(n_rows, 9)
    loss[:, 4:] = 1.0
    return TokenBatch(ids, mask, loss, torch.zeros(n_rows, 9))


def loss_of(forward, batch) -> torch.Tensor:
    logprobs, _ = forward(batch.input_ids, batch.attention_mask, batch.loss_mask, 1.0)
    return -(logprobs * batch.loss_mask).sum() / 100  # a sum over rows: the processes' gradients average


def step(forward, optimizer, batch) -> None:
    optimizer.zero_grad()
    loss_of(forward, batch).backward()
    optimizer.step()


def sharded(model):
    """`LogprobsForward(model)` sharded as accelerate shards it: each decoder layer a unit, the rest the root."""
    from torch.distributed.fsdp import fully_shard

    from train.batching import LogprobsForward

    forward = LogprobsForward(model)
    for layer in model.model.layers:
        fully_shard(layer)
    fully_shard(forward)
    return forward


def run(rank: int, world: int, port: int, model_dir: str, scratch: str) -> None:
    from transformers import AutoModelForCausalLM, AutoTokenizer

    from agent.engines.hf import HFEngine
    from train.batching import LogprobsForward
    from train.distributed import ONE, WholeOptimizerState, sharded_by, whole_weights

    os.environ.update(MASTER_ADDR="127.0.0.1", MASTER_PORT=str(port))
    dist.init_process_group("gloo", rank=rank, world_size=world, timeout=timedelta(seconds=60))
    torch.set_num_threads(1)
    try:
        model = AutoModelForCausalLM.from_pretrained(model_dir, dtype=torch.float32)
        engine = HFEngine(copy.deepcopy(model).eval().requires_grad_(False), AutoTokenizer.from_pretrained(model_dir))
        unsharded = LogprobsForward(copy.deepcopy(model))
        before = {k: v.clone() for k, v in model.state_dict().items()}
        vocab = model.config.vocab_size
        forward = sharded(model)
        assert sharded_by(model) == "fsdp" and sharded_by(unsharded) is None
        adamw = {"lr": 1e-3, "betas": (0.9, 0.99), "weight_decay": 0.0}
        optimizer = torch.optim.AdamW(forward.parameters(), **adamw)
        reference_optimizer = torch.optim.AdamW(unsharded.parameters(), **adamw)
        batches = [batch_of(r, 3 + 8 * r, vocab) for r in range(world)]  # 3 rows here, 11 there (two chunks of 8)

        step(forward, optimizer, batches[rank])
        reference_optimizer.zero_grad()
        (sum(loss_of(unsharded, b) for b in batches) / world).backward()  # what the processes' mean gradient is
        reference_optimizer.step()

        # The shards gathered whole are the unsharded model's weights (up to the order the processes'
        # gradients were summed in, which Adam's first step, lr x g / |g|, makes 1e-6 at a few
        # entries of near-zero gradient), and the rollout copy takes them.
        with whole_weights(model) as weights:
            engine.update_weights(weights)
        for name, tensor in unsharded.model.state_dict().items():
            torch.testing.assert_close(engine.model.state_dict()[name], tensor, rtol=0, atol=1e-5, msg=name)
        assert not torch.equal(engine.model.state_dict()["model.layers.0.mlp.up_proj.weight"],
                               before["model.layers.0.mlp.up_proj.weight"])

        # The optimizer's state goes whole into a checkpoint (the main process's), keyed by name, and
        # a model sharded afresh from the whole weights resumes from it: its next step is the same.
        state = WholeOptimizerState(ONE, optimizer, model).state_dict()
        if rank == 0:
            reference_state = reference_optimizer.state_dict()["state"]
            names = [n for n, _ in unsharded.model.named_parameters()]
            assert list(state["state"]) == names
            exp_avg = state["state"][next(iter(state["state"]))]["exp_avg"]
            torch.testing.assert_close(exp_avg, reference_state[0]["exp_avg"], rtol=0, atol=1e-7)
            torch.save({"optimizer": state, "weights": engine.model.state_dict()}, f"{scratch}/checkpoint.pt")
        dist.barrier()
        saved = torch.load(f"{scratch}/checkpoint.pt", weights_only=True)
        resumed_model = AutoModelForCausalLM.from_pretrained(model_dir, dtype=torch.float32)
        resumed_model.load_state_dict(saved["weights"])
        resumed = sharded(resumed_model)
        resumed_optimizer = torch.optim.AdamW(resumed.parameters(), **adamw)
        WholeOptimizerState(ONE, resumed_optimizer, resumed_model).load_state_dict(saved["optimizer"])
        step(forward, optimizer, batches[rank])
        step(resumed, resumed_optimizer, batches[rank])
        with whole_weights(model) as going_on, whole_weights(resumed_model) as resumed_weights:
            for name, tensor in going_on.items():
                torch.testing.assert_close(resumed_weights[name], tensor, rtol=0, atol=1e-6, msg=name)
    finally:
        dist.destroy_process_group()


def test_fsdp2_shards_gathered_whole_reach_the_rollout_copy_and_the_checkpoint(tiny_model_dir, tmp_path):
    mp.spawn(run, args=(2, free_port(), str(tiny_model_dir), str(tmp_path)), nprocs=2)  # a process's error fails it


def test_a_config_asking_for_deepspeed_without_it_installed_is_refused_in_one_line(monkeypatch):
    import importlib.util

    from train.distributed import Processes

    real_find_spec = importlib.util.find_spec
    monkeypatch.setattr(importlib.util, "find_spec", lambda name, *a: None if name == "deepspeed" else
                        real_find_spec(name, *a))
    monkeypatch.setenv("ACCELERATE_USE_DEEPSPEED", "true")
    with pytest.raises(SystemExit, match=r"asks for DeepSpeed, which is not installed: pip install deepspeed$"):
        Processes.launched()


def test_fsdp_on_cpu_processes_is_refused_in_one_line(monkeypatch):
    from accelerate.state import AcceleratorState

    from train.distributed import Processes

    monkeypatch.setenv("ACCELERATE_USE_FSDP", "true")
    try:
        with pytest.raises(SystemExit, match=r"accelerate runs FSDP on GPUs only \(--device cpu keeps this run on"):
            Processes.launched(cpu=True)
    finally:
        AcceleratorState._reset_state(True)


@pytest.mark.parametrize("fsdp2, lora, demos, refused", [
    (False, False, False, "FSDP1 is not supported: set fsdp_version: 2"),
    (True, True, False, "LoRA under FSDP is not supported"),
    (True, False, True, "loss.sft_coef under FSDP is not supported"),
])
def test_what_a_sharded_run_does_not_support_is_refused_in_one_line(fsdp2, lora, demos, refused):
    from accelerate.utils import DistributedType

    from train.distributed import refuse_unsupported

    accelerator = SimpleNamespace(distributed_type=DistributedType.FSDP, is_fsdp2=fsdp2)
    with pytest.raises(SystemExit, match=refused):
        refuse_unsupported(accelerator, lora=lora, demos=demos)
    if fsdp2:
        refuse_unsupported(accelerator, lora=False, demos=False)  # plain full fine-tuning runs
