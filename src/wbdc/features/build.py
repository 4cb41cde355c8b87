"""Assemble the ``features`` stage: one partitioned table per target day, side tables,
pretrained tables and the manifest that :class:`~wbdc.features.store.FeatureStore` reads.

Out of core, in user buckets (``features.buckets``; ``auto`` = the fewest whose estimated peak
fits ``data.memory_gb``).  A bucket is a range of user ids holding about 1/P of the rows; every
user-keyed statistic (user, user x author, user vectors) lives inside one bucket.  Order of work:

1. stage: split the prepared rows into ``.stage/day=DD/bucket=BB.parquet`` (streamed);
2. shared tables, one day at a time over every bucket in prepared order: per-(key, day)
   aggregates of the keys without userid (feed, author, singer, tag) and the global rates;
   same-day counts of those keys; the static feed tables and the feed_embedding PCA;
3. pass A over the buckets: the word2vec corpora (buckets are ascending user ranges, so the
   corpus is in user order whatever P is) and distinct counts keyed by shared keys (author ->
   distinct users: summed over the buckets, which hold disjoint users); then word2vec;
4. pass B over the buckets: for each target day d, the bucket's rows of day d get their
   features from history tables cut with ``before(d)``; written as ``day=DD/part-BB.parquet``
   with ``row``, the row's position in the day's prepared order.

Every per-key sum adds the same rows in the same order whatever P is, so the values do not
depend on the number of buckets (tests/test_features_buckets.py checks P = 1 against P = 3).

Incremental: each day carries a fingerprint = digest of (features config, seed, digests of the
prepared inputs, this package's source, d).  A day whose parts exist and whose manifest
fingerprint matches is skipped; when every day matches, nothing is loaded at all.  A build that
stops part-way resumes at the first unfinished bucket.  Pretrained tables carry their own
fingerprints, so e.g. changing a window reuses the word2vec vectors.
"""
from __future__ import annotations

import shutil
import sys
import time
from pathlib import Path

import numpy as np
import pandas as pd
import pyarrow.parquet as pq
from tqdm import tqdm

from ..budget import choose_buckets
from ..io import InputError, atomic_path, file_digest, obj_digest, read_json, write_json, write_npy, write_parquet
from ..paths import Paths
from ..schema import ACTIONS, TEST_DAY
from . import partition
from . import static as static_mod
from .embedding_pca import fit_pca
from .history import DailyTable, aggregate_vectors, cosine, dense_codes, history_mean, id_rows, window_days
from .store import KEY_COLUMNS, MANIFEST, ROW_KEY, day_dir, part_file, user_part_file
from .w2v import train_word2vec, user_sequences, vector_table, write_sentences
from .window_stats import (VALUE_COLUMNS, WindowSpec, build_histories, check_bucketable, distinct_per_key,
                           shared_value_needs, user_keyed, window_features, window_label)

FEATURES_VERSION = 2
INPUT_FILES = ("actions.parquet", "test.parquet", "feeds.parquet",
               "feed_embeddings.npy", "feed_embedding_ids.npy")
PREPARE_HINT = "run the prepare stage (src/stages/prepare.py)"
SIM_COLUMNS = ("user_feed_w2v_sim", "user_author_w2v_sim", "user_feed_pca_affinity", "user_engaged_count")


def _log(msg: str) -> None:
    print(f"[features] {msg}", file=sys.stderr, flush=True)


# ----------------------------------------------------------------------------- fingerprints

def code_digest() -> str:
    here = Path(__file__).resolve().parent
    return obj_digest({p.name: file_digest(p) for p in sorted(here.glob("*.py"))})


def input_digests(prepared: Path) -> dict[str, str]:
    out = {}
    for name in INPUT_FILES:
        p = prepared / name
        if not p.exists():
            raise FileNotFoundError(f"{p}: missing; {PREPARE_HINT}")
        out[name] = file_digest(p)
    return out


def feature_seed(cfg: dict) -> int:
    s = cfg["features"].get("seed")
    return int(cfg["data"]["seed"] if s is None else s)


