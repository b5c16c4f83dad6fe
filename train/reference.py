"""Write docs/config.md, the reference of every entry point's fields, from their dataclasses.

    python -m train.reference docs/config.md

tests/test_config.py fails when the page in the repository is not what this writes.
"""

from __future__ import annotations

import sys
from pathlib import Path

from train.config import reference_markdown
from train.grpo import GRPOConfig
from train.sft import SFTConfig

ENTRY_POINTS = {"python train/grpo.py": GRPOConfig, "python train/sft.py": SFTConfig}


def main(argv: list[str] | None = None) -> None:
    argv = list(sys.argv[1:] if argv is None else argv)
    if len(argv) != 1:
        raise SystemExit("usage: python -m train.reference docs/config.md")
    Path(argv[0]).write_text(reference_markdown(ENTRY_POINTS), encoding="utf-8")


if __name__ == "__main__":
    main()
