"""The features stage end to end: reproducible files, manifest = files, cold feeds, no NaN,
incremental rebuilds, the FeatureStore interface and the stage CLI."""
from __future__ import annotations

import subprocess
import sys
from pathlib import Path

import numpy as np
import pandas as pd
import pyarrow.parquet as pq
import pytest
from test_features_world import make_world, small_config

from wbdc.config import ConfigError
from wbdc.features import build
from wbdc.features.families import today_keep_rate
from wbdc.features.store import FeatureStore, part_file
from wbdc.hashing import pair_uniform
from wbdc.io import read_json
from wbdc.paths import Paths
from wbdc.schema import ACTIONS

REPO = Path(__file__).resolve().parents[1]


@pytest.fixture(scope="module")
def built(tmp_path_factory):
    paths = make_world(tmp_path_factory.mktemp("built"), seed=1)
    summary = build.run(paths, small_config(), progress=False)
    return paths, summary


def np_types(schema) -> dict[str, str]:
    return {n: np.dtype(t.to_pandas_dtype()).name for n, t in zip(schema.names, schema.types)}


def feature_files(root: Path) -> dict[str, bytes]:
    out = {}
    for p in sorted((root / "features").rglob("*")):
        if p.is_file():
            out[str(p.relative_to(root))] = p.read_bytes()
    return out


def test_two_runs_with_the_same_seed_give_identical_files(built, tmp_path):
    paths, _ = built
    other = make_world(tmp_path, seed=1)
    build.run(other, small_config(), progress=False)
    a, b = feature_files(paths.root), feature_files(other.root)
    assert sorted(a) == sorted(b)
    assert len(a) >= 14 * 2 + 6 + 1
    differ = [k for k in a if a[k] != b[k]]
    assert differ == []


def test_a_different_seed_changes_the_word2vec_vectors(built, tmp_path):
    paths, _ = built
    other = make_world(tmp_path, seed=1)
    cfg = small_config(seed=99)
    build.run(other, cfg, progress=False)
    assert not np.array_equal(FeatureStore(paths).pretrained("feed_w2v")[1],
                              FeatureStore(other).pretrained("feed_w2v")[1])


def test_manifest_matches_the_files(built):
    paths, _ = built
    fs = FeatureStore(paths)
    m = fs.manifest
    assert fs.days == list(range(2, 16))
    day_cols = {c["name"]: c["dtype"] for c in m["columns"] if c["table"] == "day"}
    user_cols = {c["name"]: c["dtype"] for c in m["columns"] if c["table"] == "users"}
    assert len(user_cols) == 4 + 4
    for d in fs.days:
        parts = fs.parts(d)
        assert [p["file"] for p in parts] == [part_file(d, 0)]    # the tiny world fits one bucket
        for p in parts:
            schema = pq.read_schema(paths.features / p["file"])
            assert np_types(schema) == {**day_cols, "row": "int32"}
            assert pq.read_metadata(paths.features / p["file"]).num_rows == p["rows"]
            uschema = pq.read_schema(paths.features / p["users"])
            assert np_types(uschema) == {"userid": "int32", "date_": "int8", **user_cols}
        assert sum(p["rows"] for p in parts) == m["day_tables"][str(d)]["rows"]
    for name, e in m["pretrained"].items():
        ids, mat = np.load(paths.features / e["ids_file"]), np.load(paths.features / e["file"])
        assert ids.dtype == np.int32 and mat.dtype == np.float32 and mat.shape == (len(ids), e["dim"])
        assert fs.pretrained_key(name) == e["key"]
    for role in ("key", "categorical", "dense", "vector"):
        assert fs.columns(role), role
    assert fs.columns("key") == ["userid", "feedid", "date_", "device"]
    assert set(fs.columns("categorical")) == {"userid", "feedid", "device", "authorid", "bgm_song_id",
                                              "bgm_singer_id", "manual_keyword_1", "manual_tag_1"}
    assert not set(fs.columns("vector")) & set(fs.columns("dense"))
    assert all(fs.column_info(c)["dtype"] in ("float32", "int8") for c in fs.columns("dense"))