def target_days(cfg: dict) -> list[int]:
    days = cfg["features"].get("days")
    if days is None:
        return list(range(int(cfg["features"]["first_history_day"]) + 1, TEST_DAY + 1))
    return sorted(int(d) for d in days)


def w2v_workers(fcfg: dict) -> int:
    w = fcfg["w2v"]
    return 1 if w.get("deterministic", True) else int(w.get("workers", 1))


# ----------------------------------------------------------------------------- columns

def column_specs(fcfg: dict) -> list[dict]:
    """Every column ``load_day`` can return, derived from the config alone."""
    spec = WindowSpec.from_config(fcfg["window_stats"])
    cols = [
        {"name": "userid", "dtype": "int32", "roles": ["key", "categorical"], "group": "ids"},
        {"name": "feedid", "dtype": "int32", "roles": ["key", "categorical"], "group": "ids"},
        {"name": "date_", "dtype": "int8", "roles": ["key"], "group": "ids"},
        {"name": "device", "dtype": "int8", "roles": ["key", "categorical"], "group": "ids"},
    ]
    for c in static_mod.FEED_CATEGORICAL:
        e = {"name": c, "dtype": "int32", "roles": ["categorical"], "group": "ids"}
        if c in static_mod.SHIFTED_IDS:
            e["offset"] = 1
        cols.append(e)
    cols += [{"name": c, "dtype": "float32", "roles": ["dense"], "group": "static"}
             for c in static_mod.static_dense_columns()]
    for c in spec.dense_columns():
        cols.append({"name": c, "dtype": "int8" if c.endswith("_cold") else "float32",
                     "roles": ["dense"], "group": "window_stats"})
    cols += [{"name": c, "dtype": "float32", "roles": ["dense"], "group": "similarity"} for c in SIM_COLUMNS]
    for c in cols:
        c["table"] = "day"
    if fcfg["w2v"].get("user_vectors", True):
        for kind in ("feed", "author"):
            cols += [{"name": f"user_{kind}_w2v_{i}", "dtype": "float32", "roles": ["vector"],
                      "group": "user_vectors", "table": "users"} for i in range(int(fcfg["w2v"][kind]["dim"]))]
    names = [c["name"] for c in cols]
    dup = {n for n in names if names.count(n) > 1}
    if dup:
        raise ValueError(f"feature column names collide: {sorted(dup)}")
    return cols


def describe(fcfg: dict) -> str:
    spec = WindowSpec.from_config(fcfg["window_stats"])
    blocks = "; ".join(f"{b.key} {list(b.windows)} {list(b.stats)} ({len(b.actions)} actions)" for b in spec.blocks)
    return (
        "One table per target day d (rows = that day's exposures in order). Window statistics over "
        f"days [d-w, d-1] only: {blocks}; cold flags per key; same-day counts for {list(spec.same_day)}; "
        f"distinct counts {[x[0] for x in spec.distinct]}. Rates smoothed as (sum + a*p)/(count + a), "
        f"a={spec.prior_strength}, p = global rate before d. Static feed features (ids + 1, 0 = missing "
        "for bgm/keyword/tag). word2vec feed/author vectors on per-user exposure sequences (all days "
        "incl. test, no labels); per-(user, day) mean vectors of feeds/authors seen before d (users/ "
        "side tables) and their cosine with the candidate; feed_embedding PCA and the cosine between "
        "the candidate and the mean PCA vector of feeds the user engaged with before d."
    )


# ----------------------------------------------------------------------------- rows

class RowSet:
    """Exposure rows of a set of whole users (one bucket, or everyone) in (day, prepared order)
    order, with the label-free per-row ids every builder shares.  Days <= 14 come first, so the
    labelled rows are the prefix ``[:n_labelled]``."""

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


