"""Date-sliding window statistics: for target day d, aggregates over days [d-w, d-1] only.

What is built is driven by ``features.window_stats`` in the config:

* ``keys``: named grouping keys, e.g. ``user: [userid]``, ``user_author: [userid, authorid]``,
  ``tag: [manual_tag_1]`` (first manual tag; missing / empty = its own id 0).
* ``blocks``: each block = key name, windows (ints or ``all``), stats, actions.  Stats:
  ``count`` (exposures), ``sum`` and ``rate`` per action, ``play_mean`` / ``stay_mean``
  (seconds), ``finish_mean`` (mean of play / (videoplayseconds * 1000)), ``active_days``.
  Column name: ``<key>_<window>_<stat>[_<action>]`` with window ``w3``, ``w7``, ``all``.
* Rates are smoothed towards the global rate of the whole history before d:
  ``(sum + a * p) / (count + a)`` with ``a = prior_strength``; a key with no history gets ``p``.
  Means fall back to the global mean before d; counts and sums of unseen keys are 0.
* ``<key>_cold`` (int8) flags keys with no row at all before d (one flag per key used).
* ``same_day``: ``<key>_today_count``, rows of the key on day d itself (exposures are known
  for the test day too; no label is read).
* ``distinct``: e.g. ``user_n_authors_w7``, distinct authors a user saw in the window.

Labels reach this module only as :class:`~wbdc.features.history.DailyTable` objects that were
cut with ``before(d)``; a window that asked for day d would raise.
"""
from __future__ import annotations

from dataclasses import dataclass

import numpy as np

from ..schema import ACTIONS
from .history import DailyTable, dense_codes, window_days

MAIN_ACTIONS = ("read_comment", "like", "click_avatar", "forward")
STATS = ("count", "sum", "rate", "play_mean", "stay_mean", "finish_mean", "active_days")
PER_ACTION = ("sum", "rate")
#: value columns of the daily tables besides ``count``
VALUE_COLUMNS = (*ACTIONS, "play", "stay", "finish")


def action_list(spec) -> tuple[str, ...]:
    if spec in (None, "all"):
        return ACTIONS
    if spec == "main":
        return MAIN_ACTIONS
    bad = [a for a in spec if a not in ACTIONS]
    if bad:
        raise ValueError(f"unknown actions {bad}; expected names from {ACTIONS}")
    return tuple(spec)


def window_label(w) -> str:
    return "all" if w == "all" else f"w{int(w)}"


@dataclass(frozen=True)
class Block:
    key: str
    windows: tuple
    stats: tuple[str, ...]
    actions: tuple[str, ...]

    def columns(self) -> list[str]:
        out = []
        for w in self.windows:
            for s in self.stats:
                if s in PER_ACTION:
                    out += [f"{self.key}_{window_label(w)}_{s}_{a}" for a in self.actions]
                else:
                    out.append(f"{self.key}_{window_label(w)}_{s}")
        return out

    def needs(self) -> set[str]:
        need = set()
        for s in self.stats:
            if s in PER_ACTION:
                need |= set(self.actions)
            elif s == "play_mean":
                need.add("play")
            elif s == "stay_mean":
                need.add("stay")
            elif s == "finish_mean":
                need.add("finish")
        return need


@dataclass(frozen=True)
class WindowSpec:
    keys: dict[str, tuple[str, ...]]
    blocks: tuple[Block, ...]
    prior_strength: float
    cold_flags: bool
    same_day: tuple[str, ...]
    distinct: tuple[tuple[str, str, str, tuple], ...]  # (name, key, of, windows)

    @classmethod
    def from_config(cls, cfg: dict) -> "WindowSpec":
        keys = {k: tuple(v) for k, v in cfg["keys"].items()}
        blocks = []
        for b in cfg["blocks"]:
            if b["key"] not in keys:
                raise ValueError(f"window_stats block key {b['key']!r} not in window_stats.keys")
            bad = [s for s in b["stats"] if s not in STATS]
            if bad:
                raise ValueError(f"unknown window stats {bad}; expected names from {STATS}")
            wins = tuple("all" if w == "all" else int(w) for w in b["windows"])
            blocks.append(Block(b["key"], wins, tuple(b["stats"]), action_list(b.get("actions"))))
        distinct = []
        for x in cfg.get("distinct") or []:
            for k in (x["key"], x["of"]):
                if k not in keys:
                    raise ValueError(f"window_stats.distinct key {k!r} not in window_stats.keys")
            distinct.append((x["name"], x["key"], x["of"],
                             tuple("all" if w == "all" else int(w) for w in x["windows"])))
        same = tuple(cfg.get("same_day") or ())
        for k in same:
            if k not in keys:
                raise ValueError(f"window_stats.same_day key {k!r} not in window_stats.keys")
        return cls(keys, tuple(blocks), float(cfg["prior_strength"]), bool(cfg.get("cold_flags", True)),
                   same, tuple(distinct))

    def used_keys(self) -> list[str]:
        names = [b.key for b in self.blocks] + list(self.same_day)
        for _, k, of, _ in self.distinct:
            names += [k, of, f"{k}__{of}"]
        return list(dict.fromkeys(n for n in names))

    def key_columns(self, name: str) -> tuple[str, ...]:
        if "__" in name:
            a, b = name.split("__")
            return self.keys[a] + self.keys[b]
        return self.keys[name]

    def dense_columns(self) -> list[str]:
        cols = []
        for b in self.blocks:
            cols += b.columns()
        if self.cold_flags:
            cols += [f"{k}_cold" for k in dict.fromkeys(b.key for b in self.blocks)]
        cols += [f"{k}_today_count" for k in self.same_day]
        for name, _, _, wins in self.distinct:
            cols += [f"{name}_{window_label(w)}" for w in wins]
        return cols