def test_rows_follow_the_prepared_order_and_labels_align(built):
    paths, _ = built
    fs = FeatureStore(paths)
    actions = pd.read_parquet(paths.prepared / "actions.parquet")
    test = pd.read_parquet(paths.prepared / "test.parquet")
    for d in (2, 9, 14):
        day = actions[actions["date_"] == d].reset_index(drop=True)
        df = fs.load_day(d, columns=["user_all_count"])
        assert list(df.columns) == ["userid", "feedid", "date_", "device", "user_all_count"]
        assert df["userid"].tolist() == day["userid"].tolist() and df["feedid"].tolist() == day["feedid"].tolist()
        labels = fs.load_labels(d)
        assert list(labels.columns) == list(ACTIONS) and (labels.dtypes == np.int8).all()
        pd.testing.assert_frame_equal(labels, day[list(ACTIONS)].astype(np.int8))
    t = fs.load_day(15, columns=[])
    assert t["feedid"].tolist() == test["feedid"].tolist() and (t["date_"] == 15).all()
    both = fs.load_days([3, 4], columns=["feed_all_count"])
    assert len(both) == fs.n_rows(3) + fs.n_rows(4) and both["date_"].is_monotonic_increasing


def test_cold_feeds_get_zero_counts_a_flag_and_no_nan_anywhere(built):
    paths, _ = built
    fs = FeatureStore(paths)
    for d in fs.days:
        df = fs.load_day(d)
        assert not df.isna().any().any(), d
        assert np.isfinite(df[fs.columns("dense") + fs.columns("vector")].to_numpy(np.float64)).all()
    t = fs.load_day(15)
    cold = t["feedid"] >= 145  # make_world: the last 5 feeds never appear in the actions
    assert cold.any()
    assert (t.loc[cold, "feed_cold"] == 1).all() and (t.loc[~cold, "feed_cold"] == 0).all()
    for c in [c for c in fs.columns("dense") if c.startswith("feed_") and ("count" in c or "_sum_" in c)
              and "today" not in c]:
        assert (t.loc[cold, c] == 0).all(), c
    prior = t.loc[cold, "feed_all_rate_like"].unique()
    assert len(prior) == 1 and 0 < prior[0] < 1
    # users never seen before: zero history vectors and similarity 0
    new_user = ~t["userid"].isin(pd.read_parquet(paths.prepared / "actions.parquet")["userid"])
    assert new_user.any()
    assert (t.loc[new_user, fs.columns("vector")] == 0).all().all()
    assert (t.loc[new_user, "user_feed_w2v_sim"] == 0).all() and (t.loc[new_user, "user_cold"] == 1).all()


def test_categorical_ids_fit_their_cardinality_and_missing_is_zero(built):
    paths, _ = built
    fs = FeatureStore(paths)
    df = fs.load_days(fs.days)
    feeds = pq.read_table(paths.prepared / "feeds.parquet").to_pandas()
    for c in fs.columns("categorical"):
        assert df[c].min() >= 0 and df[c].max() < fs.cardinality(c), c
    raw = df[["feedid", "bgm_song_id", "manual_tag_1"]].merge(feeds, on="feedid", suffixes=("", "_raw"))
    assert ((raw["bgm_song_id"] == 0) == (raw["bgm_song_id_raw"] == -1)).all()
    assert (raw.loc[raw["bgm_song_id"] > 0, "bgm_song_id"] == raw.loc[raw["bgm_song_id"] > 0, "bgm_song_id_raw"] + 1).all()
    first = raw["manual_tag_list"].map(lambda x: x[0] + 1 if len(x) else 0)
    assert (raw["manual_tag_1"] == first).all()
    with pytest.raises(KeyError, match="not a categorical column"):
        fs.cardinality("user_all_count")


