"""Dataclass config trees: load from TOML, apply `--set a.b=value` overrides, validate, write back.

Every command owns one dataclass tree. Loading is strict, because a typo in a sweep config silently
falling back to a default costs a cluster-day: an unknown key, a value of the wrong type or a missing
required value is a ConfigError that names the dotted key and where it came from (the file or `--set`).

Types understood: bool, int, float (ints accepted), str, pathlib.Path, Literal[...], X | None, list[X],
tuple[X, ...], dict[str, X], typing.Any and nested dataclasses. TOML has no null, so None-valued fields
are left out when writing; they must default to None for the written file to load back to the same tree.
"""

from __future__ import annotations

import dataclasses
import difflib
import hashlib
import json
import os
import tomllib
import types
import typing
from collections.abc import Callable, Mapping, Sequence
from pathlib import Path
from typing import TYPE_CHECKING, Any, Literal, TypeVar

import tomli_w

from cxrlt.atomic import write_text_atomic
from cxrlt.errors import InputError

if TYPE_CHECKING:
    from _typeshed import DataclassInstance

T = TypeVar("T", bound="DataclassInstance")  # every config class is a dataclass (fields() is read)
OVERRIDE_ORIGIN = "--set"


class ConfigError(InputError):
    """A config value is unknown, missing or of the wrong type; the message names key and origin."""


def load_config(cls: type[T], path: str | os.PathLike | None = None, overrides: Sequence[str] = ()) -> T:
    """Build `cls` from a TOML file (optional) and `key=value` overrides applied on top."""
    data: dict[str, Any] = {}
    file_origin = "<defaults>"
    if path is not None:
        file_origin = str(path)
        data = read_toml(path)
    overridden = apply_overrides(cls, data, overrides)
    return from_dict(cls, data, origin=lambda key: OVERRIDE_ORIGIN if key in overridden else file_origin)


EXTENDS = "extends"


def read_toml(path: str | os.PathLike, _seen: tuple[Path, ...] = ()) -> dict[str, Any]:
    """A TOML file as a dict; a missing file or a syntax error is a ConfigError naming the file.

    A top-level `extends = "other.toml"` (relative to this file's folder) reads that file first and
    layers this one over it, so a scaled-down recipe states only what it changes: tables merge key by
    key, a list named `set` (ordered overrides) continues the parent's, a list of tables with a `name`
    merges table by table by name (a name the parent lacks is an error: extending changes sizes and
    paths, never adds steps or members), and any other value replaces the parent's.
    """
    path = Path(path)
    try:
        with open(path, "rb") as f:
            data = tomllib.load(f)
    except FileNotFoundError:
        raise ConfigError(f"config file not found: {path}") from None
    except tomllib.TOMLDecodeError as e:
        raise ConfigError(f"{path}: invalid TOML: {e}") from None
    parent = data.pop(EXTENDS, None)
    if parent is None:
        return data
    if not isinstance(parent, str):
        raise ConfigError(f"{path}: {EXTENDS} must be a file name, got {parent!r}")
    parent_path = (path.parent / parent).resolve()
    if parent_path in _seen or parent_path == path.resolve():
        raise ConfigError(f"{path}: {EXTENDS} = {parent!r} makes a cycle")
    return _layer(read_toml(parent_path, (*_seen, path.resolve())), data, f"{path} (extends {parent})")


def _identity(items: list[Any]) -> str | None:
    """The key that names each table of a list of tables (members: name, submissions: task), if any."""
    for key in ("name", "task"):
        if items and all(isinstance(item, dict) and key in item for item in items):
            return key
    return None


def _layer(base: Any, over: Any, where: str, key: str = "") -> Any:
    if isinstance(base, dict) and isinstance(over, dict):
        merged = dict(base)
        for k, v in over.items():
            merged[k] = _layer(base[k], v, where, f"{key}.{k}".lstrip(".")) if k in base else v
        return merged
    if isinstance(base, list) and isinstance(over, list):
        if key.rsplit(".", 1)[-1] == "set":
            return [*base, *over]
        ident = _identity(base)
        if ident is not None and _identity(over) == ident:
            by_name = {item[ident]: item for item in over}
            unknown = [n for n in by_name if n not in {item[ident] for item in base}]
            if unknown:
                raise ConfigError(
                    f"{where}: {key} {unknown} not in the extended file; extending may change entries, not add them"
                )
            return [_layer(item, by_name[item[ident]], where, key) if item[ident] in by_name else item for item in base]
    return over


