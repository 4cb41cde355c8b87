"""The null world: labels independent of everything, in a folder of its own, and honest scores.

On a world whose labels are Bernoulli(base rate) whatever the row, every model's true uAUC is
0.5: any day-14 figure above it comes from choosing on the rows that are scored.  The slow test
runs the pipeline on such a world and checks that the honest (cross-fitted) figures stay at 0.5.
"""
from __future__ import annotations

import json
from pathlib import Path

import numpy as np
import pandas as pd
import pytest

from conftest import TINY_SEED, run_stage
from wbdc.config import default_config
from wbdc.paths import Paths
from wbdc.pipeline import Stamps, stage_folder, stage_specs
from wbdc.registry import parse_models
from wbdc.schema import ACTIONS, REAL_POSITIVE_RATES
from wbdc.synthetic import generate_world, scaled_preset, world_is_current


@pytest.fixture(scope="module")
def null_world(tiny_root, tmp_path_factory) -> Path:
    """The tiny null world of TINY_SEED, generated into a copy of the normal tiny world's root."""
    root = tmp_path_factory.mktemp("null_root")
    normal = Paths.at(tiny_root).synthetic_world("tiny", TINY_SEED)
    (root / "data" / "synthetic").mkdir(parents=True)
    (root / "data" / "synthetic" / normal.name).symlink_to(normal, target_is_directory=True)
    run_stage("make_synthetic.py", root, "--preset", "tiny", "--seed", str(TINY_SEED), "--null",
              "--quiet")
    return root


def test_null_world_has_its_own_folder_and_the_normal_shape(null_world, tiny_root):
    paths = Paths.at(null_world)
    null = paths.synthetic_world("tiny", TINY_SEED, null=True)
    normal = paths.synthetic_world("tiny", TINY_SEED)
    assert null.name == f"tiny_seed{TINY_SEED}_null" and normal.name == f"tiny_seed{TINY_SEED}"
    assert world_is_current(null, "tiny", TINY_SEED, null=True)
    assert not world_is_current(null, "tiny", TINY_SEED)             # a null world is not normal
    assert not world_is_current(normal, "tiny", TINY_SEED, null=True)
    assert json.loads((null / "truth" / "world.json").read_text())["null_world"] is True
    # the normal world is untouched; the null one has its rows, users and feeds
    ua_n = pd.read_csv(normal / "wechat_algo_data1" / "user_action.csv")
    ua_0 = pd.read_csv(null / "wechat_algo_data1" / "user_action.csv")
    cols = ["userid", "feedid", "date_", "device"]
    pd.testing.assert_frame_equal(ua_n[cols], ua_0[cols])
    assert not (ua_n[list(ACTIONS)].to_numpy() == ua_0[list(ACTIONS)].to_numpy()).all()
    # the config path agrees with the stage's folder
    cfg = default_config()
    cfg["data"].update(preset="tiny", seed=TINY_SEED, null_world=True)
    assert paths.world_of(cfg["data"]) == null
    assert stage_folder("make_synthetic", cfg, null_world) == f"data/synthetic/{null.name}"


def test_null_world_labels_are_base_rate_coins(null_world):
    null = Paths.at(null_world).synthetic_world("tiny", TINY_SEED, null=True)
    ua = pd.read_csv(null / "wechat_algo_data1" / "user_action.csv")
    n = len(ua)
    for a in ACTIONS:
        rate = REAL_POSITIVE_RATES[a]
        assert abs(ua[a].mean() - rate) < 4 * np.sqrt(rate * (1 - rate) / n) + 1e-9, a
    # no co-occurrence (the normal world's labels co-occur within a group, lift > 2)
    both = (ua["like"] & ua["read_comment"]).mean()
    assert both / (ua["like"].mean() * ua["read_comment"].mean()) == pytest.approx(1.0, abs=0.5)
    # nor any dependence on the user: per-user positive counts are binomial, not overdispersed
    per_user = ua.groupby("userid")["read_comment"].agg(["sum", "count"])
    p = ua["read_comment"].mean()
    dispersion = ((per_user["sum"] - per_user["count"] * p) ** 2 / (per_user["count"] * p * (1 - p))).mean()
    assert dispersion == pytest.approx(1.0, abs=0.25)
    truth = pd.read_csv(null / "truth" / "day14_prob.csv")
    for a in ACTIONS:
        assert truth[a].nunique() == 1 and truth[a].iloc[0] == pytest.approx(REAL_POSITIVE_RATES[a], rel=1e-3)


def test_null_world_changes_the_data_stamp():
    """data.null_world is part of the data section every stamp hashes: switching it reruns
    every stage, from make_synthetic on."""
    cfg = default_config()
    specs = stage_specs(parse_models(None))
    stamps = Stamps("/nonexistent")
    normal = stamps.chain(specs, cfg)
    cfg["data"]["null_world"] = True
    null = stamps.chain(specs, cfg)
    assert set(normal) == set(null) and all(normal[s] != null[s] for s in normal)


