"""Write docs/config.md, the reference of every entry point's fields, from their dataclasses.

    python -m train.reference docs/config.md

tests/test_config.py fails when the page in the repository is not what this writes.
"""

from __future__ import annotations

import dataclasses
import sys
import typing
from pathlib import Path
from typing import Any

from agent.fields import allowed
from train.config import sections
from train.grpo import GRPOConfig
from train.sft import SFTConfig

ENTRY_POINTS = {"python train/grpo.py": GRPOConfig, "python train/sft.py": SFTConfig}


def _default_text(value: Any) -> str:
    if value is None:
        return "none"
    if isinstance(value, str):
        return f"`{value}`" if len(value) < 60 else "see below"
    return f"`{value}`"


def reference_markdown(entries: dict[str, type]) -> str:
    """A Markdown page with one table of flags per entry point and section."""
    lines = ["# Configuration reference", "",
             "Generated from the config dataclasses by `python -m train.reference docs/config.md`; do not edit by hand.",
             "Every field is a command-line flag (`--field value`) and a key of the YAML file given with "
             "`--config`. A value the allowed column does not admit is refused at start-up, before any work, with "
             "one line naming the field, the value and what is allowed (`--debug` shows the traceback).", ""]
    for command, cls in entries.items():
        lines += [f"## `{command}` ({cls.__name__})", "", (cls.__doc__ or "").strip().split("\n\n")[0].replace("\n", " "),
                  ""]
        groups = [(None, cls, {})] + [(s.name, typing.get_type_hints(cls)[s.name], s.metadata["section"])
                                      for s in sections(cls)]
        long_defaults = []
        for name, group_cls, defaults in groups:
            if name is not None:
                doc_line = (group_cls.__doc__ or "").strip().split("\n\n")[0].replace("\n", " ")
                lines += [f"### {name} ({group_cls.__name__})", "", doc_line, ""]
            lines += ["| flag | allowed | default | what it does |", "| --- | --- | --- | --- |"]
            hints = typing.get_type_hints(group_cls)
            for f in dataclasses.fields(group_cls):
                if "section" in f.metadata:
                    continue
                default = defaults.get(f.name, f.default)
                if isinstance(default, str) and len(default) >= 60:
                    long_defaults.append((f.name, default))
                what = allowed(hints[f.name], f.metadata.get("allowed", {}))
                help_text = f.metadata.get("help", "").replace("|", "\\|")
                lines.append(f"| `--{f.name}` | {what} | {_default_text(default)} | {help_text} |")
            lines.append("")
        for name, default in long_defaults:
            lines += [f"Default of `--{name}`:", "", "```json", default, "```", ""]
    return "\n".join(lines).rstrip() + "\n"


def main(argv: list[str] | None = None) -> None:
    argv = list(sys.argv[1:] if argv is None else argv)
    if len(argv) != 1:
        raise SystemExit("usage: python -m train.reference docs/config.md")
    Path(argv[0]).write_text(reference_markdown(ENTRY_POINTS), encoding="utf-8")


if __name__ == "__main__":
    main()
