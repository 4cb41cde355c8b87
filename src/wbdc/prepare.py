"""Official data layer: read, validate and cache the four WBDC CSVs as typed columnar files.

Everything is derived from :mod:`wbdc.schema`.  The CSVs are read in byte blocks cut at line
ends (``BLOCK_BYTES``): each block's field counts and UTF-8 are checked with numpy, the block is
parsed by pandas' C reader and its columns validated and typed, and the typed rows go straight
to the parquet caches row group by row group, so the text of a file is never held whole.
De-duplicating user_action on (userid, feedid) keeps only an 8-byte key per row.

Every error is an :class:`~wbdc.io.InputError` whose one-line message names the file, the CSV
line (the header is line 1; blank lines count) and, where there is one, the column.

Several data folders (``data.data_dir`` as a list, e.g. the final round's wechat_algo_data2/
plus the preliminary wechat_algo_data1/) are read together: their user_action rows are
concatenated in folder order and de-duplicated keeping the last, so a later folder's row wins;
feed_info / feed_embeddings rows present in several folders must agree; the test file comes
from the last folder that has it.
"""
from __future__ import annotations

import csv
import io
import json
import shutil
import warnings
from dataclasses import dataclass
from pathlib import Path
from typing import Iterator, Sequence

import numpy as np
import pandas as pd
import pyarrow as pa
import pyarrow.parquet as pq

from . import schema
from .io import InputError, atomic_dir, quick_digest, write_json
from .schema import ACTIONS, EMBEDDING_DIM, FileSpec

PREPARED_FILES = ("actions.parquet", "test.parquet", "feeds.parquet",
                  "feed_embeddings.npy", "feed_embedding_ids.npy", "meta.json")
#: 2: streaming reader, several data folders, CSV line numbers, stricter checks.
PREPARE_VERSION = 2
#: bytes of CSV text parsed at a time; peak memory of a reader is a small multiple of it.
BLOCK_BYTES = 16 << 20
ACTION_COLUMNS = ["userid", "feedid", "date_", "device", *ACTIONS, "play", "stay"]
OFFICIAL_FILES = ("user_action.csv", "feed_info.csv", "feed_embeddings.csv")
_QUOTE_LIMIT = 256 << 20  # an open quote may span at most this many bytes before we give up


# ------------------------------------------------------------------------------ helpers

def _bad(fname: str, line: int, column: str, what: str) -> InputError:
    return InputError(f"{fname}: line {line}, column '{column}': {what}")


def _num(x) -> str:
    """A number as a plain literal for messages (``0.5``, ``7``), never ``np.float64(0.5)``."""
    f = float(x)
    return str(int(f)) if f.is_integer() and abs(f) < 1e16 else repr(f)


def _first_bad(mask: np.ndarray) -> int:
    return int(np.flatnonzero(mask)[0])


def _line_of(block: bytes, first_line: int, pos: int) -> int:
    return first_line + block.count(b"\n", 0, pos)


def _to_int(fname: str, col: schema.Column, values: pd.Series, lines: np.ndarray) -> np.ndarray:
    """Validate one scalar column and downcast it to the schema dtype (``lines``: CSV line of each row)."""
    name = col.name
    if values.dtype == object:
        num = pd.to_numeric(values, errors="coerce")
        bad = num.isna().to_numpy() & values.notna().to_numpy()
        if bad.any():
            i = _first_bad(bad)
            raise _bad(fname, int(lines[i]), name, f"non-numeric value {str(values.iloc[i])!r}")
        values = num
    arr = values.to_numpy(dtype=np.float64, na_value=np.nan)
    missing = np.isnan(arr)
    if missing.any():
        if col.kind == "opt_id":
            arr = np.where(missing, -1.0, arr)
        else:
            raise _bad(fname, int(lines[_first_bad(missing)]), name, "missing value")
    frac = arr != np.floor(arr)
    if frac.any():
        i = _first_bad(frac)
        raise _bad(fname, int(lines[i]), name, f"non-integer value {_num(arr[i])}")
    if col.kind == "label":
        bad = (arr != 0) & (arr != 1)
        if bad.any():
            i = _first_bad(bad)
            raise _bad(fname, int(lines[i]), name, f"label {_num(arr[i])} outside {{0,1}}")
    elif col.kind == "day":
        bad = (arr < schema.FIRST_DAY) | (arr > schema.LAST_TRAIN_DAY)
        if bad.any():
            i = _first_bad(bad)
            raise _bad(fname, int(lines[i]), name, f"date_ {_num(arr[i])} outside 1..14")
    else:
        lo = -1 if col.kind == "opt_id" else 0
        bad = arr < lo
        if bad.any():
            i = _first_bad(bad)
            kind = "id" if col.kind in ("id", "opt_id") else "value"
            raise _bad(fname, int(lines[i]), name, f"negative {kind} {_num(arr[i])}")
    info = np.iinfo(col.dtype)
    over = arr > info.max
    if over.any():
        i = _first_bad(over)
        raise _bad(fname, int(lines[i]), name, f"value {_num(arr[i])} does not fit {col.dtype}")
    return arr.astype(col.dtype)


