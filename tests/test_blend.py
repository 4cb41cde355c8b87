"""Blend: simplex search, per-user ranks, weight recovery, held-out score, the blend stage."""
from __future__ import annotations

import dataclasses

import json
import warnings
from pathlib import Path

import numpy as np
import pandas as pd
import pytest

from wbdc.blend import (BlendSettings, BlendWeights, ModelSet, find_models, fit_blend,
                        load_day_labels, open_predictions, per_user_pct_rank, simplex_search)
from wbdc.io import InputError, write_json
from wbdc.metrics import (HALF_PRED_FILES, HALVES, crossfit_scores, group_by_user, split_halves,
                          uauc, weighted_uauc, weighted_uauc_by_half)
from wbdc.schema import ACTIONS

from conftest import run_stage

SMALL = BlendSettings(methods=("prob", "rank"), seed=3, grid_units=20, start_step=4, max_evals=60,
                      scope="action", equal_exclude=())


# ------------------------------------------------------------------------------ fake artifact root

def _sigmoid(z):
    return 1.0 / (1.0 + np.exp(-z))


def make_world(n_users: int = 120, rows_per_user: int = 16, n_test_per_user: int = 10,
               seed: int = 0) -> dict:
    """Day-13/14 action rows, test rows, true probabilities and sampled labels (all actions
    frequent, so every user has both classes)."""
    rng = np.random.default_rng(seed)

    def rows(n_per):
        u = np.repeat(np.arange(1, n_users + 1, dtype=np.int32), n_per)
        f = np.concatenate([rng.choice(5000, n_per, replace=False) for _ in range(n_users)]).astype(np.int32)
        perm = rng.permutation(len(u))           # interleave users like a real log
        return u[perm], f[perm]

    u14, f14 = rows(rows_per_user)
    ut, ft = rows(n_test_per_user)
    z14 = rng.normal(0, 1.5, (len(u14), len(ACTIONS)))
    zt = rng.normal(0, 1.5, (len(ut), len(ACTIONS)))
    p14, pt = _sigmoid(z14 - 0.5), _sigmoid(zt - 0.5)
    y14 = (rng.random(p14.shape) < p14).astype(np.int8)
    yt = (rng.random(pt.shape) < pt).astype(np.int8)
    return dict(u14=u14, f14=f14, z14=z14, p14=p14, y14=y14, ut=ut, ft=ft, zt=zt, pt=pt, yt=yt)


def write_root(root: Path, w: dict, models: dict[str, tuple[np.ndarray, np.ndarray]],
               synthetic: bool = True) -> Path:
    """data/prepared (+ truth) and models/<name>/ from (offline, online) probability matrices."""
    prep = root / "data" / "prepared"
    prep.mkdir(parents=True, exist_ok=True)
    truth = root / "data" / "synthetic" / "fake" / "truth"
    truth.mkdir(parents=True, exist_ok=True)
    rng = np.random.default_rng(1)
    n13 = 200
    day13 = pd.DataFrame({"userid": rng.integers(1, 50, n13).astype(np.int32),
                          "feedid": rng.integers(0, 5000, n13).astype(np.int32),
                          "date_": np.int8(13), "device": np.int8(1)})
    day14 = pd.DataFrame({"userid": w["u14"], "feedid": w["f14"], "date_": np.int8(14),
                          "device": np.int8(2)})
    for j, a in enumerate(ACTIONS):
        day13[a] = rng.integers(0, 2, n13).astype(np.int8)
        day14[a] = w["y14"][:, j]
    actions = pd.concat([day13, day14], ignore_index=True)
    actions["play"] = np.int32(1000)
    actions["stay"] = np.int32(2000)
    actions.to_parquet(prep / "actions.parquet", index=False)
    pd.DataFrame({"userid": w["ut"], "feedid": w["ft"], "device": np.int8(1)}).to_parquet(
        prep / "test.parquet", index=False)
    write_json({"synthetic": synthetic, "truth_dir": str(truth) if synthetic else None,
                "source_dir": "fake", "n_actions": len(actions), "n_test": len(w["ut"]),
                "test_file": "test_a.csv"}, prep / "meta.json")
    d14 = pd.DataFrame({"userid": w["u14"], "feedid": w["f14"]})
    tt = pd.DataFrame({"userid": w["ut"], "feedid": w["ft"], "device": 1})
    for j, a in enumerate(ACTIONS):
        d14[a] = w["p14"][:, j]
        tt[a] = w["yt"][:, j]
    for j, a in enumerate(ACTIONS):
        tt[f"p_{a}"] = w["pt"][:, j]
    d14.to_csv(truth / "day14_prob.csv", index=False)
    tt.to_csv(truth / "test_truth.csv", index=False)
    write_json({"stage": "prepare", "seconds": 1.5, "peak_rss_mb": 100.0}, prep / "run_info_prepare.json")
    for name, (off, on) in models.items():
        write_model(root, name, w, off, on)
    return root


