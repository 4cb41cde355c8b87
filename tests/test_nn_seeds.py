"""Seed averaging of the nets (``nn.seeds``): the honest score of the average, the curve per added
seed, and the stage's files."""
from __future__ import annotations

import numpy as np
import pytest

from conftest import run_stage
from test_nn_fakes import FakeStore, small_nn_config
from wbdc.io import read_json
from wbdc.metrics import crossfit_scores, split_halves
from wbdc.nn.pipeline import average_offline, run_offline, seed_configs
from wbdc.schema import ACTIONS


def test_seed_configs():
    cfg = small_nn_config("sb")
    assert seed_configs(cfg) == [cfg]
    cfg["nn"]["seeds"] = [5, 6, 7]
    assert [c["nn"]["seed"] for c in seed_configs(cfg)] == [5, 6, 7]
    assert cfg["nn"]["seed"] is None          # the caller's config is left alone
    cfg["nn"]["seeds"] = [5, 5]
    with pytest.raises(ValueError, match=r"nn.seeds=\[5, 5\]: the seeds must differ"):
        seed_configs(cfg)


def test_the_average_is_scored_as_honestly_as_each_seed():
    store = FakeStore(rows_per_day=400)
    cfg = small_nn_config("sb", epochs=2)
    cfg["nn"]["seeds"] = [1, 2]
    runs = []
    for c in seed_configs(cfg):
        runs.append(run_offline(store, "sb", c))
    assert [r.seed for r in runs] == [1, 2]
    assert not np.allclose(runs[0].preds[ACTIONS[0]], runs[1].preds[ACTIONS[0]])
    avg, curve = average_offline(runs, halves_seed=11)
    for a in ACTIONS:
        np.testing.assert_allclose(avg.preds[a], (runs[0].preds[a] + runs[1].preds[a]) / 2, rtol=1e-6)
    # the score of the average: each half's selections averaged, scored on the other half
    halves = split_halves(11, runs[0].preds["userid"].to_numpy())
    sel = {h: avg.half_preds[h] for h in ("A", "B")}
    for h in sel:
        for a in ACTIONS:
            np.testing.assert_allclose(sel[h][a], (runs[0].half_preds[h][a] + runs[1].half_preds[h][a]) / 2,
                                       rtol=1e-6)
    assert avg.scores == crossfit_scores(runs[0].labels, sel["A"], sel["B"], halves)
    assert [p["seeds"] for p in curve] == [1, 2]
    assert curve[0]["average"] == pytest.approx(runs[0].scores["weighted"], abs=1e-6)
    assert curve[1]["average"] == pytest.approx(avg.scores["weighted"], abs=1e-6)
    assert curve[1]["alone"] == pytest.approx(runs[1].scores["weighted"], abs=1e-6)


def test_stage_with_two_seeds_writes_the_average_and_the_curve(tiny_root, tmp_path):
    import shutil
    root = tmp_path / "root"
    root.mkdir()
    for sub in ("data", "features"):
        (root / sub).symlink_to(tiny_root / sub)
    r = run_stage("train_nn.py", root, "--arch", "sb", "--mode", "all", "--epochs", "1",
                  "--set", "nn.seeds=[3, 4]", "--set", "nn.train.progress=false",
                  "--set", "nn.sb.bottom_dims=[32]")
    assert r.returncode == 0, r.stderr[-2000:]
    out = root / "models" / "sb"
    scores = read_json(out / "scores.json")
    assert [p["seed"] for p in scores["seeds"]] == [3, 4]
    assert set(scores["seed_epochs"]) == {"3", "4"}
    assert scores["offline"]["weighted"] == pytest.approx(scores["seeds"][-1]["average"], abs=1e-6)
    for f in ("checkpoint_offline.pt", "checkpoint_offline_seed4.pt", "checkpoint_online.pt",
              "checkpoint_online_seed4.pt", "pred_online.parquet"):
        assert (out / f).exists(), f
    assert "honest weighted uAUC by seeds averaged: 1:" in r.stderr
    # one seed again (offline and online): the other seed's files go
    r = run_stage("train_nn.py", root, "--arch", "sb", "--mode", "all", "--epochs", "1",
                  "--set", "nn.train.progress=false", "--set", "nn.sb.bottom_dims=[32]")
    assert r.returncode == 0, r.stderr[-2000:]
    assert not list(out.glob("checkpoint_*_seed*.pt"))
    assert (out / "checkpoint_online.pt").exists()
    assert "seeds" not in read_json(out / "scores.json")
    shutil.rmtree(root)