# ------------------------------------------------------------------------ block reader

def read_header(path: Path, spec: FileSpec, fname: str | None = None) -> list[str]:
    """The header fields of ``path``; InputError when the file or a declared column is missing."""
    fname = fname or path.name
    if not path.exists():
        raise InputError(f"{path}: missing file (expected the official {spec.filename} layout)")
    if not path.is_file():
        raise InputError(f"{path}: not a file (expected the official {spec.filename} layout)")
    with open(path, "rb") as fh:
        first = fh.readline()
    if not first.strip():
        raise InputError(f"{fname}: line 1: no header (empty file)")
    try:
        text = first.decode("utf-8-sig")
    except UnicodeDecodeError as e:
        raise InputError(f"{fname}: line 1: not UTF-8 text (byte 0x{first[e.start]:02x})") from None
    header = [h.strip().strip('"') for h in text.rstrip("\r\n").split(",")]
    missing = [c for c in spec.names if c not in header]
    if missing:
        extra = [c for c in header if c not in spec.names]
        hint = f" (found unexpected {extra})" if extra else ""
        raise InputError(f"{fname}: line 1 (header), column '{missing[0]}': missing column{hint}")
    return header


def _unclosed(fname: str, buf: bytes, first_line: int) -> InputError:
    pos = buf.rfind(b'"')
    return InputError(f"{fname}: line {_line_of(buf, first_line, pos)}: unclosed quote "
                      f"(\") runs on to the end of the file")


def _raw_blocks(fh, fname: str, block_bytes: int, first_line: int) -> Iterator[tuple[bytes, int, bool]]:
    """(text, CSV line of its first line, last block?) cut at line ends, never inside a quote."""
    buf = b""
    line = first_line
    while True:
        chunk = fh.read(block_bytes)
        eof = not chunk
        if chunk:
            buf += chunk
        if not buf:
            return
        if eof:
            block, buf = buf, b""
            if b'"' in block and block.count(b'"') % 2:
                raise _unclosed(fname, block, line)
        else:
            cut = buf.rfind(b"\n") + 1
            if cut == 0:
                continue
            block = buf[:cut]
            if b'"' in block and block.count(b'"') % 2:
                if len(buf) > max(_QUOTE_LIMIT, 4 * block_bytes):
                    raise _unclosed(fname, block, line)
                continue  # a quoted field runs past the last line end: read on
            buf = buf[cut:]
        yield block, line, eof
        line += block.count(b"\n")


def _record_lines(block: bytes, first_line: int, eof: bool, fname: str, n_fields: int) -> np.ndarray:
    """CSV line of every non-blank record of ``block``; InputError on bad UTF-8 or field count."""
    arr = np.frombuffer(block, dtype=np.uint8)
    if (arr >= 0x80).any():
        try:
            block.decode("utf-8")
        except UnicodeDecodeError as e:
            raise InputError(f"{fname}: line {_line_of(block, first_line, e.start)}: not UTF-8 text "
                             f"(byte 0x{block[e.start]:02x})") from None
    cut_short = " (the file ends inside this line)"
    if b'"' in block:  # quoted fields: let the csv module find the records
        text = block.decode("utf-8")
        reader = csv.reader(io.StringIO(text, newline=""))
        lines, prev = [], 0
        try:
            for rec in reader:
                start, prev = first_line + prev, reader.line_num
                if not rec:
                    continue
                if len(rec) != n_fields:
                    at_end = eof and not text.endswith("\n") and reader.line_num == text.count("\n") + 1
                    tail = cut_short if at_end else ""
                    raise InputError(f"{fname}: line {start}: expected {n_fields} fields, found {len(rec)}{tail}")
                lines.append(start)
        except csv.Error as e:
            raise InputError(f"{fname}: line {first_line + reader.line_num - 1}: {e}") from None
        return np.asarray(lines, dtype=np.int64)
    nl = np.flatnonzero(arr == 10)
    ends = nl if block.endswith(b"\n") else np.append(nl, len(block))
    starts = np.concatenate(([0], nl[:len(ends) - 1] + 1))
    lengths = ends - starts
    cr = (lengths > 0) & (arr[np.maximum(ends - 1, 0)] == 13)
    blank = (lengths - cr) == 0
    commas = np.flatnonzero(arr == 44)
    fields = np.searchsorted(commas, ends) - np.searchsorted(commas, starts) + 1
    wrong = ~blank & (fields != n_fields)
    if wrong.any():
        i = _first_bad(wrong)
        tail = cut_short if eof and i == len(ends) - 1 and not block.endswith(b"\n") else ""
        raise InputError(f"{fname}: line {first_line + i}: expected {n_fields} fields, "
                         f"found {int(fields[i])}{tail}")
    return first_line + np.flatnonzero(~blank)


