"""LightGBM single-task baselines: one binary model per action over the feature tables.

Offline, each action's model trains on days ``[first_day..13]`` and early-stops on the
project's uAUC of that action on day 14 (a custom ``feval`` over a user grouping computed once).
The feval also records the uAUC of each of the two shared user halves (``wbdc.metrics``) every
round; each half picks its own best iteration and the reported day-14 score is cross-fitted:
the predictions chosen on one half scored on the other, both ways, averaged.
Online, it is refit on days ``[first_day..14]`` for the offline best iteration scaled up for the
extra day and predicts day 15.

Negative down-sampling (per action, seeded).  Every positive is kept and each negative with
probability ``rate``.  Uniform down-sampling of negatives multiplies the odds the model learns
by ``rate``: ``logit(p_model) = logit(p_true) + log(rate)``, the same constant for every row.
That is a monotone transform, so each user's ordering of their rows -- all that uAUC reads --
is unchanged in expectation; ``calibrate`` inverts it, ``p / (p + (1 - p) / rate)``, so the
written probabilities keep the full data's base rate (useful for blending and for reading
them as probabilities).  One seeded uniform draw ``u`` per row is shared by all actions and
action ``a`` keeps the negatives with ``u < rate_a`` (nested samples): each action's sample is
still a uniform sample of its negatives, and the union over actions -- the rows that have to be
read at all -- is only ``max(rate)`` of the negatives plus the positives.

Training memory: no float matrix of all rows is built.  The union of the kept rows of all
actions is handed to LightGBM as a ``Sequence`` over the feature store (:class:`StoreRows`: one
block per day, read from the day's parts and put in the day's row order when LightGBM asks for
it); the rows LightGBM samples for its bin bounds are binned alone (:func:`sample_reference`)
and their bin mappers kept in a one-row reference Dataset (:func:`bin_reference`).  Each action then bins only the rows it keeps
against that reference (:func:`action_dataset`): the same bins and the same binned rows as a
``subset`` of the full Dataset, but only one action's rows are held at a time (the online refit
likewise, with day 14's sampled rows appended).  Day 14 is binned against the reference from its
parts (the validation set); once every action is trained it is read again part by part and each
part predicted by every action's model (one pass, not one per action); the test rows likewise.  Memory: one action's
binned rows (one to four bytes per feature and row), day 14 binned, and one decoded block (a
day's sampled rows are cut into pieces of ``StoreRows.PIECE_ROWS`` rows, each read from the row
groups that can hold it, converting only the rows kept: ``FeatureStore.gather``); the blocks are
kept in memory instead when they fit ``cache_bytes`` (a quarter of ``data.memory_gb`` in the
stage), so small data is read once; otherwise each action reads its rows from the store again.
The models equal those of the float matrix of the same rows, tree for tree (tests).

Binning once (``lgb.bin_once``, :func:`bins_once`): where the binned union of every action's rows
(days first..13, then day 14's share for the refit; about a byte per row and feature) fits what
the memory budget leaves beside the stage's estimate, the union is read from the store and binned
once (:func:`binned_union`) and each action's Dataset, offline and online, is cut from it
(``Dataset.subset``, :func:`_action_subset`): the same Datasets and models, the store read once
instead of once per action and fit (at the final round's size, 8.85M union rows against 5M rows
per action, read 14 times).  The rows LightGBM samples for the bin bounds are decoded once too
(:func:`sample_reference`).
"""
from __future__ import annotations

import math
import os
import sys
from dataclasses import dataclass, replace
from pathlib import Path
from typing import Iterable, Iterator, Mapping, Sequence

import lightgbm as lgb
import numpy as np
import pandas as pd
import pyarrow as pa
from tqdm.auto import tqdm

from .features.store import pack_actions, unpack_labels
from .io import InputError, atomic_path, write_csv, write_parquet
from .metrics import (HALF_PRED_FILES, HALVES, Halves, UserGroups, crossfit_scores, group_by_user,
                      mean_predictions, seed_curve, split_halves, uauc, uauc_by_half, weighted_uauc)
from .schema import ACTIONS, LAST_TRAIN_DAY, TEST_DAY

VALID_DAY = LAST_TRAIN_DAY            # offline validation day (14)
ROUND_SCALINGS = ("rows", "days")
ONLINE_PREDICTS = ("refit", "offline", "both")   # lgb.online_predict: which trees predict the test day


# ------------------------------------------------------------------------------ settings

@dataclass(frozen=True)
class LgbSettings:
    """The ``lgb`` config section, validated."""

    params: dict
    neg_rate: dict[str, float]
    drop: tuple[str, ...] = ()
    categorical: tuple[str, ...] = ()
    calibrate: bool = True
    round_scaling: str = "rows"
    num_boost_round: int = 2000
    early_stopping_rounds: int = 50
    dask_eval_every: int = 25      # cluster runs: rounds between day-14 grid points (lgb_dask)
    first_day: int | None = None
    seed: int = 2021
    halves_seed: int = 2021        # data.seed: the day-14 user halves every model shares
    max_train_rows: int | None = None   # an action's offline sample at most this many rows
    eval_rows: int | None = None   # day-14 uAUC every ceil(day-14 rows / eval_rows) rounds
    seeds: tuple[int, ...] = ()    # lgb.seeds: one model per seed, predictions averaged
    bin_once: str | bool = "auto"  # lgb.bin_once: every action's rows binned once (bins_once)
    online_predict: str = "refit"  # lgb.online_predict: refit, offline or both (test_predictions)

    @property
    def fit_seeds(self) -> tuple[int, ...]:
        """The seeds of the models to fit: ``lgb.seeds``, else the one ``seed``."""
        return self.seeds or (self.seed,)

    def with_seed(self, seed: int) -> "LgbSettings":
        """These settings for one seed of the bag (LightGBM's seed and the negative sampling)."""
        return replace(self, seed=int(seed), params={**self.params, "seed": int(seed)})

    @classmethod
    def from_config(cls, cfg: dict) -> "LgbSettings":
        """From the resolved config (sections ``lgb`` and ``data``)."""
        sec = cfg["lgb"]
        seed = sec["params"]["seed"]
        seed = int(cfg["data"]["seed"] if seed is None else seed)
        params = {k: v for k, v in dict(sec["params"]).items() if v is not None}
        params["seed"] = seed
        params.setdefault("num_threads", os.cpu_count() or 1)
        rates = {a: float(sec["neg_rate"][a]) for a in ACTIONS}
        bad = {a: r for a, r in rates.items() if not 0.0 < r <= 1.0}
        if bad:
            raise ValueError(f"lgb.neg_rate must be in (0, 1], got {bad}")
        scaling = str(sec["round_scaling"])
        if scaling not in ROUND_SCALINGS:
            raise ValueError(f"lgb.round_scaling must be one of {ROUND_SCALINGS}, got {scaling!r}")
        first = sec["first_day"]
        every = int(sec.get("dask_eval_every", 25))
        if every < 1:
            raise ValueError(f"lgb.dask_eval_every must be >= 1, got {every}")
        cap = sec.get("max_train_rows")
        if cap is not None and int(cap) < 1:
            raise ValueError(f"lgb.max_train_rows must be >= 1 or null, got {cap}")
        eval_rows = sec.get("eval_rows")
        if eval_rows is not None and int(eval_rows) < 1:
            raise ValueError(f"lgb.eval_rows must be >= 1 or null, got {eval_rows}")
        bin_once = sec.get("bin_once", "auto")
        if not (isinstance(bin_once, bool) or bin_once == "auto"):
            raise ValueError(f"lgb.bin_once must be auto, true or false, got {bin_once!r}")
        online_predict = str(sec.get("online_predict", "refit"))
        if online_predict not in ONLINE_PREDICTS:
            raise ValueError(f"lgb.online_predict must be one of {', '.join(ONLINE_PREDICTS)}, "
                             f"got {online_predict!r}")
        seeds = sec.get("seeds")
        if seeds is not None:
            if not isinstance(seeds, (list, tuple)) or not seeds or \
                    not all(isinstance(x, int) and not isinstance(x, bool) for x in seeds):
                raise ValueError(f"lgb.seeds must be null or a non-empty list of integers, got {seeds!r}")
            if len(set(seeds)) != len(seeds):
                raise ValueError(f"lgb.seeds={list(seeds)}: the seeds must differ")
        return cls(params=params, neg_rate=rates, drop=tuple(sec["drop"]),
                   categorical=tuple(sec["categorical"]), calibrate=bool(sec["calibrate"]),
                   round_scaling=scaling, num_boost_round=int(sec["num_boost_round"]),
                   early_stopping_rounds=int(sec["early_stopping_rounds"]), dask_eval_every=every,
                   first_day=None if first is None else int(first), seed=seed,
                   halves_seed=int(cfg["data"]["seed"]),
                   max_train_rows=None if cap is None else int(cap),
                   eval_rows=None if eval_rows is None else int(eval_rows),
                   seeds=tuple(int(x) for x in seeds) if seeds else (), bin_once=bin_once,
                   online_predict=online_predict)


