"""Configuration: YAML files with defaults that run, CLI overrides, resolved copy beside artifacts.

The defaults live in ``configs/<section>.yaml`` (one file per stage family: ``data``,
``features``, ``lgb``, ``nn``, ``popularity``, ``blend``, ``score``); they are merged into one
dict keyed by section.  ``--config FILE`` deep-merges a user file on top, and ``--set
section.key=value`` (repeatable) overrides single values, parsed as YAML scalars
(``--set lgb.params.num_leaves=63``).  Every key is declared with its type in
``wbdc.config_schema``: an unknown key or a wrong type is a :class:`ConfigError`, a one-line
message naming the key and the closest valid one ("unknown key nn.epochs; did you mean
nn.train.epochs?").  The resolved dict is complete (every declared key present), so library
code reads ``cfg[...]`` and never carries a default of its own.
"""
from __future__ import annotations

import argparse
import copy
import dataclasses
import difflib
import os
import types
import typing
from pathlib import Path
from typing import Any, Literal, Union

import yaml

from .io import InputError

REPO_ROOT = Path(__file__).resolve().parents[2]
CONFIG_DIR = REPO_ROOT / "configs"


class ConfigError(InputError):
    """A configuration key or value that is not declared (one line, names the key)."""


def deep_merge(base: dict, override: dict) -> dict:
    out = copy.deepcopy(base)
    for k, v in override.items():
        if isinstance(v, dict) and isinstance(out.get(k), dict):
            out[k] = deep_merge(out[k], v)
        else:
            out[k] = copy.deepcopy(v)
    return out


# ------------------------------------------------------------------------------ the checker

def _sections() -> dict[str, type]:
    from .config_schema import SECTIONS
    return SECTIONS


def _hints(cls: type) -> dict[str, Any]:
    return typing.get_type_hints(cls)


def _open_keys(cls: type) -> set[str]:
    hook = getattr(cls, "__open_keys__", None)
    if not hook:
        return set()
    from . import config_schema
    return getattr(config_schema, hook)()


def declared_keys(cls: type | None = None, prefix: str = "") -> list[str]:
    """Every declared dotted key (sections and leaves), for suggestions and docs."""
    out: list[str] = []
    items = _sections().items() if cls is None else _hints(cls).items()
    for name, tp in items:
        key = f"{prefix}{name}"
        out.append(key)
        if dataclasses.is_dataclass(tp):
            out.extend(declared_keys(tp, key + "."))
    return out


def closest_key(key: str) -> str | None:
    """The declared key most like ``key``: the same leaf name first, then the whole path."""
    keys = declared_keys()
    head, _, rest = key.partition(".")
    sections = list(_sections())
    if head not in sections:
        near = difflib.get_close_matches(head, sections, n=1, cutoff=0.5)
        if near:
            return f"{near[0]}.{rest}" if f"{near[0]}.{rest}" in keys else near[0]
    leaf = key.rsplit(".", 1)[-1]
    same_leaf = [k for k in keys if k.rsplit(".", 1)[-1] == leaf]
    pool = same_leaf or keys
    best = difflib.get_close_matches(key, pool, n=1, cutoff=0.0 if same_leaf else 0.6)
    if not best and not same_leaf:
        leaves = {k.rsplit(".", 1)[-1]: k for k in keys}
        near = difflib.get_close_matches(leaf, list(leaves), n=1, cutoff=0.75)
        best = [leaves[near[0]]] if near else []
    return best[0] if best else None


def _unknown(key: str, where: str) -> ConfigError:
    hint = closest_key(key)
    return ConfigError(f"{where}unknown key {key}" + (f"; did you mean {hint}?" if hint else ""))


def _type_name(tp: Any) -> str:
    origin = typing.get_origin(tp)
    if origin in (Union, types.UnionType):
        return " or ".join(_type_name(a) for a in typing.get_args(tp))
    if origin is Literal:
        return " | ".join(repr(a) if isinstance(a, str) else str(a) for a in typing.get_args(tp))
    if origin is list:
        return f"a list of {_type_name(typing.get_args(tp)[0])}"
    if origin is dict:
        return "a mapping"
    if tp is type(None):
        return "null"
    if dataclasses.is_dataclass(tp):
        return "a section"
    return {bool: "true/false", int: "an integer", float: "a number", str: "a string"}.get(tp, str(tp))