def write_model(root: Path, name: str, w: dict, off: np.ndarray, on: np.ndarray,
                halves: dict[str, np.ndarray] | None = None) -> None:
    """``halves``: the day-14 predictions chosen on each user half (default: ``off`` for both,
    a model that chooses nothing on day 14)."""
    d = root / "models" / name
    d.mkdir(parents=True, exist_ok=True)

    def frame(u, f, x):
        df = pd.DataFrame({"userid": u, "feedid": f})
        for j, a in enumerate(ACTIONS):
            df[a] = x[:, j].astype(np.float32)
        return df

    frame(w["u14"], w["f14"], off).to_parquet(d / "pred_offline.parquet", index=False)
    for h, f in HALF_PRED_FILES.items():
        x = off if halves is None else halves[h]
        frame(w["u14"], w["f14"], x).to_parquet(d / f, index=False)
    frame(w["ut"], w["ft"], on).to_parquet(d / "pred_online.parquet", index=False)
    write_json({"offline": {}}, d / "scores.json")
    write_json({"stage": f"train_{name}", "seconds": 2.0, "peak_rss_mb": 200.0},
               d / f"run_info_train_{name}.json")


def standard_models(w: dict, seed: int = 5) -> dict:
    """'good' = truth + small noise; 'noise_a', 'noise_b' = pure noise."""
    rng = np.random.default_rng(seed)
    good = lambda z: _sigmoid(z + rng.normal(0, 0.3, z.shape))  # noqa: E731
    noise = lambda z: rng.random(z.shape)  # noqa: E731
    return {"good": (good(w["z14"]), good(w["zt"])),
            "noise_a": (noise(w["z14"]), noise(w["zt"])),
            "noise_b": (noise(w["z14"]), noise(w["zt"]))}


@pytest.fixture(scope="module")
def world() -> dict:
    return make_world()


@pytest.fixture()
def fake_root(tmp_path, world) -> Path:
    return write_root(tmp_path, world, standard_models(world))


def _labels(w) -> pd.DataFrame:
    df = pd.DataFrame({"userid": w["u14"], "feedid": w["f14"]})
    for j, a in enumerate(ACTIONS):
        df[a] = w["y14"][:, j]
    return df


def wu(labels: pd.DataFrame, preds) -> dict:
    return weighted_uauc(labels, preds, labels["userid"].to_numpy())


def _modelset(root: Path, w: dict, names=None) -> tuple[pd.DataFrame, ModelSet]:
    labels = _labels(w)
    names = names or find_models(root / "models")[0]
    return labels, open_predictions(root / "models", names, "offline", labels, "labels")


def _half_sets(root: Path, labels: pd.DataFrame, names) -> dict[str, ModelSet]:
    return {h: open_predictions(root / "models", names, f"offline_sel_{h.lower()}", labels, "labels")
            for h in HALVES}


# ------------------------------------------------------------------------------ simplex search

def test_simplex_search_finds_interior_grid_optimum():
    target = np.array([0.25, 0.5, 0.25])
    res = simplex_search(lambda w: -float(((w - target) ** 2).sum()), 3, grid_units=20,
                         start_step=4, max_evals=500)
    np.testing.assert_allclose(res.weights, target)
    assert res.score == pytest.approx(0.0)
    assert res.weights.sum() == pytest.approx(1.0) and (res.weights >= 0).all()


def test_simplex_search_never_worse_than_best_vertex_and_respects_budget():
    calls = []

    def score(w):
        calls.append(w)
        return float(w @ np.array([0.1, 0.9, 0.3]))  # linear: the best vertex is the optimum

    res = simplex_search(score, 3, grid_units=40, start_step=8, max_evals=7)
    np.testing.assert_array_equal(res.weights, [0, 1, 0])
    assert res.score == pytest.approx(0.9)
    assert len(calls) <= 7 and res.evals == len(calls)
    one = simplex_search(lambda w: float("nan"), 1)
    np.testing.assert_array_equal(one.weights, [1.0])


def test_per_user_pct_rank_matches_pandas_reference():
    rng = np.random.default_rng(0)
    users = rng.integers(0, 30, 500)
    vals = np.round(rng.random(500), 1)          # many ties
    got = per_user_pct_rank(vals, group_by_user(users))
    df = pd.DataFrame({"u": users, "v": vals})
    r = df.groupby("u")["v"].rank(method="average")
    n = df.groupby("u")["v"].transform("size")
    np.testing.assert_allclose(got, ((r - 0.5) / n).to_numpy(), rtol=1e-6)
    assert got.dtype == np.float32
    # hand-built: user 7 has values 0.2, 0.9, 0.2 -> ranks 1.5, 3, 1.5 -> (r-.5)/3
    g = per_user_pct_rank(np.array([0.2, 5.0, 0.9, 0.2]), group_by_user(np.array([7, 8, 7, 7])))
    np.testing.assert_allclose(g, [1 / 3, 0.5, 2.5 / 3, 1 / 3], rtol=1e-6)


