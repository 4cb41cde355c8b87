"""Submission: validator refusals (message, no file), order, rounding, the submit stage."""
from __future__ import annotations

import json
from pathlib import Path

import numpy as np
import pandas as pd
import pytest

from wbdc.io import InputError
from wbdc.schema import ACTIONS
from wbdc.scoring import score_files
from wbdc.submission import (SUBMISSION_COLUMNS, build_submission, validate_submission,
                             write_submission)

from conftest import run_stage
from test_blend import make_world, standard_models, write_model, write_root


def _test_keys(n=6) -> pd.DataFrame:
    return pd.DataFrame({"userid": np.array([5, 5, 9, 9, 9, 2][:n], np.int32),
                         "feedid": np.array([10, 11, 10, 12, 13, 10][:n], np.int32)})


def _preds(test: pd.DataFrame, seed=0) -> pd.DataFrame:
    rng = np.random.default_rng(seed)
    df = test.copy()
    for a in ACTIONS:
        df[a] = rng.random(len(df)).astype(np.float32)
    return df


def test_build_submission_orders_rounds_and_keeps_columns():
    test = _test_keys()
    preds = _preds(test)
    preds["extra"] = 1
    preds.loc[0, "like"] = 0.12345678
    shuffled = preds.iloc[[3, 0, 5, 1, 4, 2]].reset_index(drop=True)
    sub = build_submission(shuffled, test)
    assert list(sub.columns) == list(SUBMISSION_COLUMNS)
    pd.testing.assert_frame_equal(sub[["userid", "feedid"]], test)      # test-file order
    assert sub.loc[0, "like"] == 0.123457
    np.testing.assert_allclose(sub["follow"], np.round(preds["follow"].astype(np.float64), 6))


def test_write_submission_files(tmp_path):
    test = _test_keys()
    sub = build_submission(_preds(test), test)
    stamped, latest = write_submission(sub, test, tmp_path / "subs", timestamp="20210101_000000")
    assert stamped.name == "submission_20210101_000000.csv" and latest.name == "submission.csv"
    assert stamped.read_bytes() == latest.read_bytes()
    lines = latest.read_text().splitlines()
    assert lines[0] == "userid,feedid,read_comment,like,click_avatar,forward,favorite,comment,follow"
    assert len(lines) == len(test) + 1
    for line in lines[1:]:
        for v in line.split(",")[2:]:
            assert 0 <= float(v) <= 1 and len(v.split(".")[1]) <= 6
    back = pd.read_csv(latest)
    pd.testing.assert_frame_equal(back[["userid", "feedid"]], test, check_dtype=False)
    assert sorted(p.name for p in (tmp_path / "subs").iterdir()) == [latest.name, stamped.name]


def _bad_cases():
    test = _test_keys()
    good = _preds(test)
    nan = good.copy(); nan.loc[2, "comment"] = np.nan  # noqa: E702
    hi = good.copy(); hi.loc[4, "like"] = 1.5  # noqa: E702
    lo = good.copy(); lo.loc[1, "follow"] = -0.01  # noqa: E702
    short = good.iloc[:-1]
    long = pd.concat([good, good.iloc[[0]]], ignore_index=True)
    dup = good.copy(); dup.loc[3, ["userid", "feedid"]] = [5, 11]  # noqa: E702
    alien = good.copy(); alien.loc[5, "feedid"] = 999  # noqa: E702
    nocol = good.drop(columns=["favorite"])
    return {
        "nan": (nan, r"column comment has 1 NaN or non-numeric values \(first at row 3\)"),
        "above_one": (hi, r"column like has 1 values outside \[0, 1\] \(first 1.5 at row 5\)"),
        "below_zero": (lo, r"column follow has 1 values outside \[0, 1\] \(first -0.01"),
        "too_few_rows": (short, r"5 rows but the test file has 6 \(one row per test row expected\)"),
        "too_many_rows": (long, r"7 rows but the test file has 6"),
        "duplicate_keys": (dup, r"1 duplicate \(userid, feedid\) keys \(first userid=5 feedid=11 at row 4\)"),
        "not_in_test": (alien, r"1 \(userid, feedid\) keys are not in the test file "
                               r"\(first userid=2 feedid=999 at row 6\)"),
        "missing_column": (nocol, r"missing columns favorite"),
    }