# ------------------------------------------------------------------------------ honest scores

NULL_SEED = 5
TOLERANCE = 0.03
#: between tiny and small: ~3,000 users and ~28,000 day-14 rows, so chance moves a weighted
#: uAUC by about 0.01 while the whole pipeline stays near a minute
NULL_PRESET = scaled_preset("null_test", n_users=3_000, n_feeds=8_000, train_rows=330_000,
                            n_topics=16)
FAST_FEATURES = ["--set", "features.w2v.feed.epochs=1", "--set", "features.w2v.author.epochs=1",
                 "--set", "features.w2v.feed.dim=8", "--set", "features.w2v.author.dim=8",
                 "--set", "features.w2v.user_vectors=false"]
FAST_LGB = ["--set", "lgb.num_boost_round=150", "--set", "lgb.early_stopping_rounds=15"]
FAST_NN = ["--epochs", "1", "--set", "nn.train.progress=false", "--set", "nn.train.eval_every_steps=15",
           "--set", "nn.train.batch_size=4096", "--set", "nn.embedding.dim=8",
           "--set", "nn.embedding.bag_dim=8"]


@pytest.mark.slow
def test_honest_scores_on_the_null_world_are_chance(tmp_path):
    """A null world through prepare, features, popularity, LightGBM, a shared-bottom net and the
    blend: every honest day-14 figure (each model, the held-out blend) lies within 0.5 +- 0.03,
    and the in-sample blend, chosen on the rows it is scored on, sits above the honest one."""
    root = tmp_path
    world = root / "null_world"
    generate_world(NULL_PRESET, NULL_SEED, world, null=True)
    data = ["--seed", str(NULL_SEED), "--data-dir", str(world / "wechat_algo_data1")]
    run_stage("prepare.py", root, *data)
    run_stage("features.py", root, *data, *FAST_FEATURES)
    run_stage("train_popularity.py", root, *data, "--mode", "offline")
    run_stage("train_lgb.py", root, *data, "--mode", "offline", "--no-progress", *FAST_LGB)
    run_stage("train_nn.py", root, *data, "--arch", "sb", "--mode", "offline", *FAST_NN)
    run_stage("blend.py", root, *data, "--mode", "offline", "--no-progress")
    s = json.loads((root / "ensemble" / "scores.json").read_text())
    assert set(s["models"]) == {"popularity", "lgb", "sb"}
    honest = {**{n: v["weighted"] for n, v in s["models"].items()}, "blend": s["blend"]["weighted"]}
    print("null world, honest day-14 weighted uAUC:", honest,
          "in-sample:", {n: v["weighted"] for n, v in s["insample"]["models"].items()},
          "blend", s["insample"]["blend"]["weighted"])
    for name, v in honest.items():
        assert abs(v - 0.5) <= TOLERANCE, (name, v, honest)
    # the in-sample blend is at least each in-sample model per action (its search starts at
    # every single model) and those are chosen on the scored rows: here it sits 0.04 above
    assert s["insample"]["blend"]["weighted"] > s["blend"]["weighted"] + 0.01


def test_prepare_and_score_read_the_null_world_when_asked(null_world):
    """`run_all.sh --null` sets data.null_world: prepare reads the null world's folder (not the
    normal one) and records its truth; score's default truth is the null world's too."""
    import importlib.util

    from wbdc.config import resolve_argv
    from wbdc.prepare import resolve_source
    paths = Paths.at(null_world)
    cfg = resolve_argv(["--preset", "tiny", "--seed", str(TINY_SEED), "--set", "data.null_world=true"])
    src = resolve_source(cfg, paths)
    null = paths.synthetic_world("tiny", TINY_SEED, null=True)
    assert src.raw_dirs == [null / "wechat_algo_data1"] and src.truth_dir == null / "truth"
    run_stage("prepare.py", null_world, "--preset", "tiny", "--seed", str(TINY_SEED),
              "--set", "data.null_world=true")
    meta = json.loads((paths.prepared / "meta.json").read_text())
    assert Path(meta["truth_dir"]) == (null / "truth").resolve()
    labels = pd.read_parquet(paths.prepared / "actions.parquet")
    raw = pd.read_csv(null / "wechat_algo_data1" / "user_action.csv")
    assert labels["like"].sum() == raw.drop_duplicates(["userid", "feedid"], keep="last")["like"].sum()
    repo = Path(__file__).resolve().parents[1]
    spec = importlib.util.spec_from_file_location("score_stage", repo / "src" / "stages" / "score.py")
    score = importlib.util.module_from_spec(spec)
    spec.loader.exec_module(score)
    assert score.default_truth(cfg, str(null_world)) == null / "truth" / "test_truth.csv"
