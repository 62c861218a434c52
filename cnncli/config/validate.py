"""Checking raw YAML values against the schema: types, choices and ranges, with one-line errors."""

from __future__ import annotations

import dataclasses
import math
import re
import reprlib
import types
import typing
from typing import Any


from cnncli.errors import ConfigError, did_you_mean

from cnncli.config.schema import Config


# ----------------------------------------------------------------------------- validation


_FLOAT_LITERAL = re.compile(r"[-+]?(\d+\.?\d*|\.\d+)([eE][-+]?\d+)?")
_SHOWN = reprlib.Repr()
_SHOWN.maxlevel, _SHOWN.maxlist, _SHOWN.maxdict, _SHOWN.maxstring, _SHOWN.maxother = 2, 4, 3, 60, 60


def _show(value: Any, limit: int = 80) -> str:
    """`repr(value)` cut to `limit` characters: a message never prints an unbounded value."""
    try:
        text = _SHOWN.repr(value)
    except ValueError:  # an int too long to print
        text = f"<{type(value).__name__}>"
    return text if len(text) <= limit else text[: limit - 3] + "..."


def _clip(text: str, limit: int = 80) -> str:
    return text if len(text) <= limit else text[: limit - 3] + "..."


def _type_name(tp: Any) -> str:
    origin = typing.get_origin(tp)
    if origin in (typing.Union, types.UnionType):
        names = [_type_name(a) for a in typing.get_args(tp) if a is not type(None)]
        return " or ".join(names) + " or null"
    if origin is list:
        return f"list of {_type_name(typing.get_args(tp)[0])}"
    return {int: "integer", float: "number", str: "string", bool: "true/false"}.get(tp, getattr(tp, "__name__", str(tp)))


def _coerce(value: Any, tp: Any, key: str, where: str) -> Any:
    """Check `value` against the annotation `tp`; return it converted (int -> float etc.)."""
    origin = typing.get_origin(tp)
    if origin in (typing.Union, types.UnionType):
        args = typing.get_args(tp)
        if value is None and type(None) in args:
            return None
        for arg in args:
            if arg is type(None):
                continue
            try:
                return _coerce(value, arg, key, where)
            except ConfigError:
                continue
        raise _type_error(value, tp, key, where)
    if origin is list:
        (item_tp,) = typing.get_args(tp)
        if not isinstance(value, list):
            raise _type_error(value, tp, key, where)
        return [_coerce(v, item_tp, f"{key}[{i}]", where) for i, v in enumerate(value)]
    if dataclasses.is_dataclass(tp):
        if not isinstance(value, dict):
            raise ConfigError(f"{where}: '{key}' must be a mapping of keys, got {_show(value)}")
        return _build(tp, value, key, where)
    if tp is bool:
        if isinstance(value, bool):
            return value
    elif tp is int:
        if isinstance(value, int) and not isinstance(value, bool):
            return value
        if isinstance(value, float) and value.is_integer() and abs(value) <= 2**53:  # exact, not 1e30
            return int(value)
    elif tp is float:
        if isinstance(value, (int, float)) and not isinstance(value, bool):
            if isinstance(value, int) and abs(value) >= 2**1000:  # float() would overflow; the range refuses inf
                return math.inf if value > 0 else -math.inf
            return float(value)
        if isinstance(value, str) and _FLOAT_LITERAL.fullmatch(value.strip()):
            return float(value)  # PyYAML reads `1e-4` (no dot) as a string
    elif tp is str:
        if isinstance(value, str):
            return value
    raise _type_error(value, tp, key, where)


def _type_error(value: Any, tp: Any, key: str, where: str) -> ConfigError:
    return ConfigError(f"{where}: '{key}' must be {_type_name(tp)}, got {_show(value)} ({type(value).__name__})")


def _build(cls: type, raw: dict, prefix: str, where: str) -> Any:
    hints = typing.get_type_hints(cls)
    fields = {f.name: f for f in dataclasses.fields(cls)}
    kwargs = {}
    for key, value in raw.items():
        path = f"{prefix}.{key}" if prefix else str(key)
        if key not in fields:
            valid = [f"{prefix}.{k}" if prefix else k for k in fields]
            raise ConfigError(f"{where}: unknown key '{_clip(path)}'{did_you_mean(path[:100], valid)}")
        kwargs[key] = _coerce(value, hints[key], path, where)
    return cls(**kwargs)


def _check_values(section: Any, prefix: str, where: str) -> None:
    """Check every key of a built section (defaults included) against its declared choices and range."""
    for f in dataclasses.fields(section):
        value, path = getattr(section, f.name), prefix + f.name
        if dataclasses.is_dataclass(value):
            _check_values(value, path + ".", where)
        elif value is not None:
            _check_field(f, value, path, where)


def _check_field(f: dataclasses.Field, value: Any, path: str, where: str) -> None:
    choices, rng = f.metadata.get("choices"), f.metadata.get("range")
    if choices and value not in choices:
        names = [str(c) for c in choices]
        raise ConfigError(f"{where}: '{path}' must be one of {', '.join(names)}; got {_show(value)}"
                          f"{did_you_mean(str(value)[:100], names)}")
    if rng is None:
        return
    note = f" ({rng.note})" if rng.note else ""
    items = value if isinstance(value, list) else [value]
    for i, v in enumerate(items):
        if not rng.admits(v):
            key = f"{path}[{i}]" if isinstance(value, list) else path
            kind = "an integer " if isinstance(v, int) else "a finite number " if not math.isfinite(v) else ""
            raise ConfigError(f"{where}: '{key}' must be {kind}{rng}{note}, got {_show(v)}")
    if rng.lengths is not None and len(items) not in rng.lengths:
        count = " or ".join(str(n) for n in rng.lengths)
        raise ConfigError(f"{where}: '{path}' must be a list of {count} numbers, got {_show(value)}")
    if rng.increasing and any(a > b for a, b in zip(items, items[1:])):
        raise ConfigError(f"{where}: '{path}' must be {len(items)} numbers in increasing order (min, max), "
                          f"got {_show(value)}")


def _check_ranges(cfg: Config, where: str) -> None:
    """The declared per-key ranges, then the rules that involve several keys."""
    _check_values(cfg, "", where)

    def need(cond: bool, key: str, what: str, value: Any) -> None:
        if not cond:
            raise ConfigError(f"{where}: '{key}' must be {what}, got {_show(value)}")

    t, s = cfg.train, cfg.schedule
    need(t.epochs is not None or t.steps is not None, "train.epochs", "set (or train.steps)", t.epochs)
    need(t.batch_size % t.grad_accum_steps == 0, "train.batch_size", "divisible by train.grad_accum_steps", t.batch_size)
    if s.name == "step":
        need(bool(s.milestones) or bool(s.milestone_steps), "schedule.milestones", "a non-empty list for the step schedule", s.milestones)
