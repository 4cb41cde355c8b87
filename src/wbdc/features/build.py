"""Assemble the ``features`` stage: one table per target day, side tables, pretrained tables
and the manifest that :class:`~wbdc.features.store.FeatureStore` reads.

Order of work: load the prepared caches; build every label-free piece once (static feed
table, dense key ids of every exposure row, feed PCA, word2vec); aggregate the labelled rows
per (key, day); then for each target day d hand the builders the day's exposures (no label
column) and the aggregates cut with ``before(d)``.

Incremental: each day carries a fingerprint = digest of (features config, seed, digests of the
prepared inputs, this package's source, d).  A day whose file exists and whose manifest
fingerprint matches is skipped; when every day matches, nothing is loaded at all.  Pretrained
tables carry their own fingerprints, so e.g. changing a window reuses the word2vec vectors.
"""
from __future__ import annotations

import sys
import time
from pathlib import Path

import numpy as np
import pandas as pd
import pyarrow.parquet as pq
from tqdm import tqdm

from ..io import InputError, atomic_path, file_digest, obj_digest, read_json, write_json, write_npy, write_parquet
from ..paths import Paths
from ..schema import ACTIONS, TEST_DAY
from . import static as static_mod
from .embedding_pca import fit_pca
from .history import DailyTable, aggregate_vectors, cosine, history_mean, id_rows, window_days
from .store import KEY_COLUMNS, MANIFEST, day_file, user_day_file
from .w2v import train_word2vec, user_sequences, vector_table
from .window_stats import VALUE_COLUMNS, WindowSpec, build_histories, window_features

FEATURES_VERSION = 1
INPUT_FILES = ("actions.parquet", "test.parquet", "feeds.parquet",
               "feed_embeddings.npy", "feed_embedding_ids.npy")
PREPARE_HINT = "run the prepare stage (src/stages/prepare.py)"
ID_COLUMNS = ("userid", "feedid", "device", *static_mod.FEED_CATEGORICAL)
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


# ----------------------------------------------------------------------------- data

class Prepared:
    """The prepared caches plus the label-free per-exposure arrays every builder shares."""

    def __init__(self, prepared: Path):
        t = time.perf_counter()
        self.actions = pd.read_parquet(prepared / "actions.parquet")
        self.test = pd.read_parquet(prepared / "test.parquet")
        self.feeds = pq.read_table(prepared / "feeds.parquet")
        self.emb_ids = np.load(prepared / "feed_embedding_ids.npy").astype(np.int64)
        self.emb = np.load(prepared / "feed_embeddings.npy", mmap_mode="r")
        missing = [c for c in ("userid", "feedid", "date_", "device", *ACTIONS, "play", "stay")
                   if c not in self.actions.columns]
        if missing:
            raise InputError(f"{prepared / 'actions.parquet'}: column '{missing[0]}' missing; {PREPARE_HINT}")
        self.static = static_mod.feed_static(self.feeds)
        n_a = len(self.actions)
        self.n_actions = n_a
        expo = {
            "userid": np.r_[self.actions["userid"].to_numpy(), self.test["userid"].to_numpy()].astype(np.int32),
            "feedid": np.r_[self.actions["feedid"].to_numpy(), self.test["feedid"].to_numpy()].astype(np.int32),
            "date_": np.r_[self.actions["date_"].to_numpy(), np.full(len(self.test), TEST_DAY)].astype(np.int8),
            "device": np.r_[self.actions["device"].to_numpy(), self.test["device"].to_numpy()].astype(np.int8),
        }
        frow = id_rows(self.static["feedid"].to_numpy().astype(np.int64), expo["feedid"].astype(np.int64))
        if (frow < 0).any():
            i = int(np.flatnonzero(frow < 0)[0])
            where = (f"actions.parquet row {i}" if i < n_a else f"test.parquet row {i - n_a}")
            raise InputError(f"{where}: feedid {expo['feedid'][i]} not in feeds.parquet")
        self.feed_row = frow
        for c in static_mod.FEED_CATEGORICAL:
            expo[c] = self.static[c].to_numpy()[frow]
        self.expo = expo
        vps = self.static["videoplayseconds"].to_numpy()[frow[:n_a]].astype(np.float64)
        play = self.actions["play"].to_numpy().astype(np.float64)
        self.labelled = {a: self.actions[a].to_numpy() for a in ACTIONS}
        self.labelled["play"] = self.actions["play"].to_numpy().astype(np.int64)
        self.labelled["stay"] = self.actions["stay"].to_numpy().astype(np.int64)
        self.labelled["finish"] = play / (np.maximum(vps, 1.0) * 1000.0)
        order = np.argsort(expo["date_"], kind="stable")
        self.day_order = order
        self.day_bounds = np.searchsorted(expo["date_"][order], np.arange(0, TEST_DAY + 2))
        self.load_seconds = time.perf_counter() - t

    def day_rows(self, d: int) -> np.ndarray:
        """Exposure-row indices of day d in stored order (actions for d <= 14, test for 15)."""
        return self.day_order[self.day_bounds[d]:self.day_bounds[d + 1]]

    def cardinality(self) -> dict[str, int]:
        out = {}
        for c in ID_COLUMNS:
            vals = [self.expo[c].max(initial=0)]
            if c in self.static.columns:
                vals.append(self.static[c].max())
            out[c] = int(max(vals)) + 1
        return out


