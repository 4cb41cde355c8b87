"""LightGBM on a Dask cluster (wbdc.lgb_dask, the train_lgb stage with cluster.address set).

In-process tests use the session's 2-worker LocalCluster (``dask_client``) on the tiny store;
the stage test runs train_lgb.py with ``--set cluster.address=local:2`` next to a single-machine
run of the same settings.  Few rounds and one or two actions keep them quick.
"""
from __future__ import annotations

import json
import shutil

import lightgbm as lgb
import numpy as np
import pandas as pd
import pytest

from wbdc.lgb import LgbSettings, action_rows, load_rows, train_booster, _dataset_params
from wbdc.lgb_dask import (ClusterData, GridScores, combine_user_aucs, dask_params, eval_grid,
                           grid_user_aucs, part_grid_aucs, train_dask)
from wbdc.metrics import HALF_PRED_FILES, crossfit_scores, split_halves, uauc_by_half, weighted_uauc
from wbdc.schema import ACTIONS

TWO = ["read_comment", "like"]


def _settings(*extra: str) -> LgbSettings:
    from wbdc.config import resolve_argv
    return LgbSettings.from_config(resolve_argv(["--preset", "tiny", "--seed", "7", *extra]))


def _store(root):
    from wbdc.features.store import FeatureStore
    from wbdc.paths import Paths
    return FeatureStore(Paths.at(root))


def test_eval_grid_and_selection():
    assert eval_grid(100, 25) == [25, 50, 75, 100]
    assert eval_grid(60, 25) == [25, 50, 60]
    assert eval_grid(3, 25) == [3]
    with pytest.raises(ValueError, match="dask_eval_every must be >= 1"):
        eval_grid(10, 0)
    sc = GridScores(np.arange(3), np.array([0.5, 0.7, 0.7]), np.array([0.9, 0.1, 0.2]),
                    np.array([np.nan, np.nan, np.nan]))
    assert (sc.best("all"), sc.best("A"), sc.best("B")) == (1, 0, 2)
    with pytest.raises(ValueError, match="dask_eval_every must be >= 1"):
        _settings("--set", "lgb.dask_eval_every=0")


def test_dask_params_leave_threads_to_lightgbm_dask():
    s = _settings()
    p = dask_params(s.params)
    assert "num_threads" not in p and p["metric"] == "None"
    assert {k: v for k, v in p.items() if k != "metric"} == {k: v for k, v in s.params.items()
                                                           if k != "num_threads"}


def test_cluster_chunks_hold_exactly_the_single_machine_sample(tiny_root, dask_client):
    """The dask arrays (one chunk per part keeping rows) hold exactly the rows and labels the
    single-machine path trains each action on (as a set: part order vs day order), and the
    classifier trains with the stage's parameters, data-parallel."""
    s = _settings()
    fs = _store(tiny_root)
    days = [d for d in fs.days if d < 14]
    data = ClusterData(dask_client, fs, s, [*days, 14])
    rows = load_rows(fs, days, data.spec.names, s)
    for a in TWO:
        X, y = data.arrays(a, days)
        assert X.numblocks[0] == sum(1 for d in days for p in data.parts[d]
                                     if data.counts[(d, p.index)][ACTIONS.index(a), 0])
        idx = action_rows(rows.labels, rows.u, a, s.neg_rate[a])
        Xs = rows.X.take(idx)[0:len(idx)]
        ys = rows.labels[idx, ACTIONS.index(a)].astype(np.float32)
        Xd, yd = (np.asarray(v) for v in dask_dask_compute(X, y))
        assert Xd.shape == Xs.shape == (data.n_kept(a, days), len(data.spec.names))
        key = lambda M, v: np.lexsort(np.column_stack([M, v]).T)   # noqa: E731
        np.testing.assert_array_equal(np.column_stack([Xd, yd])[key(Xd, yd)],
                                      np.column_stack([Xs, ys])[key(Xs, ys)])
    booster = train_dask(dask_client, s, data.spec, X, y, 3)
    data.close()
    text = booster.model_to_string()
    assert booster.current_iteration() == 3
    for p in ("[tree_learner: data]", f"[min_data_in_leaf: {s.params['min_data_in_leaf']}]",
              f"[num_leaves: {s.params['num_leaves']}]", f"[feature_fraction: {s.params['feature_fraction']:g}]",
              "[lambda_l2: 5]", "[seed: 7]"):
        assert p in text, p


