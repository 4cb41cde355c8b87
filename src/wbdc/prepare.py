"""Official data layer: read, validate and cache the four WBDC CSVs as typed columnar files.

Everything is derived from :mod:`wbdc.schema`.  Numeric columns are parsed by pandas' C reader
on the fast path; only when a column does not parse cleanly do we look for the first offending
row, so a bad file costs a little more and a good one costs nothing extra.  Every error is an
:class:`~wbdc.io.InputError` whose one-line message names the file, the row (1-based data row,
i.e. the line after the header) and the column.
"""
from __future__ import annotations

import warnings
from dataclasses import dataclass
from pathlib import Path

import numpy as np
import pandas as pd
import pyarrow as pa
import pyarrow.parquet as pq

from . import schema
from .io import InputError, atomic_dir, quick_digest, write_json
from .schema import ACTIONS, EMBEDDING_DIM, FileSpec

PREPARED_FILES = ("actions.parquet", "test.parquet", "feeds.parquet",
                  "feed_embeddings.npy", "feed_embedding_ids.npy", "meta.json")
PREPARE_VERSION = 1


@dataclass
class RawData:
    actions: pd.DataFrame
    test: pd.DataFrame
    feeds: pa.Table
    embedding_ids: np.ndarray
    embeddings: np.ndarray
    n_duplicates: int


# ------------------------------------------------------------------------------ helpers

def _bad(fname: str, row: int, column: str, what: str) -> InputError:
    return InputError(f"{fname}: row {row}, column '{column}': {what}")


def _check_header(path: Path, spec: FileSpec) -> list[str]:
    if not path.exists():
        raise InputError(f"{path}: missing file (expected the official {spec.filename} layout)")
    with open(path, encoding="utf-8") as fh:
        header = fh.readline().rstrip("\r\n").split(",")
    missing = [c for c in spec.names if c not in header]
    if missing:
        extra = [c for c in header if c not in spec.names]
        hint = f" (found unexpected {extra})" if extra else ""
        raise InputError(f"{path.name}: row 0 (header), column '{missing[0]}': missing column{hint}")
    return header


def _first_bad(mask: np.ndarray) -> int:
    return int(np.flatnonzero(mask)[0])


def _to_int(fname: str, col: schema.Column, values: pd.Series) -> np.ndarray:
    """Validate one scalar column and downcast it to the schema dtype."""
    name = col.name
    if values.dtype == object:
        num = pd.to_numeric(values, errors="coerce")
        bad = num.isna().to_numpy() & values.notna().to_numpy()
        if bad.any():
            i = _first_bad(bad)
            raise _bad(fname, i + 1, name, f"non-numeric value {values.iloc[i]!r}")
        values = num
    arr = values.to_numpy(dtype=np.float64, na_value=np.nan)
    missing = np.isnan(arr)
    if missing.any():
        if col.kind == "opt_id":
            arr = np.where(missing, -1.0, arr)
        else:
            raise _bad(fname, _first_bad(missing) + 1, name, "missing value")
    frac = arr != np.floor(arr)
    if frac.any():
        i = _first_bad(frac)
        raise _bad(fname, i + 1, name, f"non-integer value {arr[i]!r}")
    if col.kind == "label":
        bad = (arr != 0) & (arr != 1)
        if bad.any():
            i = _first_bad(bad)
            raise _bad(fname, i + 1, name, f"label {arr[i]:g} outside {{0,1}}")
    elif col.kind == "day":
        bad = (arr < schema.FIRST_DAY) | (arr > schema.LAST_TRAIN_DAY)
        if bad.any():
            i = _first_bad(bad)
            raise _bad(fname, i + 1, name, f"date_ {arr[i]:g} outside 1..14")
    else:
        lo = -1 if col.kind == "opt_id" else 0
        bad = arr < lo
        if bad.any():
            i = _first_bad(bad)
            kind = "id" if col.kind in ("id", "opt_id") else "value"
            raise _bad(fname, i + 1, name, f"negative {kind} {arr[i]:g}")
    info = np.iinfo(col.dtype)
    over = arr > info.max
    if over.any():
        i = _first_bad(over)
        raise _bad(fname, i + 1, name, f"value {arr[i]:g} does not fit {col.dtype}")
    return arr.astype(col.dtype)