def test_rank_keeps_uauc():
    rng = np.random.default_rng(1)
    users = rng.integers(0, 40, 800)
    y = rng.integers(0, 2, 800)
    v = np.round(rng.random(800), 2)
    g = group_by_user(users)
    assert uauc(y, per_user_pct_rank(v, g), groups=g) == pytest.approx(uauc(y, v, users), abs=1e-12)


# ------------------------------------------------------------------------------ fitting

def test_weights_recovered_for_the_informative_model(fake_root, world):
    labels, ms = _modelset(fake_root, world)
    fit = fit_blend(labels, ms, SMALL, progress=False)
    for a in ACTIONS:
        b = fit.weights.actions[a]
        assert b.weights["good"] >= 0.8, (a, b.weights)
        assert sum(b.weights.values()) == pytest.approx(1.0)
        assert all(v >= 0 for v in b.weights.values())
        assert b.heldout is not None and b.in_sample is not None


def test_blend_at_least_best_single_model_in_sample(fake_root, world):
    labels, ms = _modelset(fake_root, world)
    fit = fit_blend(labels, ms, SMALL, progress=False)
    blend = wu(labels, fit.offline)
    for n in ms.names:
        single = wu(labels, ms.frame(n))
        for a in ACTIONS:
            assert blend[a] >= single[a] - 1e-12, (n, a)


def test_blend_beats_both_of_two_complementary_models(tmp_path, world):
    """Two models that each see half of the signal: the mix beats each of them."""
    rng = np.random.default_rng(2)
    za14, zb14 = rng.normal(0, 1, world["z14"].shape), None
    zb14 = world["z14"] - za14                       # z = za + zb
    zat, zbt = rng.normal(0, 1, world["zt"].shape), None
    zbt = world["zt"] - zat
    models = {"half_a": (_sigmoid(world["z14"] - zb14 * 0.9), _sigmoid(world["zt"] - zbt * 0.9)),
              "half_b": (_sigmoid(world["z14"] - za14 * 0.9), _sigmoid(world["zt"] - zat * 0.9))}
    root = write_root(tmp_path, world, models)
    labels, ms = _modelset(root, world)
    fit = fit_blend(labels, ms, SMALL, progress=False)
    blend = wu(labels, fit.offline)["weighted"]
    best = max(wu(labels, ms.frame(n))["weighted"] for n in ms.names)
    assert blend > best + 0.01
    for a in ACTIONS:
        assert 0 < fit.weights.actions[a].weights["half_a"] < 1


def _recompute_half_blends(labels, halves_sets, fit, halves) -> dict[str, pd.DataFrame]:
    """Each half's blend rebuilt from what blend_weights records: the input and the weights
    chosen on that half, applied to the models' predictions chosen on that half."""
    out = {}
    for h in HALVES:
        ms = halves_sets[h]
        df = ms.keys.copy()
        for a in ACTIONS:
            b = fit.weights.actions[a]
            x = ms.column(a)
            if b.half_method[h] == "rank":
                x = np.stack([per_user_pct_rank(x[:, j], halves.groups) for j in range(x.shape[1])],
                             axis=1)
            wv = np.array([b.half_weights[b.half_method[h]][h][n] for n in ms.names], np.float32)
            df[a] = np.clip(x @ wv, 0, 1)
        out[h] = df
    return out


def test_heldout_score_is_the_mean_of_the_out_of_half_uaucs(tmp_path, world):
    """The held-out blend of each half uses only what that half chose: the models' predictions
    selected on it and weights fitted on it; its figure is the mean of the two out-of-half
    uAUCs.  Models whose choices differ per half make the halves' inputs differ."""
    rng = np.random.default_rng(8)
    good = lambda: _sigmoid(world["z14"] + rng.normal(0, 0.6, world["z14"].shape))  # noqa: E731
    noise = lambda: rng.random(world["z14"].shape)  # noqa: E731
    on = lambda: rng.random(world["zt"].shape)  # noqa: E731
    root = tmp_path / "r"
    write_root(root, world, {})
    write_model(root, "sel", world, good(), on(), {"A": good(), "B": noise()})
    write_model(root, "plain", world, good(), on())
    labels, ms = _modelset(root, world)
    hs = _half_sets(root, labels, ms.names)
    halves = split_halves(SMALL.seed, labels["userid"].to_numpy())
    fit = fit_blend(labels, ms, SMALL, progress=False, half_preds=hs, halves=halves)
    rebuilt = _recompute_half_blends(labels, hs, fit, halves)
    for h in HALVES:
        pd.testing.assert_frame_equal(fit.half_preds[h], rebuilt[h], check_dtype=False, atol=1e-6)
    userids = labels["userid"].to_numpy()
    for a in ACTIONS:
        y = labels[a].to_numpy()
        on_b = uauc(y[~halves.row_in_a], rebuilt["A"][a].to_numpy()[~halves.row_in_a],
                    userids[~halves.row_in_a])
        on_a = uauc(y[halves.row_in_a], rebuilt["B"][a].to_numpy()[halves.row_in_a],
                    userids[halves.row_in_a])
        b = fit.weights.actions[a]
        assert b.heldout == pytest.approx((on_a + on_b) / 2, abs=1e-9)
        assert b.heldout_by_method.keys() == {"prob", "rank"}
        # half B chose on noise for "sel": its weights avoid it; half A's lean on it or mix
        assert b.half_weights[b.half_method["B"]]["B"]["sel"] <= 0.25
        # the held-out rows of each half carry the other half's blend
        np.testing.assert_allclose(fit.heldout[a].to_numpy()[~halves.row_in_a],
                                   rebuilt["A"][a].to_numpy()[~halves.row_in_a], atol=1e-6)
        np.testing.assert_allclose(fit.heldout[a].to_numpy()[halves.row_in_a],
                                   rebuilt["B"][a].to_numpy()[halves.row_in_a], atol=1e-6)
    cf = crossfit_scores(labels, rebuilt["A"], rebuilt["B"], halves)
    assert cf["weighted"] == pytest.approx(
        np.mean([weighted_uauc_by_half(labels, rebuilt["A"], halves)["B"]["weighted"],
                 weighted_uauc_by_half(labels, rebuilt["B"], halves)["A"]["weighted"]]))