def _world(seed: int, n_users=300, n_feeds=400, rows=12000):
    """A logistic world with signal to spare (a user x feed affinity the trees can see): the
    tiny synthetic day 14 (a few hundred users, uAUC near 0.55) is too noisy for a 0.01 bound
    -- two single-machine fits with different seeds differ by more there."""
    rng = np.random.default_rng(seed)
    u, f = rng.integers(0, n_users, rows), rng.integers(0, n_feeds, rows)
    uv, fv = np.random.default_rng(0).normal(size=(n_users, 3)), np.random.default_rng(1).normal(size=(n_feeds, 3))
    aff = (uv[u] * fv[f]).sum(1)
    pop = np.random.default_rng(2).normal(size=n_feeds)[f]
    X = np.column_stack([aff + rng.normal(scale=0.3, size=rows), pop, rng.normal(size=rows),
                         f % 5]).astype(np.float32)
    ys = {a: (rng.random(rows) < 1 / (1 + np.exp(-(b + 0.8 * pop + aff)))).astype(np.float32)
          for a, b in zip(TWO, (-1.5, -2.0))}
    return X, ys, u


def test_dask_classifier_scores_like_single_machine_lightgbm(dask_client):
    """(a) DaskLGBMClassifier over 2 workers (4 chunks) and lightgbm.train on the same rows, same
    parameters and rounds: day-14 weighted uAUC within 0.01; the two models really differ."""
    import dask.array as da
    from wbdc.lgb import FeatureSpec
    s = _settings()
    spec = FeatureSpec(["affinity", "popularity", "noise", "tag"], ["tag"])
    X, ys, _ = _world(3)
    X14, ys14, u14 = _world(14)
    rounds, preds = 40, {"dask": {}, "single": {}}
    for a in TWO:
        Xd = da.from_array(X, chunks=(3000, X.shape[1]))
        yd = da.from_array(ys[a], chunks=3000)
        booster = train_dask(dask_client, s, spec, Xd, yd, rounds)
        ds = lgb.Dataset(X, label=ys[a], feature_name=spec.names, categorical_feature=spec.categorical,
                         params=_dataset_params(s.params), free_raw_data=True)
        single = train_booster(s.params, ds, rounds, progress=False)
        assert booster.current_iteration() == single.current_iteration() == rounds
        preds["dask"][a] = booster.predict(X14)
        preds["single"][a] = single.predict(X14)
    w = {k: weighted_uauc(ys14, v, u14)["weighted"] for k, v in preds.items()}
    assert w["single"] > 0.65, w                         # there is signal to compare on
    assert abs(w["dask"] - w["single"]) < 0.01, w
    assert not np.allclose(preds["dask"]["like"], preds["single"]["like"])


def dask_dask_compute(*arrays):
    import dask
    return dask.compute(*arrays)


def test_per_part_user_aucs_combine_to_the_single_process_uauc_exactly(tiny_root_3_buckets, dask_client):
    """(b) Day 14 in three user buckets scored part by part on the workers at every grid point
    and combined on the client == uauc_by_half of the same accumulated raw scores of all rows,
    bit for bit (and the accumulated raw scores rank like a plain predict)."""
    root, _ = tiny_root_3_buckets
    s = _settings()
    fs = _store(root)
    data = ClusterData(dask_client, fs, s, [13, 14])
    assert len(data.parts[14]) == 3
    X, y = (np.asarray(v) for v in dask_dask_compute(*data.arrays("read_comment", [13])))
    booster = lgb.train({**s.params, "num_threads": 1, "min_data_in_leaf": 20},
                        lgb.Dataset(X, label=y), num_boost_round=12)
    grid = eval_grid(12, 5)                                       # [5, 10, 12]
    j = ACTIONS.index("read_comment")
    sent = dask_client.scatter(booster, broadcast=True)
    parts = dask_client.gather([dask_client.submit(part_grid_aucs, data.root, 14, p.index,
                                                   data.spec.names, data.bits[14], j, sent, grid,
                                                   pure=False) for p in data.parts[14]])
    data.close()
    day14 = fs.load_day(14, columns=data.spec.names)
    uid = day14["userid"].to_numpy()
    halves = split_halves(s.halves_seed, uid)
    combined = combine_user_aucs(parts, halves)
    X14 = day14[data.spec.names].to_numpy(np.float32)
    y14 = fs.load_labels(14)["read_comment"].to_numpy()
    ids, aucs = grid_user_aucs(booster, X14, y14, uid, grid)      # one process, every row
    np.testing.assert_array_equal(ids, halves.groups.user_ids)
    raw, prev = np.zeros(len(X14)), 0
    for g, k in enumerate(grid):
        raw += booster.predict(X14, start_iteration=prev, num_iteration=k - prev, raw_score=True)
        prev = k
        ref = uauc_by_half(y14, raw, halves)
        assert (combined.all[g], combined.A[g], combined.B[g]) == (ref["all"], ref["A"], ref["B"])
        direct = uauc_by_half(y14, booster.predict(X14, num_iteration=k, raw_score=True), halves)
        assert direct == pytest.approx(ref, abs=1e-12)
    assert len(set(np.round(combined.all, 12))) > 1            # the grid points really differ
    # a part missing changes the users: refused, not silently averaged over fewer users
    with pytest.raises(Exception, match="differ from the day's users"):
        combine_user_aucs(parts[:2], halves)


