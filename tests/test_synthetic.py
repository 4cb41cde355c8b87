"""The synthetic WBDC world: official layout, determinism, positive rates, correlated actions,
and a truth that never reaches the training caches."""
from __future__ import annotations

import filecmp
import json
import shutil
from pathlib import Path

import numpy as np
import pandas as pd
import pyarrow.parquet as pq
import pytest
from scipy.special import logit

from conftest import TINY_SEED, run_stage
from wbdc.paths import Paths
from wbdc.schema import ACTIONS, FEED_EMBEDDINGS, FEED_INFO, REAL_POSITIVE_RATES, TEST, USER_ACTION

RAW_FILES = ("user_action.csv", "feed_info.csv", "feed_embeddings.csv", "test_a.csv")
GROUPS = (("like", "forward", "favorite"), ("read_comment", "comment"), ("click_avatar", "follow"))


@pytest.fixture(scope="module")
def world(tiny_root) -> Path:
    return Paths.at(tiny_root).synthetic_world("tiny", TINY_SEED)


# The official headers, written out literally (not read from wbdc.schema, which the writer uses).
OFFICIAL_HEADERS = {
    "user_action.csv": "userid,feedid,date_,device,read_comment,comment,like,play,stay,click_avatar,"
                       "forward,follow,favorite",
    "feed_info.csv": "feedid,authorid,videoplayseconds,description,ocr,asr,bgm_song_id,bgm_singer_id,"
                     "manual_keyword_list,machine_keyword_list,manual_tag_list,machine_tag_list,"
                     "description_char,ocr_char,asr_char",
    "feed_embeddings.csv": "feedid,feed_embedding",
    "test_a.csv": "userid,feedid,device",
}


def test_official_files_and_headers(world):
    raw = world / "wechat_algo_data1"
    for name, header in OFFICIAL_HEADERS.items():
        assert (raw / name).open().readline().rstrip("\n") == header, name
    for spec in (USER_ACTION, FEED_INFO, FEED_EMBEDDINGS, TEST):
        assert ",".join(spec.names) == OFFICIAL_HEADERS[spec.filename], spec.filename
    ua = pd.read_csv(raw / "user_action.csv")
    assert ua["date_"].between(1, 14).all() and set(ua["date_"]) == set(range(1, 15))
    assert (ua[["play", "stay"]] >= 0).all().all()
    assert ua.duplicated(["userid", "feedid"]).any()        # duplicates are real, and generated
    test = pd.read_csv(raw / "test_a.csv")
    feeds = pd.read_csv(raw / "feed_info.csv")
    assert test["feedid"].isin(feeds["feedid"]).all()
    cold = ~test["feedid"].drop_duplicates().isin(ua["feedid"])
    assert 0.02 < cold.mean() < 0.3                          # cold-start feeds on the test day
    emb = pd.read_csv(raw / "feed_embeddings.csv")
    assert set(emb["feedid"]) == set(feeds["feedid"])
    assert {len(s.split()) for s in emb["feed_embedding"].head(200)} == {512}


def test_truth_files_align_with_day14_and_test_rows(world):
    raw, truth = world / "wechat_algo_data1", world / "truth"
    ua = pd.read_csv(raw / "user_action.csv")
    d14 = ua[ua["date_"] == 14]
    prob = pd.read_csv(truth / "day14_prob.csv")
    assert list(prob.columns) == ["userid", "feedid", *ACTIONS]
    assert (prob["userid"].to_numpy() == d14["userid"].to_numpy()).all()
    assert (prob["feedid"].to_numpy() == d14["feedid"].to_numpy()).all()
    test = pd.read_csv(raw / "test_a.csv")
    tt = pd.read_csv(truth / "test_truth.csv")
    assert list(tt.columns) == ["userid", "feedid", "device", *ACTIONS, *[f"p_{a}" for a in ACTIONS]]
    assert tt[["userid", "feedid", "device"]].equals(test[["userid", "feedid", "device"]])
    p = tt[[f"p_{a}" for a in ACTIONS]].to_numpy()
    assert ((p > 0) & (p < 1)).all()
    assert set(np.unique(tt[list(ACTIONS)].to_numpy())) <= {0, 1}


def test_same_preset_and_seed_give_identical_files(world, tmp_path):
    run_stage("make_synthetic.py", tmp_path / "a", "--preset", "tiny", "--seed", str(TINY_SEED), "--quiet")
    again = Paths.at(tmp_path / "a").synthetic_world("tiny", TINY_SEED)
    for sub, names in (("wechat_algo_data1", RAW_FILES), ("truth", ("day14_prob.csv", "test_truth.csv", "world.json"))):
        for n in names:
            assert filecmp.cmp(world / sub / n, again / sub / n, shallow=False), f"{sub}/{n} differs"
    run_stage("make_synthetic.py", tmp_path / "b", "--preset", "tiny", "--seed", str(TINY_SEED + 1), "--quiet")
    other = Paths.at(tmp_path / "b").synthetic_world("tiny", TINY_SEED + 1)
    assert not filecmp.cmp(world / "wechat_algo_data1" / "user_action.csv",
                           other / "wechat_algo_data1" / "user_action.csv", shallow=False)