def apply_overrides(cls: type, data: dict[str, Any], overrides: Sequence[str]) -> set[str]:
    """Set each `a.b.c=value` in `data` (in place); returns the dotted keys that were set.

    The value is parsed as a TOML value (`3e-4`, `true`, `[64, 128]`, `"x"`), falling back to the raw
    string so `--set model.backbone=convnext_atto` needs no quotes. The key must exist in `cls`.
    """
    keys = set()
    for item in overrides:
        key, sep, raw = item.partition("=")
        key = key.strip()
        if not sep or not key:
            raise ConfigError(f"{OVERRIDE_ORIGIN} {item!r}: expected KEY=VALUE")
        parts = key.split(".")
        _check_path(cls, parts, key)
        try:
            value = tomllib.loads(f"v = {raw}")["v"]
        except tomllib.TOMLDecodeError:
            value = raw
        node = data
        for i, part in enumerate(parts[:-1]):
            child = node.setdefault(part, {})
            if not isinstance(child, dict):
                raise ConfigError(f"{OVERRIDE_ORIGIN} {key}: {'.'.join(parts[: i + 1])} is not a table")
            node = child
        node[parts[-1]] = value
        keys.add(key)
    return keys


def _check_path(cls: type, parts: list[str], key: str) -> None:
    hint: Any = cls
    for i, part in enumerate(parts):
        hint = _strip_optional(hint)
        if dataclasses.is_dataclass(hint):
            fields = typing.get_type_hints(hint)
            if part not in fields:
                raise ConfigError(f"{OVERRIDE_ORIGIN} {key}: {_unknown(part, fields, parts[:i])}")
            hint = fields[part]
        elif typing.get_origin(hint) is dict:
            hint = typing.get_args(hint)[1]
        else:
            raise ConfigError(f"{OVERRIDE_ORIGIN} {key}: {'.'.join(parts[:i])} is not a table")


def from_dict(cls: type[T], data: Mapping[str, Any], origin: Callable[[str], str] = lambda key: "<dict>") -> T:
    """Validate `data` against dataclass `cls` and build it; `origin(key)` names where a key came from."""
    return _build(cls, data, "", origin)


def _build(cls: type[T], data: Any, prefix: str, origin: Callable[[str], str]) -> T:
    where = prefix or "<root>"
    if not isinstance(data, Mapping):
        raise ConfigError(f"{origin(prefix)}: {where} must be a table, got {type(data).__name__}")
    hints = typing.get_type_hints(cls)
    known = {f.name: f for f in dataclasses.fields(cls) if f.init}
    for key in data:
        if key not in known:
            dotted = f"{prefix}.{key}" if prefix else key
            raise ConfigError(f"{origin(dotted)}: {_unknown(key, known, prefix.split('.') if prefix else [])}")
    kwargs = {}
    for name, f in known.items():
        dotted = f"{prefix}.{name}" if prefix else name
        if name in data:
            kwargs[name] = _coerce(hints[name], data[name], dotted, origin)
        elif f.default is dataclasses.MISSING and f.default_factory is dataclasses.MISSING:
            raise ConfigError(f"{origin(dotted)}: missing required key {dotted!r}")
    try:
        return cls(**kwargs)
    except (TypeError, ValueError) as e:  # __post_init__ validation
        raise ConfigError(f"{origin(prefix)}: {where}: {e}") from None


def _unknown(key: str, known: Mapping[str, Any], parents: list[str]) -> str:
    dotted = ".".join([*parents, key])
    close = difflib.get_close_matches(key, list(known), n=1)
    hint = f" (did you mean {'.'.join([*parents, close[0]])!r}?)" if close else ""
    return f"unknown key {dotted!r}{hint}"


def _strip_optional(hint: Any) -> Any:
    if typing.get_origin(hint) in (typing.Union, types.UnionType):
        args = [a for a in typing.get_args(hint) if a is not type(None)]
        if len(args) == 1:
            return args[0]
    return hint


