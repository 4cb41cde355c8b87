"""data.truth_dir: the true probabilities of a world given with --data-dir (a synthetic world
written elsewhere in this project's truth layout, e.g. ../shared/worlds/second_world.py's truth/),
so the oracle and the online scores are computed on it as on the built-in world."""
from __future__ import annotations

import json
import os
import subprocess
import sys
from pathlib import Path

import numpy as np
import pandas as pd
import pytest

from conftest import run_stage
from wbdc.blend import align_truth
from wbdc.io import InputError
from wbdc.prepare import TRUTH_FILES, is_up_to_date
from wbdc.schema import ACTIONS

REPO = Path(__file__).resolve().parents[1]


def _prepare(root: Path, data_dir: Path, truth: Path) -> subprocess.CompletedProcess:
    cmd = [sys.executable, str(REPO / "src" / "stages" / "prepare.py"), "--root", str(root),
           "--data-dir", str(data_dir), "--set", f"data.truth_dir={truth}"]
    return subprocess.run(cmd, capture_output=True, text=True, timeout=300,
                          env={**os.environ, "PYTHONHASHSEED": "0"})


def test_truth_dir_is_checked_recorded_and_part_of_the_up_to_date_check(good_raw, tmp_path):
    truth = tmp_path / "truth"
    truth.mkdir()
    r = _prepare(tmp_path / "root", good_raw, truth)
    assert r.returncode != 0
    lines = r.stderr.strip().splitlines()
    assert len(lines) == 1 and "data.truth_dir" in lines[0] and str(truth) in lines[0]
    assert not (tmp_path / "root" / "data" / "prepared" / "meta.json").exists()
    for f in TRUTH_FILES:
        (truth / f).write_text("userid,feedid\n")
    r = _prepare(tmp_path / "root", good_raw, truth)
    assert r.returncode == 0, r.stderr[-2000:]
    out = tmp_path / "root" / "data" / "prepared"
    meta = json.loads((out / "meta.json").read_text())
    assert meta["truth_dir"] == str(truth.resolve()) and meta["synthetic"] is True
    assert is_up_to_date(out, [good_raw], "test_a.csv", truth)
    assert not is_up_to_date(out, [good_raw], "test_a.csv", None)   # a run without it redoes prepare
    run_stage("prepare.py", tmp_path / "root", "--data-dir", str(good_raw))
    assert json.loads((out / "meta.json").read_text())["truth_dir"] is None


def _frame(pairs, start=0) -> pd.DataFrame:
    df = pd.DataFrame(pairs, columns=["userid", "feedid"])
    for j, a in enumerate(ACTIONS):
        df[a] = np.arange(start, start + len(df), dtype=np.float64) / 100 + j
    return df


def test_a_truth_of_the_raw_rows_is_deduplicated_as_prepare_does():
    """prepare keeps the last row of a repeated (userid, feedid); a truth file written for the
    raw rows is cut the same way before it is aligned, and then must match row for row."""
    raw = _frame([(1, 10), (2, 20), (1, 10), (3, 30)])
    keys = pd.DataFrame({"userid": [2, 1, 3], "feedid": [20, 10, 30]})   # row 0 dropped
    got = align_truth(raw, keys, "truth.csv")
    np.testing.assert_array_equal(got["like"].to_numpy(), raw["like"].to_numpy()[[1, 2, 3]])
    with pytest.raises(InputError, match=r"^truth.csv: rows do not align"):
        align_truth(raw, pd.DataFrame({"userid": [1, 2, 3], "feedid": [10, 20, 30]}), "truth.csv")
    with pytest.raises(InputError, match=r"^truth.csv: 2 rows but expected 3"):
        align_truth(raw.iloc[:2], keys, "truth.csv")


def test_score_reads_the_test_truth_of_truth_dir(tmp_path):
    """score.py without a TRUTH argument: data.truth_dir/test_truth.csv for --data-dir worlds."""
    import importlib.util
    spec = importlib.util.spec_from_file_location("score_stage", REPO / "src" / "stages" / "score.py")
    score = importlib.util.module_from_spec(spec)
    spec.loader.exec_module(score)
    cfg = {"data": {"data_dir": [str(tmp_path / "w")], "truth_dir": str(tmp_path / "t")}}
    assert score.default_truth(cfg, str(tmp_path)) == tmp_path / "t" / "test_truth.csv"
    cfg["data"]["truth_dir"] = None
    with pytest.raises(InputError, match="set data.truth_dir"):
        score.default_truth(cfg, str(tmp_path))


def test_a_bad_truth_file_fails_the_blend_in_one_line_and_keeps_its_previous_files(tiny_run, tmp_path):
    """The oracle's truth file is read before the blend writes anything: a bad one stops the
    stage with a one-line error naming the file, and the previous run's files stay as they were."""
    import shutil

    from conftest import RUN_ALL_SEED

    root = tmp_path / "root"
    shutil.copytree(tiny_run[0], root, symlinks=True)
    bad = tmp_path / "truth"
    bad.mkdir()
    (bad / "day14_prob.csv").write_text("userid,feedid\n1,2\n")
    meta_f = root / "data" / "prepared" / "meta.json"
    meta = json.loads(meta_f.read_text())
    assert meta["synthetic"] and meta["truth_dir"]
    meta_f.write_text(json.dumps({**meta, "truth_dir": str(bad)}))
    ens = root / "ensemble"
    before = {f.name: f.read_bytes() for f in ens.iterdir() if f.is_file()}
    assert {"pred_offline.parquet", "pred_online.parquet", "scores.json", "blend_weights.json"} <= set(before)
    r = subprocess.run([sys.executable, str(REPO / "src" / "stages" / "blend.py"), "--root", str(root),
                        "--preset", "tiny", "--seed", RUN_ALL_SEED, "--no-progress",
                        "--set", "blend.scope=shared", "--set", "blend.search.max_evals=20"],
                       capture_output=True, text=True, timeout=300)
    assert r.returncode != 0
    last = r.stderr.strip().splitlines()[-1]
    assert str(bad / "day14_prob.csv") in last and "missing columns" in last, r.stderr[-2000:]
    after = {f.name: f.read_bytes() for f in ens.iterdir() if f.is_file()}
    assert after == before
