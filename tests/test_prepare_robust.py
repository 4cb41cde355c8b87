"""prepare refuses at the door what later stages would choke on, with one line naming file and CSV line.

Line numbers are CSV lines: the header is line 1, blank lines count.  Each case here used to pass
prepare silently (or end in a traceback)."""
from __future__ import annotations

import hashlib
import subprocess
import sys
from pathlib import Path

import numpy as np
import pandas as pd
import pyarrow as pa
import pyarrow.parquet as pq
import pytest

from wbdc import schema
from wbdc.io import InputError
from wbdc.prepare import prepare

REPO = Path(__file__).resolve().parents[1]
PREPARE = str(REPO / "src/stages/prepare.py")


def _lines(path: Path) -> list[str]:
    return path.read_text().splitlines(keepends=True)


def _set_line(path: Path, line: int, text: str) -> None:
    """Replace CSV line ``line`` (header = 1) of ``path`` with ``text``."""
    rows = _lines(path)
    rows[line - 1] = text
    path.write_text("".join(rows))


def _fails(raw: Path, tmp_path: Path, pattern: str, **kw) -> str:
    with pytest.raises(InputError, match=pattern) as ei:
        prepare(raw, tmp_path / "out", **kw)
    msg = str(ei.value)
    assert "\n" not in msg
    assert not (tmp_path / "out").exists()
    return msg


# ------------------------------------------------------------------------ field counts

@pytest.mark.parametrize("fname,expected", [("user_action.csv", 13), ("test_a.csv", 3)])
def test_row_with_an_extra_field(raw, tmp_path, fname, expected):
    rows = _lines(raw / fname)
    _set_line(raw / fname, 5, rows[4].rstrip("\n") + ",1\n")
    _fails(raw, tmp_path, rf"^{fname}: line 5: expected {expected} fields, found {expected + 1}$")


def test_feed_info_row_with_too_few_fields(raw, tmp_path):
    rows = _lines(raw / "feed_info.csv")
    _set_line(raw / "feed_info.csv", 7, rows[6].rstrip("\n").rsplit(",", 1)[0] + "\n")
    _fails(raw, tmp_path, r"^feed_info\.csv: line 7: expected 15 fields, found 14$")


@pytest.mark.parametrize("fname", ["feed_info.csv", "user_action.csv"])
def test_last_line_cut_short(raw, tmp_path, fname):
    text = (raw / fname).read_text()
    last = text.rstrip("\n").rsplit("\n", 1)[1]
    cut = text.rstrip("\n")[: -len(last)] + ",".join(last.split(",")[:3])
    (raw / fname).write_text(cut)
    n = len(_lines(raw / fname))
    _fails(raw, tmp_path, rf"^{fname}: line {n}: expected \d+ fields, found 3 \(the file ends inside this line\)$")


# ------------------------------------------------------------------------ empty inputs

@pytest.mark.parametrize("fname", ["user_action.csv", "feed_embeddings.csv", "test_a.csv", "feed_info.csv"])
def test_header_only_file(raw, tmp_path, fname):
    (raw / fname).write_text(_lines(raw / fname)[0])
    _fails(raw, tmp_path, rf"^{fname}: no data rows \(header only\)$")


def test_empty_file_has_no_header(raw, tmp_path):
    (raw / "test_a.csv").write_text("")
    _fails(raw, tmp_path, r"^test_a\.csv: line 1: no header \(empty file\)$")


def test_user_action_without_day_14(raw, tmp_path):
    ua = pd.read_csv(raw / "user_action.csv")
    ua[ua["date_"] < 14].to_csv(raw / "user_action.csv", index=False)
    _fails(raw, tmp_path, r"^user_action\.csv holds no rows of day 14: offline validation needs it$")


def test_user_action_with_only_day_14(raw, tmp_path):
    ua = pd.read_csv(raw / "user_action.csv")
    ua[ua["date_"] == 14].to_csv(raw / "user_action.csv", index=False)
    _fails(raw, tmp_path, r"^user_action\.csv holds only day 14: day-14 validation needs at least one "
                          r"earlier day to train on$")


# -------------------------------------------------------------------------- duplicates

def test_duplicate_pair_in_test_file_names_both_lines(raw, tmp_path):
    rows = _lines(raw / "test_a.csv")
    u, f, _ = rows[3].strip().split(",")
    _set_line(raw / "test_a.csv", 9, f"{u},{f},2\n")
    _fails(raw, tmp_path, rf"^test_a\.csv: line 9: duplicate \(userid, feedid\) = \({u}, {f}\), first on line 4$")


