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


@pytest.fixture(scope="session")
def tiny_root_3_buckets(tiny_root, tmp_path_factory) -> tuple[Path, subprocess.CompletedProcess]:
    """``tiny_root``'s prepared caches with the features rebuilt by the stage CLI in three user
    buckets (the session's ``tiny_root`` fits one): (root, completed features run).  Read-only."""
    import shutil
    root = tmp_path_factory.mktemp("tiny_3_buckets")
    (root / "data").mkdir()
    shutil.copytree(tiny_root / "data" / "prepared", root / "data" / "prepared")
    r = run_stage("features.py", root, "--preset", "tiny", "--seed", str(TINY_SEED), "--no-progress",
                  "--set", "features.buckets=3")
    return root, r


# ------------------------------------------------------------------------------ run_all.sh end to end

RUN_ALL_SEED = "11"
#: small nets, one epoch, few boosting rounds: the end-to-end runs test the plumbing, not scores
RUN_ALL_FAST = ["--set", "nn.train.epochs=1", "--set", "nn.mmoe.n_experts=2", "--set", "nn.ple.n_levels=1",
                "--set", "nn.mmoe.expert_dims=[32]", "--set", "nn.ple.expert_dims=[32]",
                "--set", "nn.sb.bottom_dims=[32]", "--set", "lgb.num_boost_round=20",
                "--set", "blend.search.max_evals=20"]


def run_all_env() -> dict:
    return {**os.environ, "WBDC_SKIP_VENV": "1", "PYTHON": sys.executable}


def run_all_cmd(root, *extra: str) -> list[str]:
    """`bash run_all.sh` on the tiny world with the fast settings (extra arguments go last)."""
    return ["bash", str(REPO / "run_all.sh"), "--preset", "tiny", "--seed", RUN_ALL_SEED,
            "--root", str(root), *RUN_ALL_FAST, *extra]


@pytest.fixture(scope="session")
def tiny_run(tmp_path_factory):
    """One clean `run_all.sh` of every model on tiny (fast settings): (root, completed process).
    Read-only: tests copy it before they run anything in it."""
    root = tmp_path_factory.mktemp("tiny_run") / "root"
    r = subprocess.run(run_all_cmd(root), capture_output=True, text=True, env=run_all_env(), timeout=900)
    assert r.returncode == 0, r.stderr[-4000:]
    return root, r


# ------------------------------------------------------------------------------ official-format files

@pytest.fixture(scope="module")
def good_raw(tmp_path_factory) -> Path:
    """A small valid folder of the four official CSVs (tests/official_fixture.py)."""
    from official_fixture import write_official
    return write_official(tmp_path_factory.mktemp("raw") / "wechat_algo_data1")


@pytest.fixture
def raw(good_raw, tmp_path) -> Path:
    """A private copy of ``good_raw`` a test may edit."""
    import shutil
    dst = tmp_path / "raw"
    shutil.copytree(good_raw, dst)
    return dst


# ------------------------------------------------------------------------------ a Dask cluster

@pytest.fixture(scope="session")
def dask_client():
    """One ``distributed`` LocalCluster of 2 single-threaded worker processes for the session's
    in-process cluster tests (stages run as subprocesses start their own with
    ``--set cluster.address=local:2``)."""
    import logging
    from distributed import Client, LocalCluster
    with LocalCluster(n_workers=2, threads_per_worker=1, processes=True, dashboard_address=":0",
                      memory_limit="3GB", silence_logs=logging.ERROR) as cluster, Client(cluster) as client:
        yield client