def test_rank_and_prob_blending_both_work(tmp_path, world):
    """A model whose scale differs per user: prob mixing suffers, rank mixing does not."""
    rng = np.random.default_rng(4)
    users14 = world["u14"]
    usert = world["ut"]
    scale = 10.0 ** rng.uniform(-3, 0, users14.max() + 1)   # per-user calibration
    mk = lambda z, u, s: _sigmoid(z + rng.normal(0, 0.7, z.shape)) * s[u][:, None]  # noqa: E731
    models = {"scaled": (mk(world["z14"], users14, scale), mk(world["zt"], usert, scale)),
              "plain": (_sigmoid(world["z14"] + rng.normal(0, 1.0, world["z14"].shape)),
                        _sigmoid(world["zt"] + rng.normal(0, 1.0, world["zt"].shape)))}
    root = write_root(tmp_path, world, models)
    labels, ms = _modelset(root, world)
    fits = {m: fit_blend(labels, ms, BlendSettings(methods=(m,), seed=3, grid_units=20,
                                                   start_step=4, max_evals=60, scope="action",
                                                   equal_exclude=()), progress=False)
            for m in ("prob", "rank")}
    both = fit_blend(labels, ms, SMALL, progress=False)
    singles = [wu(labels, ms.frame(n))["weighted"] for n in ms.names]
    for m, fit in fits.items():
        assert all(b.method == m for b in fit.weights.actions.values())
        assert wu(labels, fit.offline)["weighted"] >= max(singles) - 1e-12
    rank_w = wu(labels, fits["rank"].offline)["weighted"]
    prob_w = wu(labels, fits["prob"].offline)["weighted"]
    assert rank_w > prob_w
    assert sum(b.method == "rank" for b in both.weights.actions.values()) >= 5
    # rank weights applied to the online rows = weights . per-user ranks of the test rows
    on = open_predictions(root / "models", ms.names, "online",
                          pd.DataFrame({"userid": world["ut"], "feedid": world["ft"]}), "test")
    blended = fits["rank"].weights.apply(on)
    gt = group_by_user(world["ut"])
    for a in ACTIONS:
        x = on.column(a)
        ranks = np.stack([per_user_pct_rank(x[:, j], gt) for j in range(x.shape[1])], axis=1)
        np.testing.assert_allclose(blended[a].to_numpy(),
                                   ranks @ fits["rank"].weights.weight_vector(a), rtol=1e-6)
    blended_prob = fits["prob"].weights.apply(on)
    a = ACTIONS[0]
    np.testing.assert_allclose(blended_prob[a].to_numpy(),
                               on.column(a) @ fits["prob"].weights.weight_vector(a), rtol=1e-6)


def test_weights_json_roundtrip(fake_root, world):
    labels, ms = _modelset(fake_root, world)
    fit = fit_blend(labels, ms, SMALL, progress=False)
    back = BlendWeights.from_json(json.loads(json.dumps(fit.weights.to_json())))
    assert back == fit.weights


def test_fit_is_deterministic(fake_root, world):
    labels, ms = _modelset(fake_root, world)
    a = fit_blend(labels, ms, SMALL, progress=False)
    b = fit_blend(labels, ms, SMALL, progress=False)
    assert a.weights == b.weights
    pd.testing.assert_frame_equal(a.offline, b.offline)


# ------------------------------------------------------------------------------ inputs

def test_find_models_skips_incomplete_folders(fake_root):
    (fake_root / "models" / "half").mkdir()
    (fake_root / "models" / "half" / "pred_offline.parquet").write_bytes(b"")
    names, skipped = find_models(fake_root / "models")
    assert names == ["good", "noise_a", "noise_b"]
    assert len(skipped) == 1 and "half: skipped, no pred_online.parquet" in skipped[0]
    assert find_models(fake_root / "models", ["noise_b", "good"])[0] == ["noise_b", "good"]
    with pytest.raises(FileNotFoundError, match="no model folder for nope"):
        find_models(fake_root / "models", ["good", "nope"])