def _plain(v: Any) -> str:
    return repr(v) if isinstance(v, str) else yaml.safe_dump(v, default_flow_style=True).strip().removesuffix("\n...")


# declared scalar type -> (accepted Python types, conversion); bool is never taken for a number
_SCALARS: dict[type, tuple[tuple[type, ...], Any]] = {
    bool: ((bool,), bool), int: ((int,), int), float: ((int, float), float), str: ((str,), str)}


class _Mismatch(Exception):
    pass


def check_value(value: Any, tp: Any, key: str, where: str = "") -> Any:
    """``value`` checked against ``tp``; returns it normalised (ints given for floats become
    floats).  Raises ConfigError naming ``key`` on a type mismatch or an unknown nested key."""
    try:
        return _check(value, tp, key, where)
    except _Mismatch:
        raise ConfigError(f"{where}{key}: expected {_type_name(tp)}, got {_plain(value)}") from None


def _check(value: Any, tp: Any, key: str, where: str) -> Any:
    origin = typing.get_origin(tp)
    if origin in (Union, types.UnionType):
        for arg in typing.get_args(tp):
            try:
                return _check(value, arg, key, where)
            except _Mismatch:
                continue
            except ConfigError:
                # the container matched and something inside it is wrong: that is the message
                if isinstance(value, dict) and (dataclasses.is_dataclass(arg) or typing.get_origin(arg) is dict):
                    raise
                if isinstance(value, list) and typing.get_origin(arg) is list:
                    raise
        raise _Mismatch
    if origin is Literal:
        if any(value == a and type(value) is type(a) for a in typing.get_args(tp)):
            return value
        raise _Mismatch
    if origin is list:
        if not isinstance(value, list):
            raise _Mismatch
        (item,) = typing.get_args(tp)
        return [check_value(v, item, f"{key}[{i}]", where) for i, v in enumerate(value)]
    if origin is dict:
        if not isinstance(value, dict):
            raise _Mismatch
        ktp, vtp = typing.get_args(tp)
        out = {}
        for k, v in value.items():
            if typing.get_origin(ktp) is Literal and k not in typing.get_args(ktp):
                hint = difflib.get_close_matches(str(k), [str(a) for a in typing.get_args(ktp)], n=1)
                raise ConfigError(f"{where}unknown key {key}.{k}" + (f"; did you mean {key}.{hint[0]}?" if hint else ""))
            out[k] = check_value(v, vtp, f"{key}.{k}", where)
        return out
    if dataclasses.is_dataclass(tp):
        if not isinstance(value, dict):
            raise _Mismatch
        return check_section(value, tp, key, where, complete=False)
    if tp is type(None):
        if value is None:
            return None
        raise _Mismatch
    if tp in _SCALARS:
        accepts, convert = _SCALARS[tp]
        if isinstance(value, accepts) and (tp is bool or not isinstance(value, bool)):
            return convert(value)
        raise _Mismatch
    if tp is Any:
        return value
    raise TypeError(f"config_schema: unsupported type {tp!r} at {key}")


def check_section(values: dict, cls: type, prefix: str, where: str = "", complete: bool = True) -> dict:
    """Check a mapping against a dataclass; with ``complete`` every declared key must be there."""
    hints = _hints(cls)
    extra_ok = None          # the open keys, read only when an undeclared key needs them (lightgbm's
    out = {}                 # table costs a second of imports in every stage and stamp check)
    for k, v in values.items():
        key = f"{prefix}.{k}" if prefix else str(k)
        if k in hints:
            out[k] = check_value(v, hints[k], key, where)
        elif k in (extra_ok := _open_keys(cls) if extra_ok is None else extra_ok):
            out[k] = v
        else:
            raise _unknown(key, where)
    if complete:
        missing = [k for k in hints if k not in values]
        if missing:
            raise ConfigError(f"{where}{prefix + '.' if prefix else ''}{missing[0]}: declared in "
                              "wbdc/config_schema.py but missing from the defaults")
    return out


