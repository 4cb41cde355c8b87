"""Shared fixtures: one tiny synthetic pipeline (world -> prepare -> features) per test session."""
from __future__ import annotations

import os
import subprocess
import sys
from pathlib import Path

import pytest

REPO = Path(__file__).resolve().parents[1]
sys.path.insert(0, str(Path(__file__).resolve().parent))

TINY_SEED = 7


def run_stage(script: str, root: Path, *args: str, timeout: int = 600) -> subprocess.CompletedProcess:
    """Run ``src/stages/<script>`` with the test interpreter; fail the test with its stderr."""
    cmd = [sys.executable, str(REPO / "src" / "stages" / script), "--root", str(root), *args]
    env = {**os.environ, "PYTHONHASHSEED": "0"}
    r = subprocess.run(cmd, capture_output=True, text=True, timeout=timeout, env=env)
    if r.returncode != 0:
        raise AssertionError(f"{script} failed ({r.returncode}):\n{r.stderr[-4000:]}")
    return r


@pytest.fixture(scope="session")
def tiny_root(tmp_path_factory) -> Path:
    """An artifact root holding the tiny synthetic world, its prepared caches and features.

    Tests must treat it as read-only; tests that write models use their own copy or subfolder.
    """
    root = tmp_path_factory.mktemp("tiny_root")
    common = ["--preset", "tiny", "--seed", str(TINY_SEED)]
    run_stage("make_synthetic.py", root, *common)
    run_stage("prepare.py", root, *common)
    run_stage("features.py", root, *common)
    return root