def test_similarity_features_match_a_plain_recomputation(built):
    paths, _ = built
    fs = FeatureStore(paths)
    actions = pd.read_parquet(paths.prepared / "actions.parquet")
    ids, vec = fs.pretrained("feed_w2v")
    vmap = dict(zip(ids.tolist(), vec.astype(np.float64)))
    pids, pvec = fs.pretrained("feed_pca")
    pmap = dict(zip(pids.tolist(), pvec.astype(np.float64)))
    d = 9
    df = fs.load_day(d, columns=["user_feed_w2v_sim", "user_feed_pca_affinity", *fs.columns("vector")])
    engaged = actions[list(ACTIONS)].sum(axis=1) > 0
    for i in range(0, len(df), 7):
        u, f = int(df.at[i, "userid"]), int(df.at[i, "feedid"])
        seen = actions[(actions["userid"] == u) & (actions["date_"] < d)]
        mean = np.mean([vmap[x] for x in seen["feedid"]], axis=0) if len(seen) else np.zeros(4)
        np.testing.assert_allclose(df.loc[i, [f"user_feed_w2v_{j}" for j in range(4)]].to_numpy(float), mean, atol=1e-6)
        cos = mean @ vmap[f] / (np.linalg.norm(mean) * np.linalg.norm(vmap[f])) if len(seen) else 0.0
        assert df.at[i, "user_feed_w2v_sim"] == pytest.approx(cos, abs=1e-5)
        eng = actions[(actions["userid"] == u) & (actions["date_"] < d) & engaged]
        pm = np.mean([pmap[x] for x in eng["feedid"]], axis=0) if len(eng) else None
        aff = 0.0 if pm is None else pm @ pmap[f] / (np.linalg.norm(pm) * np.linalg.norm(pmap[f]))
        assert df.at[i, "user_feed_pca_affinity"] == pytest.approx(aff, abs=1e-5)


def test_per_action_interest_similarities_and_feed_columns_match_a_plain_recomputation(tmp_path, built):
    """features.{pca,w2v}.action_sims add user_<a>_pca_sim / user_<a>_feed_w2v_sim: the cosine
    between the candidate and the mean vector of the feeds the user did <a> on before d;
    feed_columns add the candidate's first components; the other columns stay as they were."""
    paths = make_world(tmp_path, seed=1)
    cfg = small_config()
    cfg["features"]["pca"].update(action_sims=["like", "comment"], feed_columns=3)
    cfg["features"]["w2v"].update(action_sims="main", feed_columns=2)
    build.run(paths, cfg, progress=False)
    fs, plain = FeatureStore(paths), FeatureStore(built[0])
    sims = [f"user_{a}_feed_w2v_sim" for a in ("read_comment", "like", "click_avatar", "forward")] + \
        [f"user_{a}_pca_sim" for a in ("like", "comment")]
    assert [c for c in fs.columns("dense") if c not in plain.columns("dense")] == \
        [*sims[:4], "feed_w2v_0", "feed_w2v_1", *sims[4:], "feed_pca_0", "feed_pca_1", "feed_pca_2"]
    actions = pd.read_parquet(paths.prepared / "actions.parquet")
    tables = {k: dict(zip(ids.tolist(), vec.astype(np.float64)))
              for k, (ids, vec) in (("pca", fs.pretrained("feed_pca")), ("feed_w2v", fs.pretrained("feed_w2v")))}
    d = 10
    df = fs.load_day(d)
    pd.testing.assert_frame_equal(df[plain.columns("dense")], plain.load_day(d)[plain.columns("dense")],
                                  check_exact=True)
    for kind, k in (("pca", 3), ("feed_w2v", 2)):
        want = np.stack([tables[kind][f][:k] for f in df["feedid"]])
        np.testing.assert_allclose(df[[f"feed_{'pca' if kind == 'pca' else 'w2v'}_{i}" for i in range(k)]]
                                   .to_numpy(np.float64), want, atol=1e-6)
    nonzero = 0
    for i in range(0, len(df), 5):
        u, f = int(df.at[i, "userid"]), int(df.at[i, "feedid"])
        past = actions[(actions["userid"] == u) & (actions["date_"] < d)]
        for col in sims:
            a, kind = col[5:].split("_pca_sim")[0] if col.endswith("_pca_sim") else col[5:-len("_feed_w2v_sim")], \
                "pca" if col.endswith("_pca_sim") else "feed_w2v"
            vmap = tables[kind]
            did = past.loc[past[a] > 0, "feedid"]
            if len(did) == 0:
                assert df.at[i, col] == 0.0, col
                continue
            m = np.mean([vmap[x] for x in did], axis=0)
            cos = m @ vmap[f] / (np.linalg.norm(m) * np.linalg.norm(vmap[f]))
            assert df.at[i, col] == pytest.approx(cos, abs=1e-5), col
            nonzero += 1
    assert nonzero > 20