def _read_scalars(path: Path, spec: FileSpec, extra_str: list[str] | None = None) -> pd.DataFrame:
    """Read the scalar columns of ``spec`` (plus ``extra_str`` as strings), validated and typed."""
    _check_header(path, spec)
    scalars = [c for c in spec.columns if c.kind in schema.SCALAR_KINDS]
    usecols = [c.name for c in scalars] + list(extra_str or [])
    dtype = {n: str for n in (extra_str or [])}
    df = pd.read_csv(path, usecols=usecols, dtype=dtype, keep_default_na=True,
                     na_values=[""], engine="c", low_memory=False)
    out = {}
    for c in scalars:
        out[c.name] = _to_int(path.name, c, df[c.name])
    for n in extra_str or []:
        out[n] = df[n].fillna("").to_numpy(dtype=object)
    return pd.DataFrame(out, columns=[c for c in spec.names if c in out])


# -------------------------------------------------------------------------- list fields

def _parse_int_lists(fname: str, column: str, strings: np.ndarray, sep: str
                     ) -> tuple[np.ndarray, np.ndarray]:
    """Parse ``sep``-separated integer lists into (offsets, values) CSR arrays."""
    lengths = np.zeros(len(strings), dtype=np.int64)
    chunks: list[list[str]] = []
    for i, s in enumerate(strings):
        parts = s.split(sep) if sep != " " else s.split()
        parts = [p for p in parts if p.strip() != ""]
        lengths[i] = len(parts)
        chunks.append(parts)
    flat = [p for parts in chunks for p in parts]
    try:
        values = np.array(flat, dtype=np.int64)
    except ValueError:
        for i, parts in enumerate(chunks):
            for p in parts:
                try:
                    int(p)
                except ValueError:
                    raise _bad(fname, i + 1, column, f"non-integer list item {p!r}") from None
        raise
    if (values < 0).any() or (values > np.iinfo(np.int32).max).any():
        pos = _first_bad((values < 0) | (values > np.iinfo(np.int32).max))
        row = int(np.searchsorted(np.cumsum(lengths), pos, side="right"))
        raise _bad(fname, row + 1, column, f"list item {values[pos]} out of range")
    offsets = np.zeros(len(strings) + 1, dtype=np.int32)
    np.cumsum(lengths, out=offsets[1:])
    return offsets, values.astype(np.int32)


def _parse_tagprob(fname: str, column: str, strings: np.ndarray
                   ) -> tuple[np.ndarray, np.ndarray, np.ndarray]:
    """Parse machine_tag_list ("tag prob;tag prob") into offsets, tag ids and probabilities."""
    lengths = np.zeros(len(strings), dtype=np.int64)
    tags: list[int] = []
    probs: list[float] = []
    for i, s in enumerate(strings):
        n = 0
        for item in s.split(";"):
            item = item.strip()
            if not item:
                continue
            parts = item.split()
            try:
                if len(parts) != 2:
                    raise ValueError
                t, p = int(parts[0]), float(parts[1])
            except ValueError:
                raise _bad(fname, i + 1, column, f"expected 'tag probability', got {item!r}") from None
            if t < 0 or not (0.0 <= p <= 1.0):
                raise _bad(fname, i + 1, column, f"tag/probability out of range in {item!r}")
            tags.append(t)
            probs.append(p)
            n += 1
        lengths[i] = n
    offsets = np.zeros(len(strings) + 1, dtype=np.int32)
    np.cumsum(lengths, out=offsets[1:])
    return offsets, np.asarray(tags, dtype=np.int32), np.asarray(probs, dtype=np.float32)


def _list_array(offsets: np.ndarray, values: np.ndarray) -> pa.Array:
    return pa.ListArray.from_arrays(pa.array(offsets, pa.int32()), pa.array(values))


