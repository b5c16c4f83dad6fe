"""Config loading shared by the entry points.

An entry point's config is one dataclass whose fields are documented with `doc("...")`, which
also declares what a field allows (`ge=1`, `choices=(...)`: agent/fields.py); every config
checks its fields when it is made, so a bad value is refused at start-up naming the field,
the value and what is allowed.
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

from agent.fields import allowed, check_fields, doc

__all__ = ["check_fields", "doc", "parse_config", "section", "sections"]

T = TypeVar("T")


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


def _flags(cls: type) -> type:
    """A plain dataclass of `cls`'s fields (sections left out) for `HfArgumentParser`, which
    hands a field's metadata to argparse: only the help text, with what the field allows."""
    hints = typing.get_type_hints(cls)
    fields = []
    for f in dataclasses.fields(cls):
        if "section" in f.metadata:
            continue
        rules = f.metadata.get("allowed", {})
        help = f.metadata.get("help", "") + (f" [{allowed(hints[f.name], rules)}]" if rules else "")
        default = {"default": f.default} if f.default is not dataclasses.MISSING else {"default_factory": f.default_factory}
        fields.append((f.name, hints[f.name], dataclasses.field(metadata={"help": help}, **default)))
    return dataclasses.make_dataclass(f"{cls.__name__}Flags", fields)


def _parser_classes(cls: type) -> list[type]:
    """The dataclasses `HfArgumentParser` parses: `cls`'s own fields as one, then each section's."""
    hints = typing.get_type_hints(cls)
    return [_flags(cls), *(_flags(hints[s.name]) for s in sections(cls))]


def parse_config(cls: type[T], argv: list[str] | None = None) -> T:
    """Parse `cls` from `--config FILE.yaml` plus command-line overrides (which win)."""
    import yaml
    from transformers import HfArgumentParser

    args = list(sys.argv[1:] if argv is None else argv)
    parser = HfArgumentParser(_parser_classes(cls), allow_abbrev=False)  # --max_step is no --max_steps
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
    *parsed, unknown = parser.parse_args_into_dataclasses(args=args, return_remaining_strings=True)
    if unknown:
        raise SystemExit(f"unknown argument(s) {' '.join(unknown)} ({parser.prog} --help lists the fields)")
    own, *parts = (dataclasses.asdict(flags) for flags in parsed)
    hints = typing.get_type_hints(cls)  # each section's class, made (and checked) from its flags
    return cls(**own, **{s.name: hints[s.name](**part) for s, part in zip(sections(cls), parts)})
