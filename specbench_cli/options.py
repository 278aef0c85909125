"""Typed options: one dataclass per method (or datastore kind), one parser for all of them.

A method declares its options as a dataclass whose fields carry a default, a type, a one-line help
and the source of the default (paper, official code):

    @dataclass
    class PldOptions:
        num_pred: int = option(10, "tokens drafted after a match", "PLD repo, num_pred_tokens")

`parse_options(PldOptions, {"num_pred": "8"}, owner="pld")` returns `PldOptions(num_pred=8)`; an
unknown key or a value of the wrong type is a one-line `SpecbenchError` naming the key and value, so
`--method-opt pld.num_preds=4` fails before a model loads instead of being ignored. Keys with a dot
(`fallback.k=3`) are left for the method to route; `split_nested` separates them.
"""

from __future__ import annotations

import dataclasses
import math
import types
import typing
from dataclasses import dataclass
from typing import Any

from .types import SpecbenchError

TRUE_WORDS = ("true", "on", "yes", "1")
FALSE_WORDS = ("false", "off", "no", "0")


def option(
    default: Any, help: str, source: str = "", choices: tuple | None = None, minimum: float | None = None
) -> Any:
    """A dataclass field with its help line, the source of its default, allowed values or a minimum."""
    metadata = {"help": help, "source": source, "choices": choices, "minimum": minimum}
    return dataclasses.field(default=default, metadata=metadata)


@dataclass
class NoOptions:
    """For a method without options: any `--method-opt` for it is an unknown key."""


def subset(options_class: type, values: Any) -> Any:
    """The fields of `options_class` taken from `values`, a dataclass that holds them among others
    (a hybrid's options passed on to the host method it builds on)."""
    return options_class(**{f.name: getattr(values, f.name) for f in dataclasses.fields(options_class)})


def describe_options(options_class: type) -> list[dict]:
    """One row per option: name, type, default, help, source (for `specbench ls` and the docs)."""
    hints = typing.get_type_hints(options_class)
    rows = []
    for f in dataclasses.fields(options_class):
        rows.append(
            {
                "name": f.name,
                "type": _type_name(hints[f.name]),
                "default": f.default,
                "help": f.metadata.get("help", ""),
                "source": f.metadata.get("source", ""),
                "choices": f.metadata.get("choices"),
                "minimum": f.metadata.get("minimum"),
            }
        )
    return rows


def split_nested(raw: dict[str, Any]) -> tuple[dict[str, Any], dict[str, dict[str, Any]]]:
    """{"k": 1, "fallback.k": 3} -> ({"k": 1}, {"fallback": {"k": 3}})."""
    own: dict[str, Any] = {}
    nested: dict[str, dict[str, Any]] = {}
    for key, value in raw.items():
        head, dot, rest = key.partition(".")
        if dot:
            nested.setdefault(head, {})[rest] = value
        else:
            own[key] = value
    return own, nested


def parse_options(options_class: type, raw: dict[str, Any], owner: str) -> Any:
    """Build `options_class` from strings or values; one-line error for unknown keys or bad values."""
    fields = {f.name: f for f in dataclasses.fields(options_class)}
    unknown = sorted(set(raw) - set(fields))
    if unknown:
        raise SpecbenchError(
            f"unknown {owner} option(s) {', '.join(unknown)}; choose from: {', '.join(fields) or '(none)'}"
        )
    hints = typing.get_type_hints(options_class)
    values = {}
    for key, value in raw.items():
        parsed = _coerce(value, hints[key], f"{owner} option {key}={value!r}")
        choices = fields[key].metadata.get("choices")
        if choices is not None and parsed not in choices:
            raise SpecbenchError(
                f"{owner} option {key}={value!r} is not one of: {', '.join(map(str, choices))}"
            )
        minimum = fields[key].metadata.get("minimum")
        if minimum is not None and parsed is not None and parsed < minimum:
            raise SpecbenchError(f"{owner} option {key}={value!r} must be at least {minimum}")
        values[key] = parsed
    try:
        return options_class(**values)
    except SpecbenchError as e:  # a check across fields (__post_init__), worded "option KEY=..."
        raise SpecbenchError(f"{owner} {e}") from None


def _coerce(value: Any, hint: Any, what: str) -> Any:
    origin = typing.get_origin(hint)
    if origin in (typing.Union, types.UnionType):
        args = [a for a in typing.get_args(hint) if a is not type(None)]
        if value is None or (isinstance(value, str) and value.lower() in ("none", "null")):
            return None
        for arg in args:
            try:
                return _coerce(value, arg, what)
            except SpecbenchError:
                continue
        raise SpecbenchError(f"{what} is not a {' or '.join(_type_name(a) for a in args)}")
    if hint is bool:
        if isinstance(value, bool):
            return value
        word = str(value).strip().lower()
        if word in TRUE_WORDS:
            return True
        if word in FALSE_WORDS:
            return False
        raise SpecbenchError(f"{what} is not a boolean; use true or false")
    if hint is int:
        if isinstance(value, bool):
            raise SpecbenchError(f"{what} is not an integer")
        if isinstance(value, int):
            return value
        if isinstance(value, float) and value.is_integer():
            return int(value)
        try:
            return int(str(value).strip())
        except ValueError:
            raise SpecbenchError(f"{what} is not an integer") from None
    if hint is float:
        if isinstance(value, bool):
            raise SpecbenchError(f"{what} is not a number")
        try:
            number = float(value)
        except (TypeError, ValueError):
            raise SpecbenchError(f"{what} is not a number") from None
        if not math.isfinite(number):
            raise SpecbenchError(f"{what} is not a finite number")
        return number
    if hint is str:
        return str(value)
    raise SpecbenchError(f"{what}: options of type {_type_name(hint)} cannot be set from the command line")


def _type_name(hint: Any) -> str:
    origin = typing.get_origin(hint)
    if origin in (typing.Union, types.UnionType):
        return " | ".join(_type_name(a) for a in typing.get_args(hint))
    return getattr(hint, "__name__", str(hint))
