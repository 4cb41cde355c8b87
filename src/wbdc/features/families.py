"""Feature families: each one declares its columns from the config and computes them, so the
schema and the compute of a group of features live together and the bucketed build
(:mod:`wbdc.features.build`) is a loop over families.

A family sees the rows through four hooks, called by the build in this order:

``shared_day(d, rows)``
    once per day, with that day's rows of every bucket in prepared order (labels included for
    days <= 14): aggregates that are not user-keyed (per feed, author, ... and day).
``scan_bucket(rows)``
    once per user bucket, label-free (``rows.labelled`` is empty): e.g. the word2vec corpus, or
    counts summed over buckets.
``fit()``
    once, label-free tables fitted on every row (word2vec, PCA), stored under ``pretrained/``
    with a fingerprint so an unchanged fit is reused.
``open_bucket(rows)`` / ``transform(d, rows, state)``
    per bucket, the bucket's history (labels of days <= 14, every query cut with
    ``DailyTable.before(d)``); then, per target day d, the columns of the bucket's day-d rows:
    ``(day-table columns, users-table columns)``.

A new family = one class here added to :func:`families`, plus its config section
(``configs/features.yaml`` and ``wbdc.config_schema.FeaturesConfig``).
"""
from __future__ import annotations

import math
import sys
import time
from dataclasses import dataclass, field
from pathlib import Path

import numpy as np
import pandas as pd
from tqdm import tqdm

from ..config import ConfigError
from ..hashing import pair_uniform
from ..io import InputError, obj_digest, write_npy
from ..prepare import load_meta
from ..schema import ACTIONS, TEST_DAY
from . import partition
from . import static as static_mod
from .embedding_pca import fit_pca
from .history import (DailyTable, aggregate_vectors, cosine, dense_codes, history_mean, id_rows, same_day_cosine,
                      window_days)
from .w2v import train_word2vec, user_sequences, vector_table, write_sentences
from .window_stats import (VALUE_COLUMNS, WindowSpec, action_list, build_histories, check_bucketable,
                           distinct_per_key, shared_value_needs, user_keyed, window_features, window_label)

FEATURES_VERSION = 2


# ----------------------------------------------------------------------------- rows

class RowSet:
    """Exposure rows of a set of whole users (one bucket, or everyone) or of one day, in (day,
    prepared order) order, with the label-free per-row ids every family shares.  Days <= 14
    come first, so the labelled rows are the prefix ``[:n_labelled]``."""

    def __init__(self, cols: dict[str, np.ndarray], static: pd.DataFrame, labels: bool = True):
        day = cols["date_"].astype(np.int8)
        expo = {"userid": cols["userid"].astype(np.int32), "feedid": cols["feedid"].astype(np.int32),
                "date_": day, "device": cols["device"].astype(np.int8)}
        frow = id_rows(static["feedid"].to_numpy().astype(np.int64), expo["feedid"].astype(np.int64))
        if (frow < 0).any():
            i = int(np.flatnonzero(frow < 0)[0])
            d, r = int(day[i]), int(cols["row"][i])
            where = f"test.parquet row {r}" if d == TEST_DAY else f"actions.parquet, day {d} row {r}"
            raise InputError(f"{where}: feedid {expo['feedid'][i]} not in feeds.parquet")
        self.feed_row = frow
        for c in static_mod.FEED_CATEGORICAL:
            expo[c] = static[c].to_numpy()[frow]
        self.expo = expo
        self.row = cols["row"]
        self.bounds = np.searchsorted(day, np.arange(0, TEST_DAY + 2))
        self.n_labelled = int(self.bounds[TEST_DAY])
        self.labelled: dict[str, np.ndarray] = {}
        if labels:
            n = self.n_labelled
            for a in ACTIONS:
                self.labelled[a] = cols[a][:n]
            play = cols["play"][:n]
            self.labelled["play"] = play.astype(np.int64)
            self.labelled["stay"] = cols["stay"][:n].astype(np.int64)
            vps = static["videoplayseconds"].to_numpy()[frow[:n]].astype(np.float64)
            self.labelled["finish"] = play.astype(np.float64) / (np.maximum(vps, 1.0) * 1000.0)

    def day_rows(self, d: int) -> slice:
        return slice(int(self.bounds[d]), int(self.bounds[d + 1]))