def parse_actions(spec: str | Sequence[str] | None) -> list[str]:
    """Action subset in ACTIONS order from a list or a comma-separated string (None = all)."""
    if spec is None:
        return list(ACTIONS)
    names = [s.strip() for s in spec.split(",")] if isinstance(spec, str) else list(spec)
    names = [n for n in names if n]
    bad = [n for n in names if n not in ACTIONS]
    if bad or not names:
        raise ValueError(f"unknown actions {bad or names}; expected names from {list(ACTIONS)}")
    return [a for a in ACTIONS if a in names]


# ------------------------------------------------------------------------------ features

@dataclass(frozen=True)
class FeatureSpec:
    names: list[str]
    categorical: list[str]


def select_features(dense: Sequence[str], categorical: Sequence[str], keys: Sequence[str],
                    drop: Iterable[str] = (), as_categorical: Iterable[str] = ()) -> FeatureSpec:
    """The model's columns from the manifest roles.

    Dense columns and categorical ids are used, minus ``drop`` and minus pure keys (date_);
    the ids in ``as_categorical`` become LightGBM categorical features, other ids plain numbers.
    """
    drop = set(drop)
    pure_keys = set(keys) - set(categorical) - set(dense)
    names = [c for c in dict.fromkeys([*categorical, *dense]) if c not in drop and c not in pure_keys]
    missing = [c for c in as_categorical if c not in categorical and c not in drop]
    if missing:
        raise ValueError(f"lgb.categorical lists {missing}, which the features manifest does not "
                         f"mark as categorical (categorical columns: {list(categorical)})")
    cats = [c for c in names if c in set(as_categorical)]
    if not names:
        raise ValueError("no feature columns left after lgb.drop")
    return FeatureSpec(names, cats)


def feature_spec(fs, settings: LgbSettings) -> FeatureSpec:
    return select_features(fs.columns("dense"), fs.columns("categorical"), fs.columns("key"),
                           settings.drop, settings.categorical)


# ------------------------------------------------------------------------------ sampling

def row_uniforms(day: int, n: int, seed: int) -> np.ndarray:
    """One seeded uniform per row of ``day``; depends only on (seed, day, n)."""
    return np.random.default_rng([int(seed), int(day)]).random(n, dtype=np.float32)


def keep_mask(labels: np.ndarray, u: np.ndarray, rate: float) -> np.ndarray:
    """Rows kept for one action: every positive, and the negatives with ``u < rate``."""
    labels = np.asarray(labels)
    if rate >= 1.0:
        return np.ones(len(labels), dtype=bool)
    return (labels != 0) | (u < rate)


#: the lowest negative rate ``lgb.max_train_rows`` sets (when an action's positives alone
#: exceed the cap, it keeps them all and this fraction of its negatives)
MIN_CAPPED_RATE = 1e-3


def label_counts(bits_by_day: Mapping[int, np.ndarray]) -> tuple[np.ndarray, int]:
    """Positives per action (ACTIONS order) and the number of rows, over label bytes (one per
    row, bit i = ``ACTIONS[i]``) of some days."""
    hist = np.zeros(256, np.int64)
    for bits in bits_by_day.values():
        hist += np.bincount(np.asarray(bits, np.uint8), minlength=256)
    values = np.arange(256)
    pos = np.array([int(hist[(values >> i) & 1 == 1].sum()) for i in range(len(ACTIONS))], np.int64)
    return pos, int(hist.sum())


def capped_rates(rates: Mapping[str, float], positives: Sequence[int], n_rows: int,
                 max_rows: int | None) -> dict[str, float]:
    """``rates`` with each action's negative rate lowered, where needed, so that its expected
    sample (every positive and ``rate`` of the negatives) holds at most ``max_rows`` rows.

    The training rows grow with the data while what one more negative teaches does not: at the
    final round's size a 0.2 rate keeps over 13M rows of read_comment, and LightGBM's time per
    round and its binned rows grow with them.  The cap keeps the sample size, not the rate, fixed
    as the data grows (below the cap nothing changes).  Rates are rounded down to 6 decimals;
    the positives are always kept (at least :data:`MIN_CAPPED_RATE` of the negatives)."""
    out = {a: float(r) for a, r in rates.items()}
    if max_rows is None:
        return out
    for i, a in enumerate(ACTIONS):
        if a not in out:
            continue
        pos = int(positives[i])
        neg = int(n_rows) - pos
        if neg <= 0 or pos + out[a] * neg <= max_rows:
            continue
        r = math.floor(max(0.0, (max_rows - pos) / neg) * 1e6) / 1e6
        out[a] = min(out[a], max(MIN_CAPPED_RATE, r))
    return out


def cap_settings(settings: "LgbSettings", bits_by_day: Mapping[int, np.ndarray]) -> "LgbSettings":
    """``settings`` with ``neg_rate`` capped by ``max_train_rows`` over the offline training
    days' labels (:func:`capped_rates`); the online refit and the calibration use the same rates."""
    if settings.max_train_rows is None:
        return settings
    pos, n = label_counts(bits_by_day)
    return replace(settings, neg_rate=capped_rates(settings.neg_rate, pos, n, settings.max_train_rows))


def capped_note(before: "LgbSettings", after: "LgbSettings", actions: Sequence[str]) -> str | None:
    """One line naming the rates ``lgb.max_train_rows`` lowered among ``actions`` (None: none)."""
    low = [f"{a} {before.neg_rate[a]:g} -> {after.neg_rate[a]:g}" for a in actions
           if after.neg_rate[a] < before.neg_rate[a]]
    if not low:
        return None
    return f"lgb.max_train_rows {after.max_train_rows:,}: neg_rate lowered for " + ", ".join(low)


