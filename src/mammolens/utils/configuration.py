"""Dataclass configs loaded from YAML/dicts, where an unknown or mistyped key is an error.

Every room (preprocess, models, train, ...) owns its config dataclass; pydantic checks a nested dict
against it (types, nested sections, tuples, literals, unions) and this module turns its first complaint
into one line naming the offending key by its dotted path (``train.lr``).
"""

from __future__ import annotations

import dataclasses
import functools
import typing
from collections.abc import Iterator
from pathlib import Path
from typing import Any, TypeVar

import pydantic
import yaml

from mammolens.utils.errors import ConfigError

C = TypeVar("C")
_FORBID_UNKNOWN = pydantic.ConfigDict(extra="forbid")
_EXPECTED = {"int": "int", "float": "float", "bool": "bool", "string": "str", "list": "a list", "tuple": "a list",
             "dict": "a mapping", "dataclass": "a mapping", "model": "a mapping"}


def from_dict(cls: type[C], data: dict[str, Any] | None, where: str = "") -> C:
    """Build dataclass ``cls`` from ``data``; unknown keys and wrong types raise ConfigError."""
    data = {} if data is None else data
    if not isinstance(data, dict):
        raise ConfigError(f"{where or 'config'}: expected a mapping, got {type(data).__name__}")
    try:
        return _adapter(cls).validate_python(data)
    except pydantic.ValidationError as exc:
        raise _one_line(cls, exc.errors()[0], where) from None


@functools.cache
def _adapter(cls: type) -> pydantic.TypeAdapter:
    for section in set(_sections(cls)):  # every section, however deep, refuses keys it does not know
        section.__pydantic_config__ = _FORBID_UNKNOWN
    return pydantic.TypeAdapter(cls)


def _sections(tp: Any) -> Iterator[type]:
    if isinstance(tp, type) and dataclasses.is_dataclass(tp):
        yield tp
        for hint in typing.get_type_hints(tp).values():
            yield from _sections(hint)
    for arg in typing.get_args(tp):
        yield from _sections(arg)


def _one_line(cls: type, error: dict[str, Any], where: str) -> ConfigError:
    loc = [part for part in error["loc"] if not (isinstance(part, str) and part.startswith(("function-", "lax-")))]
    path = where
    for part in loc:
        path = f"{path}[{part}]" if isinstance(part, int) else _join(path, str(part))
    kind, value = error["type"], error.get("input")
    if kind in ("extra_forbidden", "unexpected_keyword_argument"):
        known = ", ".join(sorted(f.name for f in dataclasses.fields(_section_at(cls, loc[:-1])) if f.init))
        return ConfigError(f"unknown config key {path!r}; known keys: {known}")
    if kind == "literal_error":
        choices = typing.get_args(_field_type(cls, loc))
        return ConfigError(f"{path}: {value!r} is not one of {', '.join(repr(c) for c in choices)}")
    if kind in ("missing", "missing_argument"):
        return ConfigError(f"{path}: required, missing")
    expected = _EXPECTED.get(kind.split("_")[0]) if kind.endswith(("_type", "_parsing", "_from_float")) else None
    if expected:
        return ConfigError(f"{path}: expected {expected}, got {value!r}")
    cause = (error.get("ctx") or {}).get("error")
    return ConfigError(f"{path or 'config'}: {cause if cause is not None else error['msg']}")


def to_dict(obj: Any) -> Any:
    """Plain dict of a (nested) dataclass, for saving the resolved config."""
    if dataclasses.is_dataclass(obj):
        return {f.name: to_dict(getattr(obj, f.name)) for f in dataclasses.fields(obj)}
    if isinstance(obj, (list, tuple)):
        return [to_dict(v) for v in obj]
    if isinstance(obj, dict):
        return {k: to_dict(v) for k, v in obj.items()}
    if isinstance(obj, Path):
        return str(obj)
    return obj


def load_yaml(path: str | Path) -> dict[str, Any]:
    path = Path(path)
    try:
        with open(path, encoding="utf-8") as fh:
            data = yaml.safe_load(fh)
    except FileNotFoundError:
        raise ConfigError("config file not found", path=path) from None
    except yaml.YAMLError as exc:
        raise ConfigError(f"not valid YAML ({str(exc).splitlines()[0]})", path=path) from None
    if data is None:
        return {}
    if not isinstance(data, dict):
        raise ConfigError("a config file must hold a mapping at the top level", path=path)
    return data


def parse_assignment(item: str, what: str = "override") -> tuple[str, Any]:
    """``key=value`` -> (key, value parsed as YAML)."""
    key, sep, raw = item.partition("=")
    if not sep or not key:
        raise ConfigError(f"{what} {item!r} must look like key=value")
    try:
        return key, yaml.safe_load(raw)
    except yaml.YAMLError as exc:
        raise ConfigError(f"{what} {item!r}: value is not valid YAML ({str(exc).splitlines()[0]})") from None


def apply_overrides(data: dict[str, Any], overrides: list[str]) -> dict[str, Any]:
    """Apply ``a.b.c=value`` overrides (value parsed as YAML) to a nested dict, in place."""
    for item in overrides:
        key, value = parse_assignment(item)
        node = data
        parts = key.split(".")
        for part in parts[:-1]:
            node = node.setdefault(part, {})
            if not isinstance(node, dict):
                raise ConfigError(f"override {item!r}: {part!r} is not a section")
        node[parts[-1]] = value
    return data


def _join(where: str, key: str) -> str:
    return f"{where}.{key}" if where else key


def _section_at(cls: type, loc: list[Any]) -> type:
    """The dataclass at ``loc`` inside ``cls`` (the section an unknown key was found in)."""
    tp: Any = cls
    for part in loc:
        tp = _field_type(tp, [part]) if isinstance(part, str) else _item_type(tp)
    return next(_sections(tp))


def _field_type(cls: Any, loc: list[Any]) -> Any:
    tp = cls
    for part in loc:
        if isinstance(part, int):
            tp = _item_type(tp)
            continue
        section = next(_sections(tp))
        tp = typing.get_type_hints(section)[part]
    return next((a for a in (tp, *typing.get_args(tp)) if typing.get_origin(a) is typing.Literal), tp)


def _item_type(tp: Any) -> Any:
    args = [a for a in typing.get_args(tp) if a is not type(None)]
    return args[0] if args else Any