def test_duplicate_feedid_in_feed_embeddings(raw, tmp_path):
    rows = _lines(raw / "feed_embeddings.csv")
    fid = rows[2].split(",")[0]
    _set_line(raw / "feed_embeddings.csv", 6, fid + "," + rows[5].split(",", 1)[1])
    _fails(raw, tmp_path, rf"^feed_embeddings\.csv: line 6, column 'feedid': duplicate feedid {fid} \(first on line 3\)$")


def test_duplicate_feedid_in_feed_info_names_both_lines(raw, tmp_path):
    rows = _lines(raw / "feed_info.csv")
    fid = rows[1].split(",")[0]
    _set_line(raw / "feed_info.csv", 5, fid + "," + rows[4].split(",", 1)[1])
    _fails(raw, tmp_path, rf"^feed_info\.csv: line 5, column 'feedid': duplicate feedid {fid} \(first on line 2\)$")


def test_user_action_feed_missing_from_feed_info(raw, tmp_path):
    rows = _lines(raw / "user_action.csv")
    parts = rows[10].split(",")
    parts[1] = "424242"
    _set_line(raw / "user_action.csv", 11, ",".join(parts))
    _fails(raw, tmp_path, r"^user_action\.csv: line 11, column 'feedid': feedid 424242 not in feed_info\.csv$")


# ----------------------------------------------------------------- encoding and quotes

def test_non_utf8_bytes(raw, tmp_path):
    data = (raw / "feed_info.csv").read_bytes().split(b"\n")
    data[3] = data[3].replace(b",", b",\xff\xfe", 1)
    (raw / "feed_info.csv").write_bytes(b"\n".join(data))
    _fails(raw, tmp_path, r"^feed_info\.csv: line 4: not UTF-8 text \(byte 0xff\)$")


def test_unclosed_quote(raw, tmp_path):
    rows = _lines(raw / "feed_info.csv")
    parts = rows[20].split(",")
    parts[3] = '"' + parts[3]
    _set_line(raw / "feed_info.csv", 21, ",".join(parts))
    _fails(raw, tmp_path, r"^feed_info\.csv: line 21: unclosed quote \(\"\) runs on to the end of the file$")


def test_quoted_fields_read_like_plain_ones(raw, good_raw, tmp_path):
    df = pd.read_csv(raw / "feed_info.csv", dtype=str, keep_default_na=False)
    df.to_csv(raw / "feed_info.csv", index=False, quoting=1)  # csv.QUOTE_ALL
    prepare(raw, tmp_path / "quoted", block_bytes=512)
    prepare(good_raw, tmp_path / "plain")
    a, b = (pq.read_table(tmp_path / d / "feeds.parquet") for d in ("quoted", "plain"))
    assert a.num_rows == len(df) and a.equals(b)


# ------------------------------------------------------------------------ line numbers

def test_line_numbers_count_blank_lines(raw, tmp_path):
    rows = _lines(raw / "user_action.csv")
    parts = rows[5].split(",")
    parts[0] = "0.5"
    rows[5] = ",".join(parts)
    rows[2:2] = ["\n", "\r\n"]  # two blank lines before the bad row: it is now line 8
    (raw / "user_action.csv").write_text("".join(rows))
    _fails(raw, tmp_path, r"^user_action\.csv: line 8, column 'userid': non-integer value 0\.5$")


@pytest.mark.parametrize("block_bytes", [64, 1000, 1 << 20])
def test_line_numbers_exact_across_blocks(raw, tmp_path, block_bytes):
    n = len(_lines(raw / "user_action.csv"))
    target = n - 3
    parts = _lines(raw / "user_action.csv")[target - 1].split(",")
    parts[4] = "3"
    _set_line(raw / "user_action.csv", target, ",".join(parts))
    _fails(raw, tmp_path, rf"^user_action\.csv: line {target}, column 'read_comment': label 3 outside",
           block_bytes=block_bytes)


def test_values_in_messages_are_plain(raw, tmp_path):
    parts = _lines(raw / "user_action.csv")[3].split(",")
    parts[7] = "1e12"   # play
    _set_line(raw / "user_action.csv", 4, ",".join(parts))
    msg = _fails(raw, tmp_path, r"^user_action\.csv: line 4, column 'play': value 1000000000000 does not fit int32$")
    assert "np." not in msg


def test_non_finite_embedding_token_is_shown(raw, tmp_path):
    df = pd.read_csv(raw / "feed_embeddings.csv", dtype=str)
    vals = df.loc[4, "feed_embedding"].split()
    vals[7] = "inf"
    df.loc[4, "feed_embedding"] = " ".join(vals)
    df.to_csv(raw / "feed_embeddings.csv", index=False)
    _fails(raw, tmp_path, r"^feed_embeddings\.csv: line 6, column 'feed_embedding': non-finite value 'inf'$")


