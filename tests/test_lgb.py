"""LightGBM baselines and the popularity baseline.

Unit tests (down-sampling, calibration, round scaling, feature selection, popularity columns)
run on hand-built arrays; the fitting code runs in-process on a small fake FeatureStore; the
stage runs end to end on the tiny synthetic pipeline (session fixture ``tiny_root``).
"""
from __future__ import annotations

import json
import math
import os
import subprocess
import sys
from pathlib import Path

import numpy as np
import pandas as pd
import pytest

from wbdc.baselines import popularity_columns, popularity_predictions
from wbdc.lgb import (LgbSettings, UAUCEval, action_rows, calibrate, eval_period, finish_predictions,
                      fit_offline, fit_online,
                      keep_mask, load_fit_data, online_rounds, parse_actions, row_uniforms,
                      scale_rounds, select_features, union_mask)
from wbdc.metrics import (HALF_PRED_FILES, crossfit_scores, group_by_user, split_halves, uauc,
                          uauc_by_half, weighted_uauc)
from wbdc.schema import ACTIONS
from wbdc.config import default_config

REPO = Path(__file__).resolve().parents[1]
KEYS = ["userid", "feedid", "date_", "device"]


# ------------------------------------------------------------------------------ fake store

class FakeStore:
    """In-memory FeatureStore stand-in: a logistic world where a per-user x per-feed affinity
    (visible to the model as a dense column) matters beyond feed popularity."""

    def __init__(self, n_users=60, n_feeds=120, rows_per_day=1500, days=range(2, 16), seed=0):
        rng = np.random.default_rng(seed)
        self.days = list(days)
        u_vec, f_vec = rng.normal(size=(n_users, 3)), rng.normal(size=(n_feeds, 3))
        feed_pop = rng.normal(size=n_feeds)
        bias = np.array([-2.2, -2.5, -3.0, -3.2, -3.4, -3.6, -3.6])
        self._day, self._lab = {}, {}
        for d in self.days:
            u = rng.integers(0, n_users, rows_per_day)
            f = rng.integers(0, n_feeds, rows_per_day)
            aff = (u_vec[u] * f_vec[f]).sum(1)
            logit = bias[None, :] + 0.8 * feed_pop[f][:, None] + 1.0 * aff[:, None]
            p = 1 / (1 + np.exp(-logit))
            df = pd.DataFrame({
                "userid": (u + 100).astype(np.int32), "feedid": (f + 5000).astype(np.int32),
                "date_": np.full(rows_per_day, d, np.int8),
                "device": rng.integers(1, 3, rows_per_day).astype(np.int8),
                "manual_tag_1": (f % 7).astype(np.int32),
                "affinity": (aff + rng.normal(scale=0.3, size=rows_per_day)).astype(np.float32),
                "noise": rng.normal(size=rows_per_day).astype(np.float32),
            })
            for j, a in enumerate(ACTIONS):
                # per-feed popularity rates: exact over "all", noisy over the short window
                pop = 1 / (1 + np.exp(-(bias[j] + 0.8 * feed_pop[f])))
                df[f"feed_w3_rate_{a}"] = (pop * rng.uniform(0.3, 1.7, rows_per_day)).astype(np.float32)
                df[f"feed_all_rate_{a}"] = pop.astype(np.float32)
            self._day[d] = df
            if d <= 14:
                self._lab[d] = pd.DataFrame(
                    {a: (rng.random(rows_per_day) < p[:, j]).astype(np.int8) for j, a in enumerate(ACTIONS)})
        dense = ["affinity", "noise", *(f"feed_{w}_rate_{a}" for w in ("w3", "all") for a in ACTIONS)]
        self._roles = {"key": KEYS, "categorical": ["userid", "feedid", "device", "manual_tag_1"],
                       "dense": dense}
        self.manifest = {"columns": [{"name": c} for c in dense]}

    def columns(self, role):
        return list(self._roles[role])

    def cardinality(self, col):
        return int(max(df[col].max() for df in self._day.values())) + 1

    def load_day(self, d, columns=None):
        cols = list(dict.fromkeys([*KEYS, *(columns if columns is not None else self._day[d].columns)]))
        return self._day[d][cols].copy()

    def load_days(self, days, columns=None):
        return pd.concat([self.load_day(d, columns) for d in days], ignore_index=True)

    def load_labels(self, d):
        if d > 14:
            raise ValueError(f"no labels for day {d}")
        return self._lab[d].copy()


def fast_settings(**over) -> LgbSettings:
    cfg = default_config()
    cfg["data"]["seed"] = 3
    cfg["lgb"].update({
        "drop": ["userid", "feedid"], "categorical": ["device", "manual_tag_1"],
        "neg_rate": {a: (0.5 if a in ("read_comment", "like") else 0.3) for a in ACTIONS},
        "num_boost_round": 60, "early_stopping_rounds": 10,
        "params": {"learning_rate": 0.1, "num_leaves": 7, "min_data_in_leaf": 20,
                   "feature_fraction": 0.9, "bagging_fraction": 0.9, "bagging_freq": 1,
                   "deterministic": True, "force_col_wise": True, "verbosity": -1,
                   "num_threads": 1, "seed": None}})
    cfg["lgb"].update(over)
    return LgbSettings.from_config(cfg)


# ------------------------------------------------------------------------------ down-sampling

def test_keep_mask_keeps_positives_and_rate_of_negatives():
    rng = np.random.default_rng(0)
    n = 200_000
    y = (rng.random(n) < 0.05).astype(np.int8)
    u = row_uniforms(4, n, seed=11)
    for rate in (0.1, 0.2, 0.5):
        keep = keep_mask(y, u, rate)
        assert keep[y == 1].all()
        neg = y == 0
        frac = keep[neg].mean()
        sd = math.sqrt(rate * (1 - rate) / neg.sum())
        assert abs(frac - rate) < 4 * sd, (rate, frac)
    assert keep_mask(y, u, 1.0).all()


def test_row_uniforms_seeded_per_day():
    a = row_uniforms(5, 1000, seed=1)
    assert a.dtype == np.float32 and ((a >= 0) & (a < 1)).all()
    np.testing.assert_array_equal(a, row_uniforms(5, 1000, seed=1))
    assert not np.array_equal(a, row_uniforms(5, 1000, seed=2))
    assert not np.array_equal(a, row_uniforms(6, 1000, seed=1))
    # same seeded draw whatever else is loaded: the first rows do not depend on n
    np.testing.assert_array_equal(a[:10], row_uniforms(5, 10, seed=1))


def test_samples_are_nested_and_union_covers_every_action():
    rng = np.random.default_rng(1)
    labels = (rng.random((5000, len(ACTIONS))) < 0.03).astype(np.int8)
    u = row_uniforms(3, 5000, seed=0)
    rates = {a: (0.2 if i < 3 else 0.1) for i, a in enumerate(ACTIONS)}
    lo = keep_mask(labels[:, 3] * 0, u, 0.1)
    hi = keep_mask(labels[:, 3] * 0, u, 0.2)
    assert (lo <= hi).all()                         # the 0.1 sample is inside the 0.2 sample
    union = union_mask(labels, u, rates, ACTIONS)
    for a in ACTIONS:
        idx = action_rows(labels, u, a, rates[a])
        assert union[idx].all()
        assert labels[:, ACTIONS.index(a)][~union].sum() == 0   # no positive left out
    assert union.sum() == ((labels.any(1)) | (u < 0.2)).sum()


def test_hand_built_keep_mask():
    y = np.array([1, 0, 0, 1, 0, 0], np.int8)
    u = np.array([0.9, 0.05, 0.15, 0.5, 0.25, 0.1999], np.float32)
    np.testing.assert_array_equal(keep_mask(y, u, 0.2), [1, 1, 1, 1, 0, 1])
    np.testing.assert_array_equal(keep_mask(y, u, 0.1), [1, 1, 0, 1, 0, 0])