def test_misaligned_predictions_are_refused(fake_root, world):
    labels = _labels(world)
    f = fake_root / "models" / "noise_a" / "pred_offline.parquet"
    df = pd.read_parquet(f)
    df.iloc[[3, 4]] = df.iloc[[4, 3]].to_numpy()
    df.to_parquet(f, index=False)
    with pytest.raises(InputError, match=r"noise_a/pred_offline.parquet: rows do not align with "
                                         r"labels on \(userid, feedid\): 2 differ, first at row 4"):
        open_predictions(fake_root / "models", ["good", "noise_a"], "offline", labels, "labels")
    df.iloc[:-1].to_parquet(f, index=False)
    with pytest.raises(InputError, match=f"{len(labels) - 1:,} rows but labels has {len(labels):,}"):
        open_predictions(fake_root / "models", ["noise_a"], "offline", labels, "labels")


def test_nan_predictions_are_refused(fake_root, world):
    labels = _labels(world)
    f = fake_root / "models" / "good" / "pred_offline.parquet"
    df = pd.read_parquet(f)
    df.loc[5, "like"] = np.nan
    df.to_parquet(f, index=False)
    ms = open_predictions(fake_root / "models", ["good"], "offline", labels, "labels")
    with pytest.raises(InputError, match="column like has 1 values that are NaN or outside"):
        ms.column("like")


def test_load_day_labels_keeps_stored_order(fake_root, world):
    lab = load_day_labels(fake_root / "data" / "prepared" / "actions.parquet", 14)
    pd.testing.assert_frame_equal(lab.reset_index(drop=True), _labels(world), check_dtype=False)


# ------------------------------------------------------------------------------ stage

def test_blend_stage_end_to_end(fake_root, world):
    r = run_stage("blend.py", fake_root, "--no-progress", "--set", "blend.search.max_evals=40",
                  "--set", "blend.scope=shared")
    ens = fake_root / "ensemble"
    for f in ("pred_offline.parquet", "pred_online.parquet", "blend_weights.json", "scores.json",
              "report.md", "config.json", "run_info_blend.json", "uauc_by_model.png",
              "blend_weights.png"):
        assert (ens / f).is_file(), f
    s = json.loads((ens / "scores.json").read_text())
    keys = [*ACTIONS, "weighted"]
    assert set(s["models"]) == {"good", "noise_a", "noise_b"}
    assert set(s["insample"]["models"]) == {"good", "noise_a", "noise_b"}
    assert "blend_heldout" not in s
    for block in (*s["models"].values(), s["blend"], *s["insample"]["models"].values(),
                  s["insample"]["blend"], s["oracle"]):
        assert list(block) == keys
    assert s["online"] is None
    assert set(s["blend_weights"]) == set(ACTIONS)
    assert set(s["blend_method"].values()) <= {"prob", "rank", "logit"}
    # scope shared: one weight vector, never worse than a single model on the weighted score it
    # was fitted on (per action it may be; blend.scope=action guarantees that)
    assert s["insample"]["blend"]["weighted"] >= max(m["weighted"] for m in s["insample"]["models"].values())
    for a in ACTIONS:
        assert s["blend_weights"][a] == s["blend_weights"][ACTIONS[0]]
        assert s["blend_weights"][a]["good"] >= 0.8
    # the oracle is the truth's own uAUC, recomputed here
    labels = _labels(world)
    truth = {a: world["p14"][:, j] for j, a in enumerate(ACTIONS)}
    assert s["oracle"]["weighted"] == pytest.approx(
        weighted_uauc(labels, truth, labels["userid"].to_numpy())["weighted"], abs=1e-6)
    # blend files have the model format and order
    off = pd.read_parquet(ens / "pred_offline.parquet")
    on = pd.read_parquet(ens / "pred_online.parquet")
    assert list(off.columns) == ["userid", "feedid", *ACTIONS]
    np.testing.assert_array_equal(off["userid"], world["u14"])
    np.testing.assert_array_equal(on["feedid"], world["ft"])
    assert ((on[list(ACTIONS)] >= 0) & (on[list(ACTIONS)] <= 1)).all().all()
    assert s["insample"]["blend"]["weighted"] == pytest.approx(round(wu(labels, off)["weighted"], 6))
    # the headline blend is the held-out one: its halves' files, each scored on the other half
    halves = split_halves(2021, labels["userid"].to_numpy())
    sel = {h: pd.read_parquet(ens / f) for h, f in HALF_PRED_FILES.items()}
    cf = crossfit_scores(labels, sel["A"], sel["B"], halves)
    w = json.loads((ens / "blend_weights.json").read_text())
    for k in keys:
        assert s["blend"][k] == pytest.approx(round(cf[k], 6), abs=1e-6)
    for a in ACTIONS:
        assert s["blend"][a] == pytest.approx(w["actions"][a]["heldout"], abs=1e-6)
    # each model's figure is the mean of its two out-of-half uAUCs
    for n in ("good", "noise_a"):
        d = fake_root / "models" / n
        cf = crossfit_scores(labels, pd.read_parquet(d / HALF_PRED_FILES["A"]),
                             pd.read_parquet(d / HALF_PRED_FILES["B"]), halves)
        assert s["models"][n]["weighted"] == pytest.approx(round(cf["weighted"], 6), abs=1e-6)
    assert "blend" in r.stderr and "done in" in r.stderr