@dataclass
class Context:
    """What every family may read: config, seed, the staged rows, the static feed table, the
    output folder and the previous manifest (for fingerprinted reuse)."""
    fcfg: dict
    seed: int
    first_day: int
    code: str
    inputs: dict[str, str]
    prepared: Path
    out: Path
    old: dict
    static: pd.DataFrame
    todo: list[int]
    staged: partition.Staged | None = None      # set once the rows are staged
    progress: bool = False
    timings: dict[str, float] = field(default_factory=dict)
    #: the process's peak RSS (MB, a high-water mark) at the end of each step: the step where it
    #: first reaches its final value is where the stage's peak is
    peaks: dict[str, float] = field(default_factory=dict)

    def mark(self, step: str) -> None:
        import resource
        self.peaks[step] = round(resource.getrusage(resource.RUSAGE_SELF).ru_maxrss / 1024, 1)


def _col(name: str, dtype: str, roles: list[str], group: str, table: str = "day", **extra) -> dict:
    return {"name": name, "dtype": dtype, "roles": roles, "group": group, "table": table, **extra}


class Family:
    """Base: no columns, every hook a no-op."""
    name = "family"

    def __init__(self, ctx: Context):
        self.ctx = ctx

    def columns(self) -> list[dict]:
        return []

    def describe(self) -> str:
        return ""

    def shared_day(self, d: int, rows: RowSet) -> None:
        pass

    def wants_scan(self) -> bool:
        return False

    def scan_bucket(self, rows: RowSet) -> None:
        pass

    def fit(self) -> dict[str, dict]:
        return {}

    def open_bucket(self, rows: RowSet):
        return None

    def transform(self, d: int, rows: RowSet, state) -> tuple[dict, dict]:
        return {}, {}


# ----------------------------------------------------------------------------- ids and static

class Ids(Family):
    """Keys and categorical ids of the exposure and its feed."""
    name = "ids"

    def columns(self) -> list[dict]:
        cols = [_col("userid", "int32", ["key", "categorical"], "ids"),
                _col("feedid", "int32", ["key", "categorical"], "ids"),
                _col("date_", "int8", ["key"], "ids"),
                _col("device", "int8", ["key", "categorical"], "ids")]
        for c in static_mod.FEED_CATEGORICAL:
            cols.append(_col(c, "int32", ["categorical"], "ids",
                             **({"offset": 1} if c in static_mod.SHIFTED_IDS else {})))
        return cols

    def describe(self) -> str:
        return "Ids: user, feed, device and the feed's author, bgm song / singer, first keyword / tag (ids + 1, 0 = missing)."

    def transform(self, d, rs, state):
        rows, ex = rs.day_rows(d), rs.expo
        out = {"userid": ex["userid"][rows], "feedid": ex["feedid"][rows],
               "date_": np.full(rows.stop - rows.start, d, dtype=np.int8), "device": ex["device"][rows]}
        for c in static_mod.FEED_CATEGORICAL:
            out[c] = ex[c][rows].astype(np.int32)
        return out, {}


class Static(Family):
    """Label-free per-feed counts (video length, list lengths, feeds sharing the author...)."""
    name = "static"

    def columns(self) -> list[dict]:
        return [_col(c, "float32", ["dense"], "static") for c in static_mod.static_dense_columns()]

    def describe(self) -> str:
        return "Static feed features: video length, list lengths, feeds per author / song / singer / tag."

    def transform(self, d, rs, state):
        frow = rs.feed_row[rs.day_rows(d)]
        return {c: self.ctx.static[c].to_numpy()[frow].astype(np.float32)
                for c in static_mod.static_dense_columns()}, {}


# ----------------------------------------------------------------------------- window statistics

