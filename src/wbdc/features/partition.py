"""User buckets and the staging pass of the out-of-core feature build.

The exposure rows (prepared actions of days 1..14, test rows as day 15) are split once into
``<stage>/day=DD/bucket=BB.parquet``: bucket ``b`` holds the users with ids in
``[edges[b], edges[b + 1])``, and every row keeps ``row``, its position among its day's rows in
the prepared order (the order of ``FeatureStore.load_day`` and ``load_labels``).  Buckets are
ranges of user ids, cut so that they carry about the same number of rows; concatenating the
buckets in order therefore lists users in ascending id order, whatever the number of buckets.

Two read patterns follow from that layout, and both rebuild the exact row order an in-memory
build sees:

* :func:`read_day` -- one day, every bucket, sorted back by ``row`` (the shared per-feed,
  per-author... tables are aggregated from it, one day at a time);
* :func:`read_bucket` -- one bucket, every day, in (day, prepared order) order (a user's rows, so
  every user-keyed statistic, live in exactly one bucket).

Peak memory of the staging pass: one batch of input rows plus the per-(day, bucket) buffers,
each flushed at ``FLUSH_ROWS`` rows, and all of them together held under ``BUFFER_ROWS`` (the
largest are flushed first); independent of the input's size and of the number of buckets.
"""
from __future__ import annotations

import shutil
from dataclasses import dataclass
from pathlib import Path

import numpy as np
import pyarrow as pa
import pyarrow.parquet as pq

from ..io import InputError
from ..schema import ACTIONS, TEST_DAY

BATCH_ROWS = 1 << 20
FLUSH_ROWS = 1 << 18
BUFFER_ROWS = 1 << 21
LABEL_COLUMNS = (*ACTIONS, "play", "stay")
ID_COLUMNS = ("userid", "feedid", "date_", "device")


def stage_file(stage: Path, d: int, b: int) -> Path:
    return stage / f"day={d:02d}" / f"bucket={b:02d}.parquet"


def bucket_edges(user_rows: np.ndarray, n_buckets: int) -> np.ndarray:
    """``n_buckets + 1`` ascending user-id edges cutting ``user_rows`` (rows per user id) into
    ranges of about equal row counts; a bucket may be empty when one user outweighs it."""
    n = len(user_rows)
    cum = np.cumsum(user_rows, dtype=np.int64)
    total = int(cum[-1]) if n else 0
    inner = [int(np.searchsorted(cum, total * b / n_buckets, side="right")) for b in range(1, n_buckets)]
    edges = np.array([0, *inner, n], dtype=np.int64)
    return np.maximum.accumulate(edges)


@dataclass
class Staged:
    """What the staging pass learnt besides the files."""
    dir: Path
    edges: np.ndarray            # [P + 1] user-id edges
    day_rows: dict[int, int]     # rows per day (days 1..15)
    bucket_rows: np.ndarray      # [P] rows per bucket
    n_users: int                 # max userid + 1
    max_device: int

    @property
    def n_buckets(self) -> int:
        return len(self.edges) - 1

    def days(self) -> list[int]:
        return sorted(d for d, n in self.day_rows.items() if n)


def _batches(path: Path, columns: list[str]):
    pf = pq.ParquetFile(path)
    missing = [c for c in columns if c not in pf.schema_arrow.names]
    if missing:
        raise InputError(f"{path}: column '{missing[0]}' missing; run the prepare stage (src/stages/prepare.py)")
    for batch in pf.iter_batches(batch_size=BATCH_ROWS, columns=columns):
        yield {c: batch.column(c).to_numpy(zero_copy_only=False) for c in columns}


def count_users(prepared: Path) -> tuple[np.ndarray, int, int]:
    """(rows per user id, max feedid, max device) over the actions and the test rows."""
    counts = np.zeros(0, np.int64)
    max_feed = max_dev = 0
    for name in ("actions.parquet", "test.parquet"):
        for cols in _batches(prepared / name, ["userid", "feedid", "device"]):
            u = cols["userid"].astype(np.int64)
            if len(u) and u.min() < 0:
                raise InputError(f"{prepared / name}: negative userid; run the prepare stage")
            c = np.bincount(u)
            if len(c) > len(counts):
                counts = np.r_[counts, np.zeros(len(c) - len(counts), np.int64)]
            counts[:len(c)] += c
            max_feed = max(max_feed, int(cols["feedid"].max(initial=0)))
            max_dev = max(max_dev, int(cols["device"].max(initial=0)))
    return counts, max_feed, max_dev


class _Writers:
    """One ParquetWriter per (day, bucket), fed through buffers flushed as row groups."""

    def __init__(self, stage: Path):
        self.stage = stage
        self.buf: dict[tuple[int, int], list[dict[str, np.ndarray]]] = {}
        self.n: dict[tuple[int, int], int] = {}
        self.writers: dict[tuple[int, int], pq.ParquetWriter] = {}
        self.total = 0

    def add(self, key: tuple[int, int], cols: dict[str, np.ndarray]) -> None:
        self.buf.setdefault(key, []).append(cols)
        self.n[key] = self.n.get(key, 0) + len(cols["row"])
        self.total += len(cols["row"])
        if self.n[key] >= FLUSH_ROWS:
            self.flush(key)
        while self.total > BUFFER_ROWS:          # many (day, bucket) files: bound their sum
            self.flush(max(self.n, key=self.n.get))

    def flush(self, key: tuple[int, int]) -> None:
        parts = self.buf.pop(key, [])
        self.total -= self.n.get(key, 0)
        self.n[key] = 0
        if not parts:
            return
        table = pa.table({c: np.concatenate([p[c] for p in parts]) for c in parts[0]})
        w = self.writers.get(key)
        if w is None:
            path = stage_file(self.stage, *key)
            path.parent.mkdir(parents=True, exist_ok=True)
            w = self.writers[key] = pq.ParquetWriter(path, table.schema, compression="lz4", use_dictionary=False)
        w.write_table(table)

    def close(self) -> None:
        for key in list(self.buf):
            self.flush(key)
        for w in self.writers.values():
            w.close()


