"""Config fields that declare what they allow, checked in one place.

    max_turns: int = doc("generation turns per trajectory", 10, ge=1)
    precision: str = doc("auto | fp32 | bf16", "auto", choices=("auto", "fp32", "bf16"))

`doc(help, default, ...)` is a dataclass field with its help text and its constraints:
bounds (`ge`, `gt`, `le`, `lt`) and `choices`. `check_fields(config)` checks every field
against its annotated type (an `int` field takes no 2.5 and no `True`; `X | None` takes
None) and its constraints, and names the field, the value and what is allowed. Each config's
`__post_init__` calls it, so a config is checked however it is made (flags, YAML, code)
before any work starts, and docs/config.md states the very same constraints (`allowed`).
Declared next to each field's help rather than written out as an if-chain per class, a
constraint cannot drift from its documentation or be forgotten for a new field; checks
that relate two fields stay in the class's `__post_init__`.

Kept in `agent` (train/config.py re-exports `doc`) because the rollout's `RolloutConfig`
is a section of the trainer's config, and dependencies point one way.
"""

from __future__ import annotations

import argparse
import dataclasses
import functools
import math
import types
import typing
from typing import Any

_BOUNDS = {"ge": ">=", "gt": ">", "le": "<=", "lt": "<"}
_KINDS = {bool: "true or false", int: "an integer", float: "a number", str: "a string"}


class ConfigError(ValueError):
    """A config value that is not allowed."""


def doc(help: str, default: Any = dataclasses.MISSING, *, choices: tuple | None = None, ge: float | None = None,
        gt: float | None = None, le: float | None = None, lt: float | None = None, **kwargs) -> Any:
    """A dataclass field with its help text (shown by `--help` and in docs/config.md) and what
    it allows (checked by `check_fields`)."""
    rules = {k: v for k, v in {"choices": choices, "ge": ge, "gt": gt, "le": le, "lt": lt}.items() if v is not None}
    return dataclasses.field(default=default, metadata={"help": help, "allowed": rules}, **kwargs)


def _optional(kind) -> tuple[Any, bool]:
    """(the type, whether None is allowed) of an annotation `X` or `X | None`."""
    if typing.get_origin(kind) in (typing.Union, types.UnionType):
        args = [a for a in typing.get_args(kind) if a is not type(None)]
        return (args[0] if len(args) == 1 else kind), len(args) < len(typing.get_args(kind))
    return kind, False


def allowed(kind, rules: dict) -> str:
    """What a field of type `kind` with `rules` accepts, in words: 'an integer >= 1',
    'one of auto, fp32', 'a number in (0, 1]', '... or none'."""
    kind, optional = _optional(kind)
    if "choices" in rules:
        text = "one of " + ", ".join(str(c) for c in rules["choices"])
    else:
        text = _KINDS.get(kind, getattr(kind, "__name__", str(kind)))
        low = next(((op, rules[op]) for op in ("ge", "gt") if op in rules), None)
        high = next(((op, rules[op]) for op in ("le", "lt") if op in rules), None)
        if low and high:
            text += f" in {'[' if low[0] == 'ge' else '('}{low[1]}, {high[1]}{']' if high[0] == 'le' else ')'}"
        elif low or high:
            op, bound = low or high
            text += f" {_BOUNDS[op]} {bound}"
    return text + (" or none" if optional else "")


def accepts(kind, rules: dict, value) -> bool:
    """Whether `value` is of type `kind` (an annotation) and keeps `rules`."""
    kind, optional = _optional(kind)
    if value is None:
        return optional
    if kind is bool:
        ok = isinstance(value, bool)
    elif kind is int:
        ok = isinstance(value, int) and not isinstance(value, bool)
    elif kind is float:
        ok = isinstance(value, (int, float)) and not isinstance(value, bool) and not math.isnan(value)
    elif kind is str:
        ok = isinstance(value, str)
    else:  # a type these rules do not describe (a dict, a section): its own class checks it
        return True
    if not ok:
        return False
    if "choices" in rules and value not in rules["choices"]:
        return False
    return all(op not in rules or _compare(op, value, rules[op]) for op in _BOUNDS)


def _compare(op: str, value, bound) -> bool:
    return {"ge": value >= bound, "gt": value > bound, "le": value <= bound, "lt": value < bound}[op]


@functools.cache
def _hints(cls: type) -> dict:
    return typing.get_type_hints(cls)


def check_fields(config) -> None:
    """Raise `ConfigError` naming the first field of the dataclass `config` whose value its type
    or declared constraints do not allow, the value, and what is allowed."""
    hints = _hints(type(config))
    for f in dataclasses.fields(config):
        rules, value = f.metadata.get("allowed", {}), getattr(config, f.name)
        if not accepts(hints[f.name], rules, value):
            raise ConfigError(f"{f.name} must be {allowed(hints[f.name], rules)}, got {value!r}")


def arg_type(kind: type, **rules):
    """The same check for an argparse option: `add_argument("--batch-size", type=arg_type(int, ge=1))`
    refuses `--batch-size 0` with 'argument --batch-size: must be an integer >= 1, got 0'."""

    def convert(text: str):
        try:
            value = kind(text)
        except ValueError:
            value = text
        if not accepts(kind, rules, value):
            raise argparse.ArgumentTypeError(f"must be {allowed(kind, rules)}, got {value!r}")
        return value

    convert.__name__ = kind.__name__
    return convert