def eval_period(n_valid: int, eval_rows: int | None) -> int:
    """Rounds between two day-14 uAUC evaluations (``lgb.eval_rows``): 1 while day 14 has at most
    ``eval_rows`` rows (or ``eval_rows`` is None), else ``ceil(n_valid / eval_rows)``."""
    if eval_rows is None or n_valid <= eval_rows:
        return 1
    return -(-int(n_valid) // int(eval_rows))


def calibrate(p: np.ndarray, rate: float) -> np.ndarray:
    """Undo negative down-sampling at ``rate``: odds * rate, i.e. ``p / (p + (1 - p) / rate)``."""
    p = np.asarray(p, dtype=np.float64)
    if rate >= 1.0:
        return p
    return p / (p + (1.0 - p) / rate)


def scale_rounds(best_iteration: int, n_offline: float, n_online: float) -> int:
    """Online rounds for a refit on more data: ``round(best * n_online / n_offline)``, >= 1.

    The refit sees ``n_online / n_offline`` times the rows, so at the same learning rate it needs
    proportionally more rounds to take the same number of steps per row (the usual rule when a
    model is refit on train + validation with the validation's best iteration count).
    """
    if best_iteration < 1:
        raise ValueError(f"best_iteration must be >= 1, got {best_iteration}")
    if n_offline <= 0 or n_online < n_offline:
        raise ValueError(f"need 0 < n_offline <= n_online, got {n_offline}, {n_online}")
    return max(1, int(round(best_iteration * n_online / n_offline)))


# ------------------------------------------------------------------------------ loading

def day_parts(fs, d: int, columns: Sequence[str], batch_rows: int | None = None) -> Iterator[pd.DataFrame]:
    """Day ``d`` part by part (or in batches of ``batch_rows`` rows of each part) with the ``row``
    key (``FeatureStore.iter_day``); a store without parts (the test fakes) gives the whole day
    as one part."""
    if hasattr(fs, "iter_day"):
        yield from fs.iter_day(d, columns=list(columns), batch_rows=batch_rows)
    else:
        df = fs.load_day(d, columns=list(columns))
        yield df.assign(row=np.arange(len(df), dtype=np.int64))


def day_rows(fs, d: int, first: int, last: int, columns: Sequence[str],
             batch_rows: int | None = None) -> Iterator[pd.DataFrame]:
    """Batches holding (at least) the rows of day ``d`` at positions ``first..last``, with the
    ``row`` key: the row groups that can hold them (``FeatureStore.iter_rows``), or the whole
    day from a store that cannot say (:func:`day_parts`)."""
    if hasattr(fs, "iter_rows"):
        yield from fs.iter_rows(d, first, last, list(columns), *([batch_rows] if batch_rows else []))
    else:
        yield from day_parts(fs, d, columns, batch_rows)


@dataclass(frozen=True)
class Block:
    """Rows of one day read together: ``part`` None = the day's rows ``keep`` (ascending row
    positions) in the day's order; else every row of that part, in the part's order."""
    day: int
    rows: np.ndarray                 # day row positions, in the block's order
    part: int | None = None


class StoreRows(lgb.Sequence):
    """Feature rows of the store as a LightGBM ``Sequence``: blocks (one day's sampled rows, or
    one part of a day) are read as float32 matrices when LightGBM asks for them, so no matrix of
    all rows is ever held.  LightGBM reads a Sequence twice, in order (a row sample for the bin
    bounds, then every row in batches), so one block is decoded at a time; the blocks are kept
    instead when all of them fit in ``cache_bytes`` (then nothing is read twice)."""

    batch_size = 65_536
    READ_ROWS = 65_536           # rows of a part decoded at a time when gathering a day's sample
    #: a day's sampled rows are decoded this many at a time (consecutive pieces of the day's
    #: block, each read from the row groups that hold it): about 200 MB at 192 features, where a
    #: whole day's sample of the final round's size is about 0.9 GB
    PIECE_ROWS = 262_144

    def __init__(self, fs, features: Sequence[str], blocks: list[Block], cache_bytes: float = 0.0):
        self.fs, self.features = fs, list(features)
        self.blocks = [p for b in blocks for p in self._pieces(b)]
        self.offsets = np.cumsum([0, *(len(b.rows) for b in self.blocks)])
        self.keep_all = self.offsets[-1] * len(self.features) * 4 <= cache_bytes
        self._cache: dict[int, np.ndarray] = {}
        self.on_read = None              # progress callback: rows of each block decoded

    def _pieces(self, b: Block) -> list[Block]:
        """A day block cut into consecutive pieces of at most ``PIECE_ROWS`` rows (the same rows
        in the same order, so LightGBM sees the same sequence); parts stay whole."""
        n, k = len(b.rows), max(1, int(self.PIECE_ROWS))
        if b.part is not None or n <= k:
            return [b]
        return [Block(b.day, b.rows[i:i + k]) for i in range(0, n, k)]

    def __len__(self) -> int:
        return int(self.offsets[-1])

    def take(self, idx: np.ndarray) -> "StoreRows":
        """The rows ``idx`` (ascending positions in this sequence) as a new sequence of the same
        days' blocks, reading through this one's decoded blocks while it keeps them all."""
        idx = np.asarray(idx, np.int64)
        cuts = np.searchsorted(idx, self.offsets)
        blocks, parent = [], []
        for i, b in enumerate(self.blocks):
            local = idx[cuts[i]:cuts[i + 1]] - self.offsets[i]
            if b.part is not None:
                raise ValueError("take() cuts day blocks (sampled training rows), not parts")
            if len(local):
                blocks.append(Block(b.day, b.rows[local]))
                parent.append((i, local))
        child = StoreRows(self.fs, self.features, blocks, 0.0)
        child._parent = (self, parent)
        return child

    _parent = None

    def read(self, i: int) -> np.ndarray:
        """Block ``i`` as a float32 matrix, rows in the block's order."""
        if i in self._cache:
            return self._cache[i]
        if self._parent is not None and self._parent[0].keep_all:
            src, (pi, local) = self._parent[0], self._parent[1][i]
            X = src.read(pi)[local]
            if self.on_read is not None:
                self.on_read(len(X))
            return X
        b = self.blocks[i]
        if hasattr(self.fs, "gather"):
            X = self.fs.gather(b.day, b.rows, self.features, part=b.part, batch_rows=self.READ_ROWS)
        elif b.part is not None:
            # a whole part (day 14, the test rows), a batch at a time into its place: the part's
            # table is never held whole (at the final round's size a part is ~1M rows)
            X = np.empty((len(b.rows), len(self.features)), np.float32)
            at = 0
            for df in self.fs.iter_part(b.day, b.part, self.features, batch_rows=self.READ_ROWS):
                k = len(df)
                if at + k > len(X) or not np.array_equal(df["row"].to_numpy(np.int64), b.rows[at:at + k]):
                    raise InputError(f"day {b.day} part {b.part}: rows differ from the part's listing")
                X[at:at + k] = df[self.features].to_numpy(np.float32)
                at += k
                del df
            if at != len(X):
                raise InputError(f"day {b.day} part {b.part}: {at} of {len(X)} rows read")
        else:
            # the sampled rows written straight into their place, a batch of a part at a time:
            # no decoded part, no concatenation, no reordering copy (the block is the only matrix)
            n = len(b.rows)
            if n > 1 and not (np.diff(b.rows) > 0).all():
                raise ValueError("a day block's rows must be ascending day positions")
            X = np.empty((n, len(self.features)), np.float32)
            found = 0
            first, last = (int(b.rows[0]), int(b.rows[-1])) if n else (0, -1)
            for df in day_rows(self.fs, b.day, first, last, self.features, batch_rows=self.READ_ROWS):
                r = df["row"].to_numpy(np.int64)
                pos = np.searchsorted(b.rows, r)
                hit = pos < n
                hit[hit] = b.rows[pos[hit]] == r[hit]
                if hit.any():
                    X[pos[hit]] = df[self.features].to_numpy(np.float32)[hit]
                    found += int(hit.sum())
                del df
            if found != n:
                raise InputError(f"day {b.day}: {found} of the {n} sampled rows found in the store")
        if not self.keep_all:
            self._cache.clear()
        self._cache[i] = X
        if self.on_read is not None:
            self.on_read(len(X))
        return X

    def __getitem__(self, idx):
        if isinstance(idx, slice):
            start, stop, step = idx.indices(len(self))
            if step != 1:
                raise IndexError("StoreRows supports contiguous slices only")
            out, i = [], int(np.searchsorted(self.offsets, start, side="right")) - 1
            while start < stop:
                lo = start - self.offsets[i]
                hi = min(stop, self.offsets[i + 1]) - self.offsets[i]
                out.append(self.read(i)[lo:hi])
                start = self.offsets[i] + hi
                i += 1
            return np.concatenate(out) if len(out) != 1 else out[0]
        i = int(np.searchsorted(self.offsets, int(idx), side="right")) - 1
        # single rows feed LightGBM's bin sample, which must be float64 (batches may be float32)
        return self.read(i)[int(idx) - self.offsets[i]].astype(np.float64)

    def predict(self, booster: lgb.Booster, iterations: Sequence[int]) -> dict[int, np.ndarray]:
        """Raw predictions of every row at each of ``iterations``, reading each block once."""
        return self.predict_many({None: (booster, iterations)})[None]

    def predict_many(self, models: Mapping) -> dict:
        """:meth:`predict` of several boosters in one pass over the rows, ``{key: (booster,
        iterations)}`` -> ``{key: {iteration: raw predictions}}``: each block is decoded once for
        all of them (every action's model on day 14 or the test rows: at the final round's size a
        pass over day 14 is over a minute of reading)."""
        out = {k: {int(it): np.empty(len(self), np.float64) for it in its} for k, (_, its) in models.items()}
        for i in range(len(self.blocks)):
            X = self.read(i)
            lo, hi = self.offsets[i], self.offsets[i + 1]
            for k, (booster, _) in models.items():
                for it, dst in out[k].items():
                    dst[lo:hi] = booster.predict(X, num_iteration=it)
            del X
        self.release()
        return out

    def release(self) -> None:
        """Drop the decoded block kept from the last read (a whole part of day 14 or of the test
        rows: ~0.7 GB at the final round's size), unless every block is kept: called after each
        pass, so it is not held while the next Dataset is binned or trained."""
        if not self.keep_all:
            self._cache.clear()

    def forget(self) -> None:
        """Stop keeping the decoded blocks and drop them (no further pass will read them)."""
        self.keep_all = False
        self._cache.clear()

    def day_order(self) -> np.ndarray:
        """Position in the day of each row (single-day sequences)."""
        return np.concatenate([b.rows for b in self.blocks]) if self.blocks else np.zeros(0, np.int64)


@dataclass
class TrainRows:
    """Rows of some days: features (a :class:`StoreRows` sequence or a float32 matrix), labels
    (int8, ACTIONS order), day, uniforms."""

    X: object
    labels: np.ndarray
    day: np.ndarray
    u: np.ndarray

    def __len__(self) -> int:
        return len(self.day)


def _label_bits(fs, days: Sequence[int]) -> dict[int, np.ndarray]:
    """The labels of ``days`` as one byte per row (bit i = ``ACTIONS[i]``), each day in its row
    order, from one batched pass over the prepared actions (``FeatureStore.packed_labels``): no
    table of every day's labels is held (``load_labels`` keeps one, about 1.5 GB at the final
    round's size, for the whole run).  A store without ``packed_labels`` packs ``load_labels``."""
    days = [int(d) for d in days]
    if hasattr(fs, "packed_labels"):
        return fs.packed_labels(days)
    return {d: pack_actions(pa.Table.from_pandas(fs.load_labels(d)[list(ACTIONS)], preserve_index=False))
            for d in days}


def _unpack(bits: np.ndarray) -> np.ndarray:
    """One byte per row -> the int8 label matrix (rows x 7, ACTIONS order)."""
    return unpack_labels(bits).view(np.int8)


def _label_matrix(fs, d: int) -> np.ndarray:
    return _unpack(_label_bits(fs, [d])[int(d)])


def union_mask(labels: np.ndarray, u: np.ndarray, rates: Mapping[str, float],
               actions: Sequence[str]) -> np.ndarray:
    """Rows needed by at least one of ``actions``."""
    keep = np.zeros(len(u), dtype=bool)
    for a in actions:
        keep |= keep_mask(labels[:, ACTIONS.index(a)], u, rates[a])
    return keep


def load_rows(fs, days: Sequence[int], features: Sequence[str], settings: LgbSettings,
              sample: bool = True, cache_bytes: float = 0.0,
              bits: dict[int, np.ndarray] | None = None) -> TrainRows:
    """The rows of ``days`` some action keeps (every row without ``sample``), in (day, row)
    order, as a :class:`StoreRows` sequence (one block per day) with their labels in memory.

    The sample is the union over all 7 actions even when fewer are trained, so the rows (and
    hence the bins and every model) of a one-action run equal those of the full run.
    ``bits``: the days' label bytes when already read (:func:`_label_bits`).
    """
    blocks, labels, day, us = [], [], [], []
    bits = dict(_label_bits(fs, days) if bits is None else bits)
    for d in days:
        lab = _unpack(bits.pop(int(d)))
        u = row_uniforms(d, len(lab), settings.seed)
        idx = np.flatnonzero(union_mask(lab, u, settings.neg_rate, ACTIONS)) if sample else np.arange(len(lab))
        blocks.append(Block(d, idx))
        labels.append(lab[idx])
        day.append(np.full(len(idx), d, np.int8))
        us.append(u[idx])
    cat = (lambda xs, shape, dt: np.concatenate(xs) if xs else np.zeros(shape, dt))
    return TrainRows(StoreRows(fs, features, blocks, cache_bytes), cat(labels, (0, len(ACTIONS)), np.int8),
                     cat(day, 0, np.int8), cat(us, 0, np.float32))


def load_day_rows(fs, d: int, features: Sequence[str], settings: LgbSettings,
                  cache_bytes: float = 0.0) -> tuple[TrainRows, pd.DataFrame]:
    """Every row of day ``d`` in part order (one block per part) with labels (days <= 14) and
    keys; ``X.day_order()`` maps each row to its position in the day."""
    has_parts = hasattr(fs, "read_part")
    keys, blocks = [], []
    for p, df in enumerate(day_parts(fs, d, [])):
        blocks.append(Block(d, df["row"].to_numpy().astype(np.int64), part=p if has_parts else None))
        keys.append(df[["userid", "feedid"]])
    X = StoreRows(fs, features, blocks, cache_bytes)
    order = X.day_order()
    if d <= LAST_TRAIN_DAY:
        lab = _label_matrix(fs, d)
        if len(lab) != len(order):
            raise InputError(f"day {d}: {len(lab)} label rows but {len(order)} feature rows")
        lab = lab[order]
    else:
        lab = np.zeros((len(order), len(ACTIONS)), np.int8)
    u = row_uniforms(d, len(order), settings.seed)[order]
    return (TrainRows(X, lab, np.full(len(order), d, np.int8), u),
            pd.concat(keys, ignore_index=True) if keys else pd.DataFrame(columns=["userid", "feedid"]))


# ------------------------------------------------------------------------------ training

class UAUCEval:
    """``feval`` for lightgbm: the uAUC of one action on the validation rows.

    The user grouping is computed once and the labels rearranged once; each round only
    scores the current predictions (rank-based, so raw or sigmoid scores give the same value).
    With ``halves`` it also reports the uAUC of each half of the users (``uauc_A``,
    ``uauc_B``; each user's AUC is computed once, so this costs nothing extra); early stopping
    reads the first value only, the uAUC over all users.

    ``every`` > 1 scores rounds 1, 1 + every, 1 + 2 x every, ... only (``lgb.eval_rows``) and
    gives NaN for the others: early stopping never counts a NaN as an improvement, and the best
    iterations (the first maximum of the scored values) are scored rounds.
    """

    def __init__(self, labels: np.ndarray, groups: UserGroups, halves: Halves | None = None,
                 every: int = 1):
        self.labels = np.asarray(labels)
        self.groups = groups
        self.halves = halves
        self.every = max(1, int(every))
        self.calls = 0

    def __call__(self, preds: np.ndarray, eval_data):
        self.calls += 1
        skip = (self.calls - 1) % self.every != 0
        if self.halves is None:
            return "uauc", (math.nan if skip else uauc(self.labels, preds, groups=self.groups)), True
        s = ({"all": math.nan, "A": math.nan, "B": math.nan} if skip
             else uauc_by_half(self.labels, preds, self.halves))
        return [("uauc", s["all"], True), ("uauc_A", s["A"], True), ("uauc_B", s["B"], True)]


class RoundProgress:
    """lightgbm callback: a tqdm bar over rounds showing the current and best validation value."""

    order = 15  # before early stopping (30), so the last round is shown too

    def __init__(self, total: int, desc: str, enabled: bool = True):
        self.bar = tqdm(total=total, desc=desc, unit="round", disable=not enabled,
                        file=sys.stderr, leave=True, dynamic_ncols=True)
        self.best = -math.inf

    def __call__(self, env) -> None:
        self.bar.update(1)
        if env.evaluation_result_list:
            _, name, value, higher = env.evaluation_result_list[0][:4]
            if math.isnan(value):            # a round not scored (lgb.eval_rows)
                return
            self.best = max(self.best, value) if higher else -min(-self.best, value)
            self.bar.set_postfix_str(f"{name} {value:.5f} best {self.best:.5f}", refresh=False)

    def close(self) -> None:
        if self.bar.n < (self.bar.total or 0):   # stopped early: end the bar where it stopped
            self.bar.total = self.bar.n
            self.bar.refresh()
        self.bar.close()


def train_booster(params: dict, train: lgb.Dataset, rounds: int, *, valid: lgb.Dataset | None = None,
                  feval=None, early_stopping_rounds: int | None = None, desc: str = "train",
                  progress: bool = True, history: list | None = None,
                  metrics: dict | None = None) -> lgb.Booster:
    """lightgbm.train with an optional validation feval (early stopping on its first value) and
    a progress bar; ``history`` receives the first validation value of every round,
    ``metrics`` every value by name.  Every tree grown is kept (also those after the best
    iteration), so the booster can predict at any iteration up to where training stopped."""
    params = {**params, "metric": "None"}
    bar = RoundProgress(rounds, desc, progress)
    callbacks: list = [bar]
    evals: dict = {}
    if valid is not None:
        callbacks.append(lgb.record_evaluation(evals))
        if early_stopping_rounds:
            callbacks.append(lgb.early_stopping(early_stopping_rounds, first_metric_only=True,
                                                verbose=False))
    try:
        booster = lgb.train(params, train, num_boost_round=rounds,
                            valid_sets=[valid] if valid is not None else None,
                            valid_names=[f"day{VALID_DAY}"] if valid is not None else None,
                            feval=feval if valid is not None else None, callbacks=callbacks,
                            keep_training_booster=True)
    finally:
        bar.close()
    recorded = next(iter(evals.values())) if evals else {}
    if history is not None and recorded:
        history.extend(float(v) for v in next(iter(recorded.values())))
    if metrics is not None:
        metrics.update({k: [float(x) for x in v] for k, v in recorded.items()})
    if valid is None or not booster.best_iteration:
        booster.best_iteration = booster.current_iteration()
    # the trees alone: a trained Booster keeps its training state (gradients, scores, the rows'
    # partition and bagging indices: about 36 bytes per training row, 0.5 GB for an action's
    # 13.6M rows at the final round's size) until it is freed, and the stage keeps every
    # action's Booster; reloaded from its model text (every tree, exactly) it holds the trees only
    best = booster.best_iteration
    booster.model_from_string(booster.model_to_string(num_iteration=-1)).free_dataset()
    booster.best_iteration = best
    return booster


# ------------------------------------------------------------------------------ fitting

@dataclass
class FitData:
    """Everything both fits read: the sampled training rows of days [first..13] binned once,
    and day 14 in full (validation set, and the online refit's extra day).  Day 14's arrays are
    in the store's part order; ``valid_order`` maps them to the day's order."""

    spec: FeatureSpec
    days: list[int]
    rows: TrainRows            # days first..13, rows some requested action keeps
    base: lgb.Dataset          # one row holding the bins of ``rows`` binned (bin_reference); every
                               # other Dataset is binned against it
    valid_rows: TrainRows      # day 14, every row, in part order
    valid_keys: pd.DataFrame   # userid, feedid of day 14, in part order
    groups: UserGroups         # day-14 user grouping for uAUC
    halves: Halves             # the shared day-14 user halves (selection cross-fitted on them)
    cache_bytes: float = 0.0
    settings: LgbSettings | None = None   # the settings the rows were sampled with (neg_rate
                                          # capped by max_train_rows): the fits must use these
    fs: object = None                     # the store the rows come from
    union_bytes: float = math.inf         # memory the binned union may take (lgb.bin_once auto)
    union: lgb.Dataset | None = None      # every action's rows of days first..14 binned once
                                          # (binned_union), while the fits use it
    once: bool | None = None              # bins_once's choice, made once

    @property
    def valid_order(self) -> np.ndarray:
        return self.valid_rows.X.day_order()

    def in_day_order(self, df: pd.DataFrame) -> pd.DataFrame:
        """Rows of a day-14 frame in part order -> the day's order."""
        return df.iloc[np.argsort(self.valid_order, kind="stable")].reset_index(drop=True)


def training_days(fs, settings: LgbSettings, last: int) -> list[int]:
    first = settings.first_day if settings.first_day is not None else min(fs.days)
    missing = [d for d in range(first, last + 1) if d not in fs.days]
    if first > last or missing:
        raise FileNotFoundError(f"feature tables of days {missing or [first]} missing "
                                f"(built: {fs.days}); run the features stage (src/stages/features.py)")
    return list(range(first, last + 1))


def _dataset_params(params: dict) -> dict:
    keys = ("max_bin", "min_data_in_bin", "bin_construct_sample_cnt", "seed", "verbosity",
            "num_threads", "max_cat_to_onehot", "min_data_in_leaf", "feature_pre_filter",
            "data_random_seed", "force_col_wise", "force_row_wise", "max_cat_threshold")
    return {k: params[k] for k in keys if k in params}


def _dataset(X, n: int, spec: FeatureSpec, params: dict, reference=None, progress: bool = False,
             desc: str = "bin") -> lgb.Dataset:
    """Bin rows (a StoreRows sequence, a list of them, or a matrix) into a LightGBM Dataset."""
    seqs = X if isinstance(X, list) else [X]
    total = sum(len(x) for x in seqs)
    with tqdm(desc=desc, unit="row", unit_scale=True, disable=not progress or total == 0,
              file=sys.stderr) as bar:   # LightGBM reads a sequence twice (bin sample, rows)
        for x in seqs:
            if isinstance(x, StoreRows):
                x.on_read = bar.update
        ds = lgb.Dataset(X, label=np.zeros(n, np.float32), feature_name=list(spec.names),
                         categorical_feature=list(spec.categorical) or "auto",
                         params=_dataset_params(params), reference=reference,
                         free_raw_data=True).construct()
        for x in seqs:
            if isinstance(x, StoreRows):
                x.on_read = None
                x.release()
    return ds


def load_fit_data(fs, settings: LgbSettings, progress: bool = True, cache_bytes: float = 0.0,
                  union_bytes: float = math.inf) -> FitData:
    """Training rows (days first..13, sampled) binned into one Dataset read from the store block
    by block, and day 14.  The negative rates are capped first (``lgb.max_train_rows``,
    :func:`cap_settings`): ``FitData.settings`` are the ones to fit with.  ``cache_bytes``: keep
    the decoded float blocks when they fit (the in-memory speed at small sizes; 0 = read every
    block when needed).  ``union_bytes``: the memory the binned union of every action's rows may
    take (``lgb.bin_once: auto``, :func:`bins_once`)."""
    spec = feature_spec(fs, settings)
    days = training_days(fs, settings, VALID_DAY - 1)
    if VALID_DAY not in fs.days:
        raise FileNotFoundError(f"feature table of day {VALID_DAY} missing (built: {fs.days}); "
                                "run the features stage (src/stages/features.py)")
    bits = _label_bits(fs, days)
    settings = cap_settings(settings, bits)
    rows = load_rows(fs, days, spec.names, settings, cache_bytes=cache_bytes, bits=bits)
    del bits
    valid_rows, valid_keys = load_day_rows(fs, VALID_DAY, spec.names, settings, cache_bytes=cache_bytes)
    base = sample_reference(rows.X, spec, settings.params, progress=progress, desc="bin train days")
    groups = group_by_user(valid_keys["userid"].to_numpy())
    kept = sum(len(x) * len(spec.names) * 4 for x in (rows.X, valid_rows.X) if getattr(x, "keep_all", False))
    return FitData(spec, days, rows, base, valid_rows, valid_keys, groups,
                   split_halves(settings.halves_seed, groups=groups), cache_bytes, settings, fs,
                   union_bytes - kept)


def bin_reference(full: lgb.Dataset, X, spec: FeatureSpec, params: dict) -> lgb.Dataset:
    """A one-row Dataset holding ``full``'s bin mappers and feature layout, so ``full`` (every
    training row binned: gigabytes at the final round's size) can be freed; every later Dataset
    is built against this reference and bins exactly as ``full`` did."""
    first = np.asarray(X[0:1], np.float32) if len(X) else np.zeros((1, len(spec.names)), np.float32)
    ref = _dataset(first, 1, spec, params, reference=full)
    ref.reference = None                   # drop the Python link that would keep ``full`` alive
    del full
    return ref


#: LightGBM's default min_data_in_leaf: the one its pre-filter counts with when a Dataset is built
#: from a Sequence (the Python package passes only its Dataset parameters, and min_data_in_leaf is
#: not one of them)
LGB_DATASET_MIN_DATA_IN_LEAF = 20


def sample_reference(X, spec: FeatureSpec, params: dict, progress: bool = False,
                     desc: str = "bin") -> lgb.Dataset:
    """:func:`bin_reference` of the Dataset of every row of ``X``, without binning every row.

    LightGBM draws its bin bounds and feature groups from a seeded sample of
    ``bin_construct_sample_cnt`` rows (200,000 by default); binning the other rows too, only to
    keep the bounds, cost the training union's whole binned size at the peak (about 1.1 GB at
    `full`, ten times that at the final round's size).  Here the rows LightGBM would sample are
    binned alone: the same sample values and sample count.  The one input that knew the number of
    rows is the pre-filter's count, ``min_data_in_leaf x sample // rows``; once the rows are more
    than ``min_data_in_leaf`` times the sample that count is 0 (nothing is filtered but constant
    features), which the sample alone gives with ``feature_pre_filter`` off.  Below that (under
    4M rows by default) every row is binned as before.  The bins and the models are those of the
    whole Dataset (tests)."""
    n = len(X)
    dparams = _dataset_params(params)
    # the indices LightGBM's own Sequence path draws (lightgbm is pinned: a private helper)
    idx = np.sort(lgb.Dataset(np.zeros((1, 1)), params=dparams)._create_sample_indices(n).astype(np.int64))
    if len(idx) >= n or LGB_DATASET_MIN_DATA_IN_LEAF * len(idx) // n > 0:
        return bin_reference(_dataset(X, n, spec, params, progress=progress, desc=desc), X, spec, params)
    sub = _take(X, idx)
    if isinstance(sub, StoreRows):
        # LightGBM reads a Sequence twice (its bin sample, then every row): the sample's decoded
        # blocks are kept so the store is read once (bin_construct_sample_cnt rows: about 190 MB
        # at 238 features; at the final round's size each read decodes almost the whole union)
        sub.keep_all = True
    sample = _dataset(sub, len(idx), spec, {**params, "feature_pre_filter": False},
                      progress=progress, desc=f"{desc} ({len(idx):,} sampled of {n:,})")
    sample.params = dict(dparams)          # later Datasets inherit the real parameters
    ref = bin_reference(sample, sub, spec, params)
    if isinstance(sub, StoreRows):
        sub.forget()
    return ref


def _take(X, idx: np.ndarray):
    """Rows ``idx`` of a matrix, or of a sequence that can cut itself (``take``)."""
    return np.asarray(X)[idx] if isinstance(X, np.ndarray) or not hasattr(X, "take") else X.take(idx)


def action_dataset(Xs: Sequence, labels: np.ndarray, u: np.ndarray, action: str, rate: float,
                   spec: FeatureSpec, params: dict, reference: lgb.Dataset, progress: bool = False,
                   desc: str = "bin") -> lgb.Dataset:
    """The rows ``action`` keeps of the concatenated sequences ``Xs`` (labels and uniforms
    aligned with them), binned against ``reference``: only this action's rows are held, and its
    Dataset equals ``reference``'s full Dataset subset to those rows."""
    idx = action_rows(labels, u, action, rate)
    seqs, start = [], 0
    for X in Xs:
        part = idx[(idx >= start) & (idx < start + len(X))] - start
        if len(part):
            seqs.append(_take(X, part))
        start += len(X)
    ds = _dataset(seqs if len(seqs) > 1 else seqs[0], len(idx), spec, params, reference=reference,
                  progress=progress, desc=desc)
    ds.set_label(labels[idx, ACTIONS.index(action)].astype(np.float32))
    return ds


def action_rows(labels: np.ndarray, u: np.ndarray, action: str, rate: float) -> np.ndarray:
    """Row indices ``action`` trains on (int32, ascending)."""
    return np.flatnonzero(keep_mask(labels[:, ACTIONS.index(action)], u, rate)).astype(np.int32)


def _action_subset(base: lgb.Dataset, labels: np.ndarray, u: np.ndarray, action: str,
                   rate: float) -> lgb.Dataset:
    """The rows ``action`` keeps, as a subset sharing ``base``'s bins, labelled for ``action``."""
    idx = action_rows(labels, u, action, rate)
    ds = base.subset(idx).construct()
    ds.set_label(labels[idx, ACTIONS.index(action)].astype(np.float32))
    return ds


#: bytes a binned row takes per feature column (LightGBM's dense bins: one byte per column of
#: up to 256 bins, half a byte up to 16, two for a categorical column of more levels): 0.92
#: measured on `small`'s 238 columns (the union's ``save_binary`` file, 220 bytes a row)
BINNED_BYTES_PER_FEATURE = 1.0


def refit_sample(data: FitData, settings: LgbSettings) -> tuple[np.ndarray, np.ndarray, np.ndarray]:
    """The online refit's extra rows: day 14's rows some action keeps (positions in the day,
    ascending), and the labels and uniforms of the refit's rows (days first..13 as
    ``data.rows``, then those)."""
    lab14 = np.empty_like(data.valid_rows.labels)        # day 14's labels, already read: in day order
    lab14[data.valid_order] = data.valid_rows.labels
    u14 = row_uniforms(VALID_DAY, len(lab14), settings.seed)
    extra = np.flatnonzero(union_mask(lab14, u14, settings.neg_rate, ACTIONS))
    return (extra, np.concatenate([data.rows.labels, lab14[extra]]),
            np.concatenate([data.rows.u, u14[extra]]))


def bins_once(data: FitData, settings: LgbSettings) -> bool:
    """Whether every action's rows are binned once (:func:`binned_union`) and each action's
    Dataset is cut from them (``Dataset.subset``), instead of each action reading and binning its
    own rows from the store (:func:`action_dataset`: at the final round's size about 220 s per
    action, offline and again online).  The models are the same.  ``lgb.bin_once: auto`` does it
    when the union's binned rows (days first..13 and day 14's share, about one byte per row and
    feature) fit ``data.union_bytes``, what the stage's budget leaves beside its estimate."""
    if data.once is None:
        n = len(data.rows) + len(refit_sample(data, settings)[0])
        need = n * len(data.spec.names) * BINNED_BYTES_PER_FEATURE
        data.once = bool(settings.bin_once) if settings.bin_once != "auto" else need <= data.union_bytes
        how = ("binned once, each action's rows cut from them" if data.once else
               "not binned at once: each action reads and bins its own rows from the store")
        why = (f"lgb.bin_once {str(settings.bin_once).lower()}" if settings.bin_once != "auto" else
               f"lgb.bin_once auto: {'within' if data.once else 'over'} the "
               f"{max(0.0, data.union_bytes) / 2**30:,.1f} GB the memory budget leaves")
        print(f"[lgb] every action's rows of days {data.days[0]}-{VALID_DAY} ({n:,} rows, about "
              f"{need / 2**30:,.1f} GB binned) {how} ({why})", file=sys.stderr)
    return data.once


def binned_union(data: FitData, settings: LgbSettings, progress: bool = False) -> lgb.Dataset:
    """The rows some action keeps of days first..13 (``data.rows``, first) and of day 14 (the
    refit's extra rows, :func:`refit_sample`) binned against ``data.base`` in one pass over the
    store, kept on ``data`` until :func:`release_union`: the offline fits cut their actions' rows
    from the first ``len(data.rows)`` rows, the online refits from all of them."""
    if data.union is None:
        extra, labels, _ = refit_sample(data, settings)
        day14 = StoreRows(data.fs, data.spec.names, [Block(VALID_DAY, extra)], data.cache_bytes)
        data.union = _dataset([data.rows.X, day14], len(labels), data.spec, settings.params,
                              reference=data.base, progress=progress,
                              desc=f"bin every action's rows, days {data.days[0]}-{VALID_DAY}")
        data.rows.X.forget()               # the decoded blocks kept for small data are not read again
    return data.union


def release_union(data: FitData) -> None:
    """Free the binned union (after the last fit that cuts from it)."""
    data.union = None


def finish_predictions(raw: np.ndarray, settings: LgbSettings, action: str) -> np.ndarray:
    """Model output -> written probability: undo the down-sampling if configured; float32."""
    rate = settings.neg_rate[action]
    p = calibrate(raw, rate) if settings.calibrate else np.asarray(raw, np.float64)
    return np.clip(p, 0.0, 1.0).astype(np.float32)


def labels_frame(labels: np.ndarray, actions: Sequence[str]) -> pd.DataFrame:
    return pd.DataFrame({a: labels[:, ACTIONS.index(a)] for a in actions})


def half_best_iteration(values: Sequence[float], fallback: int) -> int:
    """1-based round of the first maximum of one half's per-round uAUC (``fallback`` when the
    half could not be scored in any round)."""
    v = np.asarray(values, np.float64)
    if len(v) == 0 or np.isnan(v).all():
        return int(fallback)
    return int(np.nanargmax(v)) + 1


@dataclass
class OfflineResult:
    boosters: dict[str, lgb.Booster]
    best_iteration: dict[str, int]           # chosen on all day-14 users: the online refit's
    scores: dict[str, float]                 # honest day-14 uAUC: cross-fitted over the halves
    scores_insample: dict[str, float]        # uAUC of ``preds`` (chosen and scored on day 14)
    preds: pd.DataFrame                      # userid, feedid, actions: day-14 rows in order
    importance: pd.DataFrame                 # feature, action, gain
    history: pd.DataFrame                    # action, round, uauc, uauc_A, uauc_B
    train_rows: dict[str, int]
    half_best_iteration: dict[str, dict[str, int]] = None   # half -> action -> iteration
    half_preds: dict[str, pd.DataFrame] = None              # half -> day-14 predictions at it
    labels: pd.DataFrame = None                             # day-14 labels, rows as ``preds``


def fit_offline(data: FitData, settings: LgbSettings, actions: Sequence[str],
                progress: bool = True) -> OfflineResult:
    """Per action: train on days [first..13], early-stop on the day-14 uAUC, predict day 14.

    The uAUC of each user half is recorded every round too; each half picks its own best
    iteration among the rounds trained (no extra training) and the day-14 rows are predicted
    at it, so the reported score is cross-fitted (chosen on one half, scored on the other).
    """
    valid = _dataset(data.valid_rows.X, len(data.valid_rows), data.spec, settings.params,
                     reference=data.base, progress=progress, desc="bin day 14")
    boosters, best, n_rows = {}, {}, {}
    every = eval_period(len(data.valid_rows), settings.eval_rows)
    if every > 1:
        print(f"[lgb] day 14 has {len(data.valid_rows):,} rows > lgb.eval_rows {settings.eval_rows:,}: "
              f"its uAUC is scored every {every} rounds", file=sys.stderr)
    preds = data.valid_keys[["userid", "feedid"]].copy()
    half_preds = {h: preds.copy() for h in HALVES}
    half_best: dict[str, dict[str, int]] = {h: {} for h in HALVES}
    imp, hist = [], []
    union = binned_union(data, settings, progress) if bins_once(data, settings) else None
    for a in actions:
        j = ACTIONS.index(a)
        if union is not None:              # the offline rows are the union's first len(data.rows)
            train_ds = _action_subset(union, data.rows.labels, data.rows.u, a, settings.neg_rate[a])
        else:
            train_ds = action_dataset([data.rows.X], data.rows.labels, data.rows.u, a,
                                      settings.neg_rate[a], data.spec, settings.params, data.base,
                                      progress, f"bin {a}")
        n_rows[a] = train_ds.num_data()
        valid.set_label(data.valid_rows.labels[:, j].astype(np.float32))
        metrics: dict[str, list[float]] = {}
        booster = train_booster(settings.params, train_ds, settings.num_boost_round, valid=valid,
                                feval=UAUCEval(data.valid_rows.labels[:, j], data.groups, data.halves, every),
                                early_stopping_rounds=settings.early_stopping_rounds,
                                desc=f"{a} offline", progress=progress, metrics=metrics)
        best[a] = int(booster.best_iteration)
        for h in HALVES:
            half_best[h][a] = half_best_iteration(metrics.get(f"uauc_{h}", []), best[a])
        booster.free_dataset()             # this action's binned rows go before the next is binned
        del train_ds
        imp.append(pd.DataFrame({"feature": data.spec.names, "action": a,
                                 "gain": booster.feature_importance("gain", iteration=best[a])
                                 .astype(np.float64)}))
        n_hist = len(metrics.get("uauc", []))
        hist.append(pd.DataFrame({"action": a, "round": np.arange(1, n_hist + 1),
                                  **{k: metrics.get(k, [np.nan] * n_hist)
                                     for k in ("uauc", "uauc_A", "uauc_B")}}))
        boosters[a] = booster
    # day 14 read once for every action's model, its binned copy dropped first
    del valid
    raws = data.valid_rows.X.predict_many(
        {a: (boosters[a], [best[a], *(half_best[h][a] for h in HALVES)]) for a in actions})
    for a in actions:
        preds[a] = finish_predictions(raws[a][best[a]], settings, a)
        for h in HALVES:
            half_preds[h][a] = finish_predictions(raws[a][half_best[h][a]], settings, a)
    del raws
    labels = labels_frame(data.valid_rows.labels, actions)
    insample = weighted_uauc(labels, preds, groups=data.groups)
    scores = crossfit_scores(labels, half_preds["A"], half_preds["B"], data.halves)
    return OfflineResult(boosters, best, scores, insample, data.in_day_order(preds),
                         pd.concat(imp, ignore_index=True), pd.concat(hist, ignore_index=True), n_rows,
                         half_best, {h: data.in_day_order(p) for h, p in half_preds.items()},
                         data.in_day_order(labels))


def average_offline(results: Sequence[OfflineResult], seeds: Sequence[int], halves_seed: int,
                    seconds: Sequence[float]) -> tuple[OfflineResult, list[dict]]:
    """The seed bag of offline fits (``lgb.seeds``): day-14 predictions averaged, each user
    half's selection the mean of the seeds' selections on that half (so the bag is scored
    cross-fitted like one model), gain importance averaged, the histories kept per seed; and
    the curve of the honest score by seeds averaged (``seconds``: each seed's fit).  The
    boosters are not carried (each seed's are written as they are fitted)."""
    first = results[0]
    halves = split_halves(halves_seed, first.preds["userid"].to_numpy())
    preds = mean_predictions([r.preds for r in results])
    half_preds = {h: mean_predictions([r.half_preds[h] for r in results]) for h in HALVES}
    curve = seed_curve(first.labels, [r.half_preds for r in results], halves, seeds,
                       [r.scores["weighted"] for r in results], seconds)
    importance = (pd.concat([r.importance for r in results], ignore_index=True)
                  .groupby(["feature", "action"], sort=False, as_index=False)["gain"].mean())
    history = pd.concat([r.history.assign(seed=int(s)) for r, s in zip(results, seeds)], ignore_index=True)
    return OfflineResult({}, first.best_iteration, crossfit_scores(first.labels, half_preds["A"], half_preds["B"], halves),
                         weighted_uauc(first.labels, preds, groups=halves.groups), preds, importance,
                         history, first.train_rows, first.half_best_iteration, half_preds, first.labels), curve


@dataclass
class OnlineResult:
    boosters: dict[str, lgb.Booster]
    rounds: dict[str, int]
    preds: pd.DataFrame                      # userid, feedid, actions: test rows in order
    train_rows: dict[str, int]


def online_rounds(best_iteration: Mapping[str, int], n_offline: Mapping[str, int],
                  n_online: Mapping[str, int], days_offline: int, days_online: int,
                  scaling: str) -> dict[str, int]:
    """Per action: the offline best iteration scaled to the online training set."""
    if scaling == "rows":
        return {a: scale_rounds(b, n_offline[a], n_online[a]) for a, b in best_iteration.items()}
    if scaling == "days":
        return {a: scale_rounds(b, days_offline, days_online) for a, b in best_iteration.items()}
    raise ValueError(f"round scaling must be one of {ROUND_SCALINGS}, got {scaling!r}")


def refit_rounds(actions: Sequence[str], fixed_rounds: int | None, best_iteration: Mapping[str, int] | None,
                 n_off: Mapping[str, int], n_on: Mapping[str, int], days_off: int, days_on: int,
                 scaling: str) -> dict[str, int]:
    """The online refit's rounds per action: ``fixed_rounds`` (--rounds), else the offline best
    iterations scaled to the online training set (:func:`online_rounds`)."""
    if fixed_rounds is not None:
        return {a: int(fixed_rounds) for a in actions}
    if best_iteration is None or any(a not in best_iteration for a in actions):
        raise ValueError("online refit needs the offline best iterations of "
                         f"{list(actions)} (run --mode offline first) or --rounds")
    return online_rounds({a: best_iteration[a] for a in actions}, n_off, n_on, days_off, days_on, scaling)


def fit_online(data: FitData, fs, settings: LgbSettings, actions: Sequence[str],
               best_iteration: Mapping[str, int] | None = None, fixed_rounds: int | None = None,
               progress: bool = True) -> OnlineResult:
    """Refit on days [first..14] (day 14 down-sampled like the others) and predict day 15.

    Rounds: ``fixed_rounds`` for every action if given, else ``best_iteration`` scaled by
    ``settings.round_scaling`` (see :func:`online_rounds`).
    """
    # day 14's sampled rows in the day's order, as the in-memory refit took them
    extra, labels, u = refit_sample(data, settings)
    n_off = {a: len(action_rows(data.rows.labels, data.rows.u, a, settings.neg_rate[a]))
             for a in actions}
    n_on = {a: len(action_rows(labels, u, a, settings.neg_rate[a])) for a in actions}
    rounds = refit_rounds(actions, fixed_rounds, best_iteration, n_off, n_on, len(data.days),
                          len(data.days) + 1, settings.round_scaling)
    if TEST_DAY not in fs.days:
        raise FileNotFoundError(f"feature table of day {TEST_DAY} (the test rows) missing; "
                                "run the features stage (src/stages/features.py)")
    test, test_keys = load_day_rows(fs, TEST_DAY, data.spec.names, settings, data.cache_bytes)
    boosters = {}
    preds = test_keys[["userid", "feedid"]].copy()
    union = binned_union(data, settings, progress) if bins_once(data, settings) else None
    extra_rows = None if union is not None else StoreRows(fs, data.spec.names, [Block(VALID_DAY, extra)],
                                                          data.cache_bytes)
    for a in actions:
        if union is not None:
            train_ds = _action_subset(union, labels, u, a, settings.neg_rate[a])
        else:
            train_ds = action_dataset([data.rows.X, extra_rows], labels, u, a, settings.neg_rate[a],
                                      data.spec, settings.params, data.base, progress,
                                      f"bin {a} days 1-14")
        booster = train_booster(settings.params, train_ds, rounds[a],
                                desc=f"{a} online", progress=progress)
        booster.free_dataset()             # the binned rows go before the next are binned
        del train_ds
        boosters[a] = booster
    del union
    release_union(data)                    # the last fit on these rows: free them before the test rows
    return OnlineResult(boosters, rounds, predict_rows(test, test_keys, boosters, rounds, settings), n_on)


def predict_rows(rows: TrainRows, keys: pd.DataFrame, boosters: Mapping[str, lgb.Booster],
                 rounds: Mapping[str, int], settings: LgbSettings) -> pd.DataFrame:
    """Every action's booster (at its rounds) over the rows of one day (:func:`load_day_rows`),
    read once for all of them; probabilities in the day's row order."""
    raws = rows.X.predict_many({a: (b, [int(rounds[a])]) for a, b in boosters.items()})
    preds = keys[["userid", "feedid"]].copy()
    for a in boosters:
        preds[a] = finish_predictions(raws[a][int(rounds[a])], settings, a)
    return preds.iloc[np.argsort(rows.X.day_order(), kind="stable")].reset_index(drop=True)


def predict_test_offline(fs, settings: LgbSettings, boosters: Mapping[str, lgb.Booster],
                         rounds: Mapping[str, int], cache_bytes: float = 0.0) -> pd.DataFrame:
    """The test day predicted by the offline boosters (days first..13, each at its best
    iteration): ``lgb.online_predict`` offline, and half of both.  ``settings`` are the fit's
    (its neg_rate, lowered by lgb.max_train_rows where it was, calibrates)."""
    if TEST_DAY not in fs.days:
        raise FileNotFoundError(f"feature table of day {TEST_DAY} (the test rows) missing; "
                                "run the features stage (src/stages/features.py)")
    names = next(iter(boosters.values())).feature_name()
    test, keys = load_day_rows(fs, TEST_DAY, names, settings, cache_bytes)
    return predict_rows(test, keys, boosters, rounds, settings)


def load_boosters(out_dir: Path, kind: str, actions: Sequence[str], seed: int | None = None) -> dict[str, lgb.Booster]:
    """The boosters :func:`save_boosters` wrote (each trimmed to the rounds it was saved at)."""
    boosters = {}
    for a in actions:
        f = model_file(out_dir, kind, a, seed)
        if not f.exists():
            raise FileNotFoundError(f"{f}: missing; run src/stages/train_lgb.py --mode offline first "
                                    "(lgb.online_predict offline and both predict with its trees)")
        boosters[a] = lgb.Booster(model_file=str(f))
    return boosters


# ------------------------------------------------------------------------------ artifacts

def model_file(out_dir: Path, kind: str, action: str, seed: int | None = None) -> Path:
    """``model_<offline|online>_<action>.txt`` (LightGBM text format, trimmed to the rounds used);
    ``..._seed<s>.txt`` for each seed of a bag (``lgb.seeds``)."""
    return Path(out_dir) / (f"model_{kind}_{action}.txt" if seed is None else f"model_{kind}_{action}_seed{seed}.txt")


def remove_models(out_dir: Path, kind: str, actions: Sequence[str]) -> None:
    """Every model file of ``kind`` for these actions, single or per seed (before a refit)."""
    for a in actions:
        for f in [model_file(out_dir, kind, a), *Path(out_dir).glob(f"model_{kind}_{a}_seed*.txt")]:
            f.unlink(missing_ok=True)


def save_boosters(boosters: Mapping[str, lgb.Booster], out_dir: Path, kind: str,
                  rounds: Mapping[str, int], seed: int | None = None) -> None:
    for a, booster in boosters.items():
        with atomic_path(model_file(out_dir, kind, a, seed)) as tmp:
            tmp.write_text(booster.model_to_string(num_iteration=int(rounds[a])))


def write_offline(result: OfflineResult, out_dir: Path) -> None:
    out_dir = Path(out_dir)
    save_boosters(result.boosters, out_dir, "offline", result.best_iteration)
    write_parquet(result.preds, out_dir / "pred_offline.parquet")
    for h, f in HALF_PRED_FILES.items():
        write_parquet(result.half_preds[h], out_dir / f)
    write_csv(result.importance, out_dir / "importance.csv")
    write_csv(result.history, out_dir / "eval_history.csv")


def average_online(results: Sequence[OnlineResult]) -> OnlineResult:
    """The seed bag of online refits: test predictions averaged (each seed's boosters are written
    as they are fitted); rounds and rows of the first seed."""
    first = results[0]
    return OnlineResult({}, first.rounds, mean_predictions([r.preds for r in results]), first.train_rows)


def write_online(result: OnlineResult, out_dir: Path) -> None:
    out_dir = Path(out_dir)
    save_boosters(result.boosters, out_dir, "online", result.rounds)
    write_parquet(result.preds, out_dir / "pred_online.parquet")