@pytest.mark.parametrize("keep", [1.0, 0.5])
def test_same_day_similarities_match_a_plain_recomputation_on_training_and_test_days(tmp_path, built, keep):
    """features.{w2v,pca}.today_sims add today_{feed,author}_w2v_sim and today_pca_sim: the
    cosine between the candidate's vector and the mean vector of the user's other exposures of
    the same day (0 without one); on a training day only the rows a hash of (user, feed, day,
    seed) keeps at features.today_keep enter the mean, on the test day every row; the other
    columns stay as they were."""
    paths = make_world(tmp_path, seed=1)
    cfg = small_config()
    cfg["features"]["w2v"]["today_sims"] = cfg["features"]["pca"]["today_sims"] = True
    cfg["features"]["today_keep"] = keep
    build.run(paths, cfg, progress=False)
    fs, plain = FeatureStore(paths), FeatureStore(built[0])
    new = ["today_feed_w2v_sim", "today_author_w2v_sim", "today_pca_sim"]
    assert [c for c in fs.columns("dense") if c not in plain.columns("dense")] == new
    feeds = pd.read_parquet(paths.prepared / "feeds.parquet", columns=["feedid", "authorid"])
    author_of = dict(zip(feeds["feedid"].tolist(), feeds["authorid"].tolist()))
    tables = {k: dict(zip(ids.tolist(), vec.astype(np.float64))) for k, (ids, vec) in
              (("today_feed_w2v_sim", fs.pretrained("feed_w2v")), ("today_author_w2v_sim", fs.pretrained("author_w2v")),
               ("today_pca_sim", fs.pretrained("feed_pca")))}
    seed = cfg["features"]["seed"] if cfg["features"]["seed"] is not None else cfg["data"]["seed"]
    checked, singles, dropped = 0, 0, 0
    for d in (6, 15):
        df = fs.load_day(d)
        pd.testing.assert_frame_equal(df[plain.columns("dense")], plain.load_day(d)[plain.columns("dense")],
                                      check_exact=True)
        u = pair_uniform(df["userid"].to_numpy(), df["feedid"].to_numpy(), seed * 64 + d)
        kept = df.loc[(u < keep) | (d == 15), ["userid", "feedid"]]
        dropped += len(df) - len(kept)
        by_user = kept.groupby("userid")["feedid"].apply(list).to_dict()
        for i in range(0, len(df), 3):
            uid, f = int(df.at[i, "userid"]), int(df.at[i, "feedid"])
            others = [x for x in by_user.get(uid, []) if x != f]
            for col, vmap in tables.items():
                key = (lambda x: author_of[x]) if col == "today_author_w2v_sim" else (lambda x: x)
                if not others:
                    assert df.at[i, col] == 0.0, col
                    continue
                m = np.mean([vmap[key(x)] for x in others], axis=0)
                v = vmap[key(f)]
                cos = m @ v / (np.linalg.norm(m) * np.linalg.norm(v))
                assert df.at[i, col] == pytest.approx(cos, abs=1e-5), (d, col)
                checked += 1
            singles += not others
    assert checked > 100 and checked > 3 * singles
    assert (dropped > 0) == (keep < 1)