class Shared:
    """Everything the user buckets share: the per-(key, day) tables of the keys without userid
    (feed, author, singer, tag, ...) and ``__global__``, aggregated one day at a time over every
    bucket in prepared order; same-day counts of those keys; distinct counts keyed by them."""

    def __init__(self, spec: WindowSpec, staged: partition.Staged, static: pd.DataFrame, progress: bool):
        need = shared_value_needs(spec)
        self.names = list(need)
        by_cols: dict[str, list[str]] = {}
        for name in need:
            by_cols.setdefault(spec.key_columns(name)[0], []).append(name)
        n_keys = {c: self.n_keys_of(c, staged, static) for c in by_cols}
        parts: dict[str, list[DailyTable]] = {c: [] for c in by_cols}
        glob: list[DailyTable] = []
        self.today: dict[tuple[str, int], np.ndarray] = {}
        same = [k for k in spec.same_day if k in need]
        cols = ["userid", "feedid", "date_", "device", *partition.LABEL_COLUMNS]
        for d in tqdm(staged.days(), desc="features: shared tables", unit="day", disable=not progress,
                      file=sys.stderr):
            rs = RowSet(partition.read_day(staged, d, cols), static, labels=d < TEST_DAY)
            n = rs.n_labelled
            day = rs.expo["date_"][:n]
            for c, names in by_cols.items():
                ids = rs.expo[c].astype(np.int64)
                if d < TEST_DAY:
                    want = set().union(*(need[nm] for nm in names))
                    parts[c].append(DailyTable.aggregate(ids[:n], day, n_keys[c],
                                                         {v: rs.labelled[v] for v in VALUE_COLUMNS if v in want}))
                for k in names:
                    if k in same:
                        self.today[(k, d)] = np.bincount(ids, minlength=n_keys[c])
            if d < TEST_DAY:
                glob.append(DailyTable.aggregate(np.zeros(n, np.int64), day, 1,
                                                 {v: rs.labelled[v] for v in VALUE_COLUMNS}))
        self.tables: dict[str, DailyTable] = {}
        for c, names in by_cols.items():
            table = DailyTable.concat(parts[c], n_keys[c])
            for nm in names:
                self.tables[nm] = table
        self.tables["__global__"] = DailyTable.concat(glob, 1, VALUE_COLUMNS)
        self.distinct: dict[tuple[str, str, int], np.ndarray] = {}

    @staticmethod
    def n_keys_of(col: str, staged: partition.Staged, static: pd.DataFrame) -> int:
        if col == "device":
            return staged.max_device + 1
        if col in static.columns:
            return int(static[col].max()) + 1
        raise ValueError(f"features.window_stats.keys: column {col!r} is not an exposure or feed column")

    def precomputed(self, spec: WindowSpec, d: int) -> dict[str, np.ndarray]:
        out = {f"{k}_today_count": v for (k, day), v in self.today.items() if day == d}
        for (name, wl, day), v in self.distinct.items():
            if day == d:
                out[f"{name}_{wl}"] = v
        return out


def shared_distinct(spec: WindowSpec) -> list[tuple[str, str, str, tuple]]:
    """Distinct counts keyed by a shared key over pairs with a user: summed over the buckets."""
    return [x for x in spec.distinct if not user_keyed(spec, x[1])]


def accumulate_distinct(shared: Shared, spec: WindowSpec, rs: RowSet, days: list[int], first_day: int) -> None:
    """Add one bucket's distinct (key, user) pairs to the shared per-key counts of ``days``."""
    todo = shared_distinct(spec)
    if not todo:
        return
    n = rs.n_labelled
    day = rs.expo["date_"][:n]
    for name, k, of, wins in todo:
        pair = f"{k}__{of}"
        ids, n_pairs = dense_codes(*(rs.expo[c] for c in spec.key_columns(pair)))
        table = DailyTable.aggregate(ids[:n], day, n_pairs, {})
        parent = np.zeros(n_pairs, np.int64)
        parent[ids] = rs.expo[spec.key_columns(k)[0]]
        n_k = shared.tables[k].n_keys
        for d in days:
            cut = table.before(d)
            for w in wins:
                lo, hi = window_days(d, w, first_day)
                key = (name, window_label(w), d)
                add = distinct_per_key(cut, parent, n_k, lo, hi)
                shared.distinct[key] = shared.distinct.get(key, 0) + add