class WindowStats(Family):
    """Date-sliding label statistics per key (``features.window_stats``).  User-keyed keys live
    in a bucket; the others (feed, author, singer, tag) are aggregated in the shared pass, one
    day at a time over every bucket in prepared order; distinct counts keyed by a shared key over
    (key, user) pairs are summed over the buckets in the scan."""
    name = "window_stats"

    def __init__(self, ctx: Context):
        super().__init__(ctx)
        self.spec = WindowSpec.from_config(ctx.fcfg["window_stats"])
        check_bucketable(self.spec)
        need = shared_value_needs(self.spec)
        self.need = need
        self.by_col: dict[str, list[str]] = {}
        for name in need:
            self.by_col.setdefault(self.spec.key_columns(name)[0], []).append(name)
        self.n_keys: dict[str, int] = {}
        self.parts: dict[str, list[DailyTable]] = {c: [] for c in self.by_col}
        self.glob: list[DailyTable] = []
        self.today: dict[tuple[str, int], np.ndarray] = {}
        self.distinct: dict[tuple[str, str, int], np.ndarray] = {}
        self.tables: dict[str, DailyTable] = {}

    def _n_keys(self, col: str) -> int:
        if col == "device":
            return self.ctx.staged.max_device + 1
        if col in self.ctx.static.columns:
            return int(self.ctx.static[col].max()) + 1
        raise ValueError(f"features.window_stats.keys: column {col!r} is not an exposure or feed column")

    def columns(self) -> list[dict]:
        return [_col(c, "int8" if c.endswith("_cold") else "float32", ["dense"], "window_stats")
                for c in self.spec.dense_columns()]

    def describe(self) -> str:
        spec = self.spec
        blocks = "; ".join(f"{b.key} {list(b.windows)} {list(b.stats)} ({len(b.actions)} actions)" for b in spec.blocks)
        return (f"Window statistics over days [d-w, d-1] only: {blocks}; cold flags per key; same-day "
                f"counts for {list(spec.same_day)}; distinct counts {[x[0] for x in spec.distinct]}. Rates "
                f"smoothed as (sum + a*p)/(count + a), a={spec.prior_strength}, p = global rate before d.")

    def shared_day(self, d, rs):
        if not self.n_keys:
            self.n_keys = {c: self._n_keys(c) for c in self.by_col}
        n = rs.n_labelled
        day = rs.expo["date_"][:n]
        same = set(self.spec.same_day)
        for c, names in self.by_col.items():
            ids = rs.expo[c].astype(np.int64)
            if d < TEST_DAY:
                want = set().union(*(self.need[nm] for nm in names))
                self.parts[c].append(DailyTable.aggregate(ids[:n], day, self.n_keys[c],
                                                          {v: rs.labelled[v] for v in VALUE_COLUMNS if v in want}))
            for k in names:
                if k in same:
                    self.today[(k, d)] = np.bincount(ids, minlength=self.n_keys[c])
        if d < TEST_DAY:
            self.glob.append(DailyTable.aggregate(np.zeros(n, np.int64), day, 1,
                                                  {v: rs.labelled[v] for v in VALUE_COLUMNS}))

    def _shared_tables(self) -> dict[str, DailyTable]:
        if not self.tables:
            for c, names in self.by_col.items():
                table = DailyTable.concat(self.parts[c], self.n_keys[c])
                for nm in names:
                    self.tables[nm] = table
            self.tables["__global__"] = DailyTable.concat(self.glob, 1, VALUE_COLUMNS)
        return self.tables

    def _shared_distinct(self) -> list:
        return [x for x in self.spec.distinct if not user_keyed(self.spec, x[1])]

    def wants_scan(self) -> bool:
        return bool(self._shared_distinct())

    def scan_bucket(self, rs):
        spec, n = self.spec, rs.n_labelled
        day = rs.expo["date_"][:n]
        tables = self._shared_tables()
        for name, k, of, wins in self._shared_distinct():
            pair = f"{k}__{of}"
            ids, n_pairs = dense_codes(*(rs.expo[c] for c in spec.key_columns(pair)))
            table = DailyTable.aggregate(ids[:n], day, n_pairs, {})
            parent = np.zeros(n_pairs, np.int64)
            parent[ids] = rs.expo[spec.key_columns(k)[0]]
            for d in self.ctx.todo:
                cut = table.before(d)
                for w in wins:
                    lo, hi = window_days(d, w, self.ctx.first_day)
                    key = (name, window_label(w), d)
                    add = distinct_per_key(cut, parent, tables[k].n_keys, lo, hi)
                    self.distinct[key] = self.distinct.get(key, 0) + add

    def open_bucket(self, rs):
        return build_histories(self.spec, rs.expo, rs.n_labelled, rs.labelled, self._shared_tables())

    def transform(self, d, rs, hist):
        rows = rs.day_rows(d)
        cut = {k: t.before(d) for k, t in hist.tables.items()}
        target_ids = {k: v[rows] for k, v in hist.key_ids.items()}
        pre = {f"{k}_today_count": v for (k, day), v in self.today.items() if day == d}
        pre.update({f"{name}_{wl}": v for (name, wl, day), v in self.distinct.items() if day == d})
        return window_features(self.spec, cut, target_ids, hist.pair_parent, d, self.ctx.first_day, pre), {}


# ----------------------------------------------------------------------------- pretrained tables

def _pretrained_entry(name: str, key: str, dim: int, fp: str, extra: dict | None = None) -> dict:
    return {"file": f"pretrained/{name}.npy", "ids_file": f"pretrained/{name}_ids.npy", "key": key,
            "dim": int(dim), "fingerprint": fp, **(extra or {})}


