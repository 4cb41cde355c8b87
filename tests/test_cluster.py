"""The Dask cluster (cluster.address, run_all.sh --cluster): the address parser, the stamps, the
bucket count per worker, and the features stage on a LocalCluster writing the same bytes as one
process (issue 15)."""
from __future__ import annotations

import contextlib
import hashlib
import json
import shutil
import subprocess
import sys

import pytest

from conftest import REPO, TINY_SEED, run_all_env, run_stage
from wbdc.cluster import Address, ClusterError, parse_address
from wbdc.config import resolve_argv


@pytest.mark.parametrize("value,expected", [
    (None, None), ("", None), ("local:2", Address("local", workers=2)),
    ("tcp://10.0.0.5:8786", Address("tcp", url="tcp://10.0.0.5:8786")),
    ("tcp://scheduler-host:8786", Address("tcp", url="tcp://scheduler-host:8786")),
])
def test_addresses_are_parsed(value, expected):
    assert parse_address(value) == expected


@pytest.mark.parametrize("value", ["local", "local:0", "local:x", "10.0.0.5:8786", "tcp://host", "http://h:1"])
def test_a_bad_address_is_one_line_naming_the_key(value):
    with pytest.raises(ClusterError, match=r"^cluster\.address=") as e:
        parse_address(value)
    assert "\n" not in str(e.value)


def test_run_all_refuses_a_bad_cluster_address_before_any_stage(tmp_path):
    r = subprocess.run(["bash", str(REPO / "run_all.sh"), "--preset", "tiny", "--root", str(tmp_path / "r"),
                        "--cluster", "local:zero"], capture_output=True, text=True, env=run_all_env(), timeout=120)
    assert r.returncode == 2
    assert "cluster.address=local:zero: expected local:N" in r.stderr
    assert not (tmp_path / "r").exists() or not any((tmp_path / "r").rglob("*.parquet"))


def test_the_cluster_reruns_models_but_not_features():
    from wbdc.pipeline import stage_specs, _hashed_config
    one = resolve_argv(["--preset", "tiny"])
    two = resolve_argv(["--preset", "tiny", "--set", "cluster.address=local:2"])
    other = resolve_argv(["--preset", "tiny", "--set", "cluster.address=tcp://h:8786"])
    specs = stage_specs(["lgb", "mmoe"])
    feats = specs["features"].config
    assert _hashed_config(one, feats) == _hashed_config(two, feats)
    lgb = specs["lgb"].config
    assert _hashed_config(one, lgb) != _hashed_config(two, lgb)
    assert _hashed_config(two, lgb) == _hashed_config(other, lgb)      # which cluster: no matter


def test_auto_buckets_give_every_worker_a_bucket_within_its_share(tiny_root):
    from wbdc import budget
    from wbdc.paths import Paths
    cfg = resolve_argv(["--preset", "tiny", "--set", "data.memory_gb=64"])
    prepared = Paths.at(tiny_root).prepared
    assert budget.choose_buckets(cfg, prepared) == 1
    assert budget.choose_buckets(cfg, prepared, workers=4) == 4
    rows = json.loads((prepared / "meta.json").read_text())
    rows = rows["n_actions"] + rows["n_test"]
    per_worker_mb = budget.FEATURES_FIXED_MB + rows * (budget.FEATURES_TOTAL_ROW_BYTES
                                                       + budget.FEATURES_ROW_BYTES / 5.5) / 2**20
    cfg["data"]["memory_gb"] = 2 * per_worker_mb / 1024       # two workers, each fits 1/6 of the rows
    assert budget.choose_buckets(cfg, prepared, workers=2) == 6
    cfg["data"]["memory_gb"] = 0.2
    with pytest.raises(budget.BudgetError, match=r"per worker \(data.memory_gb / 2 workers\)"):
        budget.choose_buckets(cfg, prepared, workers=2)


def _digests(features) -> dict[str, str]:
    return {str(p.relative_to(features)): hashlib.sha256(p.read_bytes()).hexdigest()
            for p in sorted(features.rglob("*")) if p.suffix in (".parquet", ".npy")}