def test_online_predict_both_and_offline_average_the_right_nets_of_every_seed(tiny_root, tmp_path):
    """nn.online.predict: ``both`` writes the mean of every seed's online refit and offline net on
    the test day, ``offline`` the mean of the offline nets with no refit (and no online checkpoint
    left), ``refit`` the refits alone; a missing offline net stops the online mode in one line,
    before anything trains, and leaves the written predictions as they were."""
    import re
    import subprocess
    import sys

    import pandas as pd
    from conftest import REPO
    from wbdc.features.store import FeatureStore
    from wbdc.metrics import mean_predictions
    from wbdc.nn.pipeline import predict_test_day
    from wbdc.paths import Paths
    root = tmp_path / "root"
    root.mkdir()
    for sub in ("data", "features"):
        (root / sub).symlink_to(tiny_root / sub)
    args = ("--arch", "sb", "--epochs", "1", "--set", "nn.seeds=[3, 4]", "--set", "nn.train.progress=false",
            "--set", "nn.sb.bottom_dims=[32]")
    r = run_stage("train_nn.py", root, "--mode", "all", *args, "--set", "nn.online.predict=both")
    assert r.returncode == 0, r.stderr[-2000:]
    out = root / "models" / "sb"
    online = read_json(out / "scores.json")["online"]
    assert (online["predict"], online["n_refits"], online["n_offline_nets"]) == ("both", 2, 2)
    written = pd.read_parquet(out / "pred_online.parquet")
    cfg = read_json(out / "config.json")
    store = FeatureStore(Paths.at(root))
    each = {f: predict_test_day(store, out / f, cfg) for f in
            ("checkpoint_online.pt", "checkpoint_online_seed4.pt", "checkpoint_offline.pt",
             "checkpoint_offline_seed4.pt")}

    def same(frame, files):
        expected = mean_predictions([each[f] for f in files])
        assert (frame[["userid", "feedid"]].to_numpy() == expected[["userid", "feedid"]].to_numpy()).all()
        for a in ACTIONS:
            np.testing.assert_allclose(frame[a], expected[a], rtol=1e-5, atol=1e-7)

    same(written, list(each))
    refits, offline = ["checkpoint_online.pt", "checkpoint_online_seed4.pt"], ["checkpoint_offline.pt",
                                                                                "checkpoint_offline_seed4.pt"]
    assert not np.allclose(written[ACTIONS[0]], mean_predictions([each[f] for f in refits])[ACTIONS[0]], rtol=1e-4)
    # offline: no refit trains, the offline nets alone, the refit's checkpoints go
    r = run_stage("train_nn.py", root, "--mode", "online", *args, "--set", "nn.online.predict=offline")
    assert "(no refit)" in r.stderr and not re.search(r"days \d+\.\.14:", r.stderr)   # no refit's rows read
    assert read_json(out / "scores.json")["online"]["n_refits"] == 0
    assert not list(out.glob("checkpoint_online*.pt"))
    same(pd.read_parquet(out / "pred_online.parquet"), offline)
    # refit: the refits alone (retrained: the same seeds give the same nets)
    r = run_stage("train_nn.py", root, "--mode", "online", *args, "--set", "nn.online.predict=refit")
    assert re.search(r"days \d+\.\.14:", r.stderr) and "offline net" not in r.stderr
    same(pd.read_parquet(out / "pred_online.parquet"), refits)
    written = pd.read_parquet(out / "pred_online.parquet")
    (out / "checkpoint_offline_seed4.pt").unlink()
    r = subprocess.run([sys.executable, str(REPO / "src" / "stages" / "train_nn.py"), "--root", str(root),
                        "--mode", "online", *args, "--set", "nn.online.predict=both"],
                       capture_output=True, text=True, timeout=600)
    assert r.returncode == 2 and "Traceback" not in r.stderr, r.stderr[-2000:]
    last = r.stderr.strip().splitlines()[-1]
    assert "checkpoint_offline_seed4.pt missing" in last and "--mode offline first" in last, last
    assert not re.search(r"days \d+\.\.14:", r.stderr)   # refused before the refit read its rows
    pd.testing.assert_frame_equal(pd.read_parquet(out / "pred_online.parquet"), written)
