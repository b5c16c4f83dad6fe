"""Config loading shared by the entry points: one dataclass per entry point, every field
documented with `doc("...")`, loaded from YAML with command-line overrides
(`--config x.yaml --field value`, the `TrlParser` / `HfArgumentParser` conventions).

Structured YAML values (e.g. a reward spec list) reach their string field as JSON.
"""

from __future__ import annotations

import dataclasses
import json
import sys
from pathlib import Path
from typing import Any, TypeVar

T = TypeVar("T")


def doc(help: str, default: Any = dataclasses.MISSING, **kwargs) -> Any:
    """A dataclass field with its help text (shown by `--help`)."""
    return dataclasses.field(default=default, metadata={"help": help}, **kwargs)


def parse_config(cls: type[T], argv: list[str] | None = None) -> T:
    """Parse `cls` from `--config FILE.yaml` plus command-line overrides (which win)."""
    import yaml
    from transformers import HfArgumentParser

    args = list(sys.argv[1:] if argv is None else argv)
    parser = HfArgumentParser(cls)
    for action in parser._actions:  # argparse %-formats help text: "40% of" would break --help
        if action.help:
            action.help = action.help.replace("%", "%%")
    if "--config" in args:
        at = args.index("--config")
        if at + 1 >= len(args):
            raise SystemExit("--config needs a YAML file path")
        path = Path(args[at + 1])
        del args[at : at + 2]
        if not path.exists():
            raise SystemExit(f"config file not found: {path}")
        values = yaml.safe_load(path.read_text()) or {}
        if not isinstance(values, dict):
            raise SystemExit(f"{path}: expected a mapping of field: value, got {type(values).__name__}")
        known = [f.name for f in dataclasses.fields(cls)]
        unknown = sorted(set(values) - set(known))
        if unknown:
            raise SystemExit(f"{path}: unknown field(s) {unknown}; {cls.__name__} has {known}")
        parser.set_defaults(**{k: json.dumps(v) if isinstance(v, (list, dict)) else v for k, v in values.items()})
    (cfg,) = parser.parse_args_into_dataclasses(args=args)
    return cfg