def stage_rows(prepared: Path, stage: Path, n_buckets: int, progress=None) -> Staged:
    """Split the prepared exposure rows into ``stage/day=DD/bucket=BB.parquet`` (see module doc)."""
    if stage.exists():
        shutil.rmtree(stage)
    stage.mkdir(parents=True)
    user_rows, _, max_dev = count_users(prepared)
    edges = bucket_edges(user_rows, n_buckets)
    day_rows = {d: 0 for d in range(1, TEST_DAY + 1)}
    writers = _Writers(stage)
    try:
        sources = (("actions.parquet", ["userid", "feedid", "date_", "device", *LABEL_COLUMNS]),
                   ("test.parquet", ["userid", "feedid", "device"]))
        for name, columns in sources:
            for cols in _batches(prepared / name, columns):
                n = len(cols["userid"])
                if name == "test.parquet":
                    cols["date_"] = np.full(n, TEST_DAY, np.int8)
                day = cols["date_"].astype(np.int64)
                if n and (day.min() < 1 or day.max() > TEST_DAY):
                    raise InputError(f"{prepared / name}: date_ outside 1..{TEST_DAY}; run the prepare stage")
                bucket = np.searchsorted(edges[1:-1], cols["userid"].astype(np.int64), side="right")
                code = day * n_buckets + bucket
                order = np.argsort(code, kind="stable")
                code_sorted = code[order]
                starts = np.flatnonzero(np.r_[True, code_sorted[1:] != code_sorted[:-1]]) if n else []
                ends = np.r_[starts[1:], n] if n else []
                # position of each row within its day: running count of the day's rows so far
                row = np.empty(n, np.int64)
                day_sorted_order = np.argsort(day, kind="stable")
                ds = day[day_sorted_order]
                dstarts = np.flatnonzero(np.r_[True, ds[1:] != ds[:-1]]) if n else []
                for s, e in zip(dstarts, np.r_[dstarts[1:], n] if n else []):
                    d = int(ds[s])
                    row[day_sorted_order[s:e]] = day_rows[d] + np.arange(e - s)
                    day_rows[d] += int(e - s)
                for s, e in zip(starts, ends):
                    c = int(code_sorted[s])
                    idx = order[s:e]
                    part = {k: v[idx] for k, v in cols.items()}
                    part["date_"] = part["date_"].astype(np.int8)
                    part["row"] = row[idx].astype(np.int32)
                    writers.add((c // n_buckets, c % n_buckets), part)
                if progress is not None:
                    progress(n)
    finally:
        writers.close()
    bucket_rows = np.array([int(user_rows[edges[b]:edges[b + 1]].sum()) for b in range(n_buckets)])
    return Staged(stage, edges, day_rows, bucket_rows, len(user_rows), max_dev)


def _read(path: Path, columns: list[str] | None) -> dict[str, np.ndarray]:
    t = pq.read_table(path, columns=columns, partitioning=None)
    return {c: t.column(c).to_numpy() for c in t.column_names}


def _concat(parts: list[dict[str, np.ndarray]], columns: list[str]) -> dict[str, np.ndarray]:
    return {c: np.concatenate([p[c] for p in parts]) if parts else np.zeros(0, np.int32) for c in columns}


def day_columns(d: int, columns: list[str]) -> list[str]:
    """``columns`` minus the label columns the test day does not have."""
    return [c for c in columns if d < TEST_DAY or c not in LABEL_COLUMNS]


def read_day(staged: Staged, d: int, columns: list[str]) -> dict[str, np.ndarray]:
    """Day ``d``'s rows of every bucket, in prepared order (sorted by ``row``)."""
    cols = day_columns(d, [*columns, "row"])
    parts = [_read(p, cols) for b in range(staged.n_buckets) if (p := stage_file(staged.dir, d, b)).exists()]
    out = _concat(parts, cols)
    order = np.argsort(out["row"], kind="stable")
    if not np.array_equal(out["row"][order], np.arange(len(order))):
        raise AssertionError(f"staged rows of day {d} are not a permutation of 0..{len(order) - 1}")
    return {c: v[order] for c, v in out.items()}


def read_bucket(staged: Staged, b: int, columns: list[str], days: list[int]) -> dict[str, np.ndarray]:
    """Bucket ``b``'s rows of ``days`` (ascending), in (day, prepared order) order.  Label
    columns of the test day are filled with zeros and must not be read (the labelled rows are the
    prefix of days <= 14)."""
    parts = []
    for d in sorted(days):
        p = stage_file(staged.dir, d, b)
        if not p.exists():
            continue
        part = _read(p, day_columns(d, [*columns, "row"]))
        n = len(part["row"])
        for c in columns:
            if c not in part:
                part[c] = np.zeros(n, np.int32 if c in ("play", "stay") else np.int8)
        parts.append(part)
    return _concat(parts, [*columns, "row"])