@pytest.fixture(scope="module")
def stage_pair(tiny_root, tmp_path_factory):
    """train_lgb on the tiny store, single machine and on local:2, same settings, one action."""
    from conftest import TINY_SEED, run_stage
    common = ["--preset", "tiny", "--seed", str(TINY_SEED), "--no-progress", "--actions",
              "read_comment", "--set", "lgb.num_boost_round=20", "--set", "lgb.dask_eval_every=5"]
    out = {}
    for mode, extra in (("single", []), ("dask", ["--set", "cluster.address=local:2"])):
        root = tmp_path_factory.mktemp(f"lgb_{mode}") / "root"
        for name in ("data", "features"):
            shutil.copytree(tiny_root / name, root / name)
        r = run_stage("train_lgb.py", root, *common, *extra)
        out[mode] = (root, r)
    return out


def test_stage_on_local_cluster_writes_the_single_machine_files(stage_pair):
    """(c) The same files, valid scores that are the metric of the written predictions, rounds
    from the grid, predictions aligned with day 14 and the test rows."""
    from conftest import TINY_SEED
    (root_s, _), (root_d, r) = stage_pair["single"], stage_pair["dask"]
    files = {m: sorted(p.name for p in (root / "models" / "lgb").iterdir())
             for m, root in (("single", root_s), ("dask", root_d))}
    assert files["single"] == files["dask"]
    assert "started a LocalCluster of 2 worker(s)" in r.stderr
    d = root_d / "models" / "lgb"
    scores = json.loads((d / "scores.json").read_text())
    single = json.loads((root_s / "models" / "lgb" / "scores.json").read_text())
    assert set(single) <= set(scores) and scores["distributed"]["workers"] == 2
    grid = [5, 10, 15, 20]
    assert scores["best_iteration"]["read_comment"] in grid
    assert all(scores["half_best_iteration"][h]["read_comment"] in grid for h in ("A", "B"))
    assert scores["train_rows"] == single["train_rows"]              # the same sampled rows
    hist = pd.read_csv(d / "eval_history.csv")
    assert list(hist.columns) == ["action", "round", "uauc", "uauc_A", "uauc_B"]
    assert hist["round"].tolist() == grid
    k = int(hist.loc[hist["uauc"].idxmax(), "round"])
    assert k == scores["best_iteration"]["read_comment"]
    fs = _store(root_d)
    day14 = fs.load_day(14, columns=[])
    labels = fs.load_labels(14)
    off = pd.read_parquet(d / "pred_offline.parquet")
    assert list(off.columns) == ["userid", "feedid", "read_comment"]
    np.testing.assert_array_equal(off["userid"], day14["userid"])
    np.testing.assert_array_equal(off["feedid"], day14["feedid"])
    on = pd.read_parquet(d / "pred_online.parquet")
    test = pd.read_parquet(root_d / "data" / "prepared" / "test.parquet")
    np.testing.assert_array_equal(on["feedid"], test["feedid"])
    for df in (off, on):
        v = df["read_comment"].to_numpy()
        assert np.isfinite(v).all() and (v >= 0).all() and (v <= 1).all() and v.std() > 0
    uid = off["userid"].to_numpy()
    assert scores["offline_insample"] == pytest.approx(weighted_uauc(labels, off, uid))
    assert scores["offline_insample"]["read_comment"] == pytest.approx(hist["uauc"].max(), abs=1e-6)
    sel = {h: pd.read_parquet(d / f) for h, f in HALF_PRED_FILES.items()}
    halves = split_halves(TINY_SEED, uid)
    assert scores["offline"] == pytest.approx(crossfit_scores(labels, sel["A"], sel["B"], halves))
    assert 0.0 < scores["offline"]["weighted"] < 1.0
    assert scores["online_rounds"]["read_comment"] >= scores["best_iteration"]["read_comment"]
    model = (d / "model_offline_read_comment.txt").read_text()
    assert "[tree_learner: data]" in model
    assert model.count("Tree=") == scores["best_iteration"]["read_comment"]