def test_blend_stage_model_subset_and_missing_inputs(fake_root, tmp_path):
    run_stage("blend.py", fake_root, "--no-progress", "--models", "noise_a,good",
              "--methods", "prob", "--set", "blend.search.max_evals=20")
    w = json.loads((fake_root / "ensemble" / "blend_weights.json").read_text())
    assert w["models"] == ["noise_a", "good"]
    assert {b["method"] for b in w["actions"].values()} == {"prob"}
    with pytest.raises(AssertionError, match=r"error: .*models: no model folder for typo"):
        run_stage("blend.py", fake_root, "--models", "typo")
    with pytest.raises(AssertionError, match=r"error: .*data/prepared/actions.parquet: missing; "
                                             r"run the prepare stage first"):
        run_stage("blend.py", tmp_path / "empty_root")


def test_blend_on_tiny_pipeline(tiny_root, tmp_path):
    """On the tiny synthetic world: the blend of the models it averages (LightGBM; the popularity
    baseline is left out, blend.equal_exclude) is at least as good as the best of them (day 14,
    in-sample), and the submission is scored online."""
    import shutil
    root = tmp_path / "tiny"
    shutil.copytree(tiny_root, root, symlinks=True)
    run_stage("train_lgb.py", root, "--preset", "tiny", "--seed", "7", "--no-progress",
              "--set", "lgb.num_boost_round=30", "--set", "lgb.early_stopping_rounds=10",
              timeout=900)
    names, _ = find_models(root / "models")
    assert names == ["lgb"]  # popularity is its own stage now, not a side effect of lgb
    run_stage("train_popularity.py", root, "--preset", "tiny", "--seed", "7")
    names, _ = find_models(root / "models")
    assert names == ["lgb", "popularity"]
    run_stage("blend.py", root, "--preset", "tiny", "--seed", "7", "--no-progress")
    s = json.loads((root / "ensemble" / "scores.json").read_text())
    assert s["blend_weights"]["like"] == {"lgb": 1.0, "popularity": 0.0}
    best = max(m["weighted"] for n, m in s["insample"]["models"].items() if n != "popularity")
    assert s["insample"]["blend"]["weighted"] >= best - 1e-6
    assert s["oracle"]["weighted"] > s["insample"]["blend"]["weighted"] > 0.5
    # one model averaged: the held-out blend is LightGBM's own cross-fitted score (not a quality
    # check: tiny's day 14, about 4 rows per user, puts a 30-round LightGBM anywhere from about
    # 0.49 to 0.59 by its seed and columns)
    assert s["blend"]["weighted"] == pytest.approx(s["models"]["lgb"]["weighted"], abs=1e-6)
    run_stage("submit.py", root, "--preset", "tiny", "--seed", "7")
    s = json.loads((root / "ensemble" / "scores.json").read_text())
    from wbdc.scoring import score_files
    truth = root / "data" / "synthetic" / "tiny_seed7" / "truth" / "test_truth.csv"
    online = score_files(root / "submissions" / "submission.csv", truth)
    assert s["online"]["weighted"] == pytest.approx(online["weighted"], abs=1e-6) and online["weighted"] > 0.5


def test_blend_stage_offline_mode_needs_and_leaves_no_online_predictions(fake_root, tmp_path):
    import shutil
    root = tmp_path / "offline"
    shutil.copytree(fake_root, root)
    for f in (root / "models").glob("*/pred_online.parquet"):
        f.unlink()
    stale = root / "ensemble" / "pred_online.parquet"
    stale.parent.mkdir(parents=True, exist_ok=True)
    stale.write_bytes(b"from an earlier fit")
    with pytest.raises(AssertionError, match=r"no model folder with pred_offline.parquet and "
                       r"pred_offline_sel_a.parquet and pred_offline_sel_b.parquet and pred_online.parquet"):
        run_stage("blend.py", root, "--no-progress", "--set", "blend.search.max_evals=20")
    run_stage("blend.py", root, "--no-progress", "--mode", "offline", "--set", "blend.search.max_evals=20")
    assert not stale.exists()
    s = json.loads((root / "ensemble" / "scores.json").read_text())
    assert set(s["models"]) == {"good", "noise_a", "noise_b"} and s["blend"]["weighted"] > 0.5


# ------------------------------------------------------------------------------ interior optimum, isolation

