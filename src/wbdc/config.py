"""Configuration: YAML files with defaults that run, CLI overrides, resolved copy beside artifacts.

The defaults live in ``configs/<section>.yaml`` (one file per stage family: ``data``,
``features``, ``lgb``, ``nn``, ``blend``); they are merged into one dict keyed by section.
``--config FILE`` deep-merges a user file on top, and ``--set section.key=value`` (repeatable)
overrides single values; values are parsed as YAML scalars (``--set lgb.num_leaves=63``).
"""
from __future__ import annotations

import argparse
import copy
import os
from pathlib import Path
from typing import Any

import yaml

REPO_ROOT = Path(__file__).resolve().parents[2]
CONFIG_DIR = REPO_ROOT / "configs"


def deep_merge(base: dict, override: dict) -> dict:
    out = copy.deepcopy(base)
    for k, v in override.items():
        if isinstance(v, dict) and isinstance(out.get(k), dict):
            out[k] = deep_merge(out[k], v)
        else:
            out[k] = copy.deepcopy(v)
    return out


def load_defaults(config_dir: Path = CONFIG_DIR) -> dict:
    cfg: dict[str, Any] = {}
    for f in sorted(config_dir.glob("*.yaml")):
        cfg[f.stem] = yaml.safe_load(f.read_text()) or {}
    return cfg


def apply_set(cfg: dict, assignment: str) -> None:
    if "=" not in assignment:
        raise ValueError(f"--set expects section.key=value, got {assignment!r}")
    key, raw = assignment.split("=", 1)
    parts = key.strip().split(".")
    node = cfg
    for p in parts[:-1]:
        node = node.setdefault(p, {})
        if not isinstance(node, dict):
            raise ValueError(f"--set {key}: {p} is not a section")
    node[parts[-1]] = yaml.safe_load(raw)


def add_common_args(parser: argparse.ArgumentParser) -> argparse.ArgumentParser:
    """Flags every stage shares: artifact root, config file, overrides and the data choice."""
    g = parser.add_argument_group("common")
    g.add_argument("--root", default=os.environ.get("WBDC_ROOT", str(REPO_ROOT)),
                   help="artifact root holding data/ features/ models/ ensemble/ submissions/ "
                        "(default: the repo, or $WBDC_ROOT)")
    g.add_argument("--config", default=None, help="YAML file deep-merged over configs/*.yaml")
    g.add_argument("--set", action="append", default=[], metavar="SECTION.KEY=VALUE",
                   help="override one config value (repeatable)")
    g.add_argument("--preset", default=None, choices=["tiny", "small", "full"],
                   help="synthetic world size when no --data-dir is given (default: data.preset)")
    g.add_argument("--seed", type=int, default=None, help="global seed (default: data.seed)")
    g.add_argument("--data-dir", default=None,
                   help="folder with the official CSVs (default: the synthetic world)")
    return parser


def resolve(args: argparse.Namespace) -> dict:
    cfg = load_defaults()
    if args.config:
        user = yaml.safe_load(Path(args.config).read_text()) or {}
        cfg = deep_merge(cfg, user)
    for a in args.set:
        apply_set(cfg, a)
    data = cfg.setdefault("data", {})
    if args.preset is not None:
        data["preset"] = args.preset
    if args.seed is not None:
        data["seed"] = args.seed
    if args.data_dir is not None:
        data["data_dir"] = str(Path(args.data_dir).resolve())
    return cfg