def _reusable(ctx: Context, name: str, fp: str) -> dict | None:
    e = ctx.old.get("pretrained", {}).get(name)
    if e and e.get("fingerprint") == fp and (ctx.out / e["file"]).exists() and (ctx.out / e["ids_file"]).exists():
        return e
    return None


def _load(ctx: Context, e: dict) -> tuple[np.ndarray, np.ndarray]:
    return np.load(ctx.out / e["ids_file"]), np.load(ctx.out / e["file"])


def _save(ctx: Context, ids: np.ndarray, mat: np.ndarray, entry: dict) -> None:
    write_npy(ids.astype(np.int32), ctx.out / entry["ids_file"])
    write_npy(mat.astype(np.float32), ctx.out / entry["file"])


def w2v_deterministic(fcfg: dict, rows: int) -> bool:
    """``w2v.deterministic`` with ``auto`` resolved: one worker (bit-reproducible) up to
    ``w2v.auto_max_rows`` exposure rows, ``workers`` threads above."""
    w = fcfg["w2v"]
    value = w.get("deterministic", True)
    return int(rows) <= int(w.get("auto_max_rows", 0)) if value == "auto" else bool(value)


def w2v_epochs(wcfg: dict, kind: str, rows: int) -> int:
    """``w2v.<kind>.epochs``, lowered above ``w2v.epoch_rows`` corpus rows so that epochs x rows
    stays near epochs x epoch_rows (ceil, at least 1): with ten times the exposures each feed is
    already seen ten times as often per epoch, and word2vec is the features stage's largest cost
    at the final round's size.  ``epoch_rows: null``: always the configured epochs."""
    epochs = int(wcfg[kind]["epochs"])
    cap = wcfg.get("epoch_rows")
    if cap is None:
        return epochs
    if int(cap) < 1:
        raise ConfigError(f"features.w2v.epoch_rows: expected a positive row count or null, got {cap}")
    if int(rows) <= int(cap):
        return epochs
    return max(1, min(epochs, math.ceil(epochs * int(cap) / int(rows))))


def w2v_workers(fcfg: dict, rows: int) -> int:
    return 1 if w2v_deterministic(fcfg, rows) else int(fcfg["w2v"].get("workers", 1))


def w2v_corpus_file(fcfg: dict, rows: int) -> bool:
    """``w2v.corpus_file`` with ``auto`` resolved: gensim's corpus_file mode exactly when not
    deterministic (its threads read the file in parallel; with one worker the streamed
    sentences give the in-memory run's vectors)."""
    value = fcfg["w2v"].get("corpus_file", False)
    return not w2v_deterministic(fcfg, rows) if value == "auto" else bool(value)


# ----------------------------------------------------------------------------- per-action interest vectors

def sim_actions(section: dict) -> tuple[str, ...]:
    """The actions of ``<section>.action_sims`` ([] = none, "all", "main" or a list)."""
    spec = section.get("action_sims", [])
    return () if spec == [] or spec is None else action_list(spec)


def action_histories(rs: RowSet, n_users: int, ids_tab: np.ndarray, mat: np.ndarray,
                     actions: tuple[str, ...]) -> dict[str, DailyTable]:
    """Per action: the (user, day) sums of the vectors of the feeds the user did it on (the
    labelled rows of the bucket; queried with ``before(d)`` only)."""
    n_a = rs.n_labelled
    users, day = rs.expo["userid"][:n_a].astype(np.int64), rs.expo["date_"][:n_a]
    prow = id_rows(ids_tab.astype(np.int64), rs.expo["feedid"][:n_a].astype(np.int64))
    out = {}
    for a in actions:
        pos = rs.labelled[a] > 0
        out[a] = aggregate_vectors(users[pos], day[pos], n_users, prow[pos], mat)
    return out


def action_sim_columns(tables: dict[str, DailyTable], d: int, lo: int, hi: int, uid: np.ndarray,
                       cand: np.ndarray, suffix: str) -> dict[str, np.ndarray]:
    """``user_<action>_<suffix>``: the cosine between the candidate's vector and the mean vector
    of the feeds the user did the action on before d (0 without such a feed): the user's
    interest per behaviour, which a per-user ranking needs more than any user-level rate."""
    users, upos = np.unique(uid, return_inverse=True)
    out = {}
    for a, t in tables.items():
        mean, _ = history_mean(t.before(d), users, lo, hi)
        out[f"user_{a}_{suffix}"] = cosine(mean[upos], cand).astype(np.float32)
    return out


def action_sim_specs(actions: tuple[str, ...], suffix: str) -> list[dict]:
    return [_col(f"user_{a}_{suffix}", "float32", ["dense"], "action_similarity") for a in actions]


