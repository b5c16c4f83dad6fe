"""Config loading shared by the entry points.

An entry point's config is one dataclass whose fields are documented with `doc("...")`.
Fields made with `section(Cls)` hold a part of the config as a dataclass of its own (the
rollout's `RolloutConfig`, the `LossConfig`, ...), so the functions below the entry point
take the part they use. On the command line and in YAML every field of every section is a
flat `--field value` (TRL's `TrlParser` / `HfArgumentParser` conventions: `--config x.yaml`,
then command-line overrides, which win).

`train/reference.py` writes docs/config.md, the reference of every entry point's fields, from
these dataclasses.

Structured YAML values (e.g. a reward spec list) reach their string field as JSON.
"""

from __future__ import annotations

import dataclasses
import json
import sys
import typing
from pathlib import Path
from typing import Any, TypeVar

T = TypeVar("T")


def doc(help: str, default: Any = dataclasses.MISSING, **kwargs) -> Any:
    """A dataclass field with its help text (shown by `--help` and in docs/config.md)."""
    return dataclasses.field(default=default, metadata={"help": help}, **kwargs)


def section(cls: type, **defaults) -> Any:
    """A field holding a config section: a `cls` whose fields are flags of their own, with the
    entry point's `defaults` in place of the class's."""
    return dataclasses.field(default_factory=lambda: cls(**defaults), metadata={"section": defaults})


def sections(cls: type) -> list[dataclasses.Field]:
    return [f for f in dataclasses.fields(cls) if "section" in f.metadata]


def _flat_fields(cls: type) -> list[tuple[dataclasses.Field, type]]:
    """(field, resolved type) of every flag of `cls`: its own fields, then each section's."""
    own = typing.get_type_hints(cls)
    out = [(f, own[f.name]) for f in dataclasses.fields(cls) if "section" not in f.metadata]
    for s in sections(cls):
        section_cls = own[s.name]
        hints = typing.get_type_hints(section_cls)
        out += [(f, hints[f.name]) for f in dataclasses.fields(section_cls)]
    return out


def _parser_classes(cls: type) -> list[type]:
    """The dataclasses `HfArgumentParser` parses: `cls`'s own fields as one, then each section's class."""
    hints = typing.get_type_hints(cls)
    own = [(f.name, hints[f.name], f) for f in dataclasses.fields(cls) if "section" not in f.metadata]
    return [dataclasses.make_dataclass(f"{cls.__name__}Fields", own), *(hints[s.name] for s in sections(cls))]


def parse_config(cls: type[T], argv: list[str] | None = None) -> T:
    """Parse `cls` from `--config FILE.yaml` plus command-line overrides (which win)."""
    import yaml
    from transformers import HfArgumentParser

    args = list(sys.argv[1:] if argv is None else argv)
    parser = HfArgumentParser(_parser_classes(cls))
    for action in parser._actions:  # argparse %-formats help text: "40% of" would break --help
        if action.help:
            action.help = action.help.replace("%", "%%")
    for s in sections(cls):  # the entry point's defaults for a section's fields
        parser.set_defaults(**s.metadata["section"])
    if "--config" in args:
        at = args.index("--config")
        if at + 1 >= len(args):
            raise SystemExit("--config needs a YAML file path")
        path = Path(args[at + 1])
        del args[at : at + 2]
        if not path.exists():
            raise SystemExit(f"config file not found: {path}")
        try:
            values = yaml.safe_load(path.read_text()) or {}
        except yaml.YAMLError as err:
            mark = getattr(err, "problem_mark", None)
            where = f"{path}:{mark.line + 1}" if mark is not None else str(path)
            raise SystemExit(f"{where}: not valid YAML ({getattr(err, 'problem', err)})") from None
        if not isinstance(values, dict):
            raise SystemExit(f"{path}: expected a mapping of field: value, got {type(values).__name__}")
        known = [f.name for f, _ in _flat_fields(cls)]
        unknown = sorted(set(values) - set(known))
        if unknown:
            raise SystemExit(f"{path}: unknown field(s) {unknown}; {cls.__name__} has {known}")
        parser.set_defaults(**{k: json.dumps(v) if isinstance(v, (list, dict)) else v for k, v in values.items()})
    own, *parts = parser.parse_args_into_dataclasses(args=args)
    values = {f.name: getattr(own, f.name) for f in dataclasses.fields(own)}
    return cls(**values, **{s.name: part for s, part in zip(sections(cls), parts)})