def iter_csv(path: Path, spec: FileSpec, extra_str: Sequence[str] = (), fname: str | None = None,
             block_bytes: int = BLOCK_BYTES) -> Iterator[tuple[dict[str, np.ndarray], np.ndarray]]:
    """Validated, typed blocks of ``path``: ({column: array}, CSV line of each row).

    Scalar columns of ``spec`` come typed (schema dtype), ``extra_str`` columns as object arrays
    of str ('' for empty)."""
    fname = fname or path.name
    header = read_header(path, spec, fname)
    scalars = [c for c in spec.columns if c.kind in schema.SCALAR_KINDS]
    usecols = [c.name for c in scalars] + list(extra_str)
    dtype = {n: str for n in extra_str}
    with open(path, "rb") as fh:
        fh.readline()
        for block, first_line, eof in _raw_blocks(fh, fname, block_bytes, 2):
            lines = _record_lines(block, first_line, eof, fname, len(header))
            if not len(lines):
                continue
            try:
                df = pd.read_csv(io.BytesIO(block), header=None, names=header, usecols=usecols,
                                 dtype=dtype, keep_default_na=True, na_values=[""], engine="c",
                                 low_memory=False, skip_blank_lines=True, encoding="utf-8")
            except (ValueError, pd.errors.ParserError) as e:
                msg = str(e).strip().splitlines()[0] if str(e).strip() else type(e).__name__
                raise InputError(f"{fname}: lines {lines[0]}-{lines[-1]}: {msg}") from None
            if len(df) != len(lines):
                raise InputError(f"{fname}: lines {lines[0]}-{lines[-1]}: {len(df)} rows parsed from "
                                 f"{len(lines)} lines (a stray carriage return?)")
            out = {c.name: _to_int(fname, c, df[c.name], lines) for c in scalars}
            for n in extra_str:
                out[n] = df[n].fillna("").to_numpy(dtype=object)
            yield out, lines


# -------------------------------------------------------------------------- list fields