def today_keep_rate(fcfg: dict, day_rows: dict[int, int], d: int) -> float:
    """The share of day d's rows whose vectors enter the same-day means (``features.today_keep``):
    1 on the test day; on a training day ``auto`` = test rows / day d's rows (at most 1), so a
    user's list is as long on average as on the test day, whose file may hold fewer rows per
    user than a whole day (the models then learn the features at the test day's noise)."""
    spec = fcfg.get("today_keep", 1.0)
    if d == TEST_DAY:
        return 1.0
    if spec == "auto":
        return min(1.0, day_rows.get(TEST_DAY, 0) / max(day_rows.get(d, 0), 1)) if day_rows.get(TEST_DAY) else 1.0
    try:
        rate = float(spec)
    except (TypeError, ValueError):
        rate = float("nan")
    if not 0.0 < rate <= 1.0:
        raise ConfigError(f"features.today_keep: expected auto or a share in (0, 1], got {spec!r}")
    return rate


def today_kept(ctx: "Context", d: int, uid: np.ndarray, feedid: np.ndarray) -> np.ndarray | None:
    """Which of day d's rows enter the same-day means: a fixed hash of (user, feed, day, seed)
    below :func:`today_keep_rate` (None = every row), the same whatever the user buckets."""
    rate = today_keep_rate(ctx.fcfg, ctx.staged.day_rows if ctx.staged else {}, d)
    if rate >= 1.0:
        return None
    return pair_uniform(uid, feedid, ctx.seed * 64 + d) < rate


def feed_column_count(section: dict, key: str, dim: int) -> int:
    """``<section>.feed_columns``, at most the vector's ``dim`` (a negative count is refused)."""
    k = int(section.get("feed_columns", 0))
    if k < 0:
        raise ConfigError(f"{key}.feed_columns: expected 0 or more components, got {k}")
    return min(k, int(dim))


def vector_column_specs(prefix: str, k: int) -> list[dict]:
    """``<prefix>_<i>`` for the first ``k`` components of the feed's vector: the candidate's
    content as plain dense columns (for the trees; the nets embed the whole table through
    ``pretrained``)."""
    return [_col(f"{prefix}_{i}", "float32", ["dense"], "feed_vector") for i in range(k)]


def vector_columns(prefix: str, k: int, cand: np.ndarray) -> dict[str, np.ndarray]:
    return {f"{prefix}_{i}": cand[:, i].astype(np.float32) for i in range(k)}