def test_seen_similarities_match_a_plain_recomputation_and_a_bad_window_is_refused(tmp_path, built):
    """features.pca.seen_sims adds seen_<w>_pca_sim per window: the cosine between the
    candidate's PCA vector and the mean vector of every feed shown to the user in the window's
    days before d (exposures only; 0 without one), on a training day and on the test day; the
    other columns stay as they were."""
    paths = make_world(tmp_path, seed=1)
    cfg = small_config()
    cfg["features"]["pca"]["seen_sims"] = ["all", 3]
    build.run(paths, cfg, progress=False)
    fs, plain = FeatureStore(paths), FeatureStore(built[0])
    assert [c for c in fs.columns("dense") if c not in plain.columns("dense")] == \
        ["seen_all_pca_sim", "seen_w3_pca_sim"]
    actions = pd.read_parquet(paths.prepared / "actions.parquet", columns=["userid", "feedid", "date_"])
    ids, vec = fs.pretrained("feed_pca")
    vmap = dict(zip(ids.tolist(), vec.astype(np.float64)))
    checked, empty = 0, 0
    for d in (6, 15):
        df = fs.load_day(d)
        pd.testing.assert_frame_equal(df[plain.columns("dense")], plain.load_day(d)[plain.columns("dense")],
                                      check_exact=True)
        for i in range(0, len(df), 4):
            u, f = int(df.at[i, "userid"]), int(df.at[i, "feedid"])
            for col, lo in (("seen_all_pca_sim", 1), ("seen_w3_pca_sim", d - 3)):
                shown = actions.loc[(actions["userid"] == u) & (actions["date_"] >= lo) & (actions["date_"] < d),
                                    "feedid"]
                if len(shown) == 0:
                    assert df.at[i, col] == 0.0, col
                    empty += 1
                    continue
                m = np.mean([vmap[x] for x in shown], axis=0)
                cos = m @ vmap[f] / (np.linalg.norm(m) * np.linalg.norm(vmap[f]))
                assert df.at[i, col] == pytest.approx(cos, abs=1e-5), (d, col)
                checked += 1
    assert checked > 60 and checked > 3 * empty
    cfg["features"]["pca"]["seen_sims"] = ["all", 0]
    with pytest.raises(ConfigError, match=r"^features\.pca\.seen_sims: expected a list of windows"):
        build.run(make_world(tmp_path / "bad", seed=1), cfg, progress=False)


def test_today_keep_auto_matches_the_test_days_rows_and_a_bad_share_is_refused(tmp_path):
    """auto keeps test rows / day rows of a training day (at most 1) and every test-day row;
    a share outside (0, 1] is refused in one line before anything is written."""
    assert today_keep_rate({"today_keep": "auto"}, {6: 200, 14: 100, 15: 70}, 6) == pytest.approx(0.35)
    assert today_keep_rate({"today_keep": "auto"}, {6: 50, 15: 70}, 6) == 1.0
    assert today_keep_rate({"today_keep": "auto"}, {6: 200, 15: 70}, 15) == 1.0
    assert today_keep_rate({"today_keep": 0.25}, {6: 200, 15: 70}, 6) == 0.25
    paths = make_world(tmp_path, seed=1)
    cfg = small_config()
    cfg["features"]["pca"]["today_sims"] = True
    cfg["features"]["today_keep"] = 0
    with pytest.raises(ConfigError, match=r"^features\.today_keep: expected auto or a share in \(0, 1\], got 0$"):
        build.run(paths, cfg, progress=False)
    assert not (paths.root / "features" / "manifest.json").exists()


def test_feed_columns_stop_at_the_vectors_dim_and_a_negative_count_is_refused(tmp_path):
    paths = make_world(tmp_path, seed=1)
    cfg = small_config()
    cfg["features"]["pca"]["feed_columns"] = 99         # small_config's PCA has 6 dims
    cfg["features"]["w2v"]["feed_columns"] = -1
    with pytest.raises(ConfigError, match=r"^features\.w2v\.feed_columns: expected 0 or more components, got -1$"):
        build.run(paths, cfg, progress=False)
    assert not (paths.root / "features" / "manifest.json").exists()
    cfg["features"]["w2v"]["feed_columns"] = 0
    build.run(paths, cfg, progress=False)
    assert [c for c in FeatureStore(paths).columns("dense") if c.startswith("feed_pca_")] == \
        [f"feed_pca_{i}" for i in range(6)]


def test_feed_lists_and_pretrained(built):
    paths, _ = built
    fs = FeatureStore(paths)
    feeds = pq.read_table(paths.prepared / "feeds.parquet").to_pandas()
    lists = fs.feed_lists()
    assert sorted(lists) == ["manual_keyword_list", "manual_tag_list"]
    feedids, (indptr, values) = lists["manual_tag_list"]
    assert feedids.tolist() == feeds["feedid"].tolist() and indptr[0] == 0 and indptr[-1] == len(values)
    for i in (0, 3, 17):
        assert values[indptr[i]:indptr[i + 1]].tolist() == [x + 1 for x in feeds["manual_tag_list"][i]]
    assert values.max() < fs.manifest["feed_lists"]["fields"]["manual_tag_list"]["cardinality"]
    ids, mat = fs.pretrained("feed_pca")
    assert mat.shape == (50, 6) and fs.pretrained_key("feed_pca") == "feedid"
    ids, mat = fs.pretrained("author_w2v")
    assert fs.pretrained_key("author_w2v") == "authorid" and mat.shape[1] == 4
    assert set(ids.tolist()) == set(feeds["authorid"].tolist())
    with pytest.raises(KeyError, match="no pretrained table 'nope'"):
        fs.pretrained("nope")
    users = fs.side_table("users")
    assert set(users["date_"]) == set(range(2, 16))
    assert len(fs.side_table("authors")) == feeds["authorid"].nunique()