# ----------------------------------------------------------------------------- pretrained

def _pretrained_entry(name: str, key: str, dim: int, fp: str, extra: dict | None = None) -> dict:
    return {"file": f"pretrained/{name}.npy", "ids_file": f"pretrained/{name}_ids.npy", "key": key,
            "dim": int(dim), "fingerprint": fp, **(extra or {})}


def _reusable(out: Path, old: dict, name: str, fp: str) -> dict | None:
    e = old.get("pretrained", {}).get(name)
    if e and e.get("fingerprint") == fp and (out / e["file"]).exists() and (out / e["ids_file"]).exists():
        return e
    return None


def _save(out: Path, ids: np.ndarray, mat: np.ndarray, entry: dict) -> None:
    write_npy(ids.astype(np.int32), out / entry["ids_file"])
    write_npy(mat.astype(np.float32), out / entry["file"])


W2V_KINDS = (("feed", "feedid", 0), ("author", "authorid", 1))   # (kind, item column, seed offset)


def w2v_fingerprints(fcfg: dict, seed: int, inputs: dict, code: str) -> dict[str, str]:
    wcfg = fcfg["w2v"]
    return {f"{kind}_w2v": obj_digest({
        "v": FEATURES_VERSION, "cfg": wcfg[kind], "max_len": wcfg["max_sentence_len"],
        "workers": w2v_workers(fcfg), "corpus_file": bool(wcfg.get("corpus_file", False)),
        "seed": seed + off, "code": code,
        "inputs": [inputs[k] for k in ("actions.parquet", "test.parquet", "feeds.parquet")]})
        for kind, _, off in W2V_KINDS}


def build_pca(prepared: Path, fcfg: dict, seed: int, inputs: dict, out: Path, old: dict, code: str,
              timings: dict) -> tuple[tuple[np.ndarray, np.ndarray], dict]:
    t = time.perf_counter()
    fp = obj_digest({"v": FEATURES_VERSION, "pca": fcfg["pca"], "seed": seed, "code": code,
                     "emb": [inputs["feed_embeddings.npy"], inputs["feed_embedding_ids.npy"]]})
    e = _reusable(out, old, "feed_pca", fp)
    if e:
        timings["pca_reused_s"] = round(time.perf_counter() - t, 2)
        return (np.load(out / e["ids_file"]), np.load(out / e["file"])), e
    ids = np.load(prepared / "feed_embedding_ids.npy").astype(np.int64)
    emb = np.load(prepared / "feed_embeddings.npy", mmap_mode="r")
    mat, evr = fit_pca(np.asarray(emb), int(fcfg["pca"]["dim"]), seed)
    e = _pretrained_entry("feed_pca", "feedid", mat.shape[1], fp, {"explained_variance": round(evr, 6)})
    _save(out, ids, mat, e)
    timings["pca_s"] = round(time.perf_counter() - t, 2)
    return (ids, mat), e


def build_w2v(corpora: dict[str, Path], fcfg: dict, seed: int, fps: dict[str, str], static: pd.DataFrame,
              out: Path, old: dict, timings: dict) -> tuple[dict[str, tuple[np.ndarray, np.ndarray]], dict]:
    """Train (or reuse) the feed and author word2vec tables from the bucket-ordered corpora."""
    wcfg = fcfg["w2v"]
    workers = w2v_workers(fcfg)
    universe = {"feedid": static["feedid"].to_numpy().astype(np.int64),
                "authorid": np.unique(static["authorid"].to_numpy()).astype(np.int64)}
    tables, entries = {}, {}
    for kind, item, off in W2V_KINDS:
        t = time.perf_counter()
        name = f"{kind}_w2v"
        e = _reusable(out, old, name, fps[name])
        if e:
            tables[name] = (np.load(out / e["ids_file"]), np.load(out / e["file"]))
            entries[name] = e
            timings[f"{name}_reused_s"] = round(time.perf_counter() - t, 2)
            continue
        wv = train_word2vec(corpora[name], wcfg[kind], seed + off, workers,
                            corpus_file=bool(wcfg.get("corpus_file", False)),
                            max_len=int(wcfg["max_sentence_len"]))
        ids = universe[item]
        mat = vector_table(wv, ids)
        e = _pretrained_entry(name, item, wv.vector_size, fps[name], {"workers": workers, "vocab": len(wv.key_to_index)})
        _save(out, ids, mat, e)
        tables[name], entries[name] = (ids, mat), e
        timings[f"{name}_s"] = round(time.perf_counter() - t, 2)
    return tables, entries