@pytest.mark.parametrize("case", list(_bad_cases()))
def test_bad_submissions_are_refused_and_nothing_is_written(case, tmp_path):
    bad, message = _bad_cases()[case]
    test = _test_keys()
    out = tmp_path / "subs"
    with pytest.raises(InputError, match=message) as e:
        validate_submission(bad, test, "preds")
    assert "\n" not in str(e.value) and str(e.value).startswith("preds: ")
    with pytest.raises(InputError, match=message):
        build_submission(bad, test)
    with pytest.raises(InputError, match=message):
        write_submission(bad, test, out, timestamp="x")
    assert not out.exists() or list(out.iterdir()) == []


def test_failed_write_leaves_no_file(tmp_path, monkeypatch):
    test = _test_keys()
    sub = build_submission(_preds(test), test)

    def broken(self, path, *a, **k):
        Path(path).write_text("userid,feedid\n1,")     # half a file, then the disk "fails"
        raise OSError("disk full")

    monkeypatch.setattr(pd.DataFrame, "to_csv", broken)
    with pytest.raises(OSError, match="disk full"):
        write_submission(sub, test, tmp_path, timestamp="t")
    assert list(tmp_path.iterdir()) == []


# ------------------------------------------------------------------------------ stage

@pytest.fixture()
def blended_root(tmp_path) -> Path:
    w = make_world(n_users=60, rows_per_user=12, n_test_per_user=8, seed=3)
    root = write_root(tmp_path, w, standard_models(w))
    run_stage("blend.py", root, "--no-progress", "--set", "blend.search.max_evals=20")
    return root


def test_submit_stage_writes_and_scores_online(blended_root):
    r = run_stage("submit.py", blended_root, "--timestamp", "T1")
    subs = blended_root / "submissions"
    latest, stamped = subs / "submission.csv", subs / "submission_T1.csv"
    assert latest.read_bytes() == stamped.read_bytes()
    sub = pd.read_csv(latest)
    test = pd.read_parquet(blended_root / "data" / "prepared" / "test.parquet")
    assert list(sub.columns) == list(SUBMISSION_COLUMNS)
    np.testing.assert_array_equal(sub["userid"], test["userid"])
    np.testing.assert_array_equal(sub["feedid"], test["feedid"])
    s = json.loads((blended_root / "ensemble" / "scores.json").read_text())
    truth = blended_root / "data" / "synthetic" / "fake" / "truth" / "test_truth.csv"
    assert s["online"] == score_files(latest, truth)             # the official-style scorer
    assert s["online_source"] == "ensemble"
    assert set(s["models_online"]) == {"good", "noise_a", "noise_b"}
    assert s["models_online"]["good"]["weighted"] > s["models_online"]["noise_a"]["weighted"]
    assert f"online weighted uAUC {s['online']['weighted']}" in r.stdout
    assert (subs / "run_info_submit.json").is_file() and (subs / "config.json").is_file()
    # the blend's day-14 numbers are kept
    assert s["blend"] is not None and s["blend_weights"]["like"]


def test_submit_stage_from_one_model(blended_root):
    run_stage("submit.py", blended_root, "--model", "noise_a", "--timestamp", "T2")
    sub = pd.read_csv(blended_root / "submissions" / "submission.csv")
    src = pd.read_parquet(blended_root / "models" / "noise_a" / "pred_online.parquet")
    np.testing.assert_allclose(sub["like"], np.round(src["like"].astype(np.float64), 6), atol=1e-12)
    s = json.loads((blended_root / "ensemble" / "scores.json").read_text())
    assert s["online_source"] == "noise_a"
    assert s["online"] == s["models_online"]["noise_a"]


def test_submit_stage_refuses_bad_predictions(blended_root):
    w = make_world(n_users=60, rows_per_user=12, n_test_per_user=8, seed=3)
    off, on = standard_models(w)["good"]
    on = on.copy()
    on[7, 2] = np.nan
    write_model(blended_root, "broken", w, off, on)
    with pytest.raises(AssertionError) as e:
        run_stage("submit.py", blended_root, "--model", "broken")
    err = str(e.value)
    assert "error: " in err and "broken/pred_online.parquet: column click_avatar has 1 NaN" in err
    assert not (blended_root / "submissions").exists() or not any(
        p.suffix == ".csv" for p in (blended_root / "submissions").iterdir())
    with pytest.raises(AssertionError, match=r"models/nope/pred_online.parquet: missing; run the "
                                             r"stage that trains model 'nope'"):
        run_stage("submit.py", blended_root, "--model", "nope")