def test_store_errors_are_clear(built, tmp_path):
    paths, _ = built
    with pytest.raises(FileNotFoundError, match=r"manifest.json: missing; run the features stage"):
        FeatureStore(Paths.at(tmp_path))
    fs = FeatureStore(paths)
    with pytest.raises(ValueError, match="no labels for day 15"):
        fs.load_labels(15)
    with pytest.raises(KeyError, match="day 1 not built"):
        fs.load_day(1)
    with pytest.raises(KeyError, match="'nope' is not a feature column"):
        fs.load_day(3, columns=["nope"])
    with pytest.raises(ValueError, match="unknown role"):
        fs.columns("label")


def test_the_code_digest_leaves_out_the_store_reader_but_not_the_builders(tmp_path):
    """A change to the store's reader (``FeatureStore``) keeps every table and pretrained vector;
    a change to any module that computes or writes values rebuilds."""
    import shutil
    pkg = Path(build.__file__).parent
    copy = tmp_path / "features"
    shutil.copytree(pkg, copy, ignore=shutil.ignore_patterns("__pycache__"))
    assert build.code_digest(copy) == build.code_digest()
    (copy / "store.py").write_text((copy / "store.py").read_text() + "\n# a reader refactor\n")
    assert build.code_digest(copy) == build.code_digest()
    for name in ("families.py", "window_stats.py", "build.py", "w2v.py"):
        p = copy / name
        before = p.read_text()
        p.write_text(before + "\n# changed\n")
        assert build.code_digest(copy) != build.code_digest(), name
        p.write_text(before)
    assert build.READER_MODULES == ("store.py",)


def test_incremental_skips_unchanged_days_and_rebuilds_on_config_change(tmp_path):
    paths = make_world(tmp_path, seed=2)
    cfg = small_config(days=[3, 6, 15])
    assert build.run(paths, cfg, progress=False)["built"] == [3, 6, 15]
    mtimes = {p: p.stat().st_mtime_ns for p in paths.features.rglob("*.parquet")}
    again = build.run(paths, cfg, progress=False)
    assert again["built"] == [] and again["skipped"] == [3, 6, 15]
    assert {p: p.stat().st_mtime_ns for p in paths.features.rglob("*.parquet")} == mtimes
    # a new day builds only that day
    cfg2 = small_config(days=[3, 6, 9, 15])
    assert build.run(paths, cfg2, progress=False)["built"] == [9]
    # changing a window rebuilds every day but reuses the word2vec and PCA tables
    cfg3 = small_config(days=[3, 6, 9, 15])
    cfg3["features"]["window_stats"]["blocks"][0]["windows"] = [2, 7, "all"]
    s = build.run(paths, cfg3, progress=False)
    assert s["built"] == [3, 6, 9, 15]
    assert {"feed_w2v_reused_s", "author_w2v_reused_s", "pca_reused_s"} <= set(s["timings"])
    assert "user_w2_count" in FeatureStore(paths).columns("dense")
    # a changed input rebuilds everything
    a = pd.read_parquet(paths.prepared / "actions.parquet")
    a.loc[0, "like"] = 1 - a.loc[0, "like"]
    a.to_parquet(paths.prepared / "actions.parquet", index=False)
    assert build.run(paths, cfg3, progress=False)["built"] == [3, 6, 9, 15]
    # a removed part file is rebuilt even though the manifest lists it
    (paths.features / part_file(6, 0)).unlink()
    assert build.run(paths, cfg3, progress=False)["built"] == [6]


def test_store_refuses_labels_when_actions_changed_after_build(tmp_path):
    paths = make_world(tmp_path, seed=4)
    build.run(paths, small_config(days=[2, 3]), progress=False)
    a = pd.read_parquet(paths.prepared / "actions.parquet")
    a.to_parquet(paths.prepared / "actions.parquet", index=False, compression="gzip")
    with pytest.raises(Exception, match="changed since the features were built"):
        FeatureStore(paths).load_labels(2)