# ----------------------------------------------------------------------------- one day

def build_day(d: int, rs: RowSet, static: pd.DataFrame, spec: WindowSpec, hist, vec_tables: dict[str, DailyTable],
              pretrained: dict, fcfg: dict, first_day: int,
              precomputed: dict[str, np.ndarray]) -> tuple[pd.DataFrame, pd.DataFrame | None]:
    """Feature table (and users side table) of target day d for the rows of ``rs``.

    Builders see day d's exposure ids (no label column) and history tables cut before d."""
    rows = rs.day_rows(d)
    ex = rs.expo
    df: dict[str, np.ndarray] = {
        "userid": ex["userid"][rows], "feedid": ex["feedid"][rows],
        "date_": np.full(rows.stop - rows.start, d, dtype=np.int8), "device": ex["device"][rows],
    }
    for c in static_mod.FEED_CATEGORICAL:
        df[c] = ex[c][rows].astype(np.int32)
    frow = rs.feed_row[rows]
    for c in static_mod.static_dense_columns():
        df[c] = static[c].to_numpy()[frow].astype(np.float32)

    cut = {k: t.before(d) for k, t in hist.tables.items()}
    target_ids = {k: v[rows] for k, v in hist.key_ids.items()}
    df.update(window_features(spec, cut, target_ids, hist.pair_parent, d, first_day, precomputed))

    lo, hi = window_days(d, "all", first_day)
    uid = ex["userid"][rows].astype(np.int64)
    users = np.unique(uid)
    side = {"userid": users.astype(np.int32), "date_": np.full(len(users), d, dtype=np.int8)}
    for kind, item in (("feed", "feedid"), ("author", "authorid")):
        ids_tab, mat = pretrained[f"{kind}_w2v"]
        mean_u, _ = history_mean(vec_tables[f"{kind}_w2v"].before(d), users, lo, hi)
        cand = mat[np.maximum(id_rows(ids_tab.astype(np.int64), ex[item][rows].astype(np.int64)), 0)]
        upos = np.searchsorted(users, uid)
        df[f"user_{kind}_w2v_sim"] = cosine(mean_u[upos], cand).astype(np.float32)
        for i in range(mean_u.shape[1]):
            side[f"user_{kind}_w2v_{i}"] = mean_u[:, i].astype(np.float32)
    ids_tab, mat = pretrained["feed_pca"]
    mean_e, cnt_e = history_mean(vec_tables["engaged_pca"].before(d), uid, lo, hi)
    prow = id_rows(ids_tab.astype(np.int64), ex["feedid"][rows].astype(np.int64))
    cand = np.where((prow >= 0)[:, None], mat[np.maximum(prow, 0)], 0.0)
    df["user_feed_pca_affinity"] = cosine(mean_e, cand).astype(np.float32)
    df["user_engaged_count"] = cnt_e.astype(np.float32)
    df[ROW_KEY] = rs.row[rows].astype(np.int32)
    side_df = pd.DataFrame(side) if fcfg["w2v"].get("user_vectors", True) else None
    return pd.DataFrame(df), side_df