def test_a_worker_without_data_is_left_out_of_training(tiny_root, dask_client):
    """One training part on a 2-worker cluster: the worker holding no chunk takes no part
    (lightgbm.dask builds ``machines`` from where the chunks are) and the fit still succeeds --
    the model then equals one trained by lightgbm.train on that chunk's rows."""
    s = _settings()
    fs = _store(tiny_root)
    data = ClusterData(dask_client, fs, s, [13, 14])
    X, y = data.arrays("read_comment", [13])
    assert X.numblocks[0] == 1 and len(dask_client.scheduler_info()["workers"]) == 2
    Xn, yn = (np.asarray(v) for v in dask_dask_compute(X, y))
    booster = train_dask(dask_client, s, data.spec, X, y, 5)
    data.close()                # releases the label futures the arrays' graph reads
    ds = lgb.Dataset(Xn, label=yn, feature_name=list(data.spec.names),
                     categorical_feature=list(data.spec.categorical),
                     params=_dataset_params(s.params), free_raw_data=True)
    single = train_booster({**s.params, "tree_learner": "data", "num_threads": 1}, ds, 5, progress=False)
    np.testing.assert_allclose(booster.predict(Xn), single.predict(Xn), rtol=1e-6)


def test_training_steps_through_the_grid_and_stops_early(tiny_root, dask_client):
    """Early stopping on a cluster: eval_every rounds at a time (init_model continues the trees),
    every grid point scored on day 14; it stops once the all-users uAUC has not improved for
    early_stopping_rounds, long before num_boost_round, and the scores of the grid points equal
    those of the final booster cut at each of them (the continued trees are kept)."""
    from wbdc.lgb_dask import train_with_grid_stopping
    from wbdc.metrics import split_halves
    s = _settings("--set", "lgb.num_boost_round=400", "--set", "lgb.early_stopping_rounds=20")
    fs = _store(tiny_root)
    days = [d for d in fs.days if d < 14]
    data = ClusterData(dask_client, fs, s, [*days, 14])
    X, y = data.arrays("read_comment", days)
    halves = {}

    def halves_of(per_part):
        halves.setdefault("h", split_halves(s.halves_seed, np.sort(np.concatenate([p[0] for p in per_part]))))
        return halves["h"]

    booster, grid, sc = train_with_grid_stopping(dask_client, data, s, ACTIONS.index("read_comment"), X, y, 10,
                                                 halves_of)
    assert grid == list(range(10, grid[-1] + 1, 10)) and booster.current_iteration() == grid[-1]
    assert grid[-1] < 400 and grid[-1] - grid[sc.best("all")] >= 20
    for k in range(len(grid) - 1):                                        # it did not stop sooner
        assert grid[k] - grid[int(np.nanargmax(sc.all[:k + 1]))] < 20
    sent = dask_client.scatter(booster, broadcast=True, hash=False)
    again = dask_client.gather([dask_client.submit(part_grid_aucs, data.root, 14, p.index, data.spec.names,
                                                   data.bits[14], ACTIONS.index("read_comment"), sent, grid,
                                                   pure=False) for p in data.parts[14]])
    np.testing.assert_array_equal(combine_user_aucs(again, halves["h"]).all, sc.all)
    data.close()


def test_the_cluster_caps_the_rates_as_one_machine_does(tiny_root, dask_client):
    """``lgb.max_train_rows`` lowers the same rates on the client of a cluster as on one machine
    (both count the offline training days' labels)."""
    from wbdc.lgb import load_fit_data
    s = _settings("--set", "lgb.max_train_rows=3000")
    fs = _store(tiny_root)
    days = [d for d in fs.days if d < 14]
    data = ClusterData(dask_client, fs, s, [*days, 14])
    data.close()
    one = load_fit_data(fs, s, progress=False).settings.neg_rate
    assert data.settings.neg_rate == one
    assert one["read_comment"] < s.neg_rate["read_comment"]
