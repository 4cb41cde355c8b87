"""The memory budget (data.memory_gb): `auto` is half the RAM, and a stage whose estimated peak
is over the budget stops before any work with a one-line error giving the figure it needs."""
from __future__ import annotations

import subprocess
import sys
from pathlib import Path

import pytest

from wbdc.budget import (MEASURED_AT_FULL, BudgetError, check_budget, estimate_gb, memory_budget_gb,
                         total_ram_gb)
from wbdc.config import resolve_argv

REPO = Path(__file__).resolve().parents[1]


def test_auto_is_half_the_ram_and_numbers_are_taken_as_given():
    assert memory_budget_gb(resolve_argv([])) == pytest.approx(total_ram_gb() / 2)
    assert memory_budget_gb(resolve_argv(["--set", "data.memory_gb=3.5"])) == 3.5
    with pytest.raises(BudgetError, match="data.memory_gb: expected a positive"):
        memory_budget_gb(resolve_argv(["--set", "data.memory_gb=0"]))


def test_estimate_is_the_measured_full_peak_scaled_by_rows():
    peak, rows = MEASURED_AT_FULL["train_lgb"]
    assert estimate_gb("train_lgb", rows) == pytest.approx(peak / 1024)
    assert estimate_gb("train_lgb", 10 * rows) == pytest.approx(10 * peak / 1024)


def test_final_size_is_refused_in_one_line_with_the_figure_it_needs():
    cfg = resolve_argv(["--set", "data.memory_gb=8"])
    final_rows = 73_175_511 + 4_252_097
    for stage in MEASURED_AT_FULL:
        with pytest.raises(BudgetError) as e:
            check_budget(stage, cfg, final_rows)
        msg = str(e.value)
        assert "\n" not in msg and msg.startswith(f"{stage}: needs about ")
        assert f"{estimate_gb(stage, final_rows):.1f} GB" in msg and "budget of 8.0 GB" in msg
    # the full preset fits an 8 GB budget
    for stage, (_, rows) in MEASURED_AT_FULL.items():
        assert check_budget(stage, cfg, rows) < 8


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
