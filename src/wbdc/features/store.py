"""FeatureStore: the one way model stages read the ``features`` stage's artifacts.

Layout under ``paths.features`` (all written by ``src/stages/features.py``)::

    manifest.json             what is built: days, columns (name, dtype, roles, group, table),
                              per-day fingerprints, side tables, pretrained tables, cardinalities
    day=DD/part-BB.parquet    target day DD (02..15), user bucket BB: one row per exposure of
                              the bucket's users on day DD, plus ``row``, the row's position in
                              the day's order (d <= 14: rows of data/prepared/actions.parquet
                              with date_ == d in stored order; d == 15: data/prepared/test.parquet
                              order).  Buckets are ascending user-id ranges (manifest
                              ``buckets.user_edges``); the manifest lists each day's parts.
    users/day=DD/part-BB.parquet
                              per-(userid, date_) user vectors of the part's users (history
                              strictly before date_), sorted by userid; columns with
                              ``table == "users"`` are joined into ``load_day`` / ``iter_day``
    feeds.parquet             static per-feed features (side table keyed by feedid)
    authors.parquet           static per-author features (side table keyed by authorid)
    feed_lists.parquet        per-feed manual keyword / tag id lists for the nets' multi-hot fields
    pretrained/<name>.npy, pretrained/<name>_ids.npy
                              pretrained vector tables (feed_pca, feed_w2v, author_w2v)

Column roles: ``key`` (userid, feedid, date_, device: always returned by ``load_day``),
``categorical`` (non-negative integer ids; columns whose source can be missing -- bgm ids,
first keyword / tag -- store ``raw id + 1`` with 0 meaning missing; the manifest says which via
``"offset": 1``), ``dense`` (float32 values, int8 flags), ``vector`` (components of per-(user, day) history
vectors, float32, joined from ``users/``; kept out of ``dense`` so tree models do not pick up
48 embedding components by default -- nets ask for them with ``columns("vector")``).  A column
may hold two roles: userid, feedid and device are both keys and categorical ids. Labels are never stored in the feature
tables; ``load_labels`` reads them from the prepared actions in the same order.

Parts are written in row groups of ``ROW_GROUP_ROWS`` rows; ``read_row_group`` reads one (the
block the nets' shuffle buffers are made of).

Reading: ``load_day`` returns a whole day in the day's order (the parts concatenated and put
back in ``row`` order); ``iter_day`` yields it part by part with the ``row`` key, so a model
can stream a day whose table does not fit in memory and still map every row to its label.
"""
from __future__ import annotations

import threading
from collections import OrderedDict
from functools import cached_property
from pathlib import Path
from typing import Iterable, Iterator, Sequence

import numpy as np
import pandas as pd
import pyarrow as pa
import pyarrow.parquet as pq

from ..io import InputError, file_digest, read_json
from ..paths import Paths
from ..schema import ACTIONS, LAST_TRAIN_DAY

MANIFEST = "manifest.json"
KEY_COLUMNS = ("userid", "feedid", "date_", "device")
ROLES = ("key", "categorical", "dense", "vector")
STAGE_HINT = "run the features stage first (src/stages/features.py)"


ROW_KEY = "row"
#: The engagement targets ``FeatureStore.engagement`` serves (the nets' auxiliary tasks).
ENGAGEMENT = ("finish_ratio", "log_stay")
#: Rows per parquet row group of a day part: the unit a streaming reader fetches (one block of
#: the nets' shuffle buffer, ``wbdc.nn.data.StreamedRows``) without decoding the whole part.
ROW_GROUP_ROWS = 16_384
#: Parts a thread keeps open (``FeatureStore._parquet``).
OPEN_PARTS = 2


def day_dir(d: int) -> str:
    return f"day={d:02d}"


def part_file(d: int, b: int) -> str:
    return f"{day_dir(d)}/part-{b:02d}.parquet"


def user_part_file(d: int, b: int) -> str:
    return f"users/{day_dir(d)}/part-{b:02d}.parquet"


def pack_actions(batch) -> np.ndarray:
    """One byte per row of a record batch (or table) holding the 7 action columns: bit i =
    ``ACTIONS[i]``."""
    bits = np.zeros(batch.num_rows, np.uint8)
    for i, a in enumerate(ACTIONS):
        bits |= (batch.column(a).to_numpy().astype(np.uint8) & 1) << i
    return bits