# ------------------------------------------------------------------------------ readers

def read_user_action(path: Path) -> tuple[pd.DataFrame, int]:
    """Validated actions in file order, de-duplicated on (userid, feedid) keeping the last."""
    df = _read_scalars(path, schema.USER_ACTION)
    dup = df.duplicated(subset=["userid", "feedid"], keep="last").to_numpy()
    n_dup = int(dup.sum())
    if n_dup:
        warnings.warn(f"{path.name}: {n_dup} duplicate (userid, feedid) rows dropped, keeping the last",
                      stacklevel=2)
        df = df.loc[~dup].reset_index(drop=True)
    cols = ["userid", "feedid", "date_", "device", *ACTIONS, "play", "stay"]
    return df[cols], n_dup


def read_feed_info(path: Path) -> pa.Table:
    spec = schema.FEED_INFO
    list_cols = schema.list_columns(spec)
    df = _read_scalars(path, spec, extra_str=[c.name for c in list_cols])
    dup = df["feedid"].duplicated().to_numpy()
    if dup.any():
        i = _first_bad(dup)
        raise _bad(path.name, i + 1, "feedid", f"duplicate feedid {df['feedid'].iloc[i]}")
    arrays: dict[str, pa.Array] = {}
    for c in spec.columns:
        if c.kind in schema.SCALAR_KINDS:
            arrays[c.name] = pa.array(df[c.name].to_numpy())
        elif c.kind == "tagprob":
            off, tags, probs = _parse_tagprob(path.name, c.name, df[c.name].to_numpy())
            arrays[c.name] = _list_array(off, tags)
            arrays["machine_tag_prob"] = _list_array(off, probs)
        else:
            sep = ";" if c.kind == "ids" else " "
            off, vals = _parse_int_lists(path.name, c.name, df[c.name].to_numpy(), sep)
            arrays[c.name] = _list_array(off, vals)
    return pa.table(arrays)


def read_feed_embeddings(path: Path) -> tuple[np.ndarray, np.ndarray]:
    spec = schema.FEED_EMBEDDINGS
    df = _read_scalars(path, spec, extra_str=["feed_embedding"])
    ids = df["feedid"].to_numpy()
    strings = df["feed_embedding"].to_numpy()
    mat = np.empty((len(strings), EMBEDDING_DIM), dtype=np.float32)
    with warnings.catch_warnings():
        warnings.simplefilter("error", DeprecationWarning)
        for i, s in enumerate(strings):
            try:
                v = np.fromstring(s, dtype=np.float32, sep=" ")
            except (DeprecationWarning, ValueError):
                v = None
            if v is None or v.shape[0] != EMBEDDING_DIM or not np.isfinite(v).all():
                n = len(s.split())
                what = (f"expected {EMBEDDING_DIM} numbers, got {n}" if n != EMBEDDING_DIM
                        else "non-numeric or non-finite value")
                raise _bad(path.name, i + 1, "feed_embedding", what)
            mat[i] = v
    return ids, mat


def read_test(path: Path, feed_ids: np.ndarray) -> pd.DataFrame:
    df = _read_scalars(path, schema.TEST)
    known = np.isin(df["feedid"].to_numpy(), feed_ids)
    if not known.all():
        i = _first_bad(~known)
        raise _bad(path.name, i + 1, "feedid", f"feedid {df['feedid'].iloc[i]} not in feed_info.csv")
    return df


def load_raw(raw_dir: str | Path, test_file: str = "test_a.csv") -> RawData:
    raw_dir = Path(raw_dir)
    if not raw_dir.is_dir():
        raise InputError(f"{raw_dir}: data folder not found")
    for spec in (schema.USER_ACTION, schema.FEED_INFO, schema.FEED_EMBEDDINGS):
        _check_header(raw_dir / spec.filename, spec)
    _check_header(raw_dir / test_file, schema.TEST)
    feeds = read_feed_info(raw_dir / "feed_info.csv")
    actions, n_dup = read_user_action(raw_dir / "user_action.csv")
    emb_ids, emb = read_feed_embeddings(raw_dir / "feed_embeddings.csv")
    test = read_test(raw_dir / test_file, feeds.column("feedid").to_numpy())
    return RawData(actions, test, feeds, emb_ids, emb, n_dup)


