"""Assemble the ``features`` stage: one partitioned table per target day, side tables,
pretrained tables and the manifest that :class:`~wbdc.features.store.FeatureStore` reads.

The columns come from feature families (:mod:`wbdc.features.families`: ids, static, window
statistics, word2vec, PCA affinity), each declaring its columns and computing them through the
same hooks; this module only walks the rows.

Out of core, in user buckets (``features.buckets``; ``auto`` = the fewest whose estimated peak
fits ``data.memory_gb``).  A bucket is a range of user ids holding about 1/P of the rows; every
user-keyed statistic (user, user x author, user vectors) lives inside one bucket.  Order of work:

1. stage: split the prepared rows into ``.stage/day=DD/bucket=BB.parquet`` (streamed);
2. shared pass (``Family.shared_day``), one day at a time over every bucket in prepared order:
   per-(key, day) aggregates of the keys without userid (feed, author, singer, tag) and the
   global rates; same-day counts of those keys;
3. scan (``Family.scan_bucket``), one bucket at a time, label-free: the word2vec corpora
   (buckets are ascending user ranges, so the corpus is in user order whatever P is) and
   distinct counts keyed by shared keys (author -> distinct users: summed over the buckets,
   which hold disjoint users); then the fits (``Family.fit``: word2vec, PCA);
4. pass B (``Family.open_bucket`` / ``transform``) over the buckets: for each target day d, the bucket's rows of day d get their
   features from history tables cut with ``before(d)``; written as ``day=DD/part-BB.parquet``
   with ``row``, the row's position in the day's prepared order.

Every per-key sum adds the same rows in the same order whatever P is, so the values do not
depend on the number of buckets (tests/test_features_buckets.py checks P = 1 against P = 3).

Incremental: each day carries a fingerprint = digest of (features config, seed, digests of the
prepared inputs, this package's source but the store reader, d).  A day whose parts exist and whose manifest
fingerprint matches is skipped; when every day matches, nothing is loaded at all.  A build that
stops part-way resumes at the first unfinished bucket.  Pretrained tables carry their own
fingerprints, so e.g. changing a window reuses the word2vec vectors.
"""
from __future__ import annotations

import shutil
import sys
import time
from pathlib import Path

import pandas as pd
import pyarrow.parquet as pq
from tqdm import tqdm

from ..budget import choose_buckets
from ..cluster import process_peak_mb, worker_peaks_mb
from ..io import atomic_path, file_digest, obj_digest, read_json, write_json, write_parquet
from ..paths import Paths
from ..schema import TEST_DAY
from . import partition
from . import static as static_mod
from .families import FAMILIES, FEATURES_VERSION, Context, RowSet, call, column_specs, run_shared
from .store import KEY_COLUMNS, MANIFEST, ROW_GROUP_ROWS, ROW_KEY, day_dir, part_file, user_part_file

INPUT_FILES = ("actions.parquet", "test.parquet", "feeds.parquet",
               "feed_embeddings.npy", "feed_embedding_ids.npy")
PREPARE_HINT = "run the prepare stage (src/stages/prepare.py)"


def _log(msg: str) -> None:
    print(f"[features] {msg}", file=sys.stderr, flush=True)


# ----------------------------------------------------------------------------- fingerprints

#: modules of this package that only read the store (``FeatureStore``): the values a build writes
#: do not depend on them, so changing them keeps every table and pretrained vector (a rebuild at
#: the final round's size is two hours); the layout constants the build takes from them are in
#: the digest instead
READER_MODULES = ("store.py",)


def code_digest(here: Path | None = None) -> str:
    """Digest of the source that shapes the written values: every module of this package but
    :data:`READER_MODULES`, plus the store layout the build writes with."""
    here = Path(__file__).resolve().parent if here is None else Path(here)
    layout = {"key_columns": list(KEY_COLUMNS), "manifest": MANIFEST, "row_group_rows": ROW_GROUP_ROWS,
              "row_key": ROW_KEY, "part": part_file(2, 3), "user_part": user_part_file(2, 3)}
    return obj_digest({"layout": layout, **{p.name: file_digest(p) for p in sorted(here.glob("*.py"))
                                            if p.name not in READER_MODULES}})


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


# ----------------------------------------------------------------------------- pass B

