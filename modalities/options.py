"""Typed options from YAML values: one parser for the engine's config and each modality's options.

`coerce(key, value, tp)` turns a YAML (or `key=value` command-line) value into `tp`: bool, int,
float, str, `X | None`, `list[X]`, `tuple[X, X]` (a [min, max] pair), `tuple[X, ...]`, or a
dataclass (a mapping of its fields). `parse_options(cls, mapping, prefix)` builds a dataclass
from a mapping, naming unknown keys and bad values by their dotted key (`modality.obs_scale:
expected [min, max], got 3`); the dataclass's own `__post_init__` checks ranges.

`participants_problems(columns, reserved)`: the check of a reader's participants.tsv columns.
`BlockSpec`: one group of target blocks of a block masker (grid, fMRI, audio masks).

A modality declares its method options (tokenizer, masker, embedder) as such a dataclass
(`Modality.method_type`); the run config's `modality:` section is parsed into it and the
modality's hooks receive that object and nothing of the engine's config.

Imports only the standard library.
"""

from __future__ import annotations

import dataclasses
import math
import types
import typing
from collections.abc import Iterable, Mapping, Sequence
from typing import Any


class OptionError(ValueError):
    """A key is unknown, mistyped or out of range; the message starts with the dotted key."""


def _bad(key: str, why: str, value: Any) -> typing.NoReturn:
    raise OptionError(f"{key}: {why}, got {value!r}")


def _split_list(value: Any) -> Any:
    """A command-line "a,b" list as its items ("[a, b]" arrives parsed as YAML already)."""
    if isinstance(value, str):
        return [v.strip() for v in value.split(",")]
    return value


def coerce(key: str, value: Any, tp: Any) -> Any:
    """`value` as type `tp`; OptionError naming `key`."""
    origin, args = typing.get_origin(tp), typing.get_args(tp)
    if origin in (typing.Union, types.UnionType):
        rest = [a for a in args if a is not type(None)]
        if len(rest) != 1:
            raise OptionError(f"{key}: only `X | None` unions are supported, not {tp}")
        if value is None or (isinstance(value, str) and value.lower() in ("null", "none")):
            return None
        return coerce(key, value, rest[0])
    if origin is list:
        value = _split_list(value)
        if not isinstance(value, (list, tuple)):
            _bad(key, "expected a list", value)
        return [coerce(f"{key}[{i}]", v, args[0]) for i, v in enumerate(value)]
    if origin is tuple:
        value = _split_list(value)
        if not isinstance(value, (list, tuple)):
            _bad(key, "expected [min, max]" if len(args) == 2 else "expected a list", value)
        if len(args) == 2 and args[1] is Ellipsis:
            return tuple(coerce(f"{key}[{i}]", v, args[0]) for i, v in enumerate(value))
        if len(value) != len(args):
            _bad(key, "expected [min, max]" if len(args) == 2 else f"expected {len(args)}", value)
        pairs = enumerate(zip(value, args, strict=True))
        return tuple(coerce(f"{key}[{i}]", v, a) for i, (v, a) in pairs)
    if dataclasses.is_dataclass(tp):
        if isinstance(value, tp):
            return value
        if not isinstance(value, Mapping):
            names = ", ".join(f.name for f in dataclasses.fields(tp))
            _bad(key, f"expected a mapping of {names}", value)
        return parse_options(tp, value, key)
    return _scalar(key, value, tp)


def _scalar(key: str, value: Any, tp: Any) -> Any:
    if tp is bool:
        if isinstance(value, bool):
            return value
        if isinstance(value, str) and value.lower() in ("true", "1", "yes", "on"):
            return True
        if isinstance(value, str) and value.lower() in ("false", "0", "no", "off"):
            return False
        _bad(key, "expected true or false", value)
    if tp is int:
        if isinstance(value, int) and not isinstance(value, bool):
            return value
        if isinstance(value, float) and value.is_integer():
            return int(value)
        if isinstance(value, str):
            try:
                return int(value.replace("_", ""))
            except ValueError:
                pass
        _bad(key, "expected an integer", value)
    if tp is float:
        if isinstance(value, (int, float)) and not isinstance(value, bool):
            return float(value)
        if isinstance(value, str):
            try:
                return float(value)
            except ValueError:
                pass
        _bad(key, "expected a number", value)
    if tp is str:
        if isinstance(value, (str, int, float)) and not isinstance(value, bool):
            return str(value)
        _bad(key, "expected a string", value)
    raise OptionError(f"{key}: unsupported option type {tp}")


def check_range(name: str, pair: Any, hi: float = 1.0) -> None:
    """ValueError("name: ...") unless `pair` is [min, max] with 0 < min <= max <= hi (what the
    options' `__post_init__` checks of scales and aspects share)."""
    lo_, hi_ = pair
    if not 0 < lo_ <= hi_ <= hi:
        bound = "1" if hi == 1.0 else "max"
        raise ValueError(
            f"{name}: expected [min, max] with 0 < min <= max <= {bound}, got {list(pair)}"
        )


def parse_options(cls: type, mapping: Mapping[str, Any] | None, prefix: str) -> Any:
    """`cls(**values)` from `mapping` ({name: YAML value}); unknown names and bad values raise
    OptionError naming `prefix.name`, and so do the range checks of `cls.__post_init__`
    (raised as ValueError("name: ...") or OptionError)."""
    mapping = mapping or {}
    if not isinstance(mapping, Mapping):
        _bad(prefix, "expected a mapping", mapping)
    hints = typing.get_type_hints(cls)
    known = [f.name for f in dataclasses.fields(cls) if f.init]
    values = {}
    for name, value in mapping.items():
        if name not in known:
            raise OptionError(f"{prefix}.{name}: unknown option; known: {', '.join(known)}")
        values[name] = coerce(f"{prefix}.{name}", value, hints[name])
    try:
        return cls(**values)
    except OptionError:
        raise
    except ValueError as e:  # __post_init__'s "name: why": prefixed with where it sits
        raise OptionError(f"{prefix}.{e}") from None


def options_to_dict(opts: Any) -> dict[str, Any]:
    """A parsed options dataclass as plain YAML values (tuples as lists)."""

    def plain(v: Any) -> Any:
        if isinstance(v, (list, tuple)):
            return [plain(x) for x in v]
        if isinstance(v, dict):
            return {k: plain(x) for k, x in v.items()}
        return v

    return plain(dataclasses.asdict(opts))


def participants_problems(columns: Sequence[Any], reserved: Iterable[str]) -> list[str]:
    """What is wrong with `columns` as record fields next to a reader's own `reserved` ones."""
    taken = {*reserved, "participant_id"}
    problems = []
    for col in columns:
        if not isinstance(col, str) or not col or col in taken:
            problems.append(f"participants column {col!r} is empty or clashes with a field")
    if len(set(columns)) != len(columns):
        problems.append(f"participants columns repeat a name: {list(columns)}")
    return problems


@dataclasses.dataclass(frozen=True)
class BlockSpec:
    """One group of target blocks: `num` blocks, each covering U(scale) of the grid with a
    log-uniform aspect (rows / cols) in `aspect`."""

    num: int = 4
    scale: tuple[float, float] = (0.15, 0.2)
    aspect: tuple[float, float] = (0.75, 1.5)

    def __post_init__(self) -> None:
        if self.num < 1:
            raise ValueError(f"num: must be >= 1, got {self.num}")
        check_range("scale", self.scale)
        check_range("aspect", self.aspect, hi=math.inf)