# ------------------------------------------------------------------------------- stage

def input_digests(raw_dir: Path, test_file: str) -> dict[str, str]:
    names = ["user_action.csv", "feed_info.csv", "feed_embeddings.csv", test_file]
    return {n: quick_digest(raw_dir / n) for n in names}


def is_up_to_date(out_dir: Path, raw_dir: Path, test_file: str) -> bool:
    meta_path = out_dir / "meta.json"
    if not all((out_dir / f).exists() for f in PREPARED_FILES):
        return False
    import json
    meta = json.loads(meta_path.read_text())
    return (meta.get("version") == PREPARE_VERSION
            and meta.get("test_file") == test_file
            and meta.get("input_digests") == input_digests(raw_dir, test_file))


def prepare(raw_dir: str | Path, out_dir: str | Path, test_file: str = "test_a.csv",
            truth_dir: str | Path | None = None) -> dict:
    """Read + validate the official files in ``raw_dir`` and write the caches to ``out_dir``.

    The caches are assembled in a temporary folder and swapped in only when complete.
    """
    raw_dir, out_dir = Path(raw_dir), Path(out_dir)
    digests = input_digests(raw_dir, test_file) if raw_dir.is_dir() else {}
    raw = load_raw(raw_dir, test_file)
    meta = {
        "version": PREPARE_VERSION,
        "source_dir": str(raw_dir.resolve()),
        "test_file": test_file,
        "input_digests": digests,
        "n_actions": int(len(raw.actions)),
        "n_duplicates_removed": raw.n_duplicates,
        "n_test": int(len(raw.test)),
        "n_feeds": int(raw.feeds.num_rows),
        "n_users": int(raw.actions["userid"].nunique()),
        "days": sorted(int(d) for d in raw.actions["date_"].unique()),
        "synthetic": truth_dir is not None,
        "truth_dir": str(Path(truth_dir).resolve()) if truth_dir is not None else None,
    }
    with atomic_dir(out_dir) as tmp:
        pq.write_table(pa.Table.from_pandas(raw.actions, preserve_index=False),
                       tmp / "actions.parquet", compression="zstd")
        pq.write_table(pa.Table.from_pandas(raw.test, preserve_index=False),
                       tmp / "test.parquet", compression="zstd")
        pq.write_table(raw.feeds, tmp / "feeds.parquet", compression="zstd")
        np.save(tmp / "feed_embeddings.npy", raw.embeddings)
        np.save(tmp / "feed_embedding_ids.npy", raw.embedding_ids)
        write_json(meta, tmp / "meta.json")
    return meta


def load_meta(prepared_dir: str | Path) -> dict:
    import json
    p = Path(prepared_dir) / "meta.json"
    if not p.exists():
        raise FileNotFoundError(f"{p}: missing; run the prepare stage (src/stages/prepare.py)")
    return json.loads(p.read_text())


@dataclass
class Source:
    raw_dir: Path
    test_file: str
    truth_dir: Path | None  # set only for the synthetic world


def resolve_source(cfg: dict, paths) -> Source:
    """The raw folder the config points at: ``data.data_dir`` or the synthetic world."""
    from .config import ConfigError, data_dirs

    data = cfg["data"]
    test_file = data.get("test_file") or "test_a.csv"
    dirs = data_dirs(data.get("data_dir"))
    if dirs:
        if len(dirs) > 1:
            raise ConfigError(f"data.data_dir: {len(dirs)} folders given; reading several data "
                              f"folders together is not supported yet, give one")
        return Source(Path(dirs[0]), test_file, None)
    preset, seed = data["preset"], int(data["seed"])
    return Source(paths.synthetic_raw(preset, seed), test_file, paths.synthetic_truth(preset, seed))