@dataclass
class Histories:
    """Dense key ids for every exposure row and the per-(key, day) label aggregates."""
    key_ids: dict[str, np.ndarray]       # per exposure row (actions rows, then test rows)
    n_keys: dict[str, int]
    tables: dict[str, DailyTable]        # per key name, plus "__global__"
    pair_parent: dict[str, np.ndarray]   # distinct: pair id -> key id


def user_keyed(spec: WindowSpec, name: str) -> bool:
    """Whether a key (or distinct pair) holds userid: its statistics then live inside one user
    bucket; every other key is aggregated over all rows and shared by the buckets."""
    return "userid" in spec.key_columns(name)


def check_bucketable(spec: WindowSpec) -> None:
    """The bucketed build shares the tables of keys without userid; it needs them to be one
    column (ids used as they are) and every distinct pair to involve userid."""
    for name in spec.used_keys():
        cols = spec.key_columns(name)
        if "__" in name:
            if "userid" not in cols:
                raise ValueError(f"features.window_stats.distinct: pair {name.replace('__', ' x ')} "
                                 "needs userid on one side (its counts are summed over user buckets)")
        elif "userid" not in cols and len(cols) != 1:
            raise ValueError(f"features.window_stats.keys.{name}: a key without userid must be one "
                             f"column (got {list(cols)})")


def shared_value_needs(spec: WindowSpec) -> dict[str, set[str]]:
    """Value columns each shared (non user-keyed) key's daily table needs."""
    need = {k: set() for k in spec.used_keys() if not user_keyed(spec, k)}
    for b in spec.blocks:
        if b.key in need:
            need[b.key] |= b.needs()
    return need


def build_histories(spec: WindowSpec, expo: dict[str, np.ndarray], n_actions: int,
                    labelled: dict[str, np.ndarray], shared: dict[str, DailyTable]) -> Histories:
    """Aggregate the labelled rows (the first ``n_actions`` exposure rows) per (key, day) for
    the user-keyed keys; take the other keys' tables (and ``__global__``) from ``shared``, where
    they were aggregated over every row, and use their raw column as key id.

    ``expo`` holds per-exposure id columns (userid, feedid, authorid, ... and date_) of a set of
    whole users (one bucket, or everyone); ``labelled`` the 7 actions, play, stay and finish of
    its first n_actions rows (days <= 14)."""
    day = expo["date_"][:n_actions]
    need: dict[str, set[str]] = {k: set() for k in spec.used_keys()}
    for b in spec.blocks:
        need[b.key] |= b.needs()
    key_ids, n_keys, tables = {}, {}, {}
    by_cols: dict[tuple[str, ...], list[str]] = {}   # names sharing the same key columns share a table
    for name in need:
        if not user_keyed(spec, name):
            (col,) = spec.key_columns(name)
            key_ids[name] = expo[col].astype(np.int64)
            tables[name] = shared[name]
            n_keys[name] = shared[name].n_keys
            continue
        by_cols.setdefault(spec.key_columns(name), []).append(name)
    for cols, names in by_cols.items():
        ids, n = dense_codes(*(expo[c] for c in cols))
        want = set().union(*(need[nm] for nm in names))
        table = DailyTable.aggregate(ids[:n_actions], day, n,
                                     {c: labelled[c] for c in VALUE_COLUMNS if c in want})
        for nm in names:
            key_ids[nm], n_keys[nm], tables[nm] = ids, n, table
    tables["__global__"] = shared["__global__"]
    parent = {}
    for _, k, of, _ in spec.distinct:
        pair = f"{k}__{of}"
        p = np.zeros(n_keys[pair], dtype=np.int64)
        p[key_ids[pair]] = key_ids[k]
        parent[pair] = p
    return Histories(key_ids, n_keys, tables, parent)


