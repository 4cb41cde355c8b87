"""Several data folders (final round: wechat_algo_data2/ plus the preliminary wechat_algo_data1/)."""
from __future__ import annotations

import json
import os
import shutil
import subprocess
import sys
from pathlib import Path

import numpy as np
import pandas as pd
import pyarrow.parquet as pq
import pytest

from official_fixture import write_official
from wbdc.config import ConfigError
from wbdc.io import InputError
from wbdc.paths import Paths
from wbdc.prepare import is_up_to_date, prepare, resolve_source

REPO = Path(__file__).resolve().parents[1]


@pytest.fixture
def two(tmp_path) -> tuple[Path, Path]:
    """data1: a full official folder; data2: same feeds, its own user_action and test_a."""
    d1 = write_official(tmp_path / "wechat_algo_data1")
    d2 = tmp_path / "wechat_algo_data2"
    d2.mkdir()
    for f in ("feed_info.csv", "feed_embeddings.csv"):
        shutil.copy(d1 / f, d2 / f)
    ua1 = pd.read_csv(d1 / "user_action.csv")
    ua2 = ua1.iloc[:5].copy()               # 5 pairs also in data1, with other labels
    ua2["like"] = 1 - ua2["like"]
    ua2["date_"] = 14
    fresh = ua1.iloc[:20].copy()            # 20 pairs only in data2
    fresh["userid"] = fresh["userid"] + 1000
    pd.concat([ua2, fresh], ignore_index=True).to_csv(d2 / "user_action.csv", index=False)
    test = pd.read_csv(d1 / "test_a.csv").iloc[:30]
    test.to_csv(d2 / "test_a.csv", index=False)
    return d1, d2


def test_user_action_rows_of_all_folders_later_folder_wins(two, tmp_path):
    d1, d2 = two
    ua1, ua2 = pd.read_csv(d1 / "user_action.csv"), pd.read_csv(d2 / "user_action.csv")
    with pytest.warns(UserWarning) as rec:
        meta = prepare([d2, d1], tmp_path / "a")      # data1 listed last: its rows win
    msgs = [str(w.message) for w in rec]
    assert msgs == ["user_action.csv (all folders): 5 duplicate (userid, feedid) rows dropped, "
                    "5 of them across folders, keeping the last"]
    got = pd.read_parquet(tmp_path / "a" / "actions.parquet")
    assert meta["n_actions"] == len(ua1) + 20 == len(got)
    assert meta["n_duplicates_removed"] == 5 and meta["n_duplicates_across_folders"] == 5
    expect = pd.concat([ua2.iloc[5:], ua1], ignore_index=True)
    for c in got.columns:
        np.testing.assert_array_equal(got[c].to_numpy(), expect[c].to_numpy())

    with pytest.warns(UserWarning):
        prepare([d1, d2], tmp_path / "b")              # now data2's rows win
    got = pd.read_parquet(tmp_path / "b" / "actions.parquet")
    keep = pd.concat([ua1.iloc[5:], ua2], ignore_index=True)
    np.testing.assert_array_equal(got["like"].to_numpy(), keep["like"].to_numpy())
    np.testing.assert_array_equal(got["userid"].to_numpy(), keep["userid"].to_numpy())


def test_test_file_comes_from_the_last_folder_having_it(two, tmp_path):
    d1, d2 = two
    with pytest.warns(UserWarning):
        meta = prepare([d1, d2], tmp_path / "out")
    assert meta["n_test"] == 30 and meta["test_path"] == str((d2 / "test_a.csv").resolve())
    (d2 / "test_a.csv").unlink()
    with pytest.warns(UserWarning):
        meta = prepare([d1, d2], tmp_path / "out")
    assert meta["test_path"] == str((d1 / "test_a.csv").resolve())
    assert meta["n_test"] == len(pd.read_csv(d1 / "test_a.csv"))


def test_feed_files_may_live_in_one_folder(two, tmp_path):
    d1, d2 = two
    for f in ("feed_info.csv", "feed_embeddings.csv"):
        (d2 / f).unlink()
    with pytest.warns(UserWarning):
        meta = prepare([d1, d2], tmp_path / "out")
    assert meta["n_feeds"] == len(pd.read_csv(d1 / "feed_info.csv"))