def test_calibrate_inverts_downsampling_odds():
    assert calibrate(np.array([0.5]), 0.2)[0] == pytest.approx(1 / 6)
    p = np.linspace(0.001, 0.999, 50)
    for rate in (0.1, 0.2):
        q = calibrate(p, rate)
        logit = lambda x: np.log(x / (1 - x))  # noqa: E731
        np.testing.assert_allclose(logit(q), logit(p) + np.log(rate), rtol=0, atol=1e-9)
        assert (np.diff(q) > 0).all()               # monotone: within-user order unchanged
    np.testing.assert_array_equal(calibrate(p, 1.0), p)


# ------------------------------------------------------------------------------ rounds

def test_scale_rounds():
    assert scale_rounds(100, 1000, 1080) == 108
    assert scale_rounds(100, 13, 14) == 108        # 107.69 rounds to 108
    assert scale_rounds(7, 12, 13) == 8            # 7.58
    assert scale_rounds(1, 1000, 1001) == 1
    assert scale_rounds(50, 10, 10) == 50
    with pytest.raises(ValueError, match="best_iteration"):
        scale_rounds(0, 10, 11)
    with pytest.raises(ValueError, match="n_offline"):
        scale_rounds(10, 11, 10)


def test_online_rounds_rows_and_days():
    best = {"like": 130, "follow": 20}
    n_off = {"like": 1200, "follow": 600}
    n_on = {"like": 1300, "follow": 660}
    assert online_rounds(best, n_off, n_on, 12, 13, "rows") == {"like": 141, "follow": 22}
    assert online_rounds(best, n_off, n_on, 12, 13, "days") == {"like": 141, "follow": 22}
    assert online_rounds({"like": 60}, n_off, n_on, 12, 13, "days") == {"like": 65}
    with pytest.raises(ValueError, match="round scaling"):
        online_rounds(best, n_off, n_on, 12, 13, "epochs")


# ------------------------------------------------------------------------------ settings

def test_select_features():
    spec = select_features(dense=["a", "b", "userid_x"],
                           categorical=["userid", "feedid", "device", "tag"],
                           keys=["userid", "feedid", "date_", "device"],
                           drop=["userid", "feedid"], as_categorical=["device"])
    assert spec.names == ["device", "tag", "a", "b", "userid_x"]
    assert spec.categorical == ["device"]
    with pytest.raises(ValueError, match=r"lgb.categorical lists \['a'\]"):
        select_features(["a"], ["device"], ["device"], as_categorical=["a"])


def test_parse_actions_and_settings():
    assert parse_actions("like, read_comment") == ["read_comment", "like"]
    assert parse_actions(None) == list(ACTIONS)
    with pytest.raises(ValueError, match="unknown actions"):
        parse_actions("likes")
    cfg = default_config()
    cfg["data"]["seed"] = 9
    s = LgbSettings.from_config(cfg)
    assert s.seed == 9 and s.params["seed"] == 9 and s.params["num_threads"] == (os.cpu_count() or 1)
    cfg["lgb"]["neg_rate"]["like"] = 0
    with pytest.raises(ValueError, match="neg_rate"):
        LgbSettings.from_config(cfg)


@pytest.mark.parametrize("seeds,message", [([], "non-empty list"), ([3, 3], "must differ"),
                                           (["a"], "list of integers"), (4, "list of integers")])
def test_a_bad_seed_bag_is_refused(seeds, message):
    cfg = default_config()
    cfg["lgb"]["seeds"] = seeds
    with pytest.raises(ValueError, match=rf"lgb\.seeds.*{message}"):
        LgbSettings.from_config(cfg)
    cfg["lgb"]["seeds"] = [5, 2]
    s = LgbSettings.from_config(cfg)
    assert s.fit_seeds == (5, 2)
    assert s.with_seed(2).seed == 2 and s.with_seed(2).params["seed"] == 2 and s.params["seed"] == s.seed


def test_repo_config_matches_official_rates():
    s = LgbSettings.from_config(default_config())
    assert s.neg_rate == {"read_comment": 0.2, "like": 0.2, "click_avatar": 0.2, "forward": 0.1,
                          "favorite": 0.1, "comment": 0.1, "follow": 0.1}
    assert s.params["deterministic"] is True


def test_uauc_eval_matches_metric():
    users = np.array([1, 1, 1, 2, 2, 2, 3, 3])
    y = np.array([1, 0, 0, 0, 1, 1, 0, 0])
    p = np.array([0.9, 0.1, 0.95, 0.2, 0.3, 0.1, 0.5, 0.4])
    name, value, higher = UAUCEval(y, group_by_user(users))(p, None)
    assert (name, higher) == ("uauc", True)
    assert value == pytest.approx((0.5 + 0.5) / 2)
    assert value == uauc(y, p, users)
    halves = split_halves(1, users)
    out = UAUCEval(y, halves.groups, halves)(p, None)
    assert [(n, h) for n, _, h in out] == [("uauc", True), ("uauc_A", True), ("uauc_B", True)]
    ua = uauc(y[halves.row_in_a], p[halves.row_in_a], users[halves.row_in_a])
    ub = uauc(y[~halves.row_in_a], p[~halves.row_in_a], users[~halves.row_in_a])
    assert [v for _, v, _ in out] == pytest.approx([value, ua, ub], nan_ok=True)


def test_eval_period_scores_every_round_up_to_eval_rows_then_spaces_the_rounds():
    assert eval_period(610_000, 2_000_000) == 1              # `full`'s day 14: every round
    assert eval_period(2_000_000, 2_000_000) == 1
    assert eval_period(2_000_001, 2_000_000) == 2
    assert eval_period(6_103_955, 2_000_000) == 4            # the final round's day 14
    assert eval_period(10**9, None) == 1
    cfg = default_config()
    assert LgbSettings.from_config(cfg).eval_rows == 2_000_000
    cfg["lgb"]["eval_rows"] = 0
    with pytest.raises(ValueError, match=r"lgb\.eval_rows must be >= 1 or null, got 0"):
        LgbSettings.from_config(cfg)


def test_a_spaced_uauc_eval_scores_rounds_one_and_every_kth_after():
    users = np.array([1, 1, 1, 2, 2, 2, 3, 3])
    y = np.array([1, 0, 0, 0, 1, 1, 0, 0])
    p = np.array([0.9, 0.1, 0.95, 0.2, 0.3, 0.1, 0.5, 0.4])
    halves = split_halves(1, users)
    ev = UAUCEval(y, halves.groups, halves, every=3)
    scored = [not math.isnan(ev(p, None)[0][1]) for _ in range(8)]
    assert scored == [True, False, False, True, False, False, True, False]
    one = UAUCEval(y, group_by_user(users), every=2)
    assert [math.isnan(one(p, None)[1]) for _ in range(3)] == [False, True, False]