class BucketJob:
    """Pass B for one user bucket: its histories, then its rows of every todo day, written as
    ``day=DD/part-BB.parquet`` (+ the users side table); returns {day: manifest part entry}.
    Self-contained and picklable, so a Dask worker can run it (files are written atomically, so a
    task retried elsewhere after a worker died leaves no half-written part)."""

    def __init__(self, ctx: Context, families: list, columns: list[dict], todo: list[int]):
        self.ctx, self.families, self.todo = ctx, families, list(todo)
        self.day_cols = [c["name"] for c in columns if c["table"] == "day"] + [ROW_KEY]
        self.user_cols = ["userid", "date_", *(c["name"] for c in columns if c["table"] == "users")]
        self.dtypes = {**{c["name"]: c["dtype"] for c in columns}, ROW_KEY: "int32", "userid": "int32",
                       "date_": "int8"}

    def __call__(self, b: int) -> dict[int, dict]:
        ctx, out = self.ctx, self.ctx.out
        all_cols = ["userid", "feedid", "date_", "device", *partition.LABEL_COLUMNS]
        rs = RowSet(partition.read_bucket(ctx.staged, b, all_cols, ctx.staged.days()), ctx.static)
        states = [call(ctx, f, "open_bucket", rs) for f in self.families]
        entries = {}
        for d in self.todo:
            rows = rs.day_rows(d)
            if rows.stop == rows.start and b > 0:
                continue
            day, side = {ROW_KEY: rs.row[rows]}, {}
            for f, state in zip(self.families, states):
                dc, uc = call(ctx, f, "transform", d, rs, state)
                day.update(dc)
                side.update(uc)
            dtypes = self.dtypes
            table = pd.DataFrame(day)[self.day_cols].astype({c: dtypes[c] for c in self.day_cols}, copy=False)
            if table.isna().any().any():
                bad = table.columns[table.isna().any()].tolist()
                raise AssertionError(f"day {d}: NaN in {bad[:5]}")
            entry = {"file": part_file(d, b), "bucket": b, "rows": int(len(table))}
            write_parquet(table, out / entry["file"], row_group_rows=ROW_GROUP_ROWS)
            if len(self.user_cols) > 2:
                entry["users"] = user_part_file(d, b)
                write_parquet(pd.DataFrame(side)[self.user_cols].astype(
                    {c: dtypes[c] for c in self.user_cols}, copy=False), out / entry["users"])
            entries[d] = entry
        return entries


def _bucket_task(job: BucketJob, b: int) -> tuple[dict[int, dict], dict[str, float], float]:
    """Run on a worker: the bucket's part entries, the seconds each family took on it and the
    worker process's peak RSS (MB)."""
    before = dict(job.ctx.timings)
    entries = job(b)
    spent = {k: v - before.get(k, 0.0) for k, v in job.ctx.timings.items() if k.startswith("family_")}
    return entries, spent, process_peak_mb()


def _run_on_cluster(client, job: BucketJob, buckets: list[int], finished, bar, ctx: Context) -> None:
    """Pass B as one Dask task per bucket.  The job (config, static table, the shared per-(key,
    day) tables and the fitted vectors) is scattered once to every worker; the client records
    each bucket in the manifest as it completes (any order: parts are sorted at the end)."""
    from distributed import as_completed

    if not buckets:
        return
    shared = client.scatter(job, broadcast=True)
    futures = {client.submit(_bucket_task, shared, b, key=f"features-bucket-{b}-{ctx.code[:8]}", pure=False): b
               for b in buckets}
    peaks = {}
    for fut in as_completed(futures):
        entries, spent, peak = fut.result()
        b = futures[fut]
        finished(b, entries)
        for k, v in spent.items():
            ctx.timings[k] = round(ctx.timings.get(k, 0.0) + v, 3)
        peaks[b] = peak
        bar.update()
    ctx.peaks["days_worker_max"] = max(peaks.values())


def _fit_task(family):
    entries = family.fit()
    return family, entries, process_peak_mb()