# ----------------------------------------------------------------------------- pretrained

def _pretrained_entry(name: str, key: str, dim: int, fp: str, extra: dict | None = None) -> dict:
    return {"file": f"pretrained/{name}.npy", "ids_file": f"pretrained/{name}_ids.npy", "key": key,
            "dim": int(dim), "fingerprint": fp, **(extra or {})}


def _load_or(out: Path, old: dict, name: str, fp: str, make):
    """Reuse pretrained/<name> when its manifest fingerprint matches, else ``make()`` and write."""
    e = old.get("pretrained", {}).get(name)
    if e and e.get("fingerprint") == fp and (out / e["file"]).exists() and (out / e["ids_file"]).exists():
        return np.load(out / e["ids_file"]), np.load(out / e["file"]), e, False
    ids, mat, entry = make()
    write_npy(ids.astype(np.int32), out / entry["ids_file"])
    write_npy(mat.astype(np.float32), out / entry["file"])
    return ids, mat, entry, True


def build_pretrained(data: Prepared, fcfg: dict, seed: int, inputs: dict, out: Path, old: dict,
                     timings: dict) -> tuple[dict[str, tuple[np.ndarray, np.ndarray]], dict]:
    tables, entries = {}, {}
    code = code_digest()
    t = time.perf_counter()
    fp = obj_digest({"v": FEATURES_VERSION, "pca": fcfg["pca"], "seed": seed, "code": code,
                     "emb": [inputs["feed_embeddings.npy"], inputs["feed_embedding_ids.npy"]]})

    def make_pca():
        mat, evr = fit_pca(np.asarray(data.emb), int(fcfg["pca"]["dim"]), seed)
        return data.emb_ids, mat, _pretrained_entry("feed_pca", "feedid", mat.shape[1], fp,
                                                    {"explained_variance": round(evr, 6)})
    ids, mat, entries["feed_pca"], made = _load_or(out, old, "feed_pca", fp, make_pca)
    tables["feed_pca"] = (ids, mat)
    timings["pca_s" if made else "pca_reused_s"] = round(time.perf_counter() - t, 2)

    wcfg = fcfg["w2v"]
    workers = w2v_workers(fcfg)
    feed_ids = data.static["feedid"].to_numpy().astype(np.int64)
    author_ids = np.unique(data.static["authorid"].to_numpy()).astype(np.int64)
    for kind, item, universe, s in (("feed", "feedid", feed_ids, seed), ("author", "authorid", author_ids, seed + 1)):
        t = time.perf_counter()
        name = f"{kind}_w2v"
        fp = obj_digest({"v": FEATURES_VERSION, "cfg": wcfg[kind], "max_len": wcfg["max_sentence_len"],
                         "workers": workers, "seed": s, "code": code,
                         "inputs": [inputs[k] for k in ("actions.parquet", "test.parquet", "feeds.parquet")]})

        def make(kind=kind, item=item, universe=universe, s=s, fp=fp):
            sents = user_sequences(data.expo["userid"], data.expo[item], data.expo["date_"],
                                   int(wcfg["max_sentence_len"]))
            wv = train_word2vec(sents, wcfg[kind], s, workers)
            return universe, vector_table(wv, universe), _pretrained_entry(
                name, item, wv.vector_size, fp, {"workers": workers, "vocab": len(wv.key_to_index)})
        ids, mat, entries[name], made = _load_or(out, old, name, fp, make)
        tables[name] = (ids, mat)
        timings[f"{name}_s" if made else f"{name}_reused_s"] = round(time.perf_counter() - t, 2)
    return tables, entries