class Word2Vec(Family):
    """word2vec feed and author vectors on per-user exposure sequences (every day, test rows
    included, never labels), the per-(user, day) mean vectors of the feeds / authors seen before
    d (users table) and their cosine with the candidate."""
    name = "w2v"
    KINDS = (("feed", "feedid", 0), ("author", "authorid", 1))    # (kind, item column, seed offset)

    def __init__(self, ctx: Context):
        super().__init__(ctx)
        w = ctx.fcfg["w2v"]
        meta = load_meta(ctx.prepared)
        rows = int(meta["n_actions"]) + int(meta["n_test"])
        self.workers, self.corpus_file = w2v_workers(ctx.fcfg, rows), w2v_corpus_file(ctx.fcfg, rows)
        self.n_feed_columns = feed_column_count(w, "features.w2v", w["feed"]["dim"])
        # the settings each model trains with (epochs lowered above w2v.epoch_rows)
        self.model_cfg = {kind: {**w[kind], "epochs": w2v_epochs(w, kind, rows)} for kind, _, _ in self.KINDS}
        for kind, _, _ in self.KINDS:
            if self.model_cfg[kind]["epochs"] != int(w[kind]["epochs"]):
                print(f"[features] word2vec {kind}: {self.model_cfg[kind]['epochs']} epoch(s) instead of "
                      f"{w[kind]['epochs']} ({rows:,} corpus rows > features.w2v.epoch_rows "
                      f"{int(w['epoch_rows']):,})", file=sys.stderr)
        self.fps = {f"{kind}_w2v": obj_digest({
            "v": FEATURES_VERSION, "cfg": self.model_cfg[kind], "max_len": w["max_sentence_len"],
            "workers": self.workers, "corpus_file": self.corpus_file,
            "seed": ctx.seed + off, "code": ctx.code,
            "inputs": [ctx.inputs[k] for k in ("actions.parquet", "test.parquet", "feeds.parquet")]})
            for kind, _, off in self.KINDS}
        self.train = [n for n in self.fps if not _reusable(ctx, n, self.fps[n])]
        self.files: dict = {}
        self.tables: dict[str, tuple[np.ndarray, np.ndarray]] = {}

    def columns(self) -> list[dict]:
        w = self.ctx.fcfg["w2v"]
        cols = [_col(f"user_{kind}_w2v_sim", "float32", ["dense"], "similarity") for kind, _, _ in self.KINDS]
        cols += action_sim_specs(sim_actions(w), "feed_w2v_sim")
        cols += vector_column_specs("feed_w2v", self.n_feed_columns)
        if w.get("today_sims", False):
            today_keep_rate(self.ctx.fcfg, {}, 1)       # a bad features.today_keep refused before any work
            cols += [_col(f"today_{kind}_w2v_sim", "float32", ["dense"], "same_day_similarity")
                     for kind, _, _ in self.KINDS]
        if w.get("user_vectors", True):
            for kind, _, _ in self.KINDS:
                cols += [_col(f"user_{kind}_w2v_{i}", "float32", ["vector"], "user_vectors", "users")
                         for i in range(int(w[kind]["dim"]))]
        return cols

    def describe(self) -> str:
        return ("word2vec feed/author vectors on per-user exposure sequences (all days incl. test, no "
                "labels); per-(user, day) mean vectors of feeds/authors seen before d (users/ side "
                "tables) and their cosine with the candidate; per action, the cosine with the mean "
                "vector of the feeds the user did it on before d; the candidate's first components.")

    def corpus(self, name: str) -> Path:
        return self.ctx.staged.dir / f"corpus_{name}.txt"

    def wants_scan(self) -> bool:
        return bool(self.train)

    def scan_bucket(self, rs):
        max_len = int(self.ctx.fcfg["w2v"]["max_sentence_len"])
        for kind, item, _ in self.KINDS:
            name = f"{kind}_w2v"
            if name in self.train:
                if name not in self.files:
                    self.files[name] = open(self.corpus(name), "w")
                write_sentences(self.files[name], user_sequences(rs.expo["userid"], rs.expo[item],
                                                                 rs.expo["date_"], max_len))

    def fit(self) -> dict[str, dict]:
        for f in self.files.values():
            f.close()
        ctx, w = self.ctx, self.ctx.fcfg["w2v"]
        workers = self.workers
        universe = {"feedid": ctx.static["feedid"].to_numpy().astype(np.int64),
                    "authorid": np.unique(ctx.static["authorid"].to_numpy()).astype(np.int64)}
        entries = {}
        for kind, item, off in self.KINDS:
            t = time.perf_counter()
            name = f"{kind}_w2v"
            e = _reusable(ctx, name, self.fps[name])
            if e:
                self.tables[name], entries[name] = _load(ctx, e), e
                ctx.timings[f"{name}_reused_s"] = round(time.perf_counter() - t, 2)
                continue
            wv = train_word2vec(self.corpus(name), self.model_cfg[kind], ctx.seed + off, workers,
                                corpus_file=self.corpus_file, max_len=int(w["max_sentence_len"]))
            ids = universe[item]
            mat = vector_table(wv, ids)
            e = _pretrained_entry(name, item, wv.vector_size, self.fps[name],
                                  {"workers": workers, "corpus_file": self.corpus_file,
                                   "epochs": self.model_cfg[kind]["epochs"], "vocab": len(wv.key_to_index)})
            _save(ctx, ids, mat, e)
            self.tables[name], entries[name] = (ids, mat), e
            ctx.timings[f"{name}_s"] = round(time.perf_counter() - t, 2)
        return entries

    def open_bucket(self, rs):
        n_a = rs.n_labelled
        users = rs.expo["userid"][:n_a].astype(np.int64)
        day = rs.expo["date_"][:n_a]
        out = {}
        for kind, item, _ in self.KINDS:
            ids_tab, mat = self.tables[f"{kind}_w2v"]
            rows = id_rows(ids_tab.astype(np.int64), rs.expo[item][:n_a].astype(np.int64))
            out[kind] = aggregate_vectors(users, day, self.ctx.staged.n_users, rows, mat)
        out["actions"] = action_histories(rs, self.ctx.staged.n_users, *self.tables["feed_w2v"],
                                          sim_actions(self.ctx.fcfg["w2v"]))
        return out

    def transform(self, d, rs, vec):
        rows, ex = rs.day_rows(d), rs.expo
        lo, hi = window_days(d, "all", self.ctx.first_day)
        uid = ex["userid"][rows].astype(np.int64)
        users = np.unique(uid)
        upos = np.searchsorted(users, uid)
        day, side = {}, {"userid": users.astype(np.int32), "date_": np.full(len(users), d, dtype=np.int8)}
        today = self.ctx.fcfg["w2v"].get("today_sims", False)
        keep = today_kept(self.ctx, d, uid, ex["feedid"][rows]) if today else None
        for kind, item, _ in self.KINDS:
            ids_tab, mat = self.tables[f"{kind}_w2v"]
            mean_u, _ = history_mean(vec[kind].before(d), users, lo, hi)
            cand = mat[np.maximum(id_rows(ids_tab.astype(np.int64), ex[item][rows].astype(np.int64)), 0)]
            day[f"user_{kind}_w2v_sim"] = cosine(mean_u[upos], cand).astype(np.float32)
            if today:
                day[f"today_{kind}_w2v_sim"] = same_day_cosine(uid, cand, keep).astype(np.float32)
            for i in range(mean_u.shape[1]):
                side[f"user_{kind}_w2v_{i}"] = mean_u[:, i].astype(np.float32)
            if kind == "feed":
                day.update(action_sim_columns(vec["actions"], d, lo, hi, uid, cand, "feed_w2v_sim"))
                day.update(vector_columns("feed_w2v", self.n_feed_columns, cand))
        return day, (side if self.ctx.fcfg["w2v"].get("user_vectors", True) else {})


