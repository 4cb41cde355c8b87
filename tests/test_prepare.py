"""The official data layer: round trip, typed caches, and one clear error per kind of bad input."""
from __future__ import annotations

import subprocess
import sys
from pathlib import Path

import numpy as np
import pandas as pd
import pyarrow.parquet as pq
import pytest

from official_fixture import write_official
from wbdc import schema
from wbdc.io import InputError
from wbdc.prepare import PREPARED_FILES, prepare

REPO = Path(__file__).resolve().parents[1]


def test_round_trip_values_and_dtypes(good_raw, tmp_path):
    out = tmp_path / "prepared"
    meta = prepare(good_raw, out)
    assert sorted(p.name for p in out.iterdir()) == sorted(PREPARED_FILES)
    ua = pd.read_csv(good_raw / "user_action.csv")
    actions = pd.read_parquet(out / "actions.parquet")
    assert meta["n_actions"] == len(ua) == len(actions)
    assert list(actions.columns) == ["userid", "feedid", "date_", "device", *schema.ACTIONS, "play", "stay"]
    assert actions["userid"].dtype == np.int32 and actions["date_"].dtype == np.int8
    assert actions["like"].dtype == np.int8 and actions["play"].dtype == np.int32
    for c in actions.columns:
        np.testing.assert_array_equal(actions[c].to_numpy(), ua[c].to_numpy())

    fi = pd.read_csv(good_raw / "feed_info.csv", keep_default_na=False, dtype=str)
    feeds = pq.read_table(out / "feeds.parquet").to_pandas()
    assert feeds["bgm_song_id"].dtype == np.int32
    raw_bgm = fi["bgm_song_id"].replace("", "-1").astype(int).to_numpy()
    np.testing.assert_array_equal(feeds["bgm_song_id"].to_numpy(), raw_bgm)
    for i in range(len(fi)):
        assert list(feeds["manual_keyword_list"][i]) == [int(x) for x in fi["manual_keyword_list"][i].split(";") if x]
        assert list(feeds["description"][i]) == [int(x) for x in fi["description"][i].split()]
        tp = [item.split() for item in fi["machine_tag_list"][i].split(";") if item]
        assert list(feeds["machine_tag_list"][i]) == [int(t) for t, _ in tp]
        np.testing.assert_allclose(feeds["machine_tag_prob"][i], [float(p) for _, p in tp], rtol=1e-6)

    emb = np.load(out / "feed_embeddings.npy")
    ids = np.load(out / "feed_embedding_ids.npy")
    raw_emb = pd.read_csv(good_raw / "feed_embeddings.csv")
    assert emb.dtype == np.float32 and emb.shape == (len(raw_emb), 512)
    np.testing.assert_array_equal(ids, raw_emb["feedid"].to_numpy())
    np.testing.assert_allclose(emb[3], np.array(raw_emb["feed_embedding"][3].split(), dtype=np.float32))
    test = pd.read_parquet(out / "test.parquet")
    np.testing.assert_array_equal(test["feedid"], pd.read_csv(good_raw / "test_a.csv")["feedid"])


def test_duplicates_keep_last_with_warning(raw, tmp_path):
    ua = pd.read_csv(raw / "user_action.csv")
    first = ua.iloc[[0]].copy()
    first["like"] = 1 - first["like"]
    first["date_"] = 1
    # the duplicate comes first in the file, so the original row (later) must survive
    pd.concat([first, ua], ignore_index=True).to_csv(raw / "user_action.csv", index=False)
    with pytest.warns(UserWarning, match="1 duplicate"):
        meta = prepare(raw, tmp_path / "out")
    assert meta["n_duplicates_removed"] == 1
    actions = pd.read_parquet(tmp_path / "out" / "actions.parquet")
    assert len(actions) == len(ua)
    assert actions["like"].iloc[0] == ua["like"].iloc[0]


def _edit_csv(path: Path, row: int, column: str, value: str) -> None:
    df = pd.read_csv(path, dtype=str, keep_default_na=False)
    df.loc[row - 1, column] = value
    df.to_csv(path, index=False)


