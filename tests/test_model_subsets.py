"""Every `run_all.sh --models` form runs on tiny and blends exactly the models asked for, plus the
popularity baseline (issue 12 item 1), and run_all.sh resolves relative paths against the caller's
working directory (item 4).

One module root: the first run (lgb only) builds the world, caches and features; the later runs
copy it, so only their models train.  Nets run one epoch on a small architecture.
"""
from __future__ import annotations

import json
import os
import shutil
import stat
import subprocess
import sys
from pathlib import Path

import pandas as pd
import pytest

from wbdc.schema import ACTIONS

from conftest import RUN_ALL_SEED as SEED
from conftest import run_all_cmd, run_all_env

REPO = Path(__file__).resolve().parents[1]
pytestmark = pytest.mark.slow


def run_all(root: Path | str, *extra: str, cwd: Path | None = None) -> subprocess.CompletedProcess:
    r = subprocess.run(run_all_cmd(root, *extra), capture_output=True, text=True, env=run_all_env(),
                       timeout=600, cwd=cwd)
    assert r.returncode == 0, r.stderr[-4000:]
    return r


def blended(root: Path) -> set[str]:
    scores = json.loads((root / "ensemble" / "scores.json").read_text())
    weights = json.loads((root / "ensemble" / "blend_weights.json").read_text())
    assert set(weights["models"]) == set(scores["models"])
    return set(scores["models"])


def ran(r: subprocess.CompletedProcess) -> list[str]:
    """Stages that ran (not skipped) in the order run_all.sh printed them."""
    return [line[4:].strip() for line in r.stderr.splitlines()
            if line.startswith("=== ") and "skipped" not in line]


def _copy(src: Path, dst: Path) -> Path:
    shutil.copytree(src, dst, symlinks=True)
    return dst


@pytest.fixture(scope="module")
def lgb_only(tiny_run, tmp_path_factory):
    """A copy of the session's full tiny run, then `--models lgb`."""
    root = _copy(tiny_run[0], tmp_path_factory.mktemp("subsets") / "lgb")
    r = run_all(root, "--models", "lgb")
    return root, r


def test_lgb_only_blends_lgb_and_popularity(lgb_only):
    root, r = lgb_only
    assert blended(root) == {"lgb", "popularity"}      # the nets' folders are there, not blended
    assert (root / "models" / "mmoe" / "pred_offline.parquet").exists()
    assert ran(r) == ["blend", "submit"]               # every model of the subset is current
    sub = pd.read_csv(root / "submissions" / "submission.csv")
    assert list(sub.columns) == ["userid", "feedid", *ACTIONS]


def test_a_single_net_blends_that_net_and_popularity(lgb_only, tmp_path):
    """`--models mmoe`, with a --config file deep-merged under the --set overrides."""
    root = _copy(lgb_only[0], tmp_path / "mmoe")
    user = tmp_path / "user.yaml"
    user.write_text("nn:\n  mmoe:\n    tower_dims: [8]\n    n_experts: 3\n")
    r = run_all(root, "--models", "mmoe", "--config", str(user))
    assert ran(r) == ["mmoe", "blend", "submit"]       # data, features and popularity are current
    assert blended(root) == {"mmoe", "popularity"}     # the earlier run's lgb folder is not blended
    mmoe = json.loads((root / "models" / "mmoe" / "config.json").read_text())["nn"]["mmoe"]
    from wbdc.config import default_config
    # the file's tower_dims; n_experts and expert_dims from the fast --set overrides, which win
    assert mmoe == {**default_config()["nn"]["mmoe"], "tower_dims": [8], "n_experts": 2, "expert_dims": [32]}
    # MMoE gate diagnostics: one row per action over its 2 experts, each a distribution; a heatmap
    gates = pd.read_csv(root / "models" / "mmoe" / "gates.csv")
    assert len(gates) == len(ACTIONS) and gates.shape[1] == 2 + 2
    assert ((gates.drop(columns=["level", "action"]).sum(1) - 1.0).abs() < 1e-5).all()
    assert (root / "models" / "mmoe" / "gates.png").read_bytes()[:8] == b"\x89PNG\r\n\x1a\n"
    # the closing summary lists this run's stages only (not the earlier run's lgb)
    summary = r.stdout[r.stdout.index("## Pipeline summary"):]
    assert "| models/mmoe |" in summary and "| models/popularity |" in summary
    assert "models/lgb" not in summary


def test_from_blend_reruns_blend_and_submit_only(lgb_only, tmp_path):
    root = _copy(lgb_only[0], tmp_path / "from")
    r = run_all(root, "--models", "lgb", "--from", "blend")
    assert ran(r) == ["blend", "submit"]
    assert (root / "submissions" / "submission.csv").read_bytes() == \
        (lgb_only[0] / "submissions" / "submission.csv").read_bytes()