def test_features_on_a_local_cluster_are_the_bytes_of_one_process(tiny_root_3_buckets, tmp_path):
    one, _ = tiny_root_3_buckets
    root = tmp_path / "root"
    (root / "data").mkdir(parents=True)
    shutil.copytree(one / "data" / "prepared", root / "data" / "prepared")
    r = run_stage("features.py", root, "--preset", "tiny", "--seed", str(TINY_SEED), "--no-progress",
                  "--set", "features.buckets=3", "--set", "cluster.address=local:2")
    assert "started a LocalCluster of 2 worker(s)" in r.stderr
    assert "Dask workers' peak RSS" in r.stderr
    a, b = _digests(one / "features"), _digests(root / "features")
    assert len(a) > 40 and a == b
    ma = json.loads((one / "features" / "manifest.json").read_text())
    mb = json.loads((root / "features" / "manifest.json").read_text())
    assert ma["day_tables"] == mb["day_tables"] and ma["pretrained"] == mb["pretrained"]
    info = json.loads((root / "features" / "run_info_features.json").read_text())
    assert len(info["worker_peaks_mb"]) == 2 and info["buckets"] == 3


@pytest.mark.slow
def test_run_all_on_a_local_cluster_writes_a_valid_submission(tmp_path):
    """`run_all.sh --preset tiny --cluster local:2` end to end (LightGBM and one net, the fast
    settings): every stage ran on the cluster, and the submission is valid and scored."""
    import numpy as np
    import pandas as pd

    from conftest import RUN_ALL_SEED, run_all_cmd
    from wbdc.schema import ACTIONS
    from wbdc.scoring import score_files

    root = tmp_path / "root"
    r = subprocess.run(run_all_cmd(root, "--models", "lgb", "--cluster", "local:2"),
                       capture_output=True, text=True, env=run_all_env(), timeout=900)
    assert r.returncode == 0, r.stderr[-4000:]
    assert r.stderr.count("started a LocalCluster of 2 worker(s)") >= 2      # features, lgb
    world = root / "data" / "synthetic" / f"tiny_seed{RUN_ALL_SEED}"
    sub = pd.read_csv(root / "submissions" / "submission.csv")
    test = pd.read_csv(world / "wechat_algo_data1" / "test_a.csv")
    assert list(sub.columns) == ["userid", "feedid", *ACTIONS] and len(sub) == len(test)
    assert (sub[["userid", "feedid"]].to_numpy() == test[["userid", "feedid"]].to_numpy()).all()
    vals = sub[list(ACTIONS)].to_numpy()
    assert np.isfinite(vals).all() and (vals >= 0).all() and (vals <= 1).all()
    lgb_scores = json.loads((root / "models" / "lgb" / "scores.json").read_text())
    assert lgb_scores["distributed"]["workers"] == 2
    scores = json.loads((root / "ensemble" / "scores.json").read_text())
    assert set(scores["models"]) == {"popularity", "lgb"}
    online = score_files(root / "submissions" / "submission.csv", world / "truth" / "test_truth.csv")
    assert scores["online"]["weighted"] == pytest.approx(online["weighted"], abs=1e-6)
    assert online["weighted"] > 0.5


@contextlib.contextmanager
def _cluster_started_by_hand(tmp_path, n_workers: int, with_code: bool):
    """A `dask scheduler` and `dask worker` processes started from the command line, as a user
    does on real machines (README, "Running on a Dask cluster"), in another working directory,
    with PYTHONPATH=<repo>/src or without it; yields the scheduler's address."""
    import os
    import signal
    import time
    from pathlib import Path

    dask_cli = Path(sys.executable).parent / "dask"
    env = {k: v for k, v in os.environ.items() if k != "PYTHONPATH"}
    if with_code:
        env["PYTHONPATH"] = str(REPO / "src")
    env["OMP_WAIT_POLICY"] = "PASSIVE"
    here = tmp_path / "cluster"
    here.mkdir()
    sched_file = here / "scheduler.json"
    procs = []
    try:
        procs.append(subprocess.Popen([str(dask_cli), "scheduler", "--host", "127.0.0.1", "--port", "0",
                                       "--no-dashboard", "--scheduler-file", str(sched_file)],
                                      cwd=here, env=env, start_new_session=True,
                                      stdout=subprocess.DEVNULL, stderr=subprocess.DEVNULL))
        deadline = time.time() + 60
        while not sched_file.exists() and time.time() < deadline:
            time.sleep(0.2)
        procs.append(subprocess.Popen([str(dask_cli), "worker", "--scheduler-file", str(sched_file),
                                       "--nworkers", str(n_workers), "--nthreads", "1", "--memory-limit", "2GB",
                                       "--no-dashboard", "--local-directory", str(here)],
                                      cwd=here, env=env, start_new_session=True,
                                      stdout=subprocess.DEVNULL, stderr=subprocess.DEVNULL))
        from distributed import Client
        with Client(scheduler_file=str(sched_file), timeout="60s") as client:
            client.wait_for_workers(n_workers, timeout=60)
            address = client.scheduler.address
        yield address
    finally:
        for p in reversed(procs):
            with contextlib.suppress(ProcessLookupError):
                os.killpg(p.pid, signal.SIGTERM)
        for p in procs:
            try:
                p.wait(timeout=20)
            except subprocess.TimeoutExpired:
                os.killpg(p.pid, signal.SIGKILL)


