"""The memory budget (data.memory_gb): `auto` is half the RAM, and a stage whose estimated peak
is over the budget stops before any work with a one-line error giving the figure it needs."""
from __future__ import annotations

import subprocess
import sys
from pathlib import Path

import pytest

from wbdc.budget import (LGB_FINAL_MB, LGB_FINAL_ROWS, LGB_FIT_DAYS, LGB_FIT_FEATURES, LGB_FIT_RATE, LGB_FULL_MB,
                         LGB_FULL_ROWS, BudgetError, check_lgb, lgb_binned_rows, lgb_estimate_gb,
                         memory_budget_gb, total_ram_gb)
from wbdc.config import resolve_argv

REPO = Path(__file__).resolve().parents[1]


def test_auto_is_half_the_ram_and_numbers_are_taken_as_given():
    assert memory_budget_gb(resolve_argv([])) == pytest.approx(total_ram_gb() / 2)
    assert memory_budget_gb(resolve_argv(["--set", "data.memory_gb=3.5"])) == 3.5
    with pytest.raises(BudgetError, match="data.memory_gb: expected a positive"):
        memory_budget_gb(resolve_argv(["--set", "data.memory_gb=0"]))


def test_the_lightgbm_estimate_passes_through_the_measured_runs():
    for rows, mb in ((LGB_FULL_ROWS, LGB_FULL_MB), (LGB_FINAL_ROWS, LGB_FINAL_MB)):
        assert lgb_estimate_gb(rows, LGB_FIT_DAYS, LGB_FIT_RATE) * 1024 == pytest.approx(mb)
    # more negatives kept, more rows binned at once
    assert lgb_estimate_gb(LGB_FINAL_ROWS, 14, 1.0) > 2 * lgb_estimate_gb(LGB_FINAL_ROWS, 14, 0.2)
    assert lgb_binned_rows(14_000, 14, 0.5) == pytest.approx(1_000 * (1 + 0.5 * 13))
    # lgb.max_train_rows caps the offline sample; the online refit adds day 14's share
    assert lgb_binned_rows(14_000, 14, 0.5, 2_600) == pytest.approx(1_000 + 2_600 * 14 / 13)
    assert lgb_binned_rows(14_000, 14, 0.5, 10**9) == lgb_binned_rows(14_000, 14, 0.5)
    assert lgb_estimate_gb(LGB_FINAL_ROWS, 14, 1.0, 5_000_000) < lgb_estimate_gb(LGB_FINAL_ROWS, 14, 0.2)
    # more feature columns than measured cost more per row, in proportion; fewer keep the measured cost
    base = lgb_estimate_gb(LGB_FINAL_ROWS, 14, 0.2)
    assert lgb_estimate_gb(LGB_FINAL_ROWS, 14, 0.2, n_features=LGB_FIT_FEATURES) == base
    assert lgb_estimate_gb(LGB_FINAL_ROWS, 14, 0.2, n_features=100) == base
    fixed = lgb_estimate_gb(0, 14, 0.2)
    assert lgb_estimate_gb(LGB_FINAL_ROWS, 14, 0.2, n_features=2 * LGB_FIT_FEATURES) == \
        pytest.approx(fixed + 2 * (base - fixed))


def test_final_size_fits_8_gb_and_a_bigger_sample_is_refused_in_one_line():
    cfg = resolve_argv(["--preset", "final", "--set", "data.memory_gb=8"])
    assert check_lgb(cfg, LGB_FINAL_ROWS, 14) < 8         # measured within 8 GB
    assert check_lgb(cfg, LGB_FULL_ROWS, 14) < 4
    cfg["lgb"]["neg_rate"] = {**cfg["lgb"]["neg_rate"], "like": 1.0}
    assert cfg["lgb"]["max_train_rows"] is not None
    assert check_lgb(cfg, LGB_FINAL_ROWS, 14) < 8         # every negative asked for, the cap binds
    cfg["lgb"]["max_train_rows"] = None
    with pytest.raises(BudgetError) as e:
        check_lgb(cfg, LGB_FINAL_ROWS, 14)
    msg = str(e.value)
    need = lgb_estimate_gb(LGB_FINAL_ROWS, 14, 1.0)
    assert "\n" not in msg and msg.startswith(f"train_lgb: needs about {need:.1f} GB for 73,120,760 ")
    assert "lgb.neg_rate up to 1" in msg and "budget of 8.0 GB" in msg


def test_stage_stops_before_any_work(tiny_root, tmp_path):
    root = tmp_path / "root"
    root.mkdir()
    (root / "data").symlink_to(tiny_root / "data", target_is_directory=True)
    r = subprocess.run([sys.executable, str(REPO / "src" / "stages" / "features.py"), "--root", str(root),
                        "--preset", "tiny", "--seed", "7", "--set", "data.memory_gb=0.001"],
                       capture_output=True, text=True, timeout=120)
    assert r.returncode == 2
    lines = r.stderr.strip().splitlines()
    assert len(lines) == 1 and lines[0].startswith("error: features: needs about "), r.stderr
    assert not (root / "features").exists()