# ------------------------------------------------------------- streaming = old output

def _table_digest(path: Path) -> str:
    t = pq.read_table(path).replace_schema_metadata(None).combine_chunks()
    sink = pa.BufferOutputStream()
    with pa.ipc.new_stream(sink, t.schema) as w:
        w.write_table(t)
    return hashlib.sha256(sink.getvalue().to_pybytes()).hexdigest()


# Contents written by the one-shot pandas reader (commit 190022d) for write_official(seed=0).
REFERENCE = {
    "actions.parquet": "8d60d0ee616963c3ee22d0f57ca8b70b78bd9d30919cd0ba0c5c0b65a65934ab",
    "test.parquet": "fd7bcfcdd28e23f0170fcdff07bb490bb1b016dac674e0414b9f33f063f103c2",
    "feeds.parquet": "b9ff54c3807cc375f70ae169cd5e56b46abe1155d0fc022ccd86fe85bca83609",
    "feed_embeddings.npy": "e58f278d79463b286adfdd6831e0d2c92a163811495a61c4ca1b165a874fb348",
    "feed_embedding_ids.npy": "b9c8a89d8fc1e7c6248535991dc01318d328e81404a856207b4fd28486410329",
}


@pytest.mark.parametrize("block_bytes", [97, 4096, 1 << 24])
def test_streamed_caches_equal_the_one_shot_reader(good_raw, tmp_path, block_bytes):
    out = tmp_path / "out"
    prepare(good_raw, out, block_bytes=block_bytes)
    got = {f: (_table_digest(out / f) if f.endswith(".parquet")
               else hashlib.sha256((out / f).read_bytes()).hexdigest()) for f in REFERENCE}
    assert got == REFERENCE
    schema_ = pq.read_schema(out / "actions.parquet")
    assert schema_.metadata and b"pandas" in schema_.metadata   # same pandas metadata as before
    assert [f.name for f in schema_] == ["userid", "feedid", "date_", "device", *schema.ACTIONS, "play", "stay"]


def test_duplicates_across_blocks_keep_the_last(raw, tmp_path):
    ua = pd.read_csv(raw / "user_action.csv")
    early = ua.iloc[[len(ua) - 1]].copy()
    early["like"] = 1 - early["like"]
    early["date_"] = 1
    pd.concat([early, ua], ignore_index=True).to_csv(raw / "user_action.csv", index=False)
    with pytest.warns(UserWarning, match=r"^user_action\.csv: 1 duplicate \(userid, feedid\) rows dropped, keeping the last$"):
        meta = prepare(raw, tmp_path / "out", block_bytes=80)
    got = pd.read_parquet(tmp_path / "out" / "actions.parquet")
    assert meta["n_duplicates_removed"] == 1 and len(got) == len(ua)
    np.testing.assert_array_equal(got["like"].to_numpy(), ua["like"].to_numpy())


# ------------------------------------------------------------------ the stage's stderr

def _stage(root: Path, *args: str) -> subprocess.CompletedProcess:
    return subprocess.run([sys.executable, PREPARE, "--root", str(root), *args],
                          capture_output=True, text=True, timeout=300)


@pytest.mark.parametrize("damage,expect", [
    ("utf8", "error: feed_info.csv: line 4: not UTF-8 text (byte 0xff)"),
    ("quote", "error: feed_info.csv: line 21: unclosed quote (\") runs on to the end of the file"),
    ("missing", "error: {raw}/feed_embeddings.csv: missing file"),
])
def test_stage_errors_are_one_line(raw, tmp_path, damage, expect):
    if damage == "utf8":
        data = (raw / "feed_info.csv").read_bytes().split(b"\n")
        data[3] = data[3].replace(b",", b",\xff", 1)
        (raw / "feed_info.csv").write_bytes(b"\n".join(data))
    elif damage == "quote":
        rows = _lines(raw / "feed_info.csv")
        rows[20] = rows[20].replace(",", ',"', 1)
        (raw / "feed_info.csv").write_text("".join(rows))
    else:
        (raw / "feed_embeddings.csv").unlink()
    r = _stage(tmp_path / "root", "--data-dir", str(raw))
    assert r.returncode == 2
    assert "Traceback" not in r.stderr and "Errno" not in r.stderr
    assert r.stderr.strip().splitlines()[-1] == expect.format(raw=raw)


