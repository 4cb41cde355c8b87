"""End to end: `bash run_all.sh --preset tiny` in a temporary artifact root, and a resume after
a run killed in the middle of a stage.

Both use the test interpreter (WBDC_SKIP_VENV=1, PYTHON=sys.executable) so no second venv is
built; `run_all.sh` itself, its stamps and every stage run for real.
"""
from __future__ import annotations

import json
import os
import signal
import subprocess
import sys
import time
from pathlib import Path

import numpy as np
import pandas as pd
import pytest

from wbdc.schema import ACTIONS

from conftest import RUN_ALL_SEED as SEED
from conftest import run_all_cmd, run_all_env

SCORE_KEYS = [*ACTIONS, "weighted"]
pytestmark = pytest.mark.slow


def env() -> dict:
    return run_all_env()


@pytest.fixture(scope="module")
def clean_run(tiny_run):
    return tiny_run


def test_run_all_tiny_writes_valid_submission_and_scores(clean_run):
    root, r = clean_run
    sub = pd.read_csv(root / "submissions" / "submission.csv")
    test = pd.read_csv(root / "data" / "synthetic" / f"tiny_seed{SEED}" / "wechat_algo_data1" / "test_a.csv")
    assert list(sub.columns) == ["userid", "feedid", *ACTIONS]
    assert len(sub) == len(test)
    assert (sub["userid"].to_numpy() == test["userid"].to_numpy()).all()
    assert (sub["feedid"].to_numpy() == test["feedid"].to_numpy()).all()
    vals = sub[list(ACTIONS)].to_numpy()
    assert np.isfinite(vals).all() and (vals >= 0).all() and (vals <= 1).all()

    scores = json.loads((root / "ensemble" / "scores.json").read_text())
    assert set(scores["models"]) == {"popularity", "lgb", "sb", "mmoe", "ple"}
    for block in [*scores["models"].values(), scores["blend"], scores["insample"]["blend"],
                  scores["oracle"], scores["online"]]:
        assert set(SCORE_KEYS) <= set(block)
        assert 0.0 < block["weighted"] < 1.0
    # every figure is the one its producer wrote or a recomputation of it, not just "a number"
    for name, block in scores["models"].items():
        own = json.loads((root / "models" / name / "scores.json").read_text())["offline"]
        assert set(own) == set(block), name
        for k, v in own.items():      # the ensemble rounds to 6 decimals and writes NaN as null
            if v is None or v != v:
                assert block[k] is None, (name, k)
            else:
                assert block[k] == pytest.approx(v, abs=1e-6), (name, k)
    from wbdc.scoring import score_files
    truth = root / "data" / "synthetic" / f"tiny_seed{SEED}" / "truth" / "test_truth.csv"
    online = score_files(root / "submissions" / "submission.csv", truth)
    assert scores["online"]["weighted"] == pytest.approx(online["weighted"], abs=1e-6)
    assert scores["oracle"]["weighted"] > max(b["weighted"] for b in scores["models"].values())
    assert scores["models"]["lgb"]["weighted"] > 0.5 and scores["online"]["weighted"] > 0.5
    assert set(scores["blend_weights"]) == set(ACTIONS)
    for a, w in scores["blend_weights"].items():
        assert abs(sum(w.values()) - 1.0) < 1e-6, (a, w)
    # the closing summary table is printed and lands in the report
    assert "## Pipeline summary" in r.stdout
    assert "## Pipeline summary" in (root / "ensemble" / "report.md").read_text()


def test_rerun_skips_every_stage(clean_run, tmp_path):
    import shutil
    root = tmp_path / "again"
    shutil.copytree(clean_run[0], root, symlinks=True)
    r = subprocess.run(run_all_cmd(root), capture_output=True, text=True, env=env(), timeout=600)
    assert r.returncode == 0, r.stderr[-4000:]
    skipped = [line for line in r.stderr.splitlines() if line.endswith("up to date, skipped")]
    assert len(skipped) == 10, r.stderr[-3000:]  # data, prepare, features, popularity, 4 models, blend, submit


def test_killed_run_resumes_and_matches_clean_run(clean_run, tmp_path):
    clean_root, _ = clean_run
    root = tmp_path / "resumed"
    # Kill the whole run (process group) once the mmoe stage has started training.
    p = subprocess.Popen(run_all_cmd(root), stdout=subprocess.DEVNULL, stderr=subprocess.PIPE,
                         text=True, env=env(), start_new_session=True)
    seen = []
    deadline = time.time() + 300
    try:
        for line in p.stderr:
            seen.append(line)
            if "[train_nn] mmoe:" in line:       # printed when the mmoe net starts training
                break
            assert time.time() < deadline, "".join(seen[-30:])
        os.killpg(p.pid, signal.SIGKILL)
    finally:
        p.wait(timeout=60)
    assert p.returncode != 0, "the run finished before it could be killed"
    assert not (root / "submissions" / "submission.csv").exists()
    assert not (root / ".pipeline" / "stamps" / "mmoe.json").exists()

    r = subprocess.run(run_all_cmd(root), capture_output=True, text=True, env=env(), timeout=600)
    assert r.returncode == 0, r.stderr[-4000:]
    assert "=== features: up to date, skipped" in r.stderr
    assert "=== sb: up to date, skipped" in r.stderr
    assert "=== mmoe\n" in r.stderr                # the interrupted stage is redone

    a = (clean_root / "submissions" / "submission.csv").read_bytes()
    b = (root / "submissions" / "submission.csv").read_bytes()
    assert a == b, "resumed run's submission differs from the clean run's"
    sa = json.loads((clean_root / "ensemble" / "scores.json").read_text())
    sb = json.loads((root / "ensemble" / "scores.json").read_text())
    assert sa["blend"] == sb["blend"] and sa["models"] == sb["models"]