def test_online_mode_on_a_root_without_models_runs_what_it_needs(lgb_only, tmp_path):
    root = _copy(lgb_only[0], tmp_path / "online")
    for name in ("models", "ensemble", "submissions"):
        shutil.rmtree(root / name)
    for stage in ("popularity", "lgb", "blend", "submit"):
        (root / ".pipeline" / "stamps" / f"{stage}.json").unlink()
    r = run_all(root, "--models", "lgb", "--mode", "online")
    assert ran(r) == ["popularity", "lgb", "blend", "submit"]
    assert (root / "models" / "lgb" / "pred_offline.parquet").exists()   # ran --mode all
    assert (root / "submissions" / "submission.csv").read_bytes() == \
        (lgb_only[0] / "submissions" / "submission.csv").read_bytes()


def test_models_subset_in_offline_mode_writes_no_submission(lgb_only, tmp_path):
    root = _copy(lgb_only[0], tmp_path / "off")
    shutil.rmtree(root / "submissions")
    r = run_all(root, "--models", "sb", "--mode", "offline")
    assert ran(r) == ["popularity", "sb", "blend"]    # --mode is part of every model's stamp
    assert blended(root) == {"sb", "popularity"}
    assert not (root / "models" / "sb" / "pred_online.parquet").exists()   # the earlier fit's is gone
    assert not (root / "submissions").exists()


def test_two_nets_blend_both_and_popularity(lgb_only, tmp_path):
    root = _copy(lgb_only[0], tmp_path / "two")
    r = run_all(root, "--models", "sb,ple", "--set", "nn.sb.tower_dims=[8]")
    assert ran(r) == ["sb", "blend", "submit"]          # ple's own keys did not change
    assert blended(root) == {"sb", "ple", "popularity"}


def test_unknown_model_and_stage_are_one_line_errors(lgb_only):
    root, _ = lgb_only
    env = {**os.environ, "WBDC_SKIP_VENV": "1", "PYTHON": sys.executable}
    for extra, message in ((["--models", "mmoe,xgb"], "xgb"), (["--from", "blnd"], "blnd")):
        r = subprocess.run(["bash", str(REPO / "run_all.sh"), "--root", str(root), *extra],
                           capture_output=True, text=True, env=env, timeout=120)
        assert r.returncode == 2, r.stderr
        last = r.stderr.strip().splitlines()
        assert len(last) == 1 and last[0].startswith("error: ") and message in last[0], r.stderr


def test_relative_root_resolves_against_the_callers_cwd(lgb_only, tmp_path):
    """`--root out` from another directory lands in that directory, not inside the repo."""
    caller = tmp_path / "caller"
    _copy(lgb_only[0], caller / "out")
    r = run_all("out", "--models", "lgb", cwd=caller)
    assert "=== submit: up to date, skipped" in r.stderr
    assert not (REPO / "out").exists()
    # artifacts and folders carry the usual modes, readable by others
    sub = caller / "out" / "submissions" / "submission.csv"
    assert stat.S_IMODE(sub.stat().st_mode) & 0o044 == 0o044
    assert stat.S_IMODE(sub.parent.stat().st_mode) & 0o055 == 0o055
    for f in (caller / "out" / "models").rglob("*"):
        assert stat.S_IMODE(f.stat().st_mode) & 0o044 == 0o044, f


def test_relative_data_dir_and_test_b(lgb_only, tmp_path):
    """`--data-dir raw --test-file test_b.csv` from another cwd: the folder is the caller's, and
    the submission holds test_b's rows in test_b's order."""
    caller = tmp_path / "caller"
    raw = caller / "raw"
    shutil.copytree(lgb_only[0] / "data" / "synthetic" / f"tiny_seed{SEED}" / "wechat_algo_data1", raw)
    test_a = pd.read_csv(raw / "test_a.csv")
    test_b = test_a.iloc[::-2].reset_index(drop=True)          # other rows, another order
    test_b.to_csv(raw / "test_b.csv", index=False)
    r = run_all("out", "--data-dir", "raw", "--test-file", "test_b.csv", "--models", "lgb", cwd=caller)
    assert "make_synthetic" not in ran(r)
    meta = json.loads((caller / "out" / "data" / "prepared" / "meta.json").read_text())
    assert Path(meta["source_dir"]) == raw.resolve()
    assert blended(caller / "out") == {"lgb", "popularity"}
    sub = pd.read_csv(caller / "out" / "submissions" / "submission.csv")
    assert len(sub) == len(test_b)
    assert (sub["userid"].to_numpy() == test_b["userid"].to_numpy()).all()
    assert (sub["feedid"].to_numpy() == test_b["feedid"].to_numpy()).all()