def global_priors(hist: DailyTable, d: int, first_day: int) -> dict[str, float]:
    """Global action rates and mean play / stay / finish over every day before d."""
    lo, hi = window_days(d, "all", first_day)
    n = float(hist.window_sum("count", lo, hi)[0]) if hi >= lo else 0.0
    out = {}
    for c in VALUE_COLUMNS:
        s = float(hist.window_sum(c, lo, hi)[0]) if hi >= lo else 0.0
        out[c] = s / n if n > 0 else 0.0
    return out


def distinct_per_key(pair: DailyTable, parent: np.ndarray, n_keys: int, lo: int, hi: int) -> np.ndarray:
    """Per key id: distinct pairs (key, of) present on days [lo, hi] (int64 [n_keys])."""
    if hi < lo:
        return np.zeros(n_keys, np.int64)
    seen = np.flatnonzero(pair.present(lo, hi))
    return np.bincount(parent[seen], minlength=n_keys)


def window_features(spec: WindowSpec, tables: dict[str, DailyTable], target_ids: dict[str, np.ndarray],
                    pair_parent: dict[str, np.ndarray], d: int, first_day: int = 1,
                    precomputed: dict[str, np.ndarray] | None = None) -> dict[str, np.ndarray]:
    """Window features for the rows of target day d.

    ``tables`` must already be cut with ``DailyTable.before(d)``; ``target_ids`` are the dense
    key ids of day d's rows (exposures only).  ``precomputed`` maps a same-day or distinct
    column to its per-key values when the rows at hand are one user bucket and the key is not
    user-keyed (e.g. ``feed_today_count``, ``author_n_users_w7``: counts over every bucket)."""
    precomputed = precomputed or {}
    for t in tables.values():
        if t.last_day >= d:
            raise ValueError(f"history for day {d} includes day {t.last_day}: cut it with before({d})")
    prior = global_priors(tables["__global__"], d, first_day)
    a = spec.prior_strength
    out: dict[str, np.ndarray] = {}
    f32 = np.float32
    for b in spec.blocks:
        t, ids = tables[b.key], target_ids[b.key]
        for w in b.windows:
            lo, hi = window_days(d, w, first_day)
            wl = window_label(w)
            empty = hi < lo
            cnt = np.zeros(t.n_keys) if empty else t.window_sum("count", lo, hi)
            cnt_r = cnt[ids]
            for s in b.stats:
                col = f"{b.key}_{wl}_{s}"
                if s == "count":
                    out[col] = cnt_r.astype(f32)
                elif s == "active_days":
                    out[col] = (np.zeros(len(ids)) if empty else t.active_days(lo, hi)[ids]).astype(f32)
                elif s in PER_ACTION:
                    for act in b.actions:
                        sm = np.zeros(len(ids)) if empty else t.window_sum(act, lo, hi)[ids]
                        if s == "sum":
                            out[f"{col}_{act}"] = sm.astype(f32)
                        else:
                            out[f"{col}_{act}"] = ((sm + a * prior[act]) / (cnt_r + a)).astype(f32)
                else:
                    src = {"play_mean": "play", "stay_mean": "stay", "finish_mean": "finish"}[s]
                    scale = 1000.0 if src in ("play", "stay") else 1.0
                    sm = np.zeros(len(ids)) if empty else t.window_sum(src, lo, hi)[ids]
                    with np.errstate(invalid="ignore", divide="ignore"):
                        mean = np.where(cnt_r > 0, sm / np.maximum(cnt_r, 1), prior[src])
                    out[col] = (mean / scale).astype(f32)
    if spec.cold_flags:
        lo, hi = window_days(d, "all", first_day)
        for k in dict.fromkeys(b.key for b in spec.blocks):
            t = tables[k]
            seen = np.zeros(t.n_keys, bool) if hi < lo else t.present(lo, hi)
            out[f"{k}_cold"] = (~seen[target_ids[k]]).astype(np.int8)
    for k in spec.same_day:
        ids, col = target_ids[k], f"{k}_today_count"
        if col in precomputed:
            out[col] = precomputed[col][ids].astype(f32)
            continue
        uniq, inv, cnt = np.unique(ids, return_inverse=True, return_counts=True)
        out[col] = cnt[inv].astype(f32)
    for name, k, of, wins in spec.distinct:
        pair = f"{k}__{of}"
        for w in wins:
            col = f"{name}_{window_label(w)}"
            if col in precomputed:
                vals = precomputed[col]
            else:
                lo, hi = window_days(d, w, first_day)
                vals = distinct_per_key(tables[pair], pair_parent[pair], tables[k].n_keys, lo, hi)
            out[col] = np.asarray(vals[target_ids[k]], dtype=f32)
    return out