# ----------------------------------------------------------------------------- one day

def build_day(d: int, data: Prepared, spec: WindowSpec, hist, vec_tables: dict[str, DailyTable],
              pretrained: dict, fcfg: dict, first_day: int) -> tuple[pd.DataFrame, pd.DataFrame | None]:
    """Feature table (and users side table) of target day d.

    Builders see day d's exposure ids (no label column) and history tables cut before d."""
    rows = data.day_rows(d)
    ex = data.expo
    df: dict[str, np.ndarray] = {
        "userid": ex["userid"][rows], "feedid": ex["feedid"][rows],
        "date_": np.full(len(rows), d, dtype=np.int8), "device": ex["device"][rows],
    }
    for c in static_mod.FEED_CATEGORICAL:
        df[c] = ex[c][rows].astype(np.int32)
    frow = data.feed_row[rows]
    for c in static_mod.static_dense_columns():
        df[c] = data.static[c].to_numpy()[frow].astype(np.float32)

    cut = {k: t.before(d) for k, t in hist.tables.items()}
    target_ids = {k: v[rows] for k, v in hist.key_ids.items()}
    df.update(window_features(spec, cut, target_ids, hist.pair_parent, d, first_day))

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
    side_df = pd.DataFrame(side) if fcfg["w2v"].get("user_vectors", True) else None
    return pd.DataFrame(df), side_df


# ----------------------------------------------------------------------------- stage

def load_manifest(out: Path) -> dict:
    p = out / MANIFEST
    return read_json(p) if p.exists() else {}