def _coerce(hint: Any, value: Any, key: str, origin: Callable[[str], str]) -> Any:
    def fail(expected: str) -> ConfigError:
        return ConfigError(f"{origin(key)}: key {key!r} expects {expected}, got {type(value).__name__} {value!r}")

    if hint is Any:
        return value
    origin_type = typing.get_origin(hint)
    args = typing.get_args(hint)
    if origin_type in (typing.Union, types.UnionType):
        if value is None and type(None) in args:
            return None
        for arg in (a for a in args if a is not type(None)):
            try:
                return _coerce(arg, value, key, origin)
            except ConfigError:
                pass
        raise fail(" or ".join(_type_name(a) for a in args))
    if origin_type is Literal:
        if value not in args:
            raise fail(f"one of {list(args)}")
        return value
    if origin_type in (list, tuple):
        if not isinstance(value, (list, tuple)):
            raise fail(_type_name(hint))
        if origin_type is tuple and not (len(args) == 2 and args[1] is Ellipsis):
            if len(value) != len(args):
                raise fail(_type_name(hint))
            return tuple(_coerce(a, v, f"{key}[{i}]", origin) for i, (a, v) in enumerate(zip(args, value)))
        item = args[0] if args else Any
        items = [_coerce(item, v, f"{key}[{i}]", origin) for i, v in enumerate(value)]
        return tuple(items) if origin_type is tuple else items
    if origin_type is dict:
        if not isinstance(value, Mapping):
            raise fail("a table")
        value_hint = args[1] if args else Any
        return {str(k): _coerce(value_hint, v, f"{key}.{k}", origin) for k, v in value.items()}
    if isinstance(hint, type) and dataclasses.is_dataclass(hint):
        return _build(hint, value, key, origin)
    if hint is bool:
        if not isinstance(value, bool):
            raise fail("a boolean")
        return value
    if hint is int:
        if isinstance(value, bool) or not isinstance(value, int):
            raise fail("an integer")
        return value
    if hint is float:
        if isinstance(value, bool) or not isinstance(value, (int, float)):
            raise fail("a number")
        return float(value)
    if hint is str:
        if not isinstance(value, str):
            raise fail("a string")
        return value
    if hint is Path:
        if not isinstance(value, (str, Path)):
            raise fail("a path string")
        return Path(value)
    raise ConfigError(f"{origin(key)}: key {key!r} has a type the config loader does not support: {hint}")


def _type_name(hint: Any) -> str:
    return getattr(hint, "__name__", None) or str(hint).replace("typing.", "")


def to_dict(cfg: Any) -> dict[str, Any]:
    """A plain, TOML-ready dict: Paths as strings, tuples as lists, None-valued keys dropped."""

    def plain(value: Any) -> Any:
        if dataclasses.is_dataclass(value):
            return {f.name: plain(getattr(value, f.name)) for f in dataclasses.fields(value) if f.init}
        if isinstance(value, Mapping):
            return {str(k): plain(v) for k, v in value.items()}
        if isinstance(value, (list, tuple)):
            return [plain(v) for v in value]
        if isinstance(value, Path):
            return str(value)
        return value

    def drop_none(value: Any) -> Any:
        if isinstance(value, dict):
            return {k: drop_none(v) for k, v in value.items() if v is not None}
        return value

    return drop_none(plain(cfg))


def flatten(cfg: Any) -> dict[str, Any]:
    """{dotted key: value} of the resolved config (lists kept whole): the form MLflow params take."""
    out: dict[str, Any] = {}

    def walk(value: Any, prefix: str) -> None:
        if isinstance(value, dict):
            for key, inner in value.items():
                walk(inner, f"{prefix}.{key}" if prefix else key)
        else:
            out[prefix] = value

    walk(to_dict(cfg), "")
    return out


def to_toml(cfg: Any) -> str:
    return tomli_w.dumps(to_dict(cfg))


def config_hash(cfg: Any) -> str:
    """A short, stable fingerprint of the resolved config (for prediction sidecars and run names)."""
    canonical = json.dumps(to_dict(cfg), sort_keys=True, separators=(",", ":"))
    return hashlib.sha256(canonical.encode()).hexdigest()[:12]


def write_config(cfg: Any, path: str | os.PathLike) -> Path:
    """Write the resolved config as TOML atomically (write to a temporary file, then rename)."""
    return write_text_atomic(path, to_toml(cfg))