def user_vector_tables(rs: RowSet, pretrained: dict, n_users: int) -> dict[str, DailyTable]:
    """Per-(user, day) sums of the exposed feeds' / authors' word2vec vectors and of the PCA
    vectors of engaged feeds, over the labelled rows of ``rs``."""
    n_a = rs.n_labelled
    users = rs.expo["userid"][:n_a].astype(np.int64)
    day = rs.expo["date_"][:n_a]
    out = {}
    for kind, item in (("feed", "feedid"), ("author", "authorid")):
        ids_tab, mat = pretrained[f"{kind}_w2v"]
        rows = id_rows(ids_tab.astype(np.int64), rs.expo[item][:n_a].astype(np.int64))
        out[f"{kind}_w2v"] = aggregate_vectors(users, day, n_users, rows, mat)
    engaged = np.zeros(n_a, dtype=bool)
    for a in ACTIONS:
        engaged |= rs.labelled[a] > 0
    ids_tab, mat = pretrained["feed_pca"]
    prow = id_rows(ids_tab.astype(np.int64), rs.expo["feedid"][:n_a][engaged].astype(np.int64))
    out["engaged_pca"] = aggregate_vectors(users[engaged], day[engaged], n_users, prow, mat)
    return out


# ----------------------------------------------------------------------------- stage

def load_manifest(out: Path) -> dict:
    p = out / MANIFEST
    return read_json(p) if p.exists() else {}


def _day_complete(out: Path, entry: dict | None, fp: str) -> bool:
    if not entry or entry.get("fingerprint") != fp or "parts" not in entry:
        return False
    return all((out / p["file"]).exists() and (not p.get("users") or (out / p["users"]).exists())
               for p in entry["parts"])


def _remove_day(out: Path, d: int, keep: set[str] = frozenset()) -> None:
    """Delete day d's files but ``keep`` (paths relative to ``out``): parts of an older build, of
    a build's unfinished buckets, temporary files a killed process left."""
    for p in (out / day_dir(d), out / "users" / day_dir(d)):
        if p.exists():
            for f in p.iterdir():
                if str(f.relative_to(out)) not in keep:
                    f.unlink()
    for p in (out / f"day_{d:02d}.parquet", out / "users" / f"day_{d:02d}.parquet"):  # layout v1
        p.unlink(missing_ok=True)