BAD_CASES = [
    ("user_action.csv", 5, "userid", "abc", r"user_action\.csv: line 6, column 'userid': non-numeric value 'abc'"),
    ("user_action.csv", 7, "date_", "15", r"user_action\.csv: line 8, column 'date_': date_ 15 outside 1\.\.14"),
    ("user_action.csv", 3, "like", "2", r"user_action\.csv: line 4, column 'like': label 2 outside \{0,1\}"),
    ("user_action.csv", 9, "play", "-5", r"user_action\.csv: line 10, column 'play': negative value -5"),
    ("user_action.csv", 4, "stay", "-1", r"user_action\.csv: line 5, column 'stay': negative value -1"),
    ("feed_info.csv", 2, "authorid", "x1", r"feed_info\.csv: line 3, column 'authorid': non-numeric value 'x1'"),
    ("feed_info.csv", 6, "manual_tag_list", "3;b", r"feed_info\.csv: line 7, column 'manual_tag_list': non-integer list item 'b'"),
    ("feed_embeddings.csv", 8, "feed_embedding", "0.1 0.2 0.3",
     r"feed_embeddings\.csv: line 9, column 'feed_embedding': expected 512 numbers, got 3"),
    ("test_a.csv", 4, "feedid", "999999", r"test_a\.csv: line 5, column 'feedid': feedid 999999 not in feed_info\.csv"),
    ("test_a.csv", 2, "device", "z", r"test_a\.csv: line 3, column 'device': non-numeric value 'z'"),
]


@pytest.mark.parametrize("fname,row,column,value,message", BAD_CASES,
                         ids=[f"{c[0]}:{c[2]}={c[3]}" for c in BAD_CASES])
def test_bad_input_one_line_error_and_nothing_written(raw, tmp_path, fname, row, column, value, message):
    _edit_csv(raw / fname, row, column, value)
    out = tmp_path / "prepared"
    with pytest.raises(InputError, match=message) as ei:
        prepare(raw, out)
    assert "\n" not in str(ei.value)
    assert not out.exists()
    assert [p for p in tmp_path.iterdir() if p.name != "raw"] == []


def test_embedding_with_non_number(raw, tmp_path):
    df = pd.read_csv(raw / "feed_embeddings.csv", dtype=str)
    vals = df.loc[2, "feed_embedding"].split()
    vals[10] = "oops"
    df.loc[2, "feed_embedding"] = " ".join(vals)
    df.to_csv(raw / "feed_embeddings.csv", index=False)
    with pytest.raises(InputError, match=r"feed_embeddings\.csv: line 4, column 'feed_embedding': non-numeric value 'oops'$"):
        prepare(raw, tmp_path / "out")


def test_missing_file_and_renamed_column(raw, tmp_path):
    (raw / "feed_embeddings.csv").unlink()
    with pytest.raises(InputError, match=r"feed_embeddings\.csv: missing file"):
        prepare(raw, tmp_path / "out")
    write_official(raw)
    text = (raw / "user_action.csv").read_text().replace("read_comment", "readcomment", 1)
    (raw / "user_action.csv").write_text(text)
    with pytest.raises(InputError, match=r"user_action\.csv: line 1 \(header\), column 'read_comment': missing column"):
        prepare(raw, tmp_path / "out")


def test_existing_cache_survives_a_failed_rerun(raw, tmp_path):
    out = tmp_path / "prepared"
    prepare(raw, out)
    before = (out / "actions.parquet").read_bytes()
    _edit_csv(raw / "user_action.csv", 2, "like", "7")
    with pytest.raises(InputError):
        prepare(raw, out)
    assert (out / "actions.parquet").read_bytes() == before
    assert sorted(p.name for p in tmp_path.iterdir()) == ["prepared", "raw"]


def test_stage_cli_error_is_one_line(raw, tmp_path):
    _edit_csv(raw / "user_action.csv", 5, "userid", "abc")
    r = subprocess.run([sys.executable, str(REPO / "src/stages/prepare.py"), "--data-dir", str(raw),
                        "--root", str(tmp_path / "root")], capture_output=True, text=True)
    assert r.returncode == 2
    assert r.stderr.strip().splitlines()[-1] == \
        "error: user_action.csv: line 6, column 'userid': non-numeric value 'abc'"
    assert not (tmp_path / "root" / "data" / "prepared").exists()


def test_stage_cli_runs_and_skips_when_unchanged(good_raw, tmp_path):
    cmd = [sys.executable, str(REPO / "src/stages/prepare.py"), "--data-dir", str(good_raw),
           "--root", str(tmp_path)]
    r1 = subprocess.run(cmd, capture_output=True, text=True)
    assert r1.returncode == 0, r1.stderr
    assert "[prepare] done in" in r1.stderr
    r2 = subprocess.run(cmd, capture_output=True, text=True)
    assert r2.returncode == 0 and "up to date" in r2.stderr
    assert (tmp_path / "data/prepared/config.json").exists()