def _parse_int_lists(fname: str, column: str, strings: np.ndarray, sep: str, lines: np.ndarray
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
    except (ValueError, OverflowError):
        for i, parts in enumerate(chunks):
            for p in parts:
                try:
                    int(p)
                except ValueError:
                    raise _bad(fname, int(lines[i]), column, f"non-integer list item {p!r}") from None
        raise
    if (values < 0).any() or (values > np.iinfo(np.int32).max).any():
        pos = _first_bad((values < 0) | (values > np.iinfo(np.int32).max))
        row = int(np.searchsorted(np.cumsum(lengths), pos, side="right"))
        raise _bad(fname, int(lines[row]), column, f"list item {int(values[pos])} out of range")
    offsets = np.zeros(len(strings) + 1, dtype=np.int32)
    np.cumsum(lengths, out=offsets[1:])
    return offsets, values.astype(np.int32)


def _parse_tagprob(fname: str, column: str, strings: np.ndarray, lines: np.ndarray
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
                raise _bad(fname, int(lines[i]), column, f"expected 'tag probability', got {item!r}") from None
            if t < 0 or t > np.iinfo(np.int32).max or not (0.0 <= p <= 1.0):
                raise _bad(fname, int(lines[i]), column, f"tag/probability out of range in {item!r}")
            tags.append(t)
            probs.append(p)
            n += 1
        lengths[i] = n
    offsets = np.zeros(len(strings) + 1, dtype=np.int32)
    np.cumsum(lengths, out=offsets[1:])
    return offsets, np.asarray(tags, dtype=np.int32), np.asarray(probs, dtype=np.float32)


def _list_array(offsets: np.ndarray, values: np.ndarray) -> pa.Array:
    return pa.ListArray.from_arrays(pa.array(offsets, pa.int32()), pa.array(values))


def _parse_vectors(fname: str, strings: np.ndarray, lines: np.ndarray) -> np.ndarray:
    """feed_embedding strings -> float32 [n, 512]; InputError naming the line and the bad token."""
    fast = _parse_vectors_fast(strings)
    return fast if fast is not None else _parse_vectors_rows(fname, strings, lines)


def _parse_vectors_fast(strings: np.ndarray) -> np.ndarray | None:
    """The whole block at once with pandas' C float parser, or None when any row is not exactly
    512 finite numbers separated by single spaces (the row-by-row parser then names the error)."""
    if not len(strings):
        return np.empty((0, EMBEDDING_DIM), dtype=np.float32)
    data = "\n".join(s.strip(" ") for s in strings).encode()
    arr = np.frombuffer(data, dtype=np.uint8)
    space, newline = arr == 32, arr == 10
    if (arr == 9).any() or (arr == 13).any() or (space[1:] & space[:-1]).any():
        return None
    sep = space | newline
    token_starts = np.flatnonzero(~sep & np.concatenate(([True], sep[:-1])))
    counts = np.bincount(np.searchsorted(np.flatnonzero(newline), token_starts), minlength=len(strings))
    if len(counts) != len(strings) or (counts != EMBEDDING_DIM).any():
        return None
    try:
        mat = pd.read_csv(io.BytesIO(data), sep=" ", header=None, dtype=np.float64, engine="c",
                          float_precision="high", na_filter=False, skip_blank_lines=False).to_numpy()
    except (ValueError, pd.errors.ParserError):
        return None
    if mat.shape != (len(strings), EMBEDDING_DIM) or not np.isfinite(mat).all():
        return None
    mat = mat.astype(np.float32)
    return mat if np.isfinite(mat).all() else None


def _parse_vectors_rows(fname: str, strings: np.ndarray, lines: np.ndarray) -> np.ndarray:
    mat = np.empty((len(strings), EMBEDDING_DIM), dtype=np.float32)
    with warnings.catch_warnings():
        warnings.simplefilter("error", DeprecationWarning)
        for i, s in enumerate(strings):
            try:
                v = np.fromstring(s, dtype=np.float32, sep=" ")
            except (DeprecationWarning, ValueError):
                v = None
            if v is None or v.shape[0] != EMBEDDING_DIM or not np.isfinite(v).all():
                toks = s.split()
                what = f"expected {EMBEDDING_DIM} numbers, got {len(toks)}"
                for t in toks:
                    try:
                        ok = np.isfinite(float(t))
                    except ValueError:
                        what = f"non-numeric value {t!r}"
                        break
                    if not ok:
                        what = f"non-finite value {t!r}"
                        break
                raise _bad(fname, int(lines[i]), "feed_embedding", what)
            mat[i] = v
    return mat


# ------------------------------------------------------------------------- data folders

@dataclass
class Layout:
    """Which file of which folder each part comes from, and the name messages show for it."""
    dirs: list[Path]
    user_action: list[Path]
    feed_info: list[Path]
    feed_embeddings: list[Path]
    test: Path
    names: dict[Path, str]

    def name(self, p: Path) -> str:
        return self.names[p]


def _as_dirs(raw_dirs) -> list[Path]:
    if isinstance(raw_dirs, (str, Path)):
        return [Path(raw_dirs)]
    return [Path(d) for d in raw_dirs]


def locate(raw_dirs, test_file: str = "test_a.csv") -> Layout:
    """Find the official files over one or several folders; InputError naming what is missing."""
    dirs = _as_dirs(raw_dirs)
    if not dirs:
        raise InputError("no data folder given")
    for d in dirs:
        if not d.is_dir():
            raise InputError(f"{d}: data folder not found")
    if len(set(d.resolve() for d in dirs)) != len(dirs):
        raise InputError(f"data folders listed twice: {', '.join(str(d) for d in dirs)}")
    found: dict[str, list[Path]] = {}
    for f in (*OFFICIAL_FILES, test_file):
        found[f] = [d / f for d in dirs if (d / f).exists()]
    for d in dirs:
        if not any((d / f).exists() for f in (*OFFICIAL_FILES, test_file)):
            raise InputError(f"{d}: holds none of {', '.join(OFFICIAL_FILES)}, {test_file}")
    for f in (*OFFICIAL_FILES, test_file):
        if not found[f]:
            if len(dirs) == 1:
                raise InputError(f"{dirs[0] / f}: missing file")
            raise InputError(f"{f}: missing file (in none of {', '.join(str(d) for d in dirs)})")
    leaves = [d.name for d in dirs]
    names = {}
    for d in dirs:
        prefix = "" if len(dirs) == 1 else (f"{d.name}/" if len(set(leaves)) == len(leaves) else f"{d}/")
        for f in (*OFFICIAL_FILES, test_file):
            names[d / f] = prefix + f
    return Layout(dirs, found["user_action.csv"], found["feed_info.csv"], found["feed_embeddings.csv"],
                  found[test_file][-1], names)


def input_digests(raw_dirs, test_file: str) -> dict[str, str]:
    """Fingerprint of every official file in every folder (the test file: the one read)."""
    lay = locate(raw_dirs, test_file)
    files = [*lay.user_action, *lay.feed_info, *lay.feed_embeddings, lay.test]
    return {str(p.resolve()): quick_digest(p) for p in files}


# ------------------------------------------------------------------------------ readers

def _key(userid: np.ndarray, feedid: np.ndarray) -> np.ndarray:
    return (userid.astype(np.int64) << 32) | feedid.astype(np.int64)


def _check_known(fname: str, feedid: np.ndarray, lines: np.ndarray, feed_sorted: np.ndarray,
                 feed_file: str) -> None:
    pos = np.searchsorted(feed_sorted, feedid)
    known = feed_sorted[np.minimum(pos, len(feed_sorted) - 1)] == feedid
    if not known.all():
        i = _first_bad(~known)
        raise _bad(fname, int(lines[i]), "feedid", f"feedid {int(feedid[i])} not in {feed_file}")


def _first_duplicate(keys: np.ndarray) -> tuple[int, int] | None:
    """(first, second) row indices of the earliest-ending repeated key, or None."""
    order = np.argsort(keys, kind="stable")
    sk = keys[order]
    rep = np.flatnonzero(sk[1:] == sk[:-1])
    if not len(rep):
        return None
    second = order[rep + 1]
    j = int(np.argmin(second))
    k = sk[rep[j]]
    first = int(np.flatnonzero(keys == k)[0])
    return first, int(second[j])


def _row_mismatch(a: pa.Array, b: pa.Array) -> np.ndarray:
    """Per row: do ``a`` and ``b`` (same length and type) differ?"""
    if pa.types.is_list(a.type):
        la = a.value_lengths().to_numpy(zero_copy_only=False)
        lb = b.value_lengths().to_numpy(zero_copy_only=False)
        bad = la != lb
        if not bad.any():
            diff = a.flatten().to_numpy() != b.flatten().to_numpy()
            if diff.any():
                bad[np.searchsorted(np.cumsum(la), np.flatnonzero(diff), side="right")] = True
        return bad
    return a.to_numpy(zero_copy_only=False) != b.to_numpy(zero_copy_only=False)


def _read_feed_file(path: Path, fname: str, block_bytes: int) -> tuple[pa.Table, np.ndarray]:
    spec = schema.FEED_INFO
    list_cols = schema.list_columns(spec)
    parts, all_lines = [], []
    for block, lines in iter_csv(path, spec, [c.name for c in list_cols], fname, block_bytes):
        arrays: dict[str, pa.Array] = {}
        for c in spec.columns:
            if c.kind in schema.SCALAR_KINDS:
                arrays[c.name] = pa.array(block[c.name])
            elif c.kind == "tagprob":
                off, tags, probs = _parse_tagprob(fname, c.name, block[c.name], lines)
                arrays[c.name] = _list_array(off, tags)
                arrays["machine_tag_prob"] = _list_array(off, probs)
            else:
                sep = ";" if c.kind == "ids" else " "
                off, vals = _parse_int_lists(fname, c.name, block[c.name], sep, lines)
                arrays[c.name] = _list_array(off, vals)
        parts.append(pa.table(arrays))
        all_lines.append(lines)
    if not parts:
        raise InputError(f"{fname}: no data rows (header only)")
    table = pa.concat_tables(parts).combine_chunks()
    lines = np.concatenate(all_lines)
    ids = table.column("feedid").to_numpy()
    dup = _first_duplicate(ids.astype(np.int64))
    if dup is not None:
        i, j = dup
        raise _bad(fname, int(lines[j]), "feedid", f"duplicate feedid {int(ids[j])} (first on line {int(lines[i])})")
    return table, lines


def _conflict(what: str, fid: int, a: str, la: int, b: str, lb: int, column: str) -> InputError:
    return InputError(f"{what}: feedid {fid} differs between {a} (line {la}) and {b} (line {lb}), "
                      f"column '{column}'")


def read_feeds(lay: Layout, block_bytes: int = BLOCK_BYTES) -> pa.Table:
    """feed_info of every folder: the first folder's rows in order, then feeds new in later ones."""
    table = None
    src: list[tuple[np.ndarray, np.ndarray]] = []  # per part: (folder file index, line)
    for k, path in enumerate(lay.feed_info):
        t, lines = _read_feed_file(path, lay.name(path), block_bytes)
        if table is None:
            table, src = t, [(np.zeros(len(lines), np.int64), lines)]
            continue
        have = table.column("feedid").to_numpy()
        order = np.argsort(have)
        ids = t.column("feedid").to_numpy()
        pos = np.searchsorted(have, ids, sorter=order)
        pos = np.minimum(pos, len(have) - 1)
        hit = have[order[pos]] == ids
        if hit.any():
            mine = np.flatnonzero(hit)
            theirs = order[pos[hit]]
            a, b = table.take(pa.array(theirs)), t.take(pa.array(mine))
            for name in t.column_names:
                bad = _row_mismatch(a.column(name).combine_chunks(), b.column(name).combine_chunks())
                if bad.any():
                    r = _first_bad(bad)
                    fidx = np.concatenate([s[0] for s in src])[theirs[r]]
                    fline = np.concatenate([s[1] for s in src])[theirs[r]]
                    raise _conflict("feed_info.csv", int(ids[mine[r]]), lay.name(lay.feed_info[fidx]),
                                    int(fline), lay.name(path), int(lines[mine[r]]), name)
        new = np.flatnonzero(~hit)
        table = pa.concat_tables([table, t.take(pa.array(new))]).combine_chunks()
        src.append((np.full(len(new), k, np.int64), lines[new]))
    return table


def write_embeddings(lay: Layout, out_dir: Path, block_bytes: int = BLOCK_BYTES) -> int:
    """feed_embeddings.npy / feed_embedding_ids.npy of every folder, streamed; returns the row count."""
    spec = schema.FEED_EMBEDDINGS
    raw = out_dir / ".feed_embeddings.f32"
    ids_parts: list[np.ndarray] = []       # output rows' feedids, in output order
    src_parts: list[tuple[np.ndarray, np.ndarray]] = []  # (file index, line) of each output row
    n_out = 0
    with open(raw, "wb") as sink:
        for k, path in enumerate(lay.feed_embeddings):
            fname = lay.name(path)
            prior = np.concatenate(ids_parts) if ids_parts else np.zeros(0, np.int32)
            prior_order = np.argsort(prior)
            file_ids, file_lines = [], []
            for block, lines in iter_csv(path, spec, ["feed_embedding"], fname, block_bytes):
                ids = block["feedid"]
                mat = _parse_vectors(fname, block["feed_embedding"], lines)
                file_ids.append(ids)
                file_lines.append(lines)
                hit = np.zeros(len(ids), bool)
                if len(prior):
                    pos = np.minimum(np.searchsorted(prior, ids, sorter=prior_order), len(prior) - 1)
                    rows = prior_order[pos]
                    hit = prior[rows] == ids
                    if hit.any():
                        sink.flush()
                        mm = np.memmap(raw, dtype=np.float32, mode="r", shape=(n_out, EMBEDDING_DIM))
                        diff = (mm[rows[hit]] != mat[hit]).any(axis=1)
                        del mm
                        if diff.any():
                            r = _first_bad(diff)
                            mine, theirs = np.flatnonzero(hit)[r], rows[hit][r]
                            fidx = np.concatenate([s[0] for s in src_parts])[theirs]
                            fline = np.concatenate([s[1] for s in src_parts])[theirs]
                            raise _conflict("feed_embeddings.csv", int(ids[mine]),
                                            lay.name(lay.feed_embeddings[fidx]), int(fline), fname,
                                            int(lines[mine]), "feed_embedding")
                new = ~hit
                sink.write(np.ascontiguousarray(mat[new]).tobytes())
                ids_parts.append(ids[new])
                src_parts.append((np.full(int(new.sum()), k, np.int64), lines[new]))
                n_out += int(new.sum())
            if not file_ids:
                raise InputError(f"{fname}: no data rows (header only)")
            fids, flines = np.concatenate(file_ids), np.concatenate(file_lines)
            dup = _first_duplicate(fids.astype(np.int64))
            if dup is not None:
                i, j = dup
                raise _bad(fname, int(flines[j]), "feedid",
                           f"duplicate feedid {int(fids[j])} (first on line {int(flines[i])})")
    ids = np.concatenate(ids_parts).astype(np.int32)
    with open(out_dir / "feed_embeddings.npy", "wb") as fh:
        np.lib.format.write_array_header_1_0(
            fh, {"descr": np.lib.format.dtype_to_descr(np.dtype(np.float32)),
                 "fortran_order": False, "shape": (n_out, EMBEDDING_DIM)})
        with open(raw, "rb") as src:
            shutil.copyfileobj(src, fh, 1 << 24)
    raw.unlink()
    np.save(out_dir / "feed_embedding_ids.npy", ids)
    return n_out


def _schema_of(columns: dict[str, np.ndarray]) -> pa.Schema:
    return pa.Table.from_pandas(pd.DataFrame({k: v[:0] for k, v in columns.items()}),
                                preserve_index=False).schema


@dataclass
class ActionStats:
    n_rows: int
    n_duplicates: int
    n_cross_folder: int
    n_users: int
    days: list[int]


def keep_last(key: np.ndarray, bounds: Sequence[int] = (), parts: int | None = None
              ) -> tuple[np.ndarray, int, int]:
    """Mask of the last occurrence of every key; also (rows dropped, dropped rows whose kept row
    lies in another folder; ``bounds``: first row of each folder plus the total).

    Rows are split into ``parts`` by userid (the key's high half) and each part is sorted on its
    own, so the temporaries are a fraction of the 8 bytes per row the keys take."""
    n = len(key)
    parts = parts or max(1, min(64, n >> 20))
    keep = np.zeros(n, dtype=bool)
    if parts > 1:
        bucket = np.empty(n, dtype=np.uint8)
        for lo in range(0, n, 1 << 22):
            bucket[lo:lo + (1 << 22)] = (key[lo:lo + (1 << 22)] >> 32) % parts
    n_dup = n_cross = 0
    for p in range(parts):
        sel = np.flatnonzero(bucket == p) if parts > 1 else None
        sub = key[sel] if sel is not None else key
        order = np.argsort(sub, kind="stable")
        sk = sub[order]
        del sub
        last = np.ones(len(sk), dtype=bool)
        np.not_equal(sk[1:], sk[:-1], out=last[:-1])
        del sk
        rows = sel[order] if sel is not None else order
        del order, sel
        keep[rows[last]] = True
        if not last.all():
            dropped, ends = np.flatnonzero(~last), np.flatnonzero(last)
            n_dup += len(dropped)
            if len(bounds) > 2:
                keeper = rows[ends[np.searchsorted(ends, dropped)]]
                folder_of = lambda i: np.searchsorted(bounds, i, side="right") - 1  # noqa: E731
                n_cross += int((folder_of(rows[dropped]) != folder_of(keeper)).sum())
    return keep, n_dup, n_cross


def write_actions(lay: Layout, feed_ids: np.ndarray, path: Path, block_bytes: int = BLOCK_BYTES) -> ActionStats:
    """actions.parquet from every folder's user_action.csv, de-duplicated keeping the last row.

    Pass 1 streams the CSVs into a typed parquet beside ``path`` and keeps one int64 key per row;
    pass 2 copies the kept rows row group by row group."""
    spec = schema.USER_ACTION
    feed_sorted = np.sort(feed_ids)
    stage1 = path.with_name(".actions_all.parquet")
    key_file = path.with_name(".actions_keys.i64")
    bounds = [0]
    writer = None
    try:
        with open(key_file, "wb") as key_sink:
            for path_ua in lay.user_action:
                fname = lay.name(path_ua)
                n_file = 0
                for block, lines in iter_csv(path_ua, spec, (), fname, block_bytes):
                    _check_known(fname, block["feedid"], lines, feed_sorted, "feed_info.csv")
                    cols = {c: block[c] for c in ACTION_COLUMNS}
                    if writer is None:
                        writer = pq.ParquetWriter(stage1, _schema_of(cols), compression="lz4")
                    writer.write_table(pa.table(cols, schema=writer.schema))
                    _key(block["userid"], block["feedid"]).tofile(key_sink)
                    n_file += len(lines)
                if n_file == 0:
                    raise InputError(f"{fname}: no data rows (header only)")
                bounds.append(bounds[-1] + n_file)
    finally:
        if writer is not None:
            writer.close()
    key = np.fromfile(key_file, dtype=np.int64)
    key_file.unlink()
    keep, n_dup, n_cross = keep_last(key, bounds)
    del key
    users, days = [], np.zeros(schema.LAST_TRAIN_DAY + 1, dtype=np.int64)
    src = pq.ParquetFile(stage1)
    with pq.ParquetWriter(path, src.schema_arrow, compression="zstd") as out:
        start = 0
        for batch in src.iter_batches(batch_size=1 << 20):
            m = keep[start:start + batch.num_rows]
            start += batch.num_rows
            t = pa.Table.from_batches([batch])
            if not m.all():
                t = t.filter(pa.array(m))
            out.write_table(t)
            users.append(np.unique(t.column("userid").to_numpy()))
            days += np.bincount(t.column("date_").to_numpy(), minlength=len(days))
    stage1.unlink()
    if n_dup:
        cross = f", {n_cross} of them across folders" if n_cross else ""
        where = "user_action.csv" if len(lay.user_action) == 1 else "user_action.csv (all folders)"
        warnings.warn(f"{where}: {n_dup} duplicate (userid, feedid) rows dropped{cross}, keeping the last",
                      stacklevel=2)
    present = [int(d) for d in np.flatnonzero(days)]
    ua = "user_action.csv" if len(lay.user_action) == 1 else "user_action.csv (all folders)"
    if schema.LAST_TRAIN_DAY not in present:
        raise InputError(f"{ua} holds no rows of day {schema.LAST_TRAIN_DAY}: offline validation needs it")
    if len(present) < 2:
        raise InputError(f"{ua} holds only day {schema.LAST_TRAIN_DAY}: day-{schema.LAST_TRAIN_DAY} "
                         f"validation needs at least one earlier day to train on")
    return ActionStats(int(keep.sum()), n_dup, n_cross, int(len(np.unique(np.concatenate(users)))), present)


def write_test(lay: Layout, feed_ids: np.ndarray, path: Path, block_bytes: int = BLOCK_BYTES) -> int:
    spec = schema.TEST
    fname = lay.name(lay.test)
    feed_sorted = np.sort(feed_ids)
    keys, all_lines = [], []
    writer = None
    try:
        for block, lines in iter_csv(lay.test, spec, (), fname, block_bytes):
            _check_known(fname, block["feedid"], lines, feed_sorted, "feed_info.csv")
            cols = {c: block[c] for c in spec.names}
            if writer is None:
                writer = pq.ParquetWriter(path, _schema_of(cols), compression="zstd")
            writer.write_table(pa.table(cols, schema=writer.schema))
            keys.append(_key(block["userid"], block["feedid"]))
            all_lines.append(lines)
    finally:
        if writer is not None:
            writer.close()
    if not keys:
        raise InputError(f"{fname}: no data rows (header only)")
    key, lines = np.concatenate(keys), np.concatenate(all_lines)
    dup = _first_duplicate(key)
    if dup is not None:
        i, j = dup
        u, f = int(key[j] >> 32), int(key[j] & 0xFFFFFFFF)
        raise InputError(f"{fname}: line {int(lines[j])}: duplicate (userid, feedid) = ({u}, {f}), "
                         f"first on line {int(lines[i])}")
    return len(key)


# ------------------------------------------------------------------------------- stage

def is_up_to_date(out_dir: Path, raw_dirs, test_file: str, truth_dir: str | Path | None = None) -> bool:
    meta_path = Path(out_dir) / "meta.json"
    if not all((Path(out_dir) / f).exists() for f in PREPARED_FILES):
        return False
    try:
        digests = input_digests(raw_dirs, test_file)
    except InputError:
        return False
    meta = json.loads(meta_path.read_text())
    truth = str(Path(truth_dir).resolve()) if truth_dir is not None else None
    return (meta.get("version") == PREPARE_VERSION
            and meta.get("test_file") == test_file
            and meta.get("input_digests") == digests
            and meta.get("truth_dir") == truth)


def prepare(raw_dirs, out_dir: str | Path, test_file: str = "test_a.csv",
            truth_dir: str | Path | None = None, block_bytes: int = BLOCK_BYTES) -> dict:
    """Read + validate the official files of ``raw_dirs`` (one folder or a list) into ``out_dir``.

    The caches are assembled in a temporary folder and swapped in only when complete."""
    out_dir = Path(out_dir)
    lay = locate(raw_dirs, test_file)
    for paths, spec in ((lay.user_action, schema.USER_ACTION), (lay.feed_info, schema.FEED_INFO),
                        (lay.feed_embeddings, schema.FEED_EMBEDDINGS), ([lay.test], schema.TEST)):
        for p in paths:
            read_header(p, spec, lay.name(p))
    digests = input_digests(lay.dirs, test_file)
    with atomic_dir(out_dir) as tmp:
        feeds = read_feeds(lay, block_bytes)
        pq.write_table(feeds, tmp / "feeds.parquet", compression="zstd")
        feed_ids = feeds.column("feedid").to_numpy()
        n_feeds = feeds.num_rows
        del feeds
        write_embeddings(lay, tmp, block_bytes)
        stats = write_actions(lay, feed_ids, tmp / "actions.parquet", block_bytes)
        n_test = write_test(lay, feed_ids, tmp / "test.parquet", block_bytes)
        meta = {
            "version": PREPARE_VERSION,
            "source_dir": str(lay.dirs[-1].resolve()),
            "source_dirs": [str(d.resolve()) for d in lay.dirs],
            "test_file": test_file,
            "test_path": str(lay.test.resolve()),
            "input_digests": digests,
            "n_actions": stats.n_rows,
            "n_duplicates_removed": stats.n_duplicates,
            "n_duplicates_across_folders": stats.n_cross_folder,
            "n_test": n_test,
            "n_feeds": int(n_feeds),
            "n_users": stats.n_users,
            "days": stats.days,
            "synthetic": truth_dir is not None,
            "truth_dir": str(Path(truth_dir).resolve()) if truth_dir is not None else None,
        }
        write_json(meta, tmp / "meta.json")
    return meta


def load_meta(prepared_dir: str | Path) -> dict:
    p = Path(prepared_dir) / "meta.json"
    if not p.exists():
        raise FileNotFoundError(f"{p}: missing; run the prepare stage (src/stages/prepare.py)")
    return json.loads(p.read_text())


#: what a truth folder holds (the synthetic world's truth/, or data.truth_dir)
TRUTH_FILES = ("day14_prob.csv", "test_truth.csv")


@dataclass
class Source:
    raw_dirs: list[Path]
    test_file: str
    truth_dir: Path | None  # the synthetic world's, or data.truth_dir for --data-dir folders

    @property
    def label(self) -> str:
        return ", ".join(str(d) for d in self.raw_dirs)


def resolve_source(cfg: dict, paths) -> Source:
    """The raw folder(s) the config points at: ``data.data_dir`` (a list) or the synthetic world,
    with the folder of true probabilities (the synthetic world's ``truth/``, or ``data.truth_dir``
    for folders given with ``data_dir``: a world written elsewhere in this project's layout)."""
    from .config import data_dirs

    data = cfg["data"]
    test_file = data.get("test_file") or "test_a.csv"
    dirs = data_dirs(data.get("data_dir"))
    if dirs:
        truth = data.get("truth_dir")
        return Source([Path(d) for d in dirs], test_file, Path(truth) if truth else None)
    world = paths.world_of(data)         # the null world has its own folder
    return Source([world / "wechat_algo_data1"], test_file, world / "truth")