def _fit_on_cluster(client, ctx: Context, family) -> dict:
    """word2vec's fit as one Dask task (it trains on the corpus files under the shared root);
    the fitted tables come back to the client, which ships them with the bucket job."""
    for f in family.files.values():                         # the corpora the scan wrote here
        f.close()
    family.files = {}
    t = time.perf_counter()
    fitted, entries, peak = client.submit(_fit_task, family, pure=False).result()
    family.tables = fitted.tables
    for k, v in fitted.ctx.timings.items():
        if k.endswith("_w2v_s") or k.endswith("_w2v_reused_s"):
            ctx.timings[k] = v
    key = f"family_{family.name}_s"
    ctx.timings[key] = round(ctx.timings.get(key, 0.0) + time.perf_counter() - t, 3)
    ctx.peaks["fit_w2v_worker"] = peak
    ctx.mark("fit_w2v")
    return entries


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


def run(paths: Paths, cfg: dict, progress: bool = True, force: bool = False, n_buckets: int | None = None,
        client=None) -> dict:
    """Build every stale target day (every day with ``force``, pretrained tables included);
    returns a summary with built / skipped days and timings.

    ``n_buckets``: user buckets (default: ``features.buckets``, ``auto`` = the fewest whose
    estimated peak fits ``data.memory_gb``).  The values written do not depend on it.
    ``client``: a ``distributed.Client``: the buckets of pass B run as one task each on its
    workers and word2vec's fit as one task; the files written are the same."""
    fcfg = cfg["features"]
    out = Path(paths.features)
    t0 = time.perf_counter()
    seed = feature_seed(cfg)
    days = target_days(cfg)
    inputs = input_digests(paths.prepared)
    code = code_digest()
    old = {} if force else load_manifest(out)
    ctx = Context(fcfg, seed, int(fcfg["first_history_day"]), code, inputs, paths.prepared, out, old,
                  static=None, todo=[], progress=progress)
    ctx.timings["digest_s"] = round(time.perf_counter() - t0, 2)
    ctx.mark("start")
    families = [f(ctx) for f in FAMILIES]           # validates the config before any work
    columns = column_specs(families)
    # every setting but the list of days and the bucket count shapes each day's table
    base_fp = {"v": FEATURES_VERSION, "seed": seed, "inputs": inputs, "code": code,
               "features": {k: v for k, v in fcfg.items() if k not in ("days", "buckets")}}
    fps = {d: obj_digest({**base_fp, "day": d}) for d in days}
    old_days = old.get("day_tables", {})
    todo = [d for d in days if not _day_complete(out, old_days.get(str(d)), fps[d])]
    if not todo:
        _log(f"all {len(days)} day tables are up to date; nothing to build")
        return {"built": [], "skipped": days, "timings": ctx.timings}
    ctx.todo = todo
    if n_buckets is None:
        n_buckets = choose_buckets(cfg, paths.prepared)
    _log(f"building days {todo} ({len(days) - len(todo)} up to date) in {n_buckets} user bucket(s)")

    t = time.perf_counter()
    feeds = pq.read_table(paths.prepared / "feeds.parquet")
    ctx.static = static = static_mod.feed_static(feeds)
    families = [f(ctx) for f in FAMILIES]
    stage = out / ".stage"
    with tqdm(desc="features: staging rows", unit="row", unit_scale=True, disable=not progress,
              file=sys.stderr) as bar:
        ctx.staged = staged = partition.stage_rows(paths.prepared, stage, n_buckets, progress=bar.update)
    ctx.timings["stage_s"] = round(time.perf_counter() - t, 2)
    ctx.mark("stage")

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
    ctx.timings["static_s"] = round(time.perf_counter() - t, 2)
    ctx.mark("static")

    t = time.perf_counter()
    run_shared(families, ctx)                        # one day at a time, every bucket
    ctx.timings["shared_s"] = round(time.perf_counter() - t, 2)
    ctx.mark("shared")
    t = time.perf_counter()
    scanners = [f for f in families if f.wants_scan()]
    if scanners:                                     # pass A: one bucket at a time, no labels
        for b in tqdm(range(staged.n_buckets), desc="features: scan", unit="bucket", disable=not progress,
                      file=sys.stderr):
            rs = RowSet(partition.read_bucket(staged, b, ["userid", "feedid", "date_", "device"], staged.days()),
                        static, labels=False)
            for f in scanners:
                call(ctx, f, "scan_bucket", rs)
    ctx.timings["scan_s"] = round(time.perf_counter() - t, 2)
    ctx.mark("scan")
    t = time.perf_counter()
    pretrained = {}
    for f in families:                               # label-free fits, fingerprinted
        if client is not None and f.name == "w2v" and f.wants_scan():
            pretrained.update(_fit_on_cluster(client, ctx, f))     # word2vec: one task
        else:
            pretrained.update(call(ctx, f, "fit"))
    ctx.timings["fit_s"] = round(time.perf_counter() - t, 2)
    ctx.mark("fit")

    build_key = obj_digest({"fps": {d: fps[d] for d in todo}, "edges": staged.edges.tolist()})
    resume = old.get("building") if old.get("building", {}).get("key") == build_key else None
    if resume is None:
        resume = {"key": build_key, "buckets_done": [], "parts": {str(d): [] for d in todo}}
    for d in todo:   # keep the parts of finished buckets only
        resume["parts"][str(d)] = [p for p in resume["parts"][str(d)] if p["bucket"] in resume["buckets_done"]]
        _remove_day(out, d, {f for p in resume["parts"][str(d)] for f in (p["file"], p.get("users")) if f})
    manifest = {
        "version": FEATURES_VERSION,
        "description": "One partitioned table per target day d (rows = that day's exposures). "
                       + " ".join(f.describe() for f in families),
        "key_columns": list(KEY_COLUMNS),
        "row_key": ROW_KEY,
        "columns": columns,
        "groups": list(dict.fromkeys(c["group"] for c in columns)),
        "families": [f.name for f in families],
        "cardinality": {"userid": staged.n_users, "feedid": int(static["feedid"].max()) + 1,
                        "device": staged.max_device + 1,
                        **{c: int(static[c].max()) + 1 for c in static_mod.FEED_CATEGORICAL}},
        "day_tables": {k: v for k, v in old_days.items()
                       if int(k) in fps and int(k) not in todo and _day_complete(out, v, fps[int(k)])},
        "side_tables": {
            "feeds": {"file": "feeds.parquet", "key": ["feedid"]},
            "authors": {"file": "authors.parquet", "key": ["authorid"]},
            "users": {"file": "users/day=DD/part-BB.parquet", "key": ["userid", "date_"]},
        },
        "pretrained": pretrained,
        "feed_lists": feed_lists,
        "inputs": inputs,
        "seed": seed,
        "buckets": {"n": staged.n_buckets, "user_edges": staged.edges.tolist()},
        "static_fingerprint": static_fp,
        "building": resume,
    }
    write_json(manifest, out / MANIFEST)

    # pass B: each bucket's history, then its rows of every todo day
    t = time.perf_counter()
    job = BucketJob(ctx, families, columns, todo)
    left = [b for b in range(staged.n_buckets) if b not in resume["buckets_done"]]

    def finished(b: int, entries: dict[int, dict]) -> None:
        for d, entry in entries.items():
            resume["parts"][str(d)].append(entry)
        resume["buckets_done"].append(b)
        write_json(manifest, out / MANIFEST)

    with tqdm(total=len(left), desc="features: buckets", unit="bucket", disable=not progress,
              file=sys.stderr) as bar:
        if client is None:
            for b in left:
                finished(b, job(b))
                bar.update()
        else:
            _run_on_cluster(client, job, left, finished, bar, ctx)
    for d in todo:
        parts = sorted(resume["parts"][str(d)], key=lambda p: p["bucket"])
        manifest["day_tables"][str(d)] = {"parts": parts, "rows": int(sum(p["rows"] for p in parts)),
                                          "fingerprint": fps[d]}
    manifest["day_tables"] = dict(sorted(manifest["day_tables"].items(), key=lambda kv: int(kv[0])))
    del manifest["building"]
    write_json(manifest, out / MANIFEST)
    shutil.rmtree(stage, ignore_errors=True)
    ctx.timings["days_s"] = round(time.perf_counter() - t, 2)
    ctx.mark("days")
    ctx.timings["total_s"] = round(time.perf_counter() - t0, 2)
    workers = {}
    if client is not None:     # each worker process's peak RSS (MB), by worker address
        workers = worker_peaks_mb(client)
    return {"built": todo, "skipped": [d for d in days if d not in todo], "timings": ctx.timings,
            "peaks_mb": ctx.peaks, **({"worker_peaks_mb": workers} if workers else {}),
            "n_columns": len(columns), "buckets": staged.n_buckets,
            "rows": {d: manifest["day_tables"][str(d)]["rows"] for d in todo}}