def test_a_scheduler_and_workers_without_the_code_are_refused_in_one_line(tiny_root, tmp_path):
    """The scheduler unpickles every task graph, so it needs the repository on its PYTHONPATH as
    the workers do: a cluster lacking it is refused before any work, naming who lacks it."""
    root = tmp_path / "root"
    (root / "data").mkdir(parents=True)
    shutil.copytree(tiny_root / "data" / "prepared", root / "data" / "prepared")
    with _cluster_started_by_hand(tmp_path, 1, with_code=False) as address:
        r = subprocess.run([sys.executable, str(REPO / "src" / "stages" / "features.py"), "--root", str(root),
                            "--preset", "tiny", "--seed", str(TINY_SEED), "--no-progress",
                            "--set", f"cluster.address={address}"], capture_output=True, text=True, timeout=300)
    assert r.returncode == 2, r.stderr[-2000:]
    lines = [ln for ln in r.stderr.splitlines() if ln.startswith("error:")]
    assert len(lines) == 1 and "Traceback" not in r.stderr
    assert f"cluster.address={address}: the scheduler cannot import wbdc" in lines[0]
    assert "worker tcp://127.0.0.1:" in lines[0] and f"PYTHONPATH={REPO / 'src'}" in lines[0]
    assert not (root / "features").exists() or not any((root / "features").rglob("*.parquet"))


def test_a_worker_on_other_code_or_library_versions_is_named():
    from wbdc.cluster import _code_mismatch, _code_probe
    mine = _code_probe()()
    assert _code_mismatch("worker w", mine, dict(mine)) is None
    other = {**mine, "wbdc": "0" * 16, "path": "/elsewhere/src/wbdc"}
    assert "worker w runs other wbdc code (/elsewhere/src/wbdc)" in _code_mismatch("worker w", mine, other)
    old = {**mine, "versions": {**mine["versions"], "lightgbm": "3.3.5"}}
    assert _code_mismatch("worker w", mine, old) == \
        f"worker w has other versions: lightgbm 3.3.5 (client {mine['versions']['lightgbm']})"


def test_a_scheduler_and_workers_started_by_hand_build_the_same_store_and_train_a_ddp_net(
        tiny_root_3_buckets, tmp_path):
    """`cluster.address=tcp://HOST:PORT` against a scheduler and two workers started with the
    `dask` command line in another directory (the closest this machine comes to several
    machines): the features are the bytes of one process, and a net trains on 2 DDP ranks (its
offline fit: the online refit and test predictions on DDP are tested in test_nn_ddp.py)."""
    import pandas as pd

    one, _ = tiny_root_3_buckets
    root = tmp_path / "root"
    (root / "data").mkdir(parents=True)
    shutil.copytree(one / "data" / "prepared", root / "data" / "prepared")
    common = ["--preset", "tiny", "--seed", str(TINY_SEED), "--no-progress"]
    with _cluster_started_by_hand(tmp_path, 2, with_code=True) as address:
        at = ["--set", f"cluster.address={address}"]
        feats = run_stage("features.py", root, *common, "--set", "features.buckets=3", *at)
        net = run_stage("train_nn.py", root, *common, "--arch", "sb", "--mode", "offline", *at,
                        "--set", "nn.train.epochs=1", "--set", "nn.sb.bottom_dims=[16]",
                        "--set", "nn.embedding.dim=4", "--set", "nn.threads=1")
    for r in (feats, net):
        assert f"connected to {address} (2 worker(s))" in r.stderr
    assert _digests(one / "features") == _digests(root / "features")
    sb = json.loads((root / "models" / "sb" / "scores.json").read_text())
    assert sb["distributed"]["world_size"] == 2 and sb["distributed"]["backend"] == "gloo"
    assert 0 < sb["offline"]["weighted"] < 1
    day14 = pd.read_parquet(one / "features" / "day=14", columns=["userid", "feedid"])
    pred = pd.read_parquet(root / "models" / "sb" / "pred_offline.parquet")
    assert len(pred) == len(day14) and pred[["read_comment", "like"]].notna().all().all()
