"""train/grpo.py under accelerate's DeepSpeed on CPU processes (gloo), for tests: accelerate turns
DeepSpeed on only on accelerators, so the Accelerator's state is switched to DeepSpeed after it
has set up the process group, with the plugin that the accelerate config file (ZeRO-2 or ZeRO-3,
train/accelerate/deepspeed_zero*.yaml) describes; DeepSpeed runs on its CPU accelerator.

    accelerate launch --config_file train/accelerate/deepspeed_zero3.yaml --num_processes 2 \
        tests/deepspeed_on_cpu.py --device cpu ...
"""

import os
import sys
from pathlib import Path

os.environ.setdefault("DS_ACCELERATOR", "cpu")  # before DeepSpeed is imported: it picks its accelerator once

import accelerate
from accelerate.state import PartialState
from accelerate.utils import DeepSpeedPlugin, DistributedType


class CPUDeepSpeed(accelerate.Accelerator):
    def __init__(self, *args, **kwargs):
        super().__init__(*args, **kwargs)
        plugin = DeepSpeedPlugin()  # from what accelerate launch read in the config file
        plugin.set_mixed_precision("no")
        plugin.select(_from_accelerator_state=True)
        self.state.deepspeed_plugins = plugin
        self.state.distributed_type = DistributedType.DEEPSPEED
        PartialState._shared_state["distributed_type"] = DistributedType.DEEPSPEED


if __name__ == "__main__":
    accelerate.Accelerator = CPUDeepSpeed  # the one train.distributed.Processes.launched makes
    sys.path.insert(0, str(Path(__file__).resolve().parents[1]))
    from train.grpo import main

    main(sys.argv[1:])