def test_stage_cli_runs_with_root_and_names_missing_inputs(tmp_path):
    script = str(REPO / "src" / "stages" / "features.py")
    r = subprocess.run([sys.executable, script, "--root", str(tmp_path), "--no-progress"],
                       capture_output=True, text=True)
    assert r.returncode == 2
    assert "meta.json: missing; run the prepare stage" in r.stderr.strip().splitlines()[-1]
    make_world(tmp_path, seed=5)
    sets = ["features.w2v.feed.dim=4", "features.w2v.author.dim=4", "features.w2v.feed.epochs=1",
            "features.w2v.author.epochs=1", "features.pca.dim=4"]
    cmd = [sys.executable, script, "--root", str(tmp_path), "--no-progress", "--days", "2", "15"]
    for s in sets:
        cmd += ["--set", s]
    r = subprocess.run(cmd, capture_output=True, text=True)
    assert r.returncode == 0, r.stderr
    assert "[features] done in" in r.stderr
    out = tmp_path / "features"
    assert read_json(out / "config.json")["features"]["pca"]["dim"] == 4
    info = read_json(out / "run_info_features.json")
    assert info["built"] == [2, 15] and info["stage"] == "features"
    r = subprocess.run(cmd, capture_output=True, text=True)
    assert "up to date" in r.stderr


def test_a_failure_in_a_bucket_keeps_finished_buckets_and_resumes_to_the_same_bytes(tmp_path, monkeypatch):
    """A two-bucket build that dies while writing bucket 1's part of day 6 leaves bucket 0's
    parts, no temporary file and no day listed as built; the next run resumes at bucket 1
    (bucket 0 is not recomputed) and ends byte-identical to a clean build."""
    cfg = small_config(days=[3, 6, 15])
    paths = make_world(tmp_path / "broken", seed=5)
    real = build.write_parquet
    calls, armed = [], [True]

    def failing(table, path, *a, **k):
        if armed[0] and str(path).endswith(part_file(6, 1)):   # half a file written, then the disk fills
            from wbdc.io import atomic_path
            with atomic_path(path) as tmp:
                tmp.write_bytes(b"PAR1 half a table")
                raise OSError("disk full (injected)")
        calls.append(str(Path(path).relative_to(paths.features)))
        return real(table, path, *a, **k)
    monkeypatch.setattr(build, "write_parquet", failing)
    with pytest.raises(OSError, match="injected"):
        build.run(paths, cfg, progress=False, n_buckets=2)
    assert {part_file(d, 0) for d in (3, 6, 15)} <= set(calls) and part_file(3, 1) in calls
    leftovers = [p.name for p in paths.features.rglob("*") if ".tmp" in p.name]
    assert leftovers == []
    manifest = read_json(paths.features / "manifest.json")
    assert manifest["day_tables"] == {} and manifest["building"]["buckets_done"] == [0]
    assert not (paths.features / part_file(6, 1)).exists()
    calls.clear()
    armed[0] = False
    assert build.run(paths, cfg, progress=False, n_buckets=2)["built"] == [3, 6, 15]
    assert not any("part-00" in c for c in calls) and part_file(6, 1) in calls

    clean = make_world(tmp_path / "clean", seed=5)
    monkeypatch.setattr(build, "write_parquet", real)
    build.run(clean, cfg, progress=False, n_buckets=2)
    a, b = feature_files(paths.root), feature_files(clean.root)
    assert sorted(a) == sorted(b) and [k for k in a if a[k] != b[k]] == []