def unpack_labels(bits: np.ndarray) -> np.ndarray:
    """uint8 [N, 7] (ACTIONS order) from one byte per row (:func:`pack_actions`)."""
    return ((bits[:, None] >> np.arange(len(ACTIONS), dtype=np.uint8)) & 1).astype(np.uint8)


class FeatureStore:
    """Read-only view of ``features/``; cheap to create, reads tables lazily."""

    def __init__(self, paths: Paths):
        self.paths = paths
        self.dir = Path(paths.features)
        mpath = self.dir / MANIFEST
        if not mpath.exists():
            raise FileNotFoundError(f"{mpath}: missing; {STAGE_HINT}")
        self.manifest: dict = read_json(mpath)
        self._col = {c["name"]: c for c in self.manifest["columns"]}
        self._labels: pd.DataFrame | None = None
        self._ranges: dict[tuple[int, int], np.ndarray | None] = {}
        self._open = threading.local()      # per thread: the last few opened parts (``_parquet``)

    def __getstate__(self) -> dict:
        state = dict(self.__dict__)
        state.pop("_open")                  # open files stay on the machine that opened them
        return state

    def __setstate__(self, state: dict) -> None:
        self.__dict__.update(state)
        self._open = threading.local()

    def _parquet(self, path: Path) -> pq.ParquetFile:
        """``path`` opened, the last ``OPEN_PARTS`` kept per thread: a part's footer (about 1.3 MB
        of metadata per part at the final round's size) is parsed once for consecutive reads of
        its row groups instead of once per group."""
        cache = getattr(self._open, "files", None)
        if cache is None:
            cache = self._open.files = OrderedDict()
        f = cache.get(path)
        if f is None:
            f = cache[path] = pq.ParquetFile(path)
            while len(cache) > OPEN_PARTS:
                cache.popitem(last=False)[1].close()
        else:
            cache.move_to_end(path)
        return f

    # ------------------------------------------------------------------ description
    @property
    def days(self) -> list[int]:
        return sorted(int(d) for d in self.manifest["day_tables"])

    def columns(self, role: str, groups: Iterable[str] | None = None) -> list[str]:
        """Column names holding ``role`` (key, categorical, dense, vector), in table order;
        optionally only from ``groups``
        (the manifest's ``groups`` lists them, e.g. ``window_stats``, ``user_vectors``)."""
        if role not in ROLES:
            raise ValueError(f"unknown role {role!r}; expected one of {ROLES}")
        keep = None if groups is None else set(groups)
        return [c["name"] for c in self.manifest["columns"]
                if role in c["roles"] and (keep is None or c["group"] in keep)]

    def column_info(self, col: str) -> dict:
        """Manifest entry of one column: name, dtype, roles, group, table (+ offset for ids)."""
        try:
            return self._col[col]
        except KeyError:
            raise KeyError(f"{col!r} is not a feature column (see {self.dir / MANIFEST})") from None

    def cardinality(self, col: str) -> int:
        """Number of embedding rows a categorical column needs: max id + 1 over every id the
        stage saw (all day tables and the feed table), so every stored id is < cardinality."""
        card = self.manifest["cardinality"]
        if col not in card:
            raise KeyError(f"{col!r} is not a categorical column; categorical: {sorted(card)}")
        return int(card[col])

    # ------------------------------------------------------------------ day tables
    def _check_day(self, d: int) -> None:
        if str(int(d)) not in self.manifest["day_tables"]:
            raise KeyError(f"day {d} not built; available days: {self.days}")

    def _wanted(self, columns: Sequence[str] | None) -> list[str]:
        if columns is None:
            return [c["name"] for c in self.manifest["columns"]]
        for c in columns:
            self.column_info(c)
        return list(dict.fromkeys([*KEY_COLUMNS, *columns]))

    def parts(self, d: int) -> list[dict]:
        """Day ``d``'s parts: ``{"file", "users", "rows"}`` per user bucket, in bucket order."""
        self._check_day(d)
        return list(self.manifest["day_tables"][str(int(d))]["parts"])

    def _read_part(self, d: int, part: dict, wanted: list[str], batch_rows: int | None = None,
                   row_groups: Sequence[int] | None = None) -> Iterator[pd.DataFrame]:
        own = [c for c in wanted if self._col[c]["table"] == "day"]
        own = list(dict.fromkeys([*KEY_COLUMNS, *own, ROW_KEY]))
        user_cols = [c for c in wanted if self._col[c]["table"] == "users"]
        order = list(dict.fromkeys([*KEY_COLUMNS, *wanted, ROW_KEY]))
        side = self._users(d, part.get("users"), user_cols) if user_cols else None
        if batch_rows is None and row_groups is None:
            frames = [pq.read_table(self.dir / part["file"], columns=own, partitioning=None).to_pandas()]
        else:
            frames = (b.to_pandas() for b in pq.ParquetFile(self.dir / part["file"]).iter_batches(
                batch_size=int(batch_rows or ROW_GROUP_ROWS), row_groups=row_groups, columns=own))
        for df in frames:
            if side is not None:
                df = self._join_users(df, d, side, user_cols)
            yield df[order]

    def gather(self, d: int, rows: np.ndarray, columns: Sequence[str], part: int | None = None,
               batch_rows: int = 65_536) -> np.ndarray:
        """The float32 matrix ``[len(rows), len(columns)]`` of day ``d``: with ``part`` None, the
        rows at day positions ``rows`` (ascending), reading only the row groups that can hold
        them; with ``part``, every row of that part in the part's order (``rows``: the part's row
        keys, checked).  Each batch goes from arrow to the matrix column by column, and a sampled
        read converts only the rows it keeps: the values of ``load_day(d)[columns]`` cast to
        float32, without the DataFrame copies of ``iter_rows`` (which cost about twice the
        parquet decoding when a few percent of the rows are kept, as LightGBM's samples are)."""
        rows = np.asarray(rows, np.int64)
        n = len(rows)
        if part is None and n > 1 and not (np.diff(rows) > 0).all():
            raise ValueError("gather: rows must be ascending day positions")
        self._wanted(columns)                  # unknown names refused as everywhere
        cols = list(columns)
        own = [c for c in cols if self._col[c]["table"] == "day"]
        user_cols = [c for c in cols if self._col[c]["table"] == "users"]
        read = list(dict.fromkeys([*own, ROW_KEY, *(["userid"] if user_cols else [])]))
        X = np.empty((n, len(cols)), np.float32)
        where = {c: j for j, c in enumerate(cols)}
        found = 0
        parts = self.parts(d)
        indices = range(len(parts)) if part is None else [int(part)]
        first, last = (int(rows[0]), int(rows[-1])) if n else (0, -1)
        for i in indices:
            meta = parts[i]
            groups = self._groups_holding(d, i, first, last) if part is None else None
            if groups == []:
                continue
            side = self._users(d, meta.get("users"), user_cols) if user_cols else None
            for batch in self._batches(d, i, read, batch_rows, groups):
                r = batch.column(ROW_KEY).to_numpy()
                if part is None:
                    pos = np.searchsorted(rows, r)
                    hit = pos < n
                    hit[hit] = rows[pos[hit]] == r[hit]
                    if not hit.any():
                        continue
                    keep = np.flatnonzero(hit)
                    dst = pos[keep]
                    if len(keep) < len(r):
                        batch = batch.take(pa.array(keep))
                else:
                    k = len(r)
                    if found + k > n or not np.array_equal(r, rows[found:found + k]):
                        raise InputError(f"day {d} part {part}: rows differ from the part's listing")
                    dst = slice(found, found + k)
                for c in own:
                    X[dst, where[c]] = batch.column(c).to_numpy(zero_copy_only=False)
                if side is not None:
                    df = self._join_users(pd.DataFrame({"userid": batch.column("userid").to_numpy(
                        zero_copy_only=False)}), d, side, user_cols)
                    for c in user_cols:
                        X[dst, where[c]] = df[c].to_numpy()
                found += batch.num_rows
        if found != n:
            raise InputError(f"day {d}: {found} of the {n} rows asked for found in the store")
        return X

    def _batches(self, d: int, index: int, columns: list[str], batch_rows: int,
                 row_groups: Sequence[int] | None = None) -> Iterator[pa.RecordBatch]:
        """Arrow batches of part ``index`` of day ``d`` (day-table ``columns`` only; the row groups
        ``row_groups``, default all)."""
        pf = self._parquet(self.dir / self.parts(d)[index]["file"])
        yield from pf.iter_batches(batch_size=int(batch_rows), row_groups=row_groups, columns=columns)

    def row_groups(self, d: int, index: int) -> list[int]:
        """Row counts of the parquet row groups of part ``index`` of day ``d`` (each at most
        ``ROW_GROUP_ROWS`` rows in a store written by this code; one group in older stores)."""
        meta = pq.ParquetFile(self.dir / self.parts(d)[index]["file"]).metadata
        return [meta.row_group(g).num_rows for g in range(meta.num_row_groups)]

    def read_row_group(self, d: int, index: int, group: int,
                       columns: Sequence[str] | None = None) -> pd.DataFrame:
        """Row group ``group`` of part ``index`` of day ``d``: key columns, ``columns`` and
        ``row``, reading only that group's pages (user vectors joined as in ``iter_day``)."""
        wanted = self._wanted(columns)
        part = self.parts(d)[index]
        own = [c for c in wanted if self._col[c]["table"] == "day"]
        own = list(dict.fromkeys([*KEY_COLUMNS, *own, ROW_KEY]))
        user_cols = [c for c in wanted if self._col[c]["table"] == "users"]
        df = self._parquet(self.dir / part["file"]).read_row_group(group, columns=own).to_pandas()
        if user_cols:
            df = self._join_users(df, d, self._users(d, part.get("users"), user_cols), user_cols)
        order = list(dict.fromkeys([*KEY_COLUMNS, *wanted, ROW_KEY]))
        return df if list(df.columns) == order else df[order]     # no copy when already in order

    def row_ranges(self, d: int, index: int) -> np.ndarray | None:
        """The first and last ``row`` key of each parquet row group of part ``index`` of day
        ``d`` (an int64 array, groups x 2), from the file's statistics; None when a group has
        none (then every group may hold any row)."""
        key = (int(d), int(index))
        if key not in self._ranges:
            meta = pq.ParquetFile(self.dir / self.parts(d)[index]["file"]).metadata
            col = meta.schema.names.index(ROW_KEY)
            out = []
            for g in range(meta.num_row_groups):
                st = meta.row_group(g).column(col).statistics
                if st is None or not st.has_min_max:
                    out = None
                    break
                out.append((st.min, st.max))
            self._ranges[key] = None if out is None else np.asarray(out, np.int64).reshape(-1, 2)
        return self._ranges[key]

    def iter_rows(self, d: int, first: int, last: int, columns: Sequence[str] | None = None,
                  batch_rows: int = 65_536) -> Iterator[pd.DataFrame]:
        """The rows of day ``d`` whose ``row`` key lies in ``[first, last]``, part by part in
        batches of at most ``batch_rows`` rows, with the ``row`` key: only the row groups whose
        keys can fall in the range are read, and they may hold rows outside it (the caller
        keeps the rows it wants by their key).  A day's slice of rows thus costs about its share
        of the day, whether the day's order follows the buckets or interleaves them."""
        wanted = self._wanted(columns)
        for i, part in enumerate(self.parts(d)):
            groups = self._groups_holding(d, i, first, last)
            if groups == []:
                continue
            yield from self._read_part(d, part, wanted, batch_rows, groups)

    def _groups_holding(self, d: int, index: int, first: int, last: int) -> list[int] | None:
        """The row groups of part ``index`` of day ``d`` whose ``row`` keys can fall in
        ``[first, last]`` ([] = none); None when the file has no statistics (every group may)."""
        ranges = self.row_ranges(d, index)
        if ranges is None:
            return None
        return np.flatnonzero((ranges[:, 0] <= last) & (ranges[:, 1] >= first)).tolist()

    def read_part(self, d: int, index: int, columns: Sequence[str] | None = None) -> pd.DataFrame:
        """Part ``index`` of day ``d`` (``parts(d)[index]``): key columns, ``columns`` and ``row``."""
        return next(self._read_part(d, self.parts(d)[index], self._wanted(columns)))

    def iter_part(self, d: int, index: int, columns: Sequence[str] | None = None,
                  batch_rows: int = 65_536) -> Iterator[pd.DataFrame]:
        """Part ``index`` of day ``d`` in chunks of at most ``batch_rows`` rows, in the part's
        order (``read_part`` without holding the whole part's table)."""
        yield from self._read_part(d, self.parts(d)[index], self._wanted(columns), batch_rows)

    def iter_day(self, d: int, columns: Sequence[str] | None = None,
                 batch_rows: int | None = None) -> Iterator[pd.DataFrame]:
        """Day ``d`` one part (user bucket) at a time, or in chunks of at most ``batch_rows``
        rows: key columns, ``columns`` (default: every column) and ``row``, the position of each
        row in ``load_day(d)`` / ``load_labels(d)``.  Only the asked columns are read."""
        wanted = self._wanted(columns)
        for part in self.parts(d):
            yield from self._read_part(d, part, wanted, batch_rows)

    def load_day(self, d: int, columns: Sequence[str] | None = None) -> pd.DataFrame:
        """Key columns plus ``columns`` (default: every column) for target day ``d``,
        rows in that day's order."""
        wanted = self._wanted(columns)
        frames = [f for p in self.parts(d) for f in self._read_part(d, p, wanted)]
        df = frames[0] if len(frames) == 1 else pd.concat(frames, ignore_index=True)
        row = df[ROW_KEY].to_numpy()
        if not np.array_equal(row, np.arange(len(row))):
            order = np.argsort(row, kind="stable")
            if not np.array_equal(row[order], np.arange(len(row))):
                raise InputError(f"{self.dir / day_dir(d)}: the parts' row keys are not 0..{len(row) - 1}; {STAGE_HINT}")
            df = df.iloc[order]
        return df.drop(columns=[ROW_KEY]).reset_index(drop=True)

    def _users(self, d: int, users_file: str | None, cols: list[str]) -> pd.DataFrame:
        path = self.dir / (users_file or f"users/{day_dir(d)}")
        if users_file is None or not path.exists():
            raise InputError(f"{path}: missing; the user vectors were not built (features.w2v.user_vectors); {STAGE_HINT}")
        side = pq.read_table(path, columns=["userid", *cols], partitioning=None).to_pandas()
        side.attrs["path"] = str(path)
        return side

    def _join_users(self, df: pd.DataFrame, d: int, side: pd.DataFrame, cols: list[str]) -> pd.DataFrame:
        uid = side["userid"].to_numpy()  # written sorted by userid
        pos = np.searchsorted(uid, df["userid"].to_numpy())
        pos = np.minimum(pos, len(uid) - 1)
        if len(df) and (len(uid) == 0 or not np.array_equal(uid[pos], df["userid"].to_numpy())):
            raise InputError(f"{side.attrs.get('path')}: does not cover day {d}'s users; {STAGE_HINT}")
        extra = {c: side[c].to_numpy()[pos] for c in cols}
        return pd.concat([df, pd.DataFrame(extra, index=df.index)], axis=1)

    def load_days(self, days: Iterable[int], columns: Sequence[str] | None = None) -> pd.DataFrame:
        """``load_day`` of each day, concatenated in the given (day) order."""
        frames = [self.load_day(d, columns) for d in days]
        return pd.concat(frames, ignore_index=True) if frames else pd.DataFrame()

    def n_rows(self, d: int) -> int:
        self._check_day(d)
        return int(self.manifest["day_tables"][str(int(d))]["rows"])

    # ------------------------------------------------------------------ labels
    def _actions_path(self) -> Path:
        """data/prepared/actions.parquet, checked to be the file the features were built from."""
        path = self.paths.prepared / "actions.parquet"
        if not path.exists():
            raise FileNotFoundError(f"{path}: missing; run the prepare stage (src/stages/prepare.py)")
        want = self.manifest["inputs"].get("actions.parquet")
        if want is not None and file_digest(path) != want:
            raise InputError(f"{path}: changed since the features were built; {STAGE_HINT}")
        return path

    def _actions(self) -> pd.DataFrame:
        if self._labels is None:
            self._labels = pd.read_parquet(self._actions_path(), columns=["date_", *ACTIONS])
        return self._labels

    def load_labels(self, d: int) -> pd.DataFrame:
        """The 7 action columns (int8) of day ``d`` (<= 14), row-aligned with ``load_day(d)``."""
        if not 1 <= int(d) <= LAST_TRAIN_DAY:
            raise ValueError(f"no labels for day {d}: labels exist for days 1..{LAST_TRAIN_DAY} "
                             "(day 15 is the test day)")
        acts = self._actions()
        out = acts.loc[acts["date_"].to_numpy() == d, list(ACTIONS)].reset_index(drop=True)
        if str(int(d)) in self.manifest["day_tables"] and len(out) != self.n_rows(d):
            raise InputError(f"day {d}: {len(out)} label rows but {self.n_rows(d)} feature rows; {STAGE_HINT}")
        return out.astype(np.int8)

    def labelled_history(self, before_day: int, batch_rows: int = 1 << 20
                         ) -> tuple[np.ndarray, np.ndarray, np.ndarray, np.ndarray]:
        """The labelled exposures of days ``< before_day``, in the prepared actions' order:
        ``userid`` int32, ``feedid`` int32, ``date_`` int8 and the 7 labels as one byte per row
        (bit i = ``ACTIONS[i]``).  Rows of ``before_day`` and later are never returned (the nets'
        history block reads its labels through this door only)."""
        users, feeds, dates, bits = [], [], [], []
        for batch in pq.ParquetFile(self._actions_path()).iter_batches(
                batch_size=batch_rows, columns=["userid", "feedid", "date_", *ACTIONS]):
            date = batch.column("date_").to_numpy()
            keep = date < int(before_day)
            if not keep.any():
                continue
            users.append(batch.column("userid").to_numpy()[keep].astype(np.int32))
            feeds.append(batch.column("feedid").to_numpy()[keep].astype(np.int32))
            dates.append(date[keep].astype(np.int8))
            bits.append(pack_actions(batch)[keep])
        if not users:
            return (np.zeros(0, np.int32), np.zeros(0, np.int32), np.zeros(0, np.int8),
                    np.zeros(0, np.uint8))
        return (np.concatenate(users), np.concatenate(feeds), np.concatenate(dates),
                np.concatenate(bits))

    def _by_label_day(self, days: Iterable[int], columns: Sequence[str], values, empty: np.ndarray,
                      what: str, batch_rows: int) -> dict[int, np.ndarray]:
        """``values(batch)`` (one array row per prepared action row) cut into ``days`` (<= 14),
        each in the day's row order, reading the prepared actions in batches; each day's row count
        is checked against the store's."""
        want = sorted({int(d) for d in days})
        bad = [d for d in want if not 1 <= d <= LAST_TRAIN_DAY]
        if bad:
            raise ValueError(f"no labels for day {bad[0]}: labels exist for days 1..{LAST_TRAIN_DAY}")
        chunks: dict[int, list[np.ndarray]] = {d: [] for d in want}
        for batch in pq.ParquetFile(self._actions_path()).iter_batches(
                batch_size=batch_rows, columns=list(dict.fromkeys(["date_", *columns]))):
            date = batch.column("date_").to_numpy()
            vals = values(batch)
            for d in want:
                sel = date == d
                if sel.any():
                    chunks[d].append(vals[sel])
        out = {}
        for d in want:
            out[d] = np.concatenate(chunks[d]) if chunks[d] else empty
            if str(d) in self.manifest["day_tables"] and len(out[d]) != self.n_rows(d):
                raise InputError(f"day {d}: {len(out[d])} {what} rows but {self.n_rows(d)} feature rows; {STAGE_HINT}")
        return out

    def engagement(self, days: Iterable[int], names: Sequence[str],
                   batch_rows: int = 1 << 20) -> dict[int, np.ndarray]:
        """Engagement targets of ``days`` (<= 14) in each day's row order, float32 ``[n, len(names)]``:
        ``finish_ratio`` = play / video length (clipped to [0, 3]) and ``log_stay`` = log1p(stay in
        seconds).  The nets' auxiliary regression towers learn them (labels of the training days only)."""
        unknown = [n for n in names if n not in ENGAGEMENT]
        if unknown:
            raise ValueError(f"unknown engagement target {unknown[0]!r}; expected one of {', '.join(ENGAGEMENT)}")
        feeds = pd.read_parquet(self.paths.prepared / "feeds.parquet", columns=["feedid", "videoplayseconds"])
        order = np.argsort(feeds["feedid"].to_numpy(np.int64))
        fid = feeds["feedid"].to_numpy(np.int64)[order]
        secs = feeds["videoplayseconds"].to_numpy(np.float64)[order]

        def targets(batch) -> np.ndarray:
            play = batch.column("play").to_numpy().astype(np.float64)
            stay = batch.column("stay").to_numpy().astype(np.float64)
            f = batch.column("feedid").to_numpy().astype(np.int64)
            length = np.full(len(f), np.nan)
            if len(fid):
                pos = np.minimum(np.searchsorted(fid, f), len(fid) - 1)
                length = np.where(fid[pos] == f, secs[pos], np.nan)
            ratio = play / 1000.0 / np.where(length > 0, length, np.nan)
            cols = {"finish_ratio": np.clip(np.nan_to_num(ratio, nan=0.0), 0.0, 3.0),
                    "log_stay": np.log1p(np.maximum(stay, 0.0) / 1000.0)}
            return np.stack([cols[n] for n in names], axis=1).astype(np.float32).reshape(len(f), len(names))

        return self._by_label_day(days, ["feedid", "play", "stay"], targets,
                                  np.zeros((0, len(names)), np.float32), "engagement", batch_rows)

    def packed_labels(self, days: Iterable[int], batch_rows: int = 1 << 20) -> dict[int, np.ndarray]:
        """The labels of ``days`` (<= 14) as one byte per row, bit i = ``ACTIONS[i]``, in each
        day's row order, read from the prepared actions in batches (7x smaller than
        ``load_labels`` and never the whole file in memory): 73M rows take 73 MB."""
        return self._by_label_day(days, ACTIONS, pack_actions, np.zeros(0, np.uint8), "label",
                                  batch_rows)

    # ------------------------------------------------------------------ pretrained / side tables
    def _pretrained_entry(self, name: str) -> dict:
        pre = self.manifest["pretrained"]
        if name not in pre:
            raise KeyError(f"no pretrained table {name!r}; available: {sorted(pre)}")
        return pre[name]

    def pretrained(self, name: str) -> tuple[np.ndarray, np.ndarray]:
        """(ids int32 [n], vectors float32 [n, dim]) of a pretrained table; row i is id ids[i].
        Ids without a vector (e.g. feeds never exposed, for word2vec) hold zeros."""
        e = self._pretrained_entry(name)
        ids = np.load(self.dir / e["ids_file"])
        mat = np.load(self.dir / e["file"])
        return ids.astype(np.int32, copy=False), mat.astype(np.float32, copy=False)

    def pretrained_key(self, name: str) -> str:
        """The id column a pretrained table is keyed by: ``feedid`` or ``authorid``."""
        return str(self._pretrained_entry(name)["key"])

    def side_table(self, name: str) -> pd.DataFrame:
        """A side table by name: ``feeds`` (by feedid), ``authors`` (by authorid) or ``users``
        (by userid, date_: every built day concatenated)."""
        side = self.manifest["side_tables"]
        if name not in side:
            raise KeyError(f"no side table {name!r}; available: {sorted(side)}")
        if name == "users":
            frames = [pd.read_parquet(self.dir / p["users"], partitioning=None) for d in self.days for p in self.parts(d)
                      if p.get("users")]
            return pd.concat(frames, ignore_index=True)
        return pd.read_parquet(self.dir / side[name]["file"])

    def feed_lists(self) -> dict[str, tuple[np.ndarray, tuple[np.ndarray, np.ndarray]]]:
        """Per-feed multi-hot fields: ``name -> (feedids int32 [n], (indptr int64 [n+1],
        values int32 [nnz]))``; feed ``feedids[i]`` holds ``values[indptr[i]:indptr[i+1]]``.
        Values are raw id + 1 (0 is free for padding), the same ids as the first-keyword /
        first-tag categorical columns; ``manifest["feed_lists"][name]["cardinality"]`` bounds them."""
        info = self.manifest["feed_lists"]
        table = pq.read_table(self.dir / info["file"])
        feedids = table.column("feedid").to_numpy().astype(np.int32)
        out = {}
        for name in info["fields"]:
            arr = table.column(name).combine_chunks()
            offsets = arr.offsets.to_numpy().astype(np.int64)
            values = arr.values.to_numpy().astype(np.int32)
            start = offsets[0]
            out[name] = (feedids, (offsets - start, values[start:offsets[-1]] if len(values) else values))
        return out

    @cached_property
    def description(self) -> str:
        return str(self.manifest.get("description", ""))