def test_positive_rates_within_a_quarter_of_the_real_ones(world):
    summary = json.loads((world / "truth" / "world.json").read_text())
    rates = summary["positive_rates"]
    for a in ACTIONS:
        real = REAL_POSITIVE_RATES[a]
        assert abs(rates["true_prob_days1_14"][a] / real - 1) < 0.25, a
    # sampled labels: the tiny world has too few positives of the rarest actions to pin them down
    ua = pd.read_csv(world / "wechat_algo_data1" / "user_action.csv")
    for a in ("read_comment", "like", "click_avatar", "forward"):
        assert abs(ua[a].mean() / REAL_POSITIVE_RATES[a] - 1) < 0.25, (a, ua[a].mean())


def test_actions_are_correlated_within_their_groups(world):
    prob = pd.read_csv(world / "truth" / "day14_prob.csv")
    corr = pd.DataFrame(np.corrcoef(logit(prob[list(ACTIONS)].to_numpy()).T), index=ACTIONS, columns=ACTIONS)
    group_of = {a: i for i, g in enumerate(GROUPS) for a in g}
    within = [corr.loc[a, b] for a in ACTIONS for b in ACTIONS if a < b and group_of[a] == group_of[b]]
    across = [corr.loc[a, b] for a in ACTIONS for b in ACTIONS if a < b and group_of[a] != group_of[b]]
    assert min(within) > max(across) + 0.15, corr.round(2)
    assert max(within) < 0.97, "each action must keep a signal of its own"
    # sampled labels co-occur within a group far more than across groups
    ua = pd.read_csv(world / "wechat_algo_data1" / "user_action.csv")

    def lift(a, b):
        return (ua[a] & ua[b]).mean() / (ua[a].mean() * ua[b].mean())
    assert lift("like", "forward") > 2 * lift("like", "read_comment")
    assert lift("read_comment", "comment") > 2 * lift("read_comment", "like")
    assert lift("click_avatar", "follow") > 2 * lift("click_avatar", "like")


def test_generated_world_round_trips_through_prepare(tiny_root, world):
    prepared = Paths.at(tiny_root).prepared
    ua = pd.read_csv(world / "wechat_algo_data1" / "user_action.csv")
    want = ua.drop_duplicates(["userid", "feedid"], keep="last").reset_index(drop=True)
    got = pd.read_parquet(prepared / "actions.parquet")
    cols = ["userid", "feedid", "date_", "device", *ACTIONS, "play", "stay"]
    assert list(got.columns) == cols
    pd.testing.assert_frame_equal(got[cols].astype("int64"), want[cols].astype("int64"))
    test = pd.read_parquet(prepared / "test.parquet")
    raw_test = pd.read_csv(world / "wechat_algo_data1" / "test_a.csv")
    pd.testing.assert_frame_equal(test.astype("int64"), raw_test.astype("int64"))
    feeds = pd.read_parquet(prepared / "feeds.parquet")
    raw_feeds = pd.read_csv(world / "wechat_algo_data1" / "feed_info.csv")
    assert (feeds["feedid"].to_numpy() == raw_feeds["feedid"].to_numpy()).all()
    assert (feeds["bgm_song_id"].to_numpy() == raw_feeds["bgm_song_id"].fillna(-1).astype(int).to_numpy()).all()


def test_no_truth_reaches_the_training_caches(tiny_root, world, tmp_path):
    """The prepared caches of the synthetic run equal those made from the official files alone
    (the truth folder is not there), and hold no truth column."""
    raw_only = tmp_path / "raw"
    shutil.copytree(world / "wechat_algo_data1", raw_only)
    run_stage("prepare.py", tmp_path / "root", "--data-dir", str(raw_only))
    a, b = Paths.at(tiny_root).prepared, Paths.at(tmp_path / "root").prepared
    for name in ("actions.parquet", "test.parquet", "feeds.parquet"):
        ta, tb = pq.read_table(a / name), pq.read_table(b / name)
        assert ta.equals(tb), name
        assert not [c for c in ta.column_names if c.startswith("p_")], name
    assert np.array_equal(np.load(a / "feed_embeddings.npy"), np.load(b / "feed_embeddings.npy"))
    test_cols = pq.read_schema(a / "test.parquet").names
    assert test_cols == ["userid", "feedid", "device"]