def check_tree(cfg: dict, where: str = "", complete: bool = False) -> dict:
    """Check a whole config tree (a user file is partial: ``complete=False``)."""
    sections = _sections()
    out = {}
    for name, values in cfg.items():
        if name not in sections:
            raise _unknown(str(name), f"{where}{name}.yaml: " if complete else where)
        if not isinstance(values, dict):
            raise ConfigError(f"{where}{name}: expected a section (a mapping), got {_plain(values)}")
        at = f"{where}{name}.yaml: " if complete else where
        out[name] = check_section(values, sections[name], str(name), at, complete=complete)
    if complete:
        missing = [s for s in sections if s not in cfg]
        if missing:
            raise ConfigError(f"configs/{missing[0]}.yaml: missing (section declared in wbdc/config_schema.py)")
        for name in sections:
            _check_complete(out[name], sections[name], name)
    return out


def _check_complete(values: dict, cls: type, prefix: str) -> None:
    for k, tp in _hints(cls).items():
        if k not in values:
            raise ConfigError(f"{prefix}.{k}: declared in wbdc/config_schema.py but missing from "
                              f"configs/{prefix.split('.')[0]}.yaml")
        if dataclasses.is_dataclass(tp) and isinstance(values[k], dict):
            _check_complete(values[k], tp, f"{prefix}.{k}")


def declared_type(key: str) -> Any:
    """The declared type of a dotted key (ConfigError with a suggestion when unknown)."""
    parts = key.split(".")
    sections = _sections()
    if parts[0] not in sections:
        raise _unknown(key, "--set: ")
    tp: Any = sections[parts[0]]
    for i, p in enumerate(parts[1:], start=1):
        if dataclasses.is_dataclass(tp):
            hints = _hints(tp)
            if p in hints:
                tp = hints[p]
                continue
            if p in _open_keys(tp) and i == len(parts) - 1:
                return Any
            raise _unknown(key, "--set: ")
        base = [a for a in typing.get_args(tp) if typing.get_origin(a) is dict] if typing.get_origin(tp) in (Union, types.UnionType) else []
        if typing.get_origin(tp) is dict or base:
            dtp = tp if typing.get_origin(tp) is dict else base[0]
            ktp, vtp = typing.get_args(dtp)
            if typing.get_origin(ktp) is Literal and p not in typing.get_args(ktp):
                raise _unknown(key, "--set: ")
            tp = vtp
            continue
        raise ConfigError(f"--set {key}: {'.'.join(parts[:i])} is a value, not a section")
    return tp


# ------------------------------------------------------------------------------ loading

def _read_yaml(path: Path) -> Any:
    try:
        return yaml.safe_load(path.read_text(encoding="utf-8"))
    except FileNotFoundError:
        raise ConfigError(f"{path}: config file not found") from None
    except yaml.YAMLError as e:
        mark = getattr(e, "problem_mark", None)
        at = f": line {mark.line + 1}, column {mark.column + 1}" if mark else ""
        problem = getattr(e, "problem", None) or str(e).splitlines()[0]
        raise ConfigError(f"{path}{at}: not valid YAML ({problem})") from None


def load_defaults(config_dir: Path = CONFIG_DIR) -> dict:
    """The defaults of every declared section, checked complete and typo-free."""
    cfg: dict[str, Any] = {}
    for f in sorted(config_dir.glob("*.yaml")):
        values = _read_yaml(f) or {}
        if not isinstance(values, dict):
            raise ConfigError(f"{f}: expected a mapping of keys")
        cfg[f.stem] = values
    return check_tree(cfg, where=f"{config_dir}/", complete=True)


def default_config() -> dict:
    """A fresh copy of the checked defaults (tests and library callers that need a full config)."""
    return copy.deepcopy(_cached_defaults())


_DEFAULTS: dict | None = None