def run(paths: Paths, cfg: dict, progress: bool = True, force: bool = False) -> dict:
    """Build every stale target day (every day with ``force``, pretrained tables included);
    returns a summary with built / skipped days and timings."""
    fcfg = cfg["features"]
    out = Path(paths.features)
    t0 = time.perf_counter()
    timings: dict[str, float] = {}
    seed = feature_seed(cfg)
    days = target_days(cfg)
    first_day = int(fcfg["first_history_day"])
    columns = column_specs(fcfg)
    inputs = input_digests(paths.prepared)
    timings["digest_s"] = round(time.perf_counter() - t0, 2)
    code = code_digest()
    # every setting but the list of days shapes each day's table
    base_fp = {"v": FEATURES_VERSION, "features": {k: v for k, v in fcfg.items() if k != "days"}, "seed": seed, "inputs": inputs, "code": code}
    fps = {d: obj_digest({**base_fp, "day": d}) for d in days}
    old = {} if force else load_manifest(out)
    old_days = old.get("day_tables", {})
    todo = [d for d in days if old_days.get(str(d), {}).get("fingerprint") != fps[d]
            or not (out / day_file(d)).exists()]
    if not todo:
        _log(f"all {len(days)} day tables are up to date; nothing to build")
        return {"built": [], "skipped": days, "timings": timings}
    _log(f"building days {todo} ({len(days) - len(todo)} up to date)")

    t = time.perf_counter()
    data = Prepared(paths.prepared)
    timings["load_s"] = round(time.perf_counter() - t, 2)
    static_fp = obj_digest({"v": FEATURES_VERSION, "code": code, "feeds": inputs["feeds.parquet"],
                            "lists": fcfg["feed_lists"]})
    t = time.perf_counter()
    side_entries = {
        "feeds": {"file": "feeds.parquet", "key": ["feedid"]},
        "authors": {"file": "authors.parquet", "key": ["authorid"]},
        "users": {"file": "users/day_XX.parquet", "key": ["userid", "date_"]},
    }
    if old.get("static_fingerprint") != static_fp or not (out / "feeds.parquet").exists():
        write_parquet(data.static, out / "feeds.parquet")
        write_parquet(static_mod.author_static(data.static), out / "authors.parquet")
        lists = static_mod.feed_lists_table(data.feeds, list(fcfg["feed_lists"]))
        with atomic_path(out / "feed_lists.parquet") as tmp:
            pq.write_table(lists, tmp, compression="zstd")
    feed_lists = {"file": "feed_lists.parquet",
                  "fields": {f: {"cardinality": int(max(1, data.feeds.column(f).combine_chunks().values
                                                        .to_numpy().max(initial=-1) + 2))}
                             for f in fcfg["feed_lists"]}}
    timings["static_s"] = round(time.perf_counter() - t, 2)

    pretrained, pretrained_entries = build_pretrained(data, fcfg, seed, inputs, out, old, timings)

    t = time.perf_counter()
    spec = WindowSpec.from_config(fcfg["window_stats"])
    hist = build_histories(spec, data.expo, data.n_actions, data.labelled)
    timings["aggregate_s"] = round(time.perf_counter() - t, 2)

    t = time.perf_counter()
    n_a = data.n_actions
    users = data.expo["userid"][:n_a].astype(np.int64)
    day = data.expo["date_"][:n_a]
    n_users = int(data.expo["userid"].max()) + 1
    vec_tables = {}
    for kind, item in (("feed", "feedid"), ("author", "authorid")):
        ids_tab, mat = pretrained[f"{kind}_w2v"]
        rows = id_rows(ids_tab.astype(np.int64), data.expo[item][:n_a].astype(np.int64))
        vec_tables[f"{kind}_w2v"] = aggregate_vectors(users, day, n_users, rows, mat)
    engaged = np.zeros(n_a, dtype=bool)
    for a in ACTIONS:
        engaged |= data.labelled[a] > 0
    ids_tab, mat = pretrained["feed_pca"]
    prow = id_rows(ids_tab.astype(np.int64), data.expo["feedid"][:n_a][engaged].astype(np.int64))
    vec_tables["engaged_pca"] = aggregate_vectors(users[engaged], day[engaged], n_users, prow, mat)
    timings["user_vectors_s"] = round(time.perf_counter() - t, 2)

    manifest = {
        "version": FEATURES_VERSION,
        "description": describe(fcfg),
        "key_columns": list(KEY_COLUMNS),
        "columns": columns,
        "groups": list(dict.fromkeys(c["group"] for c in columns)),
        "cardinality": {c: n for c, n in data.cardinality().items()},
        "day_tables": {k: v for k, v in old_days.items()
                       if int(k) in fps and v.get("fingerprint") == fps[int(k)]},
        "side_tables": side_entries,
        "pretrained": pretrained_entries,
        "feed_lists": feed_lists,
        "inputs": inputs,
        "seed": seed,
        "static_fingerprint": static_fp,
    }
    write_json(manifest, out / MANIFEST)

    t = time.perf_counter()
    day_cols = [c["name"] for c in columns if c["table"] == "day"]
    dtypes = {c["name"]: c["dtype"] for c in columns}
    for d in tqdm(todo, desc="features: days", unit="day", disable=not progress, file=sys.stderr):
        table, side = build_day(d, data, spec, hist, vec_tables, pretrained, fcfg, first_day)
        table = table[day_cols].astype({c: dtypes[c] for c in day_cols}, copy=False)
        if table.isna().any().any():
            bad = table.columns[table.isna().any()].tolist()
            raise AssertionError(f"day {d}: NaN in {bad[:5]}")
        write_parquet(table, out / day_file(d))
        if side is not None:
            write_parquet(side, out / user_day_file(d))
        manifest["day_tables"][str(d)] = {"file": day_file(d), "rows": int(len(table)), "fingerprint": fps[d]}
        manifest["day_tables"] = dict(sorted(manifest["day_tables"].items(), key=lambda kv: int(kv[0])))
        write_json(manifest, out / MANIFEST)
    timings["days_s"] = round(time.perf_counter() - t, 2)
    timings["total_s"] = round(time.perf_counter() - t0, 2)
    return {"built": todo, "skipped": [d for d in days if d not in todo], "timings": timings,
            "n_columns": len(columns), "rows": {d: manifest["day_tables"][str(d)]["rows"] for d in todo}}