def test_feeds_new_in_a_later_folder_are_appended(two, tmp_path):
    d1, d2 = two
    fi = pd.read_csv(d2 / "feed_info.csv", dtype=str, keep_default_na=False)
    extra = fi.iloc[[0]].copy()
    extra["feedid"] = "777"
    pd.concat([fi.iloc[10:], extra]).to_csv(d2 / "feed_info.csv", index=False)
    em = pd.read_csv(d2 / "feed_embeddings.csv", dtype=str)
    e_extra = em.iloc[[0]].copy()
    e_extra["feedid"] = "777"
    pd.concat([em.iloc[3:], e_extra]).to_csv(d2 / "feed_embeddings.csv", index=False)
    t = pd.read_csv(d2 / "test_a.csv")
    t.loc[0, "feedid"] = 777
    t.to_csv(d2 / "test_a.csv", index=False)
    with pytest.warns(UserWarning):
        meta = prepare([d1, d2], tmp_path / "out")
    feeds = pq.read_table(tmp_path / "out" / "feeds.parquet").column("feedid").to_numpy()
    ids = np.load(tmp_path / "out" / "feed_embedding_ids.npy")
    n1 = len(pd.read_csv(d1 / "feed_info.csv"))
    assert meta["n_feeds"] == n1 + 1 and feeds[-1] == 777 and ids[-1] == 777 and len(ids) == n1 + 1
    emb = np.load(tmp_path / "out" / "feed_embeddings.npy")
    np.testing.assert_array_equal(emb[-1], emb[0])


def test_feed_info_rows_disagreeing_across_folders(two, tmp_path):
    d1, d2 = two
    fi = pd.read_csv(d2 / "feed_info.csv", dtype=str, keep_default_na=False)
    fid = fi.loc[6, "feedid"]
    fi.loc[6, "authorid"] = "9999"
    fi.to_csv(d2 / "feed_info.csv", index=False)
    with pytest.raises(InputError, match=rf"^feed_info\.csv: feedid {fid} differs between "
                                         rf"wechat_algo_data1/feed_info\.csv \(line 8\) and "
                                         rf"wechat_algo_data2/feed_info\.csv \(line 8\), column 'authorid'$"):
        prepare([d1, d2], tmp_path / "out")
    fi.loc[6, "authorid"] = pd.read_csv(d1 / "feed_info.csv", dtype=str).loc[6, "authorid"]
    fi.loc[6, "manual_keyword_list"] = "1;2;3;4;5"
    fi.to_csv(d2 / "feed_info.csv", index=False)
    with pytest.raises(InputError, match=r"column 'manual_keyword_list'$"):
        prepare([d1, d2], tmp_path / "out")
    assert not (tmp_path / "out").exists()


def test_feed_embeddings_disagreeing_across_folders(two, tmp_path):
    d1, d2 = two
    em = pd.read_csv(d2 / "feed_embeddings.csv", dtype=str)
    fid = em.loc[3, "feedid"]
    vals = em.loc[3, "feed_embedding"].split()
    vals[0] = "0.125"
    em.loc[3, "feed_embedding"] = " ".join(vals)
    em.to_csv(d2 / "feed_embeddings.csv", index=False)
    with pytest.raises(InputError, match=rf"^feed_embeddings\.csv: feedid {fid} differs between "
                                         rf"wechat_algo_data1/feed_embeddings\.csv \(line 5\) and "
                                         rf"wechat_algo_data2/feed_embeddings\.csv \(line 5\), "
                                         rf"column 'feed_embedding'$"):
        prepare([d1, d2], tmp_path / "out", block_bytes=4096)


def test_errors_in_a_later_folder_name_that_folder(two, tmp_path):
    d1, d2 = two
    rows = (d2 / "user_action.csv").read_text().splitlines(keepends=True)
    rows[3] = rows[3].replace(",", ",x", 1)
    (d2 / "user_action.csv").write_text("".join(rows))
    with pytest.raises(InputError, match=r"^wechat_algo_data2/user_action\.csv: line 4, column 'feedid': non-numeric"):
        prepare([d1, d2], tmp_path / "out")


def test_missing_everywhere_and_empty_folder(two, tmp_path):
    d1, d2 = two
    empty = tmp_path / "empty"
    empty.mkdir()
    with pytest.raises(InputError, match=rf"^{empty}: holds none of user_action\.csv"):
        prepare([d1, empty], tmp_path / "out")
    for d in (d1, d2):
        (d / "feed_embeddings.csv").unlink()
    with pytest.raises(InputError, match=rf"^feed_embeddings\.csv: missing file \(in none of {d1}, {d2}\)$"):
        prepare([d1, d2], tmp_path / "out")
    with pytest.raises(InputError, match=r"listed twice"):
        prepare([d1, d1], tmp_path / "out")