def _cached_defaults() -> dict:
    global _DEFAULTS
    if _DEFAULTS is None:
        _DEFAULTS = load_defaults()
    return _DEFAULTS


def apply_set(cfg: dict, assignment: str) -> None:
    """Apply one ``section.key=value`` override in place, checked against the declaration."""
    if "=" not in assignment:
        raise ConfigError(f"--set expects SECTION.KEY=VALUE, got {assignment!r}")
    key, raw = assignment.split("=", 1)
    key = key.strip()
    parts = key.split(".")
    if len(parts) < 2 or not all(parts):
        raise ConfigError(f"--set {key}: expected SECTION.KEY=VALUE (e.g. nn.train.epochs=2)")
    tp = declared_type(key)
    try:
        value = yaml.safe_load(raw)
    except yaml.YAMLError:
        value = raw
    value = check_value(value, tp, key, "--set: ")
    node = cfg
    for p in parts[:-1]:
        nxt = node.get(p)
        if not isinstance(nxt, dict):
            nxt = node[p] = {}
        node = nxt
    if isinstance(value, dict) and isinstance(node.get(parts[-1]), dict) and dataclasses.is_dataclass(tp):
        value = deep_merge(node[parts[-1]], value)     # a partial section keeps its other keys
    node[parts[-1]] = value


def data_dirs(value: Any, base: Path | None = None) -> list[str] | None:
    """``data.data_dir`` as a list of absolute folders (a string may be a comma list)."""
    if value is None or value == [] or value == "":
        return None
    items = value if isinstance(value, list) else [value]
    out: list[str] = []
    for item in items:
        for part in str(item).split(","):
            if part.strip():
                p = Path(part.strip()).expanduser()
                out.append(str((base / p if base and not p.is_absolute() else p).resolve()))
    return out or None


def add_common_args(parser: argparse.ArgumentParser) -> argparse.ArgumentParser:
    """Flags every stage shares: artifact root, config file, overrides and the data choice."""
    from .config_schema import Preset

    g = parser.add_argument_group("common")
    g.add_argument("--root", default=os.environ.get("WBDC_ROOT", str(REPO_ROOT)),
                   help="artifact root holding data/ features/ models/ ensemble/ submissions/ "
                        "(default: the repo, or $WBDC_ROOT)")
    g.add_argument("--config", default=None, help="YAML file deep-merged over configs/*.yaml")
    g.add_argument("--set", action="append", default=[], metavar="SECTION.KEY=VALUE",
                   help="override one config value (repeatable), e.g. --set nn.train.epochs=2")
    g.add_argument("--preset", default=None, choices=list(typing.get_args(Preset)),
                   help="synthetic world size when no --data-dir is given (default: data.preset)")
    g.add_argument("--seed", type=int, default=None, help="global seed (default: data.seed)")
    g.add_argument("--data-dir", action="append", default=None, metavar="DIR",
                   help="folder with the official CSVs (repeatable, or a comma list: rows of "
                        "every folder are used together; default: the synthetic world)")
    return parser


def resolve(args: argparse.Namespace) -> dict:
    cfg = copy.deepcopy(_cached_defaults())
    if args.config:
        path = Path(args.config)
        user = _read_yaml(path) or {}
        if not isinstance(user, dict):
            raise ConfigError(f"{path}: expected a mapping of sections")
        cfg = deep_merge(cfg, check_tree(user, where=f"{path}: "))
    for a in args.set:
        apply_set(cfg, a)
    data = cfg["data"]
    if args.preset is not None:
        data["preset"] = args.preset
    if args.seed is not None:
        data["seed"] = args.seed
    if args.data_dir:
        data["data_dir"] = args.data_dir
    data["data_dir"] = data_dirs(data["data_dir"])
    from .cluster import parse_address
    parse_address(cfg["cluster"]["address"])          # a bad address stops here, in one line
    return cfg


def resolve_argv(argv: list[str]) -> dict:
    """Resolve from a command line of common flags (tests and tools)."""
    p = argparse.ArgumentParser(allow_abbrev=False)
    add_common_args(p)
    return resolve(p.parse_args(argv))