def test_features_stage_killed_midway_resumes_to_the_bytes_of_a_clean_build(tiny_root, tmp_path):
    """SIGKILL the features stage once its first part file is on disk; the rerun builds the
    rest and the store equals the session's clean build byte for byte."""
    import os
    import shutil
    import signal
    import time
    root = tmp_path / "root"
    (root / "data").mkdir(parents=True)
    shutil.copytree(tiny_root / "data" / "prepared", root / "data" / "prepared")
    cmd = [sys.executable, str(REPO / "src" / "stages" / "features.py"), "--root", str(root),
           "--preset", "tiny", "--seed", "7", "--no-progress"]
    p = subprocess.Popen(cmd, stdout=subprocess.DEVNULL, stderr=subprocess.DEVNULL,
                         start_new_session=True)
    deadline = time.time() + 300
    while not (root / "features" / part_file(3, 0)).exists():
        assert p.poll() is None, "the stage ended before any day table was written"
        assert time.time() < deadline
        time.sleep(0.05)
    os.killpg(p.pid, signal.SIGKILL)
    p.wait(timeout=60)
    assert p.returncode != 0, "the stage finished before it could be killed"
    r = subprocess.run(cmd, capture_output=True, text=True, timeout=600)
    assert r.returncode == 0, r.stderr[-3000:]
    a = {k: v for k, v in feature_files(root).items() if "run_info" not in k}
    b = {k: v for k, v in feature_files(tiny_root).items() if "run_info" not in k}
    assert sorted(a) == sorted(b)
    assert [k for k in a if a[k] != b[k]] == []


def test_word2vec_corpus_file_mode_trains_from_the_same_corpus(built, tmp_path):
    """features.w2v.corpus_file: gensim reads the bucket-ordered corpus file itself; with one
    worker two builds agree, and the vectors are not the streamed mode's (another code path)."""
    paths, _ = built
    cfg = small_config()
    cfg["features"]["w2v"]["corpus_file"] = True
    mats = []
    for name in ("a", "b"):
        other = make_world(tmp_path / name, seed=1)
        build.run(other, cfg, progress=False, n_buckets=2)
        mats.append(FeatureStore(other).pretrained("feed_w2v")[1])
    assert np.array_equal(mats[0], mats[1]) and np.abs(mats[0]).sum() > 0
    assert not np.array_equal(mats[0], FeatureStore(paths).pretrained("feed_w2v")[1])


def test_word2vec_epochs_shrink_above_epoch_rows():
    from wbdc.features.families import w2v_epochs
    w = {"feed": {"epochs": 5}, "author": {"epochs": 3}, "epoch_rows": 20_000_000}
    # tiny .. full (7.8M corpus rows) keep the configured epochs; the final round's 77M rows get 2
    assert [w2v_epochs(w, "feed", r) for r in (50_000, 7_761_000, 20_000_000, 25_000_000, 77_363_460, 10**9)] == \
        [5, 5, 5, 4, 2, 1]
    assert w2v_epochs(w, "author", 77_363_460) == 1
    assert w2v_epochs({**w, "epoch_rows": None}, "feed", 10**9) == 5
    with pytest.raises(ConfigError, match=r"^features\.w2v\.epoch_rows: expected a positive row count or null, got 0$"):
        w2v_epochs({**w, "epoch_rows": 0}, "feed", 10)


def test_fewer_epochs_above_epoch_rows_train_the_vectors_of_those_epochs_set_directly(tmp_path):
    """A corpus over ``w2v.epoch_rows`` trains (and records) the lowered epochs: the vectors are
    those of a build with that epoch count configured, and differ from the configured one's."""
    from wbdc.prepare import load_meta
    paths = make_world(tmp_path / "a", seed=1)
    meta = load_meta(paths.prepared)
    rows = int(meta["n_actions"]) + int(meta["n_test"])
    cfg = small_config()                                   # 2 epochs each
    cfg["features"]["w2v"]["epoch_rows"] = rows // 4       # ceil(2 * (rows // 4) / rows) = 1
    build.run(paths, cfg, progress=False)
    fs = FeatureStore(paths)
    assert fs.manifest["pretrained"]["feed_w2v"]["epochs"] == 1 == fs.manifest["pretrained"]["author_w2v"]["epochs"]
    direct = make_world(tmp_path / "b", seed=1)
    cfg1 = small_config()
    for kind in ("feed", "author"):
        cfg1["features"]["w2v"][kind]["epochs"] = 1
    build.run(direct, cfg1, progress=False)
    two = make_world(tmp_path / "c", seed=1)
    build.run(two, small_config(), progress=False)
    for name in ("feed_w2v", "author_w2v"):
        a, b, c = (FeatureStore(p).pretrained(name)[1] for p in (paths, direct, two))
        np.testing.assert_array_equal(a, b)
        assert not np.allclose(a, c)