def test_weights_match_a_brute_force_interior_optimum(tmp_path):
    """Two models with noise variances 3:7 around the same signal: the best mix is interior
    (near 0.7 / 0.3). fit_blend lands within one grid step of the brute-force argmax over the
    grid, computed with `uauc` itself (a search stuck at a vertex fails)."""
    w = make_world(n_users=300, rows_per_user=24, seed=11)
    rng = np.random.default_rng(12)
    k = 1.2
    models = {name: (_sigmoid(w["z14"] + rng.normal(0, np.sqrt(var * k), w["z14"].shape)),
                     _sigmoid(w["zt"] + rng.normal(0, np.sqrt(var * k), w["zt"].shape)))
              for name, var in (("a", 0.3), ("b", 0.7))}
    root = write_root(tmp_path, w, models)
    labels, ms = _modelset(root, w)
    settings = BlendSettings(methods=("prob",), seed=3, grid_units=20, start_step=4, max_evals=200,
                             scope="action", equal_exclude=())
    fit = fit_blend(labels, ms, settings, progress=False)
    users = labels["userid"].to_numpy()
    grid = np.arange(settings.grid_units + 1) / settings.grid_units
    ia = ms.names.index("a")
    for a in ACTIONS:
        x = ms.column(a)
        y = labels[a].to_numpy()
        scores = [uauc(y, x[:, ia] * g + x[:, 1 - ia] * (1 - g), users) for g in grid]
        best = grid[int(np.argmax(scores))]
        assert 0.0 < best < 1.0, (a, best)                      # the optimum is interior
        got = fit.weights.actions[a].weights["a"]
        assert abs(got - best) <= 1.0 / settings.grid_units + 1e-9, (a, got, best)
        assert fit.weights.actions[a].in_sample == pytest.approx(max(scores), abs=1e-6)


@pytest.mark.parametrize("scope", ["action", "shared"])
def test_each_half_is_fitted_on_its_own_users_only(fake_root, world, scope):
    """Scrambling the labels of half B's users leaves half A's weights (and A's chosen input)
    unchanged, and vice versa: a half never sees the other half's labels (either scope)."""
    labels, ms = _modelset(fake_root, world)
    settings = dataclasses.replace(SMALL, scope=scope)
    fit = fit_blend(labels, ms, settings, progress=False)
    halves = split_halves(SMALL.seed, groups=group_by_user(labels["userid"].to_numpy()))
    rng = np.random.default_rng(9)
    for scrambled, kept in (("B", "A"), ("A", "B")):
        rows = np.flatnonzero(halves.row_mask(scrambled))
        other = labels.copy()
        for a in ACTIONS:
            other.loc[rows, a] = rng.permutation(other.loc[rows, a].to_numpy())
        refit = fit_blend(other, ms, settings, progress=False)
        for a in ACTIONS:
            b0, b1 = fit.weights.actions[a], refit.weights.actions[a]
            assert b1.half_method[kept] == b0.half_method[kept]
            for m in SMALL.methods:
                assert b1.half_weights[m][kept] == b0.half_weights[m][kept], (a, m, kept)
        changed = sum(refit.weights.actions[a].half_weights[m][scrambled]
                      != fit.weights.actions[a].half_weights[m][scrambled]
                      for a in ACTIONS for m in SMALL.methods)
        assert changed > 0      # the scrambled half did see its own (new) labels


def test_shared_scope_fits_one_weight_vector_on_the_weighted_score(fake_root, world):
    """blend.scope=shared: every action gets the same weights (on each half and in the refit),
    fitted on the weighted uAUC: in sample, the blend's weighted score is at least every single
    model's (the search starts from every vertex), and it equals the score of that one vector
    recomputed from the predictions."""
    labels, ms = _modelset(fake_root, world)
    shared = fit_blend(labels, ms, dataclasses.replace(SMALL, scope="shared"), progress=False)
    first = shared.weights.actions[ACTIONS[0]]
    for a in ACTIONS:
        b = shared.weights.actions[a]
        assert b.weights == first.weights and b.method == first.method
        for m in SMALL.methods:
            assert b.half_weights[m] == first.half_weights[m]
    blend = wu(labels, shared.offline)
    for n in ms.names:
        assert blend["weighted"] >= wu(labels, ms.frame(n))["weighted"] - 1e-12, n
    w = np.asarray([first.weights[n] for n in ms.names], np.float32)
    x = {a: ms.column(a) for a in ACTIONS}
    if first.method == "rank":
        from wbdc.blend import rank_columns
        g = group_by_user(labels["userid"].to_numpy())
        x = {a: rank_columns(x[a], g) for a in ACTIONS}
    again = wu(labels, {a: np.clip(x[a] @ w, 0, 1) for a in ACTIONS})
    assert again["weighted"] == pytest.approx(blend["weighted"], abs=1e-9)


def test_blend_scope_is_checked():
    """A scope the blend does not know is refused by the config check, in one line naming the key."""
    from wbdc.config import resolve_argv
    with pytest.raises((SystemExit, ValueError)) as e:
        BlendSettings.from_config(resolve_argv(["--set", "blend.scope=global"]))
    msg = str(e.value)
    assert "blend.scope" in msg and "\n" not in msg.strip()