def test_up_to_date_check_covers_every_folder(two, tmp_path):
    d1, d2 = two
    out = tmp_path / "out"
    with pytest.warns(UserWarning):
        meta = prepare([d1, d2], out)
    read = [d / f for d in (d1, d2) for f in ("user_action.csv", "feed_info.csv", "feed_embeddings.csv")]
    assert sorted(meta["input_digests"]) == sorted(str(p) for p in [*read, d2 / "test_a.csv"])
    assert is_up_to_date(out, [d1, d2], "test_a.csv")
    assert not is_up_to_date(out, [d2], "test_a.csv")
    with open(d1 / "user_action.csv", "a") as fh:   # a change in the first folder only
        fh.write(pd.read_csv(d1 / "user_action.csv").iloc[-1:].to_csv(header=False, index=False))
    assert not is_up_to_date(out, [d1, d2], "test_a.csv")


def test_old_cache_version_is_rebuilt(two, tmp_path):
    d1, _ = two
    out = tmp_path / "out"
    prepare(d1, out)
    assert is_up_to_date(out, [d1], "test_a.csv")
    meta = json.loads((out / "meta.json").read_text())
    meta["version"] = 1
    (out / "meta.json").write_text(json.dumps(meta))
    assert not is_up_to_date(out, [d1], "test_a.csv")


def test_resolve_source_takes_the_list(two, tmp_path):
    d1, d2 = two
    cfg = {"data": {"data_dir": [str(d2), str(d1)], "test_file": "test_b.csv", "preset": "tiny", "seed": 1}}
    src = resolve_source(cfg, Paths.at(tmp_path))
    assert src.raw_dirs == [d2, d1] and src.test_file == "test_b.csv" and src.truth_dir is None
    cfg["data"]["data_dir"] = f"{d1},{d2}"
    assert resolve_source(cfg, Paths.at(tmp_path)).raw_dirs == [d1, d2]
    assert issubclass(ConfigError, InputError)


def _run(script: str, root: Path, *args: str) -> subprocess.CompletedProcess:
    env = {**os.environ, "PYTHONHASHSEED": "0"}
    return subprocess.run([sys.executable, str(REPO / "src/stages" / script), "--root", str(root), *args],
                          capture_output=True, text=True, timeout=300, env=env)


def test_stage_reads_two_folders_given_twice_or_as_a_comma_list(two, tmp_path):
    d1, d2 = two
    root = tmp_path / "root"
    r = _run("prepare.py", root, "--data-dir", str(d2), "--data-dir", str(d1))
    assert r.returncode == 0, r.stderr
    assert f"[prepare] reading {d2}, {d1} (test file test_a.csv)" in r.stderr
    assert "[prepare] warning: user_action.csv (all folders): 5 duplicate" in r.stderr
    meta = json.loads((root / "data/prepared/meta.json").read_text())
    assert meta["source_dirs"] == [str(d2), str(d1)]
    r = _run("prepare.py", root, "--data-dir", f"{d2},{d1}")
    assert r.returncode == 0 and "up to date" in r.stderr, r.stderr
    r = _run("prepare.py", root, "--data-dir", f"{d2},{tmp_path / 'nowhere'}")
    assert r.returncode == 2
    assert r.stderr.strip().splitlines()[-1].startswith(f"error: {tmp_path / 'nowhere'}: data folder missing")


def test_make_synthetic_and_score_accept_the_list(two, tmp_path):
    d1, d2 = two
    r = _run("make_synthetic.py", tmp_path / "root", "--data-dir", str(d1), "--data-dir", str(d2))
    assert r.returncode == 0, r.stderr
    assert r.stderr.strip() == f"[make_synthetic] data.data_dir is set ({d1}, {d2}): real data, nothing to generate"
    assert not (tmp_path / "root" / "data").exists()
    sub = tmp_path / "sub.csv"
    sub.write_text("userid,feedid\n")
    r = _run("score.py", tmp_path / "root", str(sub), "--data-dir", f"{d1},{d2}")
    assert r.returncode == 2
    assert r.stderr.strip().splitlines() == [
        "error: no TRUTH given: the real test labels are not public; pass a truth CSV "
        "(userid, feedid and the action labels) or set data.truth_dir"]


@pytest.mark.parametrize("parts", [1, 7])
def test_keep_last_matches_pandas_and_counts_cross_folder_drops(parts):
    from wbdc.prepare import keep_last
    rng = np.random.default_rng(parts)
    user, feed = rng.integers(0, 50, 3000), rng.integers(0, 40, 3000)
    key = (user.astype(np.int64) << 32) | feed
    bounds = [0, 1000, 2200, 3000]
    keep, n_dup, n_cross = keep_last(key, bounds, parts=parts)
    expect = ~pd.Series(key).duplicated(keep="last").to_numpy()
    np.testing.assert_array_equal(keep, expect)
    assert n_dup == int((~expect).sum()) > 0
    folder = np.searchsorted(bounds, np.arange(3000), side="right") - 1
    last_row = pd.Series(np.arange(3000)).groupby(key).transform("max").to_numpy()
    assert n_cross == int(((folder != folder[last_row]) & ~expect).sum()) > 0