def test_spaced_evaluation_stops_early_at_scored_rounds_and_counts_patience_in_rounds(fake_fit):
    """With day 14 scored every 3rd round (``lgb.eval_rows`` under its rows), every best
    iteration (all users and each half) is a scored round, the history holds NaN elsewhere, and
    the fit stops once ``early_stopping_rounds`` rounds passed without a better scored value."""
    fs, _, data, full_off, _ = fake_fit
    settings = fast_settings(eval_rows=-(-len(data.valid_rows) // 3))
    k = eval_period(len(data.valid_rows), settings.eval_rows)
    assert k == 3
    off = fit_offline(data, settings, ["read_comment", "like"], progress=False)
    stopped = 0
    for a in ("read_comment", "like"):
        h = off.history[off.history["action"] == a]
        rounds = h["round"].to_numpy()
        scored = ~np.isnan(h["uauc"].to_numpy())
        np.testing.assert_array_equal(scored, (rounds - 1) % k == 0)
        assert np.isnan(h.loc[~scored, ["uauc_A", "uauc_B"]].to_numpy()).all()
        best = off.best_iteration[a]
        assert (best - 1) % k == 0 and best == int(np.nanargmax(h["uauc"].to_numpy())) + 1
        for half in ("A", "B"):
            assert (off.half_best_iteration[half][a] - 1) % k == 0
        # the scored values are those of the every-round fit at the same rounds (same trees)
        ref = full_off.history[full_off.history["action"] == a]["uauc"].to_numpy()
        n = min(len(ref), len(rounds))
        np.testing.assert_allclose(h["uauc"].to_numpy()[:n][scored[:n]], ref[:n][scored[:n]])
        stopped += len(rounds) < settings.num_boost_round
        if len(rounds) < settings.num_boost_round:            # stopped early: patience in rounds
            assert len(rounds) - best == settings.early_stopping_rounds
    assert stopped                                            # the patience rule was exercised


# ------------------------------------------------------------------------------ popularity

def test_popularity_columns():
    dense = ["user_all_rate_like", "feed_w3_rate_like", "feed_all_rate_like", "feed_w7_rate_like",
             "feed_w7_rate_follow", "feed_w3_rate_follow"]
    assert popularity_columns(dense, actions=["like", "follow"]) == {
        "like": "feed_all_rate_like", "follow": "feed_w7_rate_follow"}
    assert popularity_columns(dense, "feed_w3_rate_{action}", actions=["like"]) == {"like": "feed_w3_rate_like"}
    with pytest.raises(KeyError, match="no per-feed rate column for 'comment'"):
        popularity_columns(dense, actions=["comment"])
    with pytest.raises(KeyError, match=r"\(popularity.template\)"):
        popularity_columns(dense, "feed_w5_rate_{action}", actions=["like"])


# ------------------------------------------------------------------------------ fitting (fake store)

@pytest.fixture(scope="module")
def fake_fit():
    fs = FakeStore()
    settings = fast_settings()
    data = load_fit_data(fs, settings, progress=False)
    off = fit_offline(data, settings, ACTIONS, progress=False)
    on = fit_online(data, fs, settings, ACTIONS, best_iteration=off.best_iteration, progress=False)
    return fs, settings, data, off, on


def test_fake_fit_loads_exactly_the_union_of_samples(fake_fit):
    fs, settings, data, off, _ = fake_fit
    assert data.days == list(range(2, 14))
    expect = 0
    for d in data.days:
        lab = fs.load_labels(d).to_numpy()
        expect += union_mask(lab, row_uniforms(d, len(lab), settings.seed), settings.neg_rate, ACTIONS).sum()
    assert len(data.rows) == expect
    assert len(data.valid_rows) == len(fs.load_day(14))
    assert data.spec.names[:2] == ["device", "manual_tag_1"] and "userid" not in data.spec.names
    # each action trained on its own sample: positives + its share of negatives
    for a in ACTIONS:
        j = ACTIONS.index(a)
        assert off.train_rows[a] == keep_mask(data.rows.labels[:, j], data.rows.u, settings.neg_rate[a]).sum()


def test_fake_fit_predictions(fake_fit):
    fs, settings, data, off, on = fake_fit
    day14 = fs.load_day(14)
    np.testing.assert_array_equal(off.preds["userid"], day14["userid"])
    np.testing.assert_array_equal(off.preds["feedid"], day14["feedid"])
    test = fs.load_day(15)
    np.testing.assert_array_equal(on.preds["feedid"], test["feedid"])
    for df in (off.preds, on.preds):
        vals = df[list(ACTIONS)].to_numpy()
        assert np.isfinite(vals).all() and (vals >= 0).all() and (vals <= 1).all()
    # the in-sample scores are the project's metric on these predictions
    ref = weighted_uauc(fs.load_labels(14), off.preds, day14["userid"].to_numpy())
    assert off.scores_insample == pytest.approx(ref)
    # best iteration = argmax of the recorded history; online rounds scaled by the row ratio
    for a in ACTIONS:
        h = off.history.loc[off.history["action"] == a, "uauc"].to_numpy()
        assert off.best_iteration[a] == int(np.argmax(h)) + 1
        assert on.rounds[a] == scale_rounds(off.best_iteration[a], off.train_rows[a], on.train_rows[a])
        assert on.boosters[a].current_iteration() == on.rounds[a]
    imp = off.importance
    assert set(imp["action"]) == set(ACTIONS) and len(imp) == len(ACTIONS) * len(data.spec.names)
    top = imp[imp["action"] == "read_comment"].sort_values("gain").iloc[-1]["feature"]
    assert top == "affinity"


def test_fake_fit_early_stopping_picks_per_half(fake_fit):
    """Each user half picks the first best round of its own uAUC history (the feval records
    both halves every round) and the day-14 rows are predicted at that round."""
    fs, settings, data, off, _ = fake_fit
    assert settings.halves_seed == 3                     # data.seed
    halves = split_halves(3, fs.load_day(14)["userid"].to_numpy())
    np.testing.assert_array_equal(halves.in_a, data.halves.in_a)
    differ = 0
    for a in ACTIONS:
        h = off.history[off.history["action"] == a]
        j = ACTIONS.index(a)
        y = data.valid_rows.labels[:, j]
        for half in ("A", "B"):
            curve = h[f"uauc_{half}"].to_numpy()
            assert off.half_best_iteration[half][a] == int(np.argmax(curve)) + 1
            it = off.half_best_iteration[half][a]
            raw = data.valid_rows.X.predict(off.boosters[a], [it])[it]
            np.testing.assert_allclose(off.half_preds[half][a].to_numpy(),
                                       finish_predictions(raw, settings, a), rtol=1e-6)
            differ += off.half_best_iteration[half][a] != off.best_iteration[a]
        # the recorded half values are the uAUCs of each half's users at that round
        it = off.half_best_iteration["A"][a]
        raw = data.valid_rows.X.predict(off.boosters[a], [it])[it]
        assert uauc_by_half(y, raw, halves)["A"] == pytest.approx(h["uauc_A"].to_numpy()[it - 1])
    assert differ > 0          # the halves do not simply copy the all-users choice


def test_fake_fit_reported_score_is_the_mean_of_the_out_of_half_uaucs(fake_fit):
    fs, _, data, off, _ = fake_fit
    labels = fs.load_labels(14)
    users = fs.load_day(14)["userid"].to_numpy()
    in_a = data.halves.row_in_a
    for a in ACTIONS:
        y = labels[a].to_numpy()
        on_b = uauc(y[~in_a], off.half_preds["A"][a].to_numpy()[~in_a], users[~in_a])
        on_a = uauc(y[in_a], off.half_preds["B"][a].to_numpy()[in_a], users[in_a])
        assert off.scores[a] == pytest.approx((on_a + on_b) / 2, abs=1e-12)
    assert off.scores == pytest.approx(
        crossfit_scores(labels, off.half_preds["A"], off.half_preds["B"], data.halves))


def test_fake_fit_beats_popularity(fake_fit):
    fs, _, _, off, _ = fake_fit
    pop = popularity_predictions(fs, 14, popularity_columns(fs.columns("dense")))
    pop_scores = weighted_uauc(fs.load_labels(14), pop, pop["userid"].to_numpy())
    assert off.scores["weighted"] > pop_scores["weighted"] + 0.05


def test_fake_fit_is_deterministic_and_subset_trains_alone(fake_fit):
    fs, _, _, off, _ = fake_fit
    settings = fast_settings()
    data = load_fit_data(fs, settings, progress=False)
    again = fit_offline(data, settings, ["like"], progress=False)
    assert list(again.scores) == ["like", "weighted"]
    # the rows loaded do not depend on the actions trained: a one-action run equals the full one
    assert again.best_iteration["like"] == off.best_iteration["like"]
    np.testing.assert_array_equal(again.preds["like"], off.preds["like"])


def test_online_without_rounds_is_an_error(fake_fit):
    fs, settings, data, _, _ = fake_fit
    with pytest.raises(ValueError, match="--rounds"):
        fit_online(data, fs, settings, ["like"], best_iteration={}, progress=False)
    fixed = fit_online(data, fs, settings, ["like"], fixed_rounds=5, progress=False)
    assert fixed.rounds == {"like": 5} and fixed.boosters["like"].current_iteration() == 5


# ------------------------------------------------------------------------------ the stage on tiny

def _stage(root: Path, *args: str) -> subprocess.CompletedProcess:
    cmd = [sys.executable, str(REPO / "src" / "stages" / "train_lgb.py"), "--root", str(root),
           "--preset", "tiny", "--no-progress", *args]
    return subprocess.run(cmd, capture_output=True, text=True, timeout=900,
                          env={**os.environ, "PYTHONHASHSEED": "0"})


def _own_root(tiny_root: Path, tmp: Path) -> Path:
    """A fresh artifact root reading the shared tiny data/ and features/ (read-only) and
    writing its own models/."""
    tmp.mkdir(parents=True, exist_ok=True)
    for name in ("data", "features"):
        (tmp / name).symlink_to(tiny_root / name, target_is_directory=True)
    return tmp


@pytest.fixture(scope="module")
def tiny_lgb(tiny_root, tmp_path_factory):
    from conftest import TINY_SEED
    root = _own_root(tiny_root, tmp_path_factory.mktemp("lgb_tiny") / "root")
    r = _stage(root, "--seed", str(TINY_SEED))
    assert r.returncode == 0, r.stderr[-4000:]
    p = subprocess.run([sys.executable, str(REPO / "src" / "stages" / "train_popularity.py"),
                        "--root", str(root), "--preset", "tiny", "--seed", str(TINY_SEED)],
                       capture_output=True, text=True, timeout=300)
    assert p.returncode == 0, p.stderr[-4000:]
    return root, r


def test_tiny_stage_writes_the_artifacts(tiny_lgb):
    root, r = tiny_lgb
    out = root / "models" / "lgb"
    for a in ACTIONS:
        for kind in ("offline", "online"):
            assert (out / f"model_{kind}_{a}.txt").stat().st_size > 0
    scores = json.loads((out / "scores.json").read_text())
    for key in ("offline", "offline_insample", "best_iteration", "half_best_iteration",
                "online_rounds"):
        assert key in scores
    assert "popularity" not in scores  # the popularity baseline is its own stage
    assert list(scores["offline"]) == [*ACTIONS, "weighted"]
    assert all(scores["best_iteration"][a] >= 1 for a in ACTIONS)
    for a in ACTIONS:
        assert scores["online_rounds"][a] == scale_rounds(
            scores["best_iteration"][a], scores["train_rows"]["offline"][a], scores["train_rows"]["online"][a])
    imp = pd.read_csv(out / "importance.csv")
    assert list(imp.columns) == ["feature", "action", "gain"] and set(imp["action"]) == set(ACTIONS)
    cfg = json.loads((out / "config.json").read_text())
    assert cfg["lgb"]["params"]["deterministic"] is True
    info = json.loads((out / "run_info_train_lgb.json").read_text())
    assert info["stage"] == "train_lgb"
    assert "[train_lgb] done in" in r.stderr


def test_tiny_predictions_align_and_are_probabilities(tiny_lgb):
    from wbdc.features.store import FeatureStore
    from wbdc.paths import Paths
    root, _ = tiny_lgb
    fs = FeatureStore(Paths.at(root))
    day14 = fs.load_day(14, columns=[])
    test = pd.read_parquet(root / "data" / "prepared" / "test.parquet")
    for model in ("lgb", "popularity"):
        off = pd.read_parquet(root / "models" / model / "pred_offline.parquet")
        on = pd.read_parquet(root / "models" / model / "pred_online.parquet")
        assert list(off.columns) == ["userid", "feedid", *ACTIONS] == list(on.columns)
        np.testing.assert_array_equal(off["userid"], day14["userid"])
        np.testing.assert_array_equal(off["feedid"], day14["feedid"])
        np.testing.assert_array_equal(on["userid"], test["userid"])
        np.testing.assert_array_equal(on["feedid"], test["feedid"])
        for df in (off, on):
            v = df[list(ACTIONS)].to_numpy()
            assert np.isfinite(v).all() and (v >= 0).all() and (v <= 1).all()
    # the written scores are the project's metric on the written predictions: in-sample on
    # pred_offline, cross-fitted on the per-half files (popularity: both equal its predictions)
    from conftest import TINY_SEED
    labels = fs.load_labels(14)
    for model in ("lgb", "popularity"):
        d = root / "models" / model
        off = pd.read_parquet(d / "pred_offline.parquet")
        sel = {h: pd.read_parquet(d / f) for h, f in HALF_PRED_FILES.items()}
        scores = json.loads((d / "scores.json").read_text())
        ref = weighted_uauc(labels, off, off["userid"].to_numpy())
        assert scores["offline_insample"] == pytest.approx(ref)
        halves = split_halves(TINY_SEED, off["userid"].to_numpy())
        assert scores["offline"] == pytest.approx(crossfit_scores(labels, sel["A"], sel["B"], halves))
        if model == "popularity":
            for h in sel:
                pd.testing.assert_frame_equal(sel[h], off)


def test_tiny_lgb_scores_are_consistent(tiny_lgb):
    """On tiny the day-14 halves are a few hundred users, so LightGBM's honest (cross-fitted)
    figure does not beat the popularity baseline (seed 7: 0.527 vs 0.531; in-sample 0.594):
    that comparison lives in the fake-store test, which has signal to spare.  Here: both
    figures are written per action and the per-half iterations lie within the rounds trained."""
    root, _ = tiny_lgb
    scores = json.loads((root / "models" / "lgb" / "scores.json").read_text())
    hist = pd.read_csv(root / "models" / "lgb" / "eval_history.csv")
    assert list(hist.columns) == ["action", "round", "uauc", "uauc_A", "uauc_B"]
    for a in ACTIONS:
        rounds = int(hist.loc[hist["action"] == a, "round"].max())
        for h in ("A", "B"):
            assert 1 <= scores["half_best_iteration"][h][a] <= rounds
        assert 0.0 <= scores["offline"][a] <= 1.0 and 0.0 <= scores["offline_insample"][a] <= 1.0


def test_tiny_online_mode_reuses_the_offline_iterations(tiny_lgb, tmp_path):
    """--mode online reads the best iterations from scores.json and, being deterministic,
    reproduces the online predictions of the full run bit for bit."""
    import shutil

    from conftest import TINY_SEED
    root, _ = tiny_lgb
    own = _own_root(root, tmp_path / "root")
    (own / "models" / "lgb").mkdir(parents=True)
    shutil.copy(root / "models" / "lgb" / "scores.json", own / "models" / "lgb" / "scores.json")
    r = _stage(own, "--seed", str(TINY_SEED), "--mode", "online", "--actions", "like,follow")
    assert r.returncode == 0, r.stderr[-4000:]
    new = pd.read_parquet(own / "models" / "lgb" / "pred_online.parquet")
    ref = pd.read_parquet(root / "models" / "lgb" / "pred_online.parquet")
    assert list(new.columns) == ["userid", "feedid", "like", "follow"]
    pd.testing.assert_frame_equal(new, ref[list(new.columns)])
    scores = json.loads((own / "models" / "lgb" / "scores.json").read_text())
    old = json.loads((root / "models" / "lgb" / "scores.json").read_text())
    assert scores["offline"] == old["offline"]               # kept from the offline run
    assert scores["online_rounds"] == {a: old["online_rounds"][a] for a in ("like", "follow")}


def _offline_trees_on_the_test_day(root: Path, actions) -> pd.DataFrame:
    """A plain recomputation: each model_offline_<action>.txt (trimmed to its best iteration)
    over the day-15 feature table read whole, calibrated at the run's neg_rate."""
    import lightgbm as lgb
    scores = json.loads((root / "models" / "lgb" / "scores.json").read_text())
    day = pd.concat([pd.read_parquet(f) for f in sorted((root / "features" / "day=15").glob("*.parquet"))],
                    ignore_index=True)
    out = day[["userid", "feedid"]].copy()
    for a in actions:
        b = lgb.Booster(model_file=str(root / "models" / "lgb" / f"model_offline_{a}.txt"))
        out[a] = calibrate(b.predict(day[b.feature_name()].to_numpy(np.float64)), scores["neg_rate"][a])
    return out


def test_online_predict_offline_and_both_use_the_offline_trees(tiny_lgb, tmp_path):
    """lgb.online_predict: offline writes the offline trees' test predictions and refits
    nothing (--mode online reads no training row and calibrates at the rates the trees were
    fitted with, recorded in scores.json, whatever lgb.neg_rate now says); both writes the mean
    of those and the refit's (the default run's, reproduced); a value outside refit / offline /
    both, or a scores.json without the fit's rates, is refused in one line."""
    import shutil

    from conftest import TINY_SEED
    root, _ = tiny_lgb
    acts = ["like", "follow"]
    ref = pd.read_parquet(root / "models" / "lgb" / "pred_online.parquet")
    plain = ref[["userid", "feedid"]].merge(_offline_trees_on_the_test_day(root, acts),
                                            on=["userid", "feedid"], how="left")
    assert plain[acts].notna().all().all()
    for mode in ("offline", "both"):
        own = _own_root(root, tmp_path / mode)
        (own / "models" / "lgb").mkdir(parents=True)
        for f in [root / "models" / "lgb" / "scores.json",
                  *(root / "models" / "lgb").glob("model_offline_*.txt")]:
            shutil.copy(f, own / "models" / "lgb" / f.name)
        # offline: a changed rate in the config must not recalibrate the existing trees
        moved = ["--set", "lgb.neg_rate.like=0.05", "--set", "lgb.neg_rate.follow=0.5"] if mode == "offline" else []
        r = _stage(own, "--seed", str(TINY_SEED), "--mode", "online", "--actions", ",".join(acts),
                   "--set", f"lgb.online_predict={mode}", *moved)
        assert r.returncode == 0, r.stderr[-4000:]
        info = json.loads((own / "models" / "lgb" / "run_info_train_lgb.json").read_text())
        assert (info["loaded_train_rows"] == 0) == (mode == "offline"), info["loaded_train_rows"]
        new = pd.read_parquet(own / "models" / "lgb" / "pred_online.parquet")
        pd.testing.assert_frame_equal(new[["userid", "feedid"]], ref[["userid", "feedid"]])
        want = plain[acts] if mode == "offline" else (plain[acts] + ref[acts].astype(np.float64)) / 2
        np.testing.assert_allclose(new[acts].to_numpy(np.float64), want.to_numpy(), rtol=0, atol=1e-6)
        assert not np.allclose(new[acts].to_numpy(), ref[acts].to_numpy())   # not the refit's
        scores = json.loads((own / "models" / "lgb" / "scores.json").read_text())
        assert scores["online_predict"] == mode
        refits = sorted(p.name for p in (own / "models" / "lgb").glob("model_online_*.txt"))
        assert refits == ([] if mode == "offline" else sorted(f"model_online_{a}.txt" for a in acts))
        assert ("online" in scores.get("train_rows", {})) == (mode == "both")
    r = _stage(own, "--mode", "online", "--set", "lgb.online_predict=refitt")
    assert r.returncode == 2 and r.stderr.strip().count("\n") == 0, r.stderr
    assert "lgb.online_predict" in r.stderr and "refit" in r.stderr
    bare = json.loads((own / "models" / "lgb" / "scores.json").read_text())
    del bare["neg_rate"]
    (own / "models" / "lgb" / "scores.json").write_text(json.dumps(bare))
    r = _stage(own, "--mode", "online", "--actions", ",".join(acts), "--set", "lgb.online_predict=offline")
    assert r.returncode == 2 and r.stderr.strip().count("\n") == 0, r.stderr
    assert "scores.json" in r.stderr and "neg_rate" in r.stderr and "--mode offline" in r.stderr


def test_a_seed_bag_is_the_mean_of_its_seeds_scored_cross_fitted(tiny_lgb, tmp_path):
    """lgb.seeds=[s1, s2]: each seed's models are those of a run with that seed alone, the
    prediction files are the seeds' mean, the honest score is the cross-fitted score of the
    mean selections, the curve gives each seed alone and the average; --mode online refits each
    seed for its own best iterations."""
    import shutil

    from conftest import TINY_SEED
    from wbdc.features.store import FeatureStore
    from wbdc.metrics import mean_predictions
    from wbdc.paths import Paths
    root, _ = tiny_lgb
    acts = ["read_comment", "like"]
    bag = _own_root(root, tmp_path / "bag")
    r = _stage(bag, "--seed", str(TINY_SEED), "--actions", ",".join(acts), "--set", f"lgb.seeds=[{TINY_SEED},5]")
    assert r.returncode == 0, r.stderr[-4000:]
    assert "seed 5 (2 of 2 in lgb.seeds)" in r.stderr and "by seeds averaged" in r.stderr
    five = _own_root(root, tmp_path / "five")
    r = _stage(five, "--seed", str(TINY_SEED), "--actions", ",".join(acts), "--set", "lgb.params.seed=5")
    assert r.returncode == 0, r.stderr[-4000:]
    out, one, other = bag / "models" / "lgb", root / "models" / "lgb", five / "models" / "lgb"
    for a in acts:
        for kind in ("offline", "online"):
            assert not (out / f"model_{kind}_{a}.txt").exists()
            assert (out / f"model_{kind}_{a}_seed{TINY_SEED}.txt").read_text() == (one / f"model_{kind}_{a}.txt").read_text()
            assert (out / f"model_{kind}_{a}_seed5.txt").read_text() == (other / f"model_{kind}_{a}.txt").read_text()
    assert not np.allclose(pd.read_parquet(one / "pred_offline.parquet")["like"],
                           pd.read_parquet(other / "pred_offline.parquet")["like"])   # two models
    for f in ("pred_offline.parquet", *HALF_PRED_FILES.values(), "pred_online.parquet"):
        ref = mean_predictions([pd.read_parquet(one / f)[["userid", "feedid", *acts]], pd.read_parquet(other / f)])
        pd.testing.assert_frame_equal(pd.read_parquet(out / f), ref)
    scores = json.loads((out / "scores.json").read_text())
    alone = json.loads((other / "scores.json").read_text())
    labels = FeatureStore(Paths.at(root)).load_labels(14)
    sel = {h: pd.read_parquet(out / f) for h, f in HALF_PRED_FILES.items()}
    halves = split_halves(TINY_SEED, sel["A"]["userid"].to_numpy())
    assert scores["offline"] == pytest.approx(crossfit_scores(labels[acts], sel["A"], sel["B"], halves))
    curve = scores["seeds"]
    assert [p["seed"] for p in curve] == [TINY_SEED, 5]
    assert curve[1]["alone"] == round(alone["offline"]["weighted"], 6)
    assert curve[1]["average"] == round(scores["offline"]["weighted"], 6)
    assert scores["seed_best_iteration"]["5"] == alone["best_iteration"]
    assert scores["seed_online_rounds"]["5"] == alone["online_rounds"]
    # --mode online: each seed refits for its own best iterations, the same files again
    again = _own_root(root, tmp_path / "again")
    (again / "models" / "lgb").mkdir(parents=True)
    shutil.copy(out / "scores.json", again / "models" / "lgb" / "scores.json")
    r = _stage(again, "--seed", str(TINY_SEED), "--actions", ",".join(acts), "--mode", "online",
               "--set", f"lgb.seeds=[{TINY_SEED},5]")
    assert r.returncode == 0, r.stderr[-4000:]
    pd.testing.assert_frame_equal(pd.read_parquet(again / "models" / "lgb" / "pred_online.parquet"),
                                  pd.read_parquet(out / "pred_online.parquet"))
    r = _stage(again, "--seed", str(TINY_SEED), "--actions", ",".join(acts), "--mode", "online",
               "--set", f"lgb.seeds=[{TINY_SEED},6]")
    assert r.returncode == 2 and r.stderr.strip().count("\n") == 0
    assert "no offline best iteration for ['seed 6: read_comment', 'seed 6: like']" in r.stderr


def test_stage_errors_are_one_line(tiny_root, tmp_path):
    r = _stage(tmp_path / "empty")
    assert r.returncode == 2
    assert r.stderr.strip().count("\n") == 0
    assert "features/manifest.json: missing" in r.stderr and "features stage" in r.stderr
    own = _own_root(tiny_root, tmp_path / "root")
    r = _stage(own, "--mode", "online")
    assert r.returncode == 2 and r.stderr.strip().count("\n") == 0
    assert "models/lgb/scores.json: missing" in r.stderr and "--rounds" in r.stderr
    r = _stage(own, "--actions", "likes")
    assert r.returncode != 0 and "unknown actions ['likes']" in r.stderr


# ------------------------------------------------------------------------------ streaming from the store

def test_store_rows_read_like_the_matrix_they_stand_for(fake_fit):
    """StoreRows (the LightGBM Sequence over the store): single rows, slices across blocks and
    block-wise predictions equal the float32 matrix of the same rows, cached or not."""
    from wbdc.lgb import StoreRows
    fs, settings, data, off, _ = fake_fit
    names = data.spec.names
    X = np.concatenate([fs.load_day(b.day, names)[names].to_numpy(np.float32)[b.rows] for b in data.rows.X.blocks])
    for cache in (0.0, 1e12):
        seq = StoreRows(fs, names, data.rows.X.blocks, cache_bytes=cache)
        assert len(seq) == len(X) and seq.keep_all == (cache > 0)
        np.testing.assert_array_equal(seq[0], X[0])
        assert seq[0].dtype == np.float64                  # LightGBM's bin sample needs doubles
        edge = int(seq.offsets[1])
        np.testing.assert_array_equal(seq[edge - 3:edge + 5], X[edge - 3:edge + 5])
        np.testing.assert_array_equal(seq[len(X) - 2], X[-2])
        pred = seq.predict(off.boosters["like"], [5])[5]
        np.testing.assert_array_equal(pred, off.boosters["like"].predict(X, num_iteration=5))
        # after a pass the last decoded block is not held on, unless every block is kept
        assert (len(seq._cache) == 0) == (cache == 0) and len(seq._cache) in (0, len(seq.blocks))


def test_streamed_dataset_trains_the_model_of_the_in_memory_matrix(fake_fit):
    """The Dataset binned from the store block by block equals one binned from the whole float
    matrix: the same model, tree for tree."""
    import lightgbm as lgb
    from wbdc.lgb import _dataset_params, action_dataset, action_rows, train_booster
    fs, settings, data, _, _ = fake_fit
    names = data.spec.names
    X = np.concatenate([fs.load_day(b.day, names)[names].to_numpy(np.float32)[b.rows] for b in data.rows.X.blocks])
    mem = lgb.Dataset(X, label=np.zeros(len(X), np.float32), feature_name=list(names),
                      categorical_feature=list(data.spec.categorical), params=_dataset_params(settings.params),
                      free_raw_data=True).construct()
    rate, j = settings.neg_rate["like"], ACTIONS.index("like")
    idx = action_rows(data.rows.labels, data.rows.u, "like", rate)
    subset = mem.subset(idx).construct()          # the whole matrix binned, then cut to the action
    subset.set_label(data.rows.labels[idx, j].astype(np.float32))
    streamed = action_dataset([data.rows.X], data.rows.labels, data.rows.u, "like", rate, data.spec,
                              settings.params, data.base)
    assert data.base.num_data() == 1 and streamed.num_data() == len(idx)
    models = [train_booster(settings.params, ds, 15, progress=False).model_to_string() for ds in (subset, streamed)]
    assert models[0] == models[1]


@pytest.mark.parametrize("sample_cnt,min_leaf", [(500, 20), (300, 50), (2000, 20)])
def test_bins_of_the_sampled_rows_alone_train_the_model_of_every_row_binned(sample_cnt, min_leaf):
    """The bin reference built from the rows LightGBM samples (fewer than the rows: nothing else
    is binned; with 2,000 of 12,521 rows the pre-filter would count, so every row is binned) is
    the one of the Dataset of every row (the same Sequence binned whole, as before): each
    action's model is the same, tree for tree."""
    import dataclasses

    from wbdc.lgb import _dataset, action_dataset, bin_reference, train_booster
    fs = FakeStore()
    s0 = fast_settings()
    settings = dataclasses.replace(s0, params={**s0.params, "bin_construct_sample_cnt": sample_cnt,
                                               "min_data_in_leaf": min_leaf})
    data = load_fit_data(fs, settings, progress=False)
    assert len(data.rows) > 4 * sample_cnt          # the sample is a small part of the rows
    whole = bin_reference(_dataset(data.rows.X, len(data.rows), data.spec, settings.params),
                          data.rows.X, data.spec, settings.params)
    assert data.base.num_data() == 1 and data.base.params["min_data_in_leaf"] == min_leaf
    for a in ("read_comment", "follow"):
        models = [train_booster(settings.params,
                                action_dataset([data.rows.X], data.rows.labels, data.rows.u, a,
                                               settings.neg_rate[a], data.spec, settings.params, ref),
                                15, progress=False).model_to_string()
                  for ref in (whole, data.base)]
        assert models[0] == models[1]


def test_the_sampled_reference_keeps_the_pre_filter_of_every_row():
    """LightGBM's pre-filter drops a feature no split leaves min_data_in_leaf (20 for a Sequence)
    rows on both sides of, counted on the sample scaled to the rows: with 500 sampled of 20,000
    rows the count is 0, so a column set in 1% of the rows is kept; the bins of the 500 sampled
    rows alone keep it too (pre-filter off), where with the filter on they would drop it."""
    import lightgbm as lgb
    from wbdc.lgb import FeatureSpec, _dataset, bin_reference, sample_reference

    class ArrayRows(lgb.Sequence):
        batch_size = 4096

        def __init__(self, a):
            self.a = a

        def __len__(self):
            return len(self.a)

        def __getitem__(self, i):
            return self.a[i]

        def take(self, idx):
            return ArrayRows(self.a[idx])

    rng = np.random.default_rng(0)
    n = 20_000
    a = np.zeros((n, 2), np.float64)
    a[:, 0] = rng.normal(size=n)
    a[rng.random(n) < 0.01, 1] = 1.0
    X = ArrayRows(a)
    spec = FeatureSpec(["dense", "rare"], [])
    params = {"bin_construct_sample_cnt": 500, "seed": 1, "verbosity": -1, "num_threads": 1}
    whole = bin_reference(_dataset(X, n, spec, params), X, spec, params)
    sampled = sample_reference(X, spec, params)
    filtered = _dataset(X.take(np.arange(500)), 500, spec, params)
    bins = [[ds.feature_num_bin(i) for i in range(2)] for ds in (whole, sampled, filtered)]
    assert bins[0] == bins[1] and bins[0][1] == 2
    assert bins[2][1] < 2           # the check can fail: with the filter on the column is dropped


def test_lightgbm_on_three_buckets_equals_one(tiny_root, tiny_root_3_buckets):
    """The tiny preset's store in one part per day and in three user buckets (session
    fixtures), read without any cache: the same day-14 and test predictions."""
    from wbdc.config import resolve_argv
    from wbdc.features.store import FeatureStore
    from wbdc.paths import Paths
    cfg = resolve_argv(["--preset", "tiny", "--seed", "7", "--set", "lgb.num_boost_round=15",
                        "--set", "lgb.early_stopping_rounds=5"])
    settings = LgbSettings.from_config(cfg)
    out = []
    for r in (tiny_root, tiny_root_3_buckets[0]):
        fs = FeatureStore(Paths.at(r))
        data = load_fit_data(fs, settings, progress=False, cache_bytes=0)
        off = fit_offline(data, settings, ["read_comment", "like"], progress=False)
        on = fit_online(data, fs, settings, ["read_comment", "like"], best_iteration=off.best_iteration,
                        progress=False)
        out.append((len(fs.parts(14)), off.preds, on.preds, off.scores))
    assert (out[0][0], out[1][0]) == (1, 3)
    pd.testing.assert_frame_equal(out[0][1], out[1][1], check_exact=True)
    pd.testing.assert_frame_equal(out[0][2], out[1][2], check_exact=True)
    assert out[0][3] == out[1][3]


def test_action_rows_read_through_the_kept_blocks_equal_rows_read_again(fake_fit):
    """With every decoded block kept (the stage's choice for small data), an action's rows are cut
    from the kept blocks; without, they are read from the store again: the same matrix."""
    from wbdc.lgb import StoreRows, action_rows
    fs, settings, data, _, _ = fake_fit
    idx = action_rows(data.rows.labels, data.rows.u, "follow", settings.neg_rate["follow"])
    kept = StoreRows(fs, data.spec.names, data.rows.X.blocks, cache_bytes=1e12)
    again = StoreRows(fs, data.spec.names, data.rows.X.blocks, cache_bytes=0)
    a, b = kept.take(idx), again.take(idx)
    assert kept.keep_all and not again.keep_all and len(a) == len(b) == len(idx)
    np.testing.assert_array_equal(a[0:len(a)], b[0:len(b)])
    np.testing.assert_array_equal(a[0:len(a)], kept[0:len(kept)][idx])


def test_a_part_read_in_batches_equals_the_part_read_whole(tiny_root_3_buckets, monkeypatch):
    """Day 14 and the test rows are read part by part, each part a batch of rows at a time into
    its place (the part's table is never held whole): the same matrix as each part read whole,
    with batches that cut across the parts' row groups."""
    from wbdc.config import resolve_argv
    from wbdc.features.store import FeatureStore
    from wbdc.lgb import StoreRows, feature_spec, load_day_rows
    from wbdc.paths import Paths
    fs = FeatureStore(Paths.at(tiny_root_3_buckets[0]))
    settings = LgbSettings.from_config(resolve_argv(["--preset", "tiny", "--seed", "7"]))
    names = feature_spec(fs, settings).names
    monkeypatch.setattr(StoreRows, "READ_ROWS", 97)
    for d in (14, 15):
        rows, keys = load_day_rows(fs, d, names, settings, cache_bytes=0)
        n_parts = len(fs.parts(d))
        whole = np.concatenate([fs.read_part(d, p, names)[names].to_numpy(np.float32)
                                for p in range(n_parts)])
        assert n_parts == 3 and all(len(b.rows) > 97 for b in rows.X.blocks)
        np.testing.assert_array_equal(rows.X[0:len(rows.X)], whole)
        assert len(keys) == len(whole)


def test_days_decoded_in_pieces_train_the_models_of_whole_days(tiny_root_3_buckets, monkeypatch):
    """A day's sampled rows are decoded a piece at a time (``PIECE_ROWS`` consecutive rows, each
    read from the row groups that can hold it), not the whole day's sample at once: the same
    sequence of rows, so the same bins, models and day-14 predictions as whole days."""
    from wbdc.config import resolve_argv
    from wbdc.features.store import FeatureStore
    from wbdc.lgb import StoreRows
    from wbdc.paths import Paths
    fs = FeatureStore(Paths.at(tiny_root_3_buckets[0]))
    cfg = resolve_argv(["--preset", "tiny", "--seed", "7", "--set", "lgb.num_boost_round=12",
                        "--set", "lgb.early_stopping_rounds=4"])
    settings = LgbSettings.from_config(cfg)
    runs, real = [], fs._batches
    for piece in (1 << 30, 97):
        monkeypatch.setattr(StoreRows, "PIECE_ROWS", piece)
        read = []
        monkeypatch.setattr(fs, "_batches", lambda *a, **k: (read.append(b.num_rows) or b for b in real(*a, **k)))
        data = load_fit_data(fs, settings, progress=False, cache_bytes=0)
        off = fit_offline(data, settings, ["read_comment", "like"], progress=False)
        runs.append((data.rows.X, off, sum(read)))
    (whole, a, read_whole), (pieces, b, read_pieces) = runs
    assert len(pieces.blocks) > 2 * len(whole.blocks) and max(len(x.rows) for x in pieces.blocks) <= 97
    np.testing.assert_array_equal(whole[0:len(whole)], pieces[0:len(pieces)])
    assert a.boosters["like"].model_to_string() == b.boosters["like"].model_to_string()
    pd.testing.assert_frame_equal(a.preds, b.preds, check_exact=True)
    assert a.scores == b.scores
    # each piece reads its own rows' groups: far less than every piece reading the whole day
    assert read_pieces < len(pieces.blocks) / len(whole.blocks) * read_whole / 2


def test_every_action_cut_from_rows_binned_once_trains_the_models_of_each_action_binned_alone(
        tiny_root_3_buckets, monkeypatch):
    """``lgb.bin_once``: every action's rows (days 1-13 and day 14's share for the refit) binned
    in one pass over the store and each action's Dataset cut from them gives the models, the
    day-14 and the test predictions of each action reading and binning its own rows, offline and
    online, from a store read without any cache, while reading far fewer rows from the store."""
    import dataclasses

    from wbdc.config import resolve_argv
    from wbdc.features.store import FeatureStore
    from wbdc.paths import Paths
    fs = FeatureStore(Paths.at(tiny_root_3_buckets[0]))
    cfg = resolve_argv(["--preset", "tiny", "--seed", "7", "--set", "lgb.num_boost_round=12",
                        "--set", "lgb.early_stopping_rounds=4"])
    acts = ["read_comment", "like", "follow"]
    runs, real = {}, fs._batches
    for once in (False, True):
        st = dataclasses.replace(LgbSettings.from_config(cfg), bin_once=once)
        read = []
        monkeypatch.setattr(fs, "_batches", lambda *a, **k: (read.append(b.num_rows) or b for b in real(*a, **k)))
        data = load_fit_data(fs, st, progress=False, cache_bytes=0)
        off = fit_offline(data, st, acts, progress=False)
        held = data.union is not None
        on = fit_online(data, fs, st, acts, best_iteration=off.best_iteration, progress=False)
        runs[once] = (off, on, sum(read), data.once, held, data.union)
    (a_off, a_on, read_each, o0, h0, _), (b_off, b_on, read_once, o1, h1, left) = runs[False], runs[True]
    assert (o0, h0, o1, h1, left) == (False, False, True, True, None)   # freed after the refit
    for a in acts:
        assert a_off.boosters[a].model_to_string() == b_off.boosters[a].model_to_string(), a
        assert a_on.boosters[a].model_to_string() == b_on.boosters[a].model_to_string(), a
    pd.testing.assert_frame_equal(a_off.preds, b_off.preds, check_exact=True)
    pd.testing.assert_frame_equal(a_on.preds, b_on.preds, check_exact=True)
    assert a_off.scores == b_off.scores and a_off.train_rows == b_off.train_rows
    assert a_on.train_rows == b_on.train_rows and a_on.rounds == b_on.rounds
    assert read_once < 0.7 * read_each


def test_bin_once_auto_bins_once_only_within_the_memory_left_and_says_so(capsys):
    """``lgb.bin_once: auto`` bins every action's rows at once when their binned size (about a
    byte per row and feature) fits the memory the stage's budget leaves, and says which it chose
    in one line; true / false force it; anything else is refused."""
    from wbdc.lgb import BINNED_BYTES_PER_FEATURE, bins_once, refit_sample
    fs = FakeStore()
    auto = fast_settings()
    data = load_fit_data(fs, auto, progress=False)
    n = len(data.rows) + len(refit_sample(data, data.settings)[0])
    need = n * len(data.spec.names) * BINNED_BYTES_PER_FEATURE
    capsys.readouterr()
    for value, room, expect in (("auto", need * 1.01, True), ("auto", need * 0.99, False),
                                (True, 0.0, True), (False, math.inf, False)):
        data.once, data.union_bytes = None, room
        st = fast_settings(bin_once=value)
        assert bins_once(data, st) is expect and bins_once(data, st) is expect
        line = capsys.readouterr().err
        assert line.count("\n") == 1 and f"({n:,} rows" in line    # said once, not per call
        assert ("binned once" in line) == expect
    with pytest.raises(ValueError, match="lgb.bin_once must be auto, true or false, got 'yes'"):
        fast_settings(bin_once="yes")


def test_the_bin_sample_reads_the_store_once(tiny_root_3_buckets, monkeypatch):
    """The rows LightGBM samples for its bin bounds (a Sequence it reads twice: row by row for
    the sample, then in batches) are decoded from the store once: as many store rows as one pass
    over the sampled rows reads."""
    import dataclasses

    import lightgbm as lgb
    from wbdc.config import resolve_argv
    from wbdc.features.store import FeatureStore
    from wbdc.lgb import _dataset_params, feature_spec, load_rows, sample_reference
    from wbdc.paths import Paths
    fs = FeatureStore(Paths.at(tiny_root_3_buckets[0]))
    st = LgbSettings.from_config(resolve_argv(["--preset", "tiny", "--seed", "7"]))
    st = dataclasses.replace(st, params={**st.params, "bin_construct_sample_cnt": 300})
    spec = feature_spec(fs, st)
    rows = load_rows(fs, [d for d in fs.days if d < 14], spec.names, st)
    assert len(rows) > 20 * 300                   # only the sample is binned
    real, read = fs._batches, []
    monkeypatch.setattr(fs, "_batches", lambda *a, **k: (read.append(b.num_rows) or b for b in real(*a, **k)))
    ref = sample_reference(rows.X, spec, st.params)
    once = sum(read)
    idx = np.sort(lgb.Dataset(np.zeros((1, 1)), params=_dataset_params(st.params))
                  ._create_sample_indices(len(rows)).astype(np.int64))
    read.clear()
    sub = rows.X.take(idx)
    sub[0:len(sub)]                               # one pass over the sampled rows
    assert ref.num_data() == 1 and 0 < once == sum(read)


def test_packed_labels_unpack_to_the_label_table(tiny_root):
    """LightGBM reads the labels one byte per row in one pass (no whole-file label table):
    unpacked, they are the store's label columns, day by day, on the tiny preset and a store
    without ``packed_labels``."""
    from wbdc.features.store import FeatureStore
    from wbdc.lgb import _label_bits, _unpack
    from wbdc.paths import Paths
    fs = FeatureStore(Paths.at(tiny_root))
    days = [d for d in fs.days if d <= 14]
    bits = _label_bits(fs, days)
    fake = FakeStore()
    fake_bits = _label_bits(fake, [2, 14])
    assert fake_bits[14].dtype == np.uint8
    for store, got, ds in ((fs, bits, days), (fake, fake_bits, [2, 14])):
        for d in ds:
            want = store.load_labels(d)[list(ACTIONS)].to_numpy(np.int8)
            np.testing.assert_array_equal(_unpack(got[d]), want)
            assert want.any()


# ------------------------------------------------------------------------------ lgb.max_train_rows

def test_capped_rates_lower_only_the_samples_over_the_cap():
    """An action's expected sample (every positive and ``rate`` of the negatives) is kept under
    ``max_train_rows`` by lowering its rate; the others, and every rate without a cap, stay."""
    from wbdc.lgb import MIN_CAPPED_RATE, capped_rates
    rates = {a: (0.2 if i < 3 else 0.1) for i, a in enumerate(ACTIONS)}
    pos = np.array([30_000, 25_000, 8_000, 4_000, 2_000, 500, 700])
    n = 1_000_000
    assert capped_rates(rates, pos, n, None) == rates
    assert capped_rates(rates, pos, n, 10**9) == rates
    got = capped_rates(rates, pos, n, 120_000)
    for i, a in enumerate(ACTIONS):
        want = pos[i] + rates[a] * (n - pos[i])
        if want <= 120_000:
            assert got[a] == rates[a]
        else:
            assert got[a] < rates[a]
            assert 119_990 <= pos[i] + got[a] * (n - pos[i]) <= 120_000   # rounded down, 6 decimals
    assert got["forward"] == 0.1 and got["read_comment"] < 0.1
    # positives alone over the cap: all kept, and the floor of the negatives
    assert capped_rates(rates, pos, n, 1_000)["read_comment"] == MIN_CAPPED_RATE


def test_label_counts_count_each_actions_positives():
    from wbdc.lgb import _label_bits, _unpack, label_counts
    fake = FakeStore()
    bits = _label_bits(fake, [2, 3, 14])
    pos, n = label_counts(bits)
    labels = np.concatenate([_unpack(bits[d]) for d in (2, 3, 14)])
    assert n == len(labels) == 3 * 1500
    np.testing.assert_array_equal(pos, labels.sum(0))


def test_a_binding_cap_samples_trains_and_calibrates_at_the_lowered_rates():
    """With ``lgb.max_train_rows`` below the big actions' samples the loaded rows are the union at
    the lowered rates, each action trains on at most about the cap, and the predictions are
    calibrated with the rate the rows were sampled at; the actions under the cap are untouched."""
    fs = FakeStore()
    base = fast_settings()
    cap = 4_000
    settings = fast_settings(max_train_rows=cap)
    data = load_fit_data(fs, settings, progress=False)
    eff = data.settings.neg_rate
    lab = np.concatenate([fs.load_labels(d).to_numpy() for d in data.days])
    for j, a in enumerate(ACTIONS):
        pos = lab[:, j].sum()
        expected = pos + base.neg_rate[a] * (len(lab) - pos)
        assert (eff[a] < base.neg_rate[a]) == (expected > cap), a
        assert pos + eff[a] * (len(lab) - pos) <= cap
    assert eff["read_comment"] < base.neg_rate["read_comment"]
    assert len(data.rows) == sum(union_mask(fs.load_labels(d).to_numpy(),
                                            row_uniforms(d, 1500, settings.seed), eff, ACTIONS).sum()
                                 for d in data.days)
    off = fit_offline(data, data.settings, ["read_comment"], progress=False)
    assert off.train_rows["read_comment"] <= cap * 1.05          # realised around the expectation
    unc = load_fit_data(fs, base, progress=False)
    assert off.train_rows["read_comment"] < 0.8 * len(action_rows(
        unc.rows.labels, unc.rows.u, "read_comment", base.neg_rate["read_comment"]))
    from wbdc.lgb import capped_note
    note = capped_note(settings, data.settings, ACTIONS)
    assert note.startswith("lgb.max_train_rows 4,000: neg_rate lowered for read_comment 0.5 -> ")
    assert capped_note(base, base, ACTIONS) is None
    raw = np.array([0.5])
    np.testing.assert_allclose(finish_predictions(raw, data.settings, "read_comment"),
                               calibrate(raw, eff["read_comment"]).astype(np.float32))


def test_the_stage_names_and_records_the_lowered_rates(tiny_root, tmp_path):
    """A binding ``lgb.max_train_rows`` on the tiny world: the stage says which rates it lowered
    (one line) and writes them, and the cap, to scores.json; a bad cap is refused in one line."""
    from conftest import TINY_SEED
    own = _own_root(tiny_root, tmp_path / "root")
    r = _stage(own, "--seed", str(TINY_SEED), "--mode", "offline", "--actions", "read_comment",
               "--set", "lgb.max_train_rows=3000", "--set", "lgb.num_boost_round=5")
    assert r.returncode == 0, r.stderr[-3000:]
    line = [x for x in r.stderr.splitlines() if "neg_rate lowered" in x]
    assert len(line) == 1 and line[0].startswith("[train_lgb] lgb.max_train_rows 3,000: neg_rate "
                                                 "lowered for read_comment 0.2 -> ")
    scores = json.loads((own / "models" / "lgb" / "scores.json").read_text())
    assert scores["max_train_rows"] == 3000 and 0 < scores["neg_rate"]["read_comment"] < 0.2
    assert scores["train_rows"]["offline"]["read_comment"] <= 3000 * 1.05
    r = _stage(own, "--set", "lgb.max_train_rows=0")
    assert r.returncode != 0 and r.stderr.strip().count("\n") == 0
    assert "lgb.max_train_rows must be >= 1 or null, got 0" in r.stderr
