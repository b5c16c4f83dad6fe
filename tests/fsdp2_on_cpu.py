"""train/grpo.py under accelerate's FSDP2 on CPU processes (gloo), for tests: accelerate turns
FSDP on only on accelerators, so the Accelerator's state is switched to FSDP2 after it has set
up the process group, with the plugin train/accelerate/fsdp.yaml describes.

    accelerate launch --multi_gpu --num_processes 2 tests/fsdp2_on_cpu.py --device cpu ...
"""

import sys
from pathlib import Path

import accelerate
from accelerate.state import PartialState
from accelerate.utils import DistributedType, FullyShardedDataParallelPlugin


class CPUFSDP2(accelerate.Accelerator):
    def __init__(self, *args, **kwargs):
        super().__init__(*args, **kwargs)
        self.state.fsdp_plugin = FullyShardedDataParallelPlugin(
            fsdp_version=2, reshard_after_forward=True, auto_wrap_policy="transformer_based_wrap",
            transformer_cls_names_to_wrap=["Qwen2DecoderLayer"], cpu_ram_efficient_loading=False)
        self.state.distributed_type = DistributedType.FSDP
        PartialState._shared_state["distributed_type"] = DistributedType.FSDP


if __name__ == "__main__":
    accelerate.Accelerator = CPUFSDP2  # the one train.distributed.Processes.launched makes
    sys.path.insert(0, str(Path(__file__).resolve().parents[1]))
    from train.grpo import main

    main(sys.argv[1:])