class PcaAffinity(Family):
    """feed_embedding PCA (``features.pca``) and the cosine between the candidate and the mean
    PCA vector of the feeds the user engaged with (any action) before d; per action with
    ``features.pca.action_sims``; of every feed shown to the user in a window before d with
    ``features.pca.seen_sims``."""
    name = "pca"

    def n_feed_columns(self) -> int:
        p = self.ctx.fcfg["pca"]
        return feed_column_count(p, "features.pca", p["dim"])

    def seen_windows(self) -> list:
        """``features.pca.seen_sims``: the windows of the seen-history similarities (checked)."""
        spec = self.ctx.fcfg["pca"].get("seen_sims") or []
        out = []
        for w in spec if isinstance(spec, list) else [spec]:
            if w != "all" and (isinstance(w, bool) or not isinstance(w, int) or w < 1):
                raise ConfigError(f"features.pca.seen_sims: expected a list of windows (days >= 1 or "
                                  f"all), got {spec!r}")
            if w not in out:
                out.append(w)
        return out

    @staticmethod
    def seen_column(w) -> str:
        """``seen_all_pca_sim``, ``seen_w7_pca_sim``, ...: the column of window ``w``."""
        return f"seen_{w if w == 'all' else f'w{w}'}_pca_sim"

    def columns(self) -> list[dict]:
        if self.ctx.fcfg["pca"].get("today_sims", False):
            today_keep_rate(self.ctx.fcfg, {}, 1)       # a bad features.today_keep refused before any work
        return [_col("user_feed_pca_affinity", "float32", ["dense"], "similarity"),
                _col("user_engaged_count", "float32", ["dense"], "similarity"),
                *action_sim_specs(sim_actions(self.ctx.fcfg["pca"]), "pca_sim"),
                *vector_column_specs("feed_pca", self.n_feed_columns()),
                *([_col("today_pca_sim", "float32", ["dense"], "same_day_similarity")]
                  if self.ctx.fcfg["pca"].get("today_sims", False) else []),
                *(_col(self.seen_column(w), "float32", ["dense"], "seen_similarity")
                  for w in self.seen_windows())]

    def describe(self) -> str:
        return ("feed_embedding PCA and the cosine between the candidate and the mean PCA vector of "
                "feeds the user engaged with before d (any action, and per action) or was shown in a "
                "window before d (seen_sims); the candidate's first components.")

    def fit(self) -> dict[str, dict]:
        ctx = self.ctx
        t = time.perf_counter()
        fp = obj_digest({"v": FEATURES_VERSION, "pca": ctx.fcfg["pca"], "seed": ctx.seed, "code": ctx.code,
                         "emb": [ctx.inputs["feed_embeddings.npy"], ctx.inputs["feed_embedding_ids.npy"]]})
        e = _reusable(ctx, "feed_pca", fp)
        if e:
            self.table = _load(ctx, e)
            ctx.timings["pca_reused_s"] = round(time.perf_counter() - t, 2)
            return {"feed_pca": e}
        ids = np.load(ctx.prepared / "feed_embedding_ids.npy").astype(np.int64)
        emb = np.load(ctx.prepared / "feed_embeddings.npy", mmap_mode="r")
        mat, evr = fit_pca(np.asarray(emb), int(ctx.fcfg["pca"]["dim"]), ctx.seed)
        e = _pretrained_entry("feed_pca", "feedid", mat.shape[1], fp, {"explained_variance": round(evr, 6)})
        _save(ctx, ids, mat, e)
        self.table = (ids, mat)
        ctx.timings["pca_s"] = round(time.perf_counter() - t, 2)
        return {"feed_pca": e}

    def open_bucket(self, rs):
        n_a = rs.n_labelled
        engaged = np.zeros(n_a, dtype=bool)
        for a in ACTIONS:
            engaged |= rs.labelled[a] > 0
        ids_tab, mat = self.table
        users, day = rs.expo["userid"][:n_a].astype(np.int64), rs.expo["date_"][:n_a]
        prow = id_rows(ids_tab.astype(np.int64), rs.expo["feedid"][:n_a].astype(np.int64))
        # every exposure of the labelled days (no label read) for the seen-history similarities
        seen = (aggregate_vectors(users, day, self.ctx.staged.n_users, prow, mat)
                if self.seen_windows() else None)
        return (aggregate_vectors(users[engaged], day[engaged], self.ctx.staged.n_users, prow[engaged], mat),
                action_histories(rs, self.ctx.staged.n_users, ids_tab, mat, sim_actions(self.ctx.fcfg["pca"])),
                seen)

    def transform(self, d, rs, state):
        engaged, per_action, seen = state
        rows, ex = rs.day_rows(d), rs.expo
        lo, hi = window_days(d, "all", self.ctx.first_day)
        uid = ex["userid"][rows].astype(np.int64)
        ids_tab, mat = self.table
        mean_e, cnt_e = history_mean(engaged.before(d), uid, lo, hi)
        prow = id_rows(ids_tab.astype(np.int64), ex["feedid"][rows].astype(np.int64))
        cand = np.where((prow >= 0)[:, None], mat[np.maximum(prow, 0)], 0.0)
        extra = ({"today_pca_sim": same_day_cosine(uid, cand, today_kept(self.ctx, d, uid, ex["feedid"][rows]))
                  .astype(np.float32)}
                 if self.ctx.fcfg["pca"].get("today_sims", False) else {})
        for w in self.seen_windows():
            # the mean vector of every feed shown to the user in the window before d (what the
            # recommender chose for the user: exposures only, no label)
            mean_s, _ = history_mean(seen.before(d), uid, *window_days(d, w, self.ctx.first_day))
            extra[self.seen_column(w)] = cosine(mean_s, cand).astype(np.float32)
        return {"user_feed_pca_affinity": cosine(mean_e, cand).astype(np.float32),
                "user_engaged_count": cnt_e.astype(np.float32),
                **action_sim_columns(per_action, d, lo, hi, uid, cand, "pca_sim"),
                **vector_columns("feed_pca", self.n_feed_columns(), cand), **extra}, {}