def run(paths: Paths, cfg: dict, progress: bool = True, force: bool = False, n_buckets: int | None = None) -> dict:
    """Build every stale target day (every day with ``force``, pretrained tables included);
    returns a summary with built / skipped days and timings.

    ``n_buckets``: user buckets (default: ``features.buckets``, ``auto`` = the fewest whose
    estimated peak fits ``data.memory_gb``).  The values written do not depend on it."""
    fcfg = cfg["features"]
    out = Path(paths.features)
    t0 = time.perf_counter()
    timings: dict[str, float] = {}
    seed = feature_seed(cfg)
    days = target_days(cfg)
    first_day = int(fcfg["first_history_day"])
    columns = column_specs(fcfg)
    spec = WindowSpec.from_config(fcfg["window_stats"])
    check_bucketable(spec)
    inputs = input_digests(paths.prepared)
    timings["digest_s"] = round(time.perf_counter() - t0, 2)
    code = code_digest()
    # every setting but the list of days and the bucket count shapes each day's table
    base_fp = {"v": FEATURES_VERSION, "seed": seed, "inputs": inputs, "code": code,
               "features": {k: v for k, v in fcfg.items() if k not in ("days", "buckets")}}
    fps = {d: obj_digest({**base_fp, "day": d}) for d in days}
    old = {} if force else load_manifest(out)
    old_days = old.get("day_tables", {})
    todo = [d for d in days if not _day_complete(out, old_days.get(str(d)), fps[d])]
    if not todo:
        _log(f"all {len(days)} day tables are up to date; nothing to build")
        return {"built": [], "skipped": days, "timings": timings}
    if n_buckets is None:
        n_buckets = choose_buckets(cfg, paths.prepared)
    _log(f"building days {todo} ({len(days) - len(todo)} up to date) in {n_buckets} user bucket(s)")

    t = time.perf_counter()
    feeds = pq.read_table(paths.prepared / "feeds.parquet")
    static = static_mod.feed_static(feeds)
    stage = out / ".stage"
    with tqdm(desc="features: staging rows", unit="row", unit_scale=True, disable=not progress,
              file=sys.stderr) as bar:
        staged = partition.stage_rows(paths.prepared, stage, n_buckets, progress=bar.update)
    timings["stage_s"] = round(time.perf_counter() - t, 2)

    static_fp = obj_digest({"v": FEATURES_VERSION, "code": code, "feeds": inputs["feeds.parquet"],
                            "lists": fcfg["feed_lists"]})
    t = time.perf_counter()
    if old.get("static_fingerprint") != static_fp or not (out / "feeds.parquet").exists():
        write_parquet(static, out / "feeds.parquet")
        write_parquet(static_mod.author_static(static), out / "authors.parquet")
        lists = static_mod.feed_lists_table(feeds, list(fcfg["feed_lists"]))
        with atomic_path(out / "feed_lists.parquet") as tmp:
            pq.write_table(lists, tmp, compression="zstd")
    feed_lists = {"file": "feed_lists.parquet",
                  "fields": {f: {"cardinality": int(max(1, feeds.column(f).combine_chunks().values
                                                        .to_numpy().max(initial=-1) + 2))}
                             for f in fcfg["feed_lists"]}}
    timings["static_s"] = round(time.perf_counter() - t, 2)

    pca, pca_entry = build_pca(paths.prepared, fcfg, seed, inputs, out, old, code, timings)

    t = time.perf_counter()
    shared = Shared(spec, staged, static, progress)
    timings["shared_s"] = round(time.perf_counter() - t, 2)

    # pass A over the buckets: word2vec corpora (bucket = user range, so the file is in user
    # order) and the distinct counts keyed by shared keys (summed over buckets)
    t = time.perf_counter()
    w2v_fps = w2v_fingerprints(fcfg, seed, inputs, code)
    train = [n for n in w2v_fps if not _reusable(out, old, n, w2v_fps[n])]
    corpora = {n: stage / f"corpus_{n}.txt" for n in w2v_fps}
    if train or shared_distinct(spec):
        files = {n: open(corpora[n], "w") for n in train}
        try:
            max_len = int(fcfg["w2v"]["max_sentence_len"])
            for b in tqdm(range(staged.n_buckets), desc="features: corpus / distinct", unit="bucket",
                          disable=not progress, file=sys.stderr):
                rs = RowSet(partition.read_bucket(staged, b, ["userid", "feedid", "date_", "device"],
                                                  staged.days()), static, labels=False)
                for kind, item, _ in W2V_KINDS:
                    if f"{kind}_w2v" in files:
                        write_sentences(files[f"{kind}_w2v"], user_sequences(
                            rs.expo["userid"], rs.expo[item], rs.expo["date_"], max_len))
                accumulate_distinct(shared, spec, rs, todo, first_day)
        finally:
            for f in files.values():
                f.close()
    timings["pass_a_s"] = round(time.perf_counter() - t, 2)
    t = time.perf_counter()
    w2v, w2v_entries = build_w2v(corpora, fcfg, seed, w2v_fps, static, out, old, timings)
    pretrained = {"feed_pca": pca, **w2v}
    timings["w2v_total_s"] = round(time.perf_counter() - t, 2)

    cardinality = {"userid": staged.n_users, "feedid": int(static["feedid"].max()) + 1,
                   "device": staged.max_device + 1,
                   **{c: int(static[c].max()) + 1 for c in static_mod.FEED_CATEGORICAL}}
    build_key = obj_digest({"fps": {d: fps[d] for d in todo}, "edges": staged.edges.tolist()})
    resume = old.get("building") if old.get("building", {}).get("key") == build_key else None
    if resume is None:
        resume = {"key": build_key, "buckets_done": [], "parts": {str(d): [] for d in todo}}
    for d in todo:   # keep the parts of finished buckets only
        resume["parts"][str(d)] = [p for p in resume["parts"][str(d)]
                                   if p["bucket"] in resume["buckets_done"]]
        _remove_day(out, d, {f for p in resume["parts"][str(d)] for f in (p["file"], p.get("users")) if f})
    manifest = {
        "version": FEATURES_VERSION,
        "description": describe(fcfg),
        "key_columns": list(KEY_COLUMNS),
        "row_key": ROW_KEY,
        "columns": columns,
        "groups": list(dict.fromkeys(c["group"] for c in columns)),
        "cardinality": cardinality,
        "day_tables": {k: v for k, v in old_days.items()
                       if int(k) in fps and int(k) not in todo and _day_complete(out, v, fps[int(k)])},
        "side_tables": {
            "feeds": {"file": "feeds.parquet", "key": ["feedid"]},
            "authors": {"file": "authors.parquet", "key": ["authorid"]},
            "users": {"file": "users/day=DD/part-BB.parquet", "key": ["userid", "date_"]},
        },
        "pretrained": {"feed_pca": pca_entry, **w2v_entries},
        "feed_lists": feed_lists,
        "inputs": inputs,
        "seed": seed,
        "buckets": {"n": staged.n_buckets, "user_edges": staged.edges.tolist()},
        "static_fingerprint": static_fp,
        "building": resume,
    }
    write_json(manifest, out / MANIFEST)

    # pass B over the buckets: every todo day's rows of the bucket
    t = time.perf_counter()
    day_cols = [c["name"] for c in columns if c["table"] == "day"] + [ROW_KEY]
    dtypes = {**{c["name"]: c["dtype"] for c in columns}, ROW_KEY: "int32"}
    user_vectors = fcfg["w2v"].get("user_vectors", True)
    all_cols = ["userid", "feedid", "date_", "device", *partition.LABEL_COLUMNS]
    for b in tqdm(range(staged.n_buckets), desc="features: buckets", unit="bucket", disable=not progress,
                  file=sys.stderr):
        if b in resume["buckets_done"]:
            continue
        rs = RowSet(partition.read_bucket(staged, b, all_cols, staged.days()), static)
        hist = build_histories(spec, rs.expo, rs.n_labelled, rs.labelled, shared.tables)
        vec_tables = user_vector_tables(rs, pretrained, staged.n_users)
        for d in todo:
            rows = rs.day_rows(d)
            if rows.stop == rows.start and b > 0:
                continue
            table, side = build_day(d, rs, static, spec, hist, vec_tables, pretrained, fcfg, first_day,
                                    shared.precomputed(spec, d))
            table = table[day_cols].astype({c: dtypes[c] for c in day_cols}, copy=False)
            if table.isna().any().any():
                bad = table.columns[table.isna().any()].tolist()
                raise AssertionError(f"day {d}: NaN in {bad[:5]}")
            entry = {"file": part_file(d, b), "bucket": b, "rows": int(len(table))}
            write_parquet(table, out / entry["file"])
            if user_vectors and side is not None:
                entry["users"] = user_part_file(d, b)
                write_parquet(side, out / entry["users"])
            resume["parts"][str(d)] = [p for p in resume["parts"][str(d)] if p["file"] != entry["file"]] + [entry]
        resume["buckets_done"].append(b)
        write_json(manifest, out / MANIFEST)
    for d in todo:
        parts = sorted(resume["parts"][str(d)], key=lambda p: p["bucket"])
        manifest["day_tables"][str(d)] = {"parts": parts, "rows": int(sum(p["rows"] for p in parts)),
                                          "fingerprint": fps[d]}
    manifest["day_tables"] = dict(sorted(manifest["day_tables"].items(), key=lambda kv: int(kv[0])))
    del manifest["building"]
    write_json(manifest, out / MANIFEST)
    shutil.rmtree(stage, ignore_errors=True)
    timings["days_s"] = round(time.perf_counter() - t, 2)
    timings["total_s"] = round(time.perf_counter() - t0, 2)
    return {"built": todo, "skipped": [d for d in days if d not in todo], "timings": timings,
            "n_columns": len(columns), "buckets": staged.n_buckets,
            "rows": {d: manifest["day_tables"][str(d)]["rows"] for d in todo}}