def test_stage_duplicate_warning_is_one_line(raw, tmp_path):
    ua = pd.read_csv(raw / "user_action.csv")
    pd.concat([ua.iloc[:3], ua], ignore_index=True).to_csv(raw / "user_action.csv", index=False)
    r = _stage(tmp_path / "root", "--data-dir", str(raw))
    assert r.returncode == 0, r.stderr
    warn = [ln for ln in r.stderr.splitlines() if "duplicate" in ln and "dropped" in ln]
    assert warn == ["[prepare] warning: user_action.csv: 3 duplicate (userid, feedid) rows dropped, keeping the last"]
    assert "warnings.warn" not in r.stderr


RUN_MAIN = """
import errno, sys
sys.path.insert(0, {src!r})
from wbdc.cli import run_main
from wbdc.io import InputError
kind = sys.argv[1]
def main():
    if kind == "input": raise InputError("f.csv: line 3: bad\\nsecond line")
    if kind == "oserror": open("/nonexistent/dir/x.csv")
    if kind == "perm": raise PermissionError(errno.EACCES, "Permission denied", "/root/x")
    if kind == "disk": raise OSError(errno.ENOSPC, "No space left on device", "/out/x.parquet")
    if kind == "memory": raise MemoryError("Unable to allocate 8.00 GiB")
    raise KeyError("a bug")
run_main(main)
"""


@pytest.mark.parametrize("kind,line", [
    ("input", "error: f.csv: line 3: bad second line"),
    ("oserror", "error: /nonexistent/dir/x.csv: No such file or directory"),
    ("perm", "error: /root/x: Permission denied"),
    ("disk", "error: /out/x.parquet: No space left on device"),
    ("memory", "error: out of memory: Unable to allocate 8.00 GiB"),
])
def test_run_main_anticipated_errors_are_one_line(tmp_path, kind, line):
    code = RUN_MAIN.format(src=str(REPO / "src"))
    r = subprocess.run([sys.executable, "-c", code, kind], capture_output=True, text=True)
    assert r.returncode == 2 and r.stderr.splitlines() == [line]


def test_run_main_keeps_the_traceback_of_a_bug():
    code = RUN_MAIN.format(src=str(REPO / "src"))
    r = subprocess.run([sys.executable, "-c", code, "bug"], capture_output=True, text=True)
    assert r.returncode == 1 and "Traceback" in r.stderr and "KeyError: 'a bug'" in r.stderr


def test_block_vector_parser_equals_the_row_parser():
    from wbdc.prepare import _parse_vectors_fast, _parse_vectors_rows
    rng = np.random.default_rng(3)
    vals = rng.normal(size=(40, 512)) * 10.0 ** rng.integers(-8, 8, size=(40, 512))
    strings = np.array([" ".join(repr(float(v)) for v in row) + " " for row in vals], dtype=object)
    lines = np.arange(2, 42)
    fast = _parse_vectors_fast(strings)
    assert fast is not None and fast.dtype == np.float32
    np.testing.assert_array_equal(fast, _parse_vectors_rows("e.csv", strings, lines))
    odd = strings.copy()
    odd[5] = odd[5].replace(" ", "  ", 3)        # double spaces: the row parser takes over
    assert _parse_vectors_fast(odd) is None
    np.testing.assert_array_equal(_parse_vectors_rows("e.csv", odd, lines), fast)
    short = strings.copy()
    short[7] = short[7].rsplit(" ", 2)[0]
    assert _parse_vectors_fast(short) is None


def test_crlf_files_read_like_lf_files(raw, good_raw, tmp_path):
    for f in ("user_action.csv", "feed_info.csv", "feed_embeddings.csv", "test_a.csv"):
        (raw / f).write_bytes((raw / f).read_bytes().replace(b"\n", b"\r\n"))
    prepare(raw, tmp_path / "crlf", block_bytes=1000)
    prepare(good_raw, tmp_path / "lf")
    for f in ("actions.parquet", "test.parquet", "feeds.parquet"):
        assert pq.read_table(tmp_path / "crlf" / f).equals(pq.read_table(tmp_path / "lf" / f))
    for f in ("feed_embeddings.npy", "feed_embedding_ids.npy"):
        assert (tmp_path / "crlf" / f).read_bytes() == (tmp_path / "lf" / f).read_bytes()


def test_quoted_file_cut_short(raw, tmp_path):
    df = pd.read_csv(raw / "test_a.csv")
    df.to_csv(raw / "test_a.csv", index=False, quoting=1)
    text = (raw / "test_a.csv").read_text().rstrip("\n")
    (raw / "test_a.csv").write_text(text.rsplit(",", 1)[0])
    n = len(_lines(raw / "test_a.csv"))
    _fails(raw, tmp_path, rf"^test_a\.csv: line {n}: expected 3 fields, found 2 \(the file ends inside this line\)$")