def call(ctx: Context, family: Family, hook: str, *args):
    """``family.<hook>(*args)``, its seconds added to ``ctx.timings["family_<name>_s"]`` (the
    time of each family over every hook, reported by the stage and the benchmark)."""
    t = time.perf_counter()
    try:
        return getattr(family, hook)(*args)
    finally:
        key = f"family_{family.name}_s"
        ctx.timings[key] = round(ctx.timings.get(key, 0.0) + time.perf_counter() - t, 3)
        if hook == "fit":
            ctx.mark(f"fit_{family.name}")


#: the families of the day tables, in column order
FAMILIES: tuple[type[Family], ...] = (Ids, Static, WindowStats, Word2Vec, PcaAffinity)


def column_specs(families: list[Family]) -> list[dict]:
    """Every column ``load_day`` can return: the day-table columns of each family in order,
    then the users-table columns."""
    cols = [c for f in families for c in f.columns()]
    cols = [c for c in cols if c["table"] == "day"] + [c for c in cols if c["table"] != "day"]
    names = [c["name"] for c in cols]
    dup = {n for n in names if names.count(n) > 1}
    if dup:
        raise ValueError(f"feature column names collide: {sorted(dup)}")
    return cols


def run_shared(families: list[Family], ctx: Context) -> None:
    cols = ["userid", "feedid", "date_", "device", *partition.LABEL_COLUMNS]
    for d in tqdm(ctx.staged.days(), desc="features: shared tables", unit="day", disable=not ctx.progress,
                  file=sys.stderr):
        rs = RowSet(partition.read_day(ctx.staged, d, cols), ctx.static, labels=d < TEST_DAY)
        for f in families:
            call(ctx, f, "shared_day", d, rs)