def test_equal_scope_is_the_plain_mean_of_the_models_but_the_excluded(fake_root, world):
    """blend.scope=equal (the default): no weights are fitted; the blend is the mean of every
    model not in blend.equal_exclude, and its held-out score is the cross-fitted score of that
    mean over the models' half-chosen predictions (the input, prob or rank, chosen per half)."""
    labels, ms = _modelset(fake_root, world)
    settings = dataclasses.replace(SMALL, scope="equal", equal_exclude=("noise_b",))
    halves = split_halves(SMALL.seed, groups=group_by_user(labels["userid"].to_numpy()))
    hs = _half_sets(fake_root, labels, ms.names)
    fit = fit_blend(labels, ms, settings, progress=False, half_preds=hs, halves=halves)
    want = {n: (0.0 if n == "noise_b" else 0.5) for n in ms.names}
    for a in ACTIONS:
        b = fit.weights.actions[a]
        assert b.weights == pytest.approx(want)
        for m in SMALL.methods:
            for h in HALVES:
                assert b.half_weights[m][h] == pytest.approx(want)
    w = np.asarray([want[n] for n in ms.names], np.float32)
    for h in HALVES:
        method = fit.weights.actions[ACTIONS[0]].half_method[h]
        for a in ACTIONS:
            x = hs[h].column(a)
            if method == "rank":
                from wbdc.blend import rank_columns
                x = rank_columns(x, halves.groups)
            np.testing.assert_allclose(fit.half_preds[h][a].to_numpy(), np.clip(x @ w, 0, 1), rtol=0, atol=1e-7)
    cf = crossfit_scores(labels, fit.half_preds["A"], fit.half_preds["B"], halves)
    for a in ACTIONS:
        assert fit.weights.actions[a].heldout == pytest.approx(cf[a], abs=1e-9)
    # every model excluded: the mean of all of them
    every = fit_blend(labels, ms, dataclasses.replace(settings, equal_exclude=tuple(ms.names)), progress=False)
    assert every.weights.actions["like"].weights == pytest.approx({n: 1 / 3 for n in ms.names})


def test_logit_input_is_the_sigmoid_of_the_mean_log_odds(fake_root, world):
    """blend.methods=[logit] (the default): the equal blend of every day-14 row is the sigmoid of
    the models' mean log-odds, held out as the cross-fitted score of that mean over the
    half-chosen predictions, and the online rows likewise; one model alone comes back as it is;
    an input the blend does not know is refused in one line naming the key."""
    from wbdc.blend import LOGIT_EPS, blend_input, blend_output
    from wbdc.config import resolve_argv
    assert BlendSettings.from_config(resolve_argv([])).methods == ("logit",)
    labels, ms = _modelset(fake_root, world)
    settings = dataclasses.replace(SMALL, methods=("logit",), scope="equal", equal_exclude=())
    halves = split_halves(SMALL.seed, groups=group_by_user(labels["userid"].to_numpy()))
    hs = _half_sets(fake_root, labels, ms.names)
    fit = fit_blend(labels, ms, settings, progress=False, half_preds=hs, halves=halves)

    def plain(x):          # the models' probabilities, rows x models -> the mean log-odds' sigmoid
        p = np.clip(x.astype(np.float64), LOGIT_EPS, 1 - LOGIT_EPS)
        return _sigmoid(np.log(p / (1 - p)).mean(1))
    for a in ACTIONS:
        assert fit.weights.actions[a].method == "logit"
        np.testing.assert_allclose(fit.offline[a].to_numpy(), plain(ms.column(a)), rtol=1e-5, atol=1e-7)
        for h in HALVES:
            np.testing.assert_allclose(fit.half_preds[h][a].to_numpy(), plain(hs[h].column(a)),
                                       rtol=1e-5, atol=1e-7)
    cf = crossfit_scores(labels, fit.half_preds["A"], fit.half_preds["B"], halves)
    for a in ACTIONS:
        assert fit.weights.actions[a].heldout == pytest.approx(cf[a], abs=1e-9)
    on = open_predictions(fake_root / "models", ms.names, "online",
                          pd.DataFrame({"userid": world["ut"], "feedid": world["ft"]}), "test")
    applied = fit.weights.apply(on)
    for a in ACTIONS:
        np.testing.assert_allclose(applied[a].to_numpy(), plain(on.column(a)), rtol=1e-5, atol=1e-7)
    p = np.array([[1e-5], [0.3], [0.999]], np.float32)
    np.testing.assert_allclose(blend_output(blend_input(p, "logit", None) @ np.ones(1, np.float32), "logit"),
                               p[:, 0], rtol=1e-4)
    with pytest.raises((SystemExit, ValueError)) as e:
        BlendSettings.from_config(resolve_argv(["--set", "blend.methods=[logits]"]))
    assert "blend.methods" in str(e.value) and "\n" not in str(e.value).strip()


def test_default_scope_is_equal_without_the_baseline():
    from wbdc.config import resolve_argv
    s = BlendSettings.from_config(resolve_argv([]))
    assert s.scope == "equal" and s.equal_exclude == ("popularity",)
