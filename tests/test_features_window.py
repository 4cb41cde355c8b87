"""Window statistics read exactly days [d-w, d-1]: hand-computed answers on a hand-built
table, and agreement with a plain pandas reference on a random table."""
from __future__ import annotations

import numpy as np
import pandas as pd
import pytest
from test_features_world import feeds_table, make_world, small_config, write_prepared

from wbdc.features import build
from wbdc.features.history import DailyTable, window_days
from wbdc.features.store import FeatureStore
from wbdc.schema import ACTIONS, EMBEDDING_DIM

A = 2.0  # prior strength used below


def hand_world(root):
    rng = np.random.default_rng(0)
    #            feed: 10   11   12   13   14
    feeds = feeds_table([10, 11, 12, 13, 14], [1, 1, 2, 3, 2], [10, 20, 40, 10, 30],
                        [-1, 3, 4, 5, 4], [-1, 2, 2, 2, 2],
                        [[], [7, 8], [9], [1], [2]], [[5], [], [5, 6], [], [6]], rng)
    rows = [  # userid, feedid, date_, labels, play, stay
        (0, 10, 1, {"read_comment": 1}, 5000, 6000),
        (1, 10, 1, {"like": 1}, 10000, 12000),
        (0, 11, 2, {"like": 1}, 20000, 21000),
        (1, 11, 3, {"read_comment": 1, "follow": 1}, 4000, 5000),
        (1, 12, 3, {"comment": 1}, 40000, 41000),
        (0, 12, 4, {"read_comment": 1, "like": 1}, 20000, 30000),
        (0, 14, 5, {"like": 1}, 3000, 4000),
        (1, 14, 5, {"read_comment": 1}, 30000, 30000),
    ]
    a = pd.DataFrame([{"userid": u, "feedid": f, "date_": d, "device": 1, "play": p, "stay": s,
                       **{act: lab.get(act, 0) for act in ACTIONS}} for u, f, d, lab, p, s in rows])
    test = pd.DataFrame({"userid": [0, 1, 2], "feedid": [13, 10, 14], "device": [2, 2, 1]})
    emb = rng.normal(size=(5, EMBEDDING_DIM)).astype(np.float32)
    return write_prepared(root, a, test, feeds, np.array([10, 11, 12, 13, 14]), emb)


def hand_config():
    cfg = small_config(days=[2, 5, 15])
    cfg["features"]["window_stats"] = {
        "prior_strength": A, "cold_flags": True,
        "keys": {"user": ["userid"], "feed": ["feedid"], "author": ["authorid"],
                 "user_author": ["userid", "authorid"], "singer": ["bgm_singer_id"], "tag": ["manual_tag_1"]},
        "blocks": [
            {"key": "user", "windows": [2, "all"], "actions": "all",
             "stats": ["count", "sum", "rate", "play_mean", "stay_mean", "finish_mean", "active_days"]},
            {"key": "feed", "windows": ["all"], "stats": ["count", "sum", "rate"], "actions": "main"},
            {"key": "author", "windows": ["all"], "stats": ["count", "sum"], "actions": ["read_comment"]},
            {"key": "user_author", "windows": ["all"], "stats": ["count"]},
            {"key": "singer", "windows": ["all"], "stats": ["count"]},
            {"key": "tag", "windows": ["all"], "stats": ["count"]},
        ],
        "same_day": ["user", "feed"],
        "distinct": [{"name": "user_n_authors", "key": "user", "of": "author", "windows": [2, "all"]}],
    }
    return cfg


@pytest.fixture(scope="module")
def hand_store(tmp_path_factory):
    paths = hand_world(tmp_path_factory.mktemp("hand"))
    build.run(paths, hand_config(), progress=False)
    return FeatureStore(paths)


def test_window_days_clip_and_all():
    assert window_days(5, 2) == (3, 4)
    assert window_days(2, 3) == (1, 1)
    assert window_days(5, "all") == (1, 4)
    assert window_days(15, 7, first_day=1) == (8, 14)


def test_user_window_two_reads_days_three_and_four(hand_store):
    df = hand_store.load_day(5).set_index("userid")
    # global rates over days 1..4 (6 rows): read_comment 3/6, like 3/6, comment 1/6, follow 1/6
    u0, u1 = df.loc[0], df.loc[1]
    assert u0["user_w2_count"] == 1 and u1["user_w2_count"] == 2
    assert u0["user_w2_sum_read_comment"] == 1 and u0["user_w2_sum_like"] == 1
    assert u1["user_w2_sum_read_comment"] == 1 and u1["user_w2_sum_follow"] == 1
    assert u1["user_w2_sum_like"] == 0 and u1["user_w2_sum_comment"] == 1
    assert u0["user_w2_rate_read_comment"] == pytest.approx((1 + A * 0.5) / (1 + A))
    assert u1["user_w2_rate_read_comment"] == pytest.approx((1 + A * 0.5) / (2 + A))
    assert u1["user_w2_rate_follow"] == pytest.approx((1 + A / 6) / (2 + A))
    assert u1["user_w2_rate_click_avatar"] == pytest.approx(0.0)
    assert u0["user_w2_play_mean"] == pytest.approx(20.0) and u0["user_w2_stay_mean"] == pytest.approx(30.0)
    assert u1["user_w2_play_mean"] == pytest.approx(22.0) and u1["user_w2_stay_mean"] == pytest.approx(23.0)
    assert u0["user_w2_finish_mean"] == pytest.approx(20000 / 40000)
    assert u1["user_w2_finish_mean"] == pytest.approx((4000 / 20000 + 40000 / 40000) / 2)
    assert u0["user_w2_active_days"] == 1 and u1["user_w2_active_days"] == 1


def test_all_window_reads_every_earlier_day(hand_store):
    df = hand_store.load_day(5).set_index("userid")
    u0 = df.loc[0]
    assert u0["user_all_count"] == 3 and u0["user_all_active_days"] == 3
    assert u0["user_all_sum_read_comment"] == 2 and u0["user_all_sum_like"] == 2
    assert u0["user_all_rate_like"] == pytest.approx((2 + A * 0.5) / (3 + A))
    assert u0["user_all_play_mean"] == pytest.approx(15.0)
    assert u0["user_all_finish_mean"] == pytest.approx((0.5 + 1.0 + 0.5) / 3)
    assert df.loc[1, "user_all_active_days"] == 2
    # distinct authors: all days (feeds 10, 11 -> author 1; 12 -> author 2); days 3..4 only
    assert u0["user_n_authors_all"] == 2 and u0["user_n_authors_w2"] == 1
    assert df.loc[1, "user_n_authors_w2"] == 2


def test_day_two_sees_only_day_one(hand_store):
    df = hand_store.load_day(2)
    assert df["userid"].tolist() == [0]
    r = df.iloc[0]
    assert r["user_w2_count"] == 1 and r["user_all_count"] == 1  # window [0, 1] clipped to day 1
    assert r["user_w2_sum_read_comment"] == 1
    # global prior from day 1 alone: read_comment 1/2, like 1/2
    assert r["user_all_rate_like"] == pytest.approx((0 + A * 0.5) / (1 + A))


def test_other_keys_cold_flags_and_same_day(hand_store):
    df = hand_store.load_day(5)
    assert df["feedid"].tolist() == [14, 14]
    r = df.iloc[0]
    # feed 14 first appears on day 5: zero counts, cold flag, rate = prior
    assert r["feed_all_count"] == 0 and r["feed_cold"] == 1 and r["feed_all_sum_like"] == 0
    assert r["feed_all_rate_like"] == pytest.approx(0.5)
    assert r["feed_today_count"] == 2 and r["user_today_count"] == 1
    # author 2 = feed 12: rows on days 3 and 4, one read_comment
    assert r["author_all_count"] == 2 and r["author_all_sum_read_comment"] == 1 and r["author_cold"] == 0
    # (user 0, author 2): one row (day 4); (user 1, author 2): one row (day 3)
    assert df["user_author_all_count"].tolist() == [1, 1]
    # singer 2 (stored 3): feeds 11 and 12, four rows; first tag of feed 14 is 6 (stored 7): never seen
    assert r["bgm_singer_id"] == 3 and r["singer_all_count"] == 4
    assert r["manual_tag_1"] == 7 and r["tag_all_count"] == 0 and r["tag_cold"] == 1


def test_test_day_uses_days_up_to_fourteen(hand_store):
    df = hand_store.load_day(15)
    assert df["userid"].tolist() == [0, 1, 2] and df["feedid"].tolist() == [13, 10, 14]
    # window 2 = days 13..14: no rows -> zero counts, prior rate from all 8 labelled rows
    assert (df["user_w2_count"] == 0).all()
    assert df["user_w2_rate_read_comment"].tolist() == pytest.approx([4 / 8] * 3)
    assert df["user_all_count"].tolist() == [4, 4, 0]
    assert df["user_cold"].tolist() == [0, 0, 1] and df["feed_cold"].tolist() == [1, 0, 0]
    assert df.loc[1, "feed_all_sum_like"] == 1
    # a cold user's means fall back to the global means
    assert df.loc[2, "user_all_play_mean"] == pytest.approx(132000 / 8 / 1000)


def test_history_refuses_to_read_past_its_cut():
    t = DailyTable.aggregate(np.array([0, 1, 0]), np.array([1, 2, 3]), 2, {"x": np.array([1, 2, 3])})
    cut = t.before(3)
    assert cut.last_day == 2 and cut.window_sum("x", 1, 2).tolist() == [1.0, 2.0]
    with pytest.raises(ValueError, match="past the history's last day 2"):
        cut.window_sum("x", 1, 3)


# ------------------------------------------------------------------ plain pandas reference

def reference(actions: pd.DataFrame, target: pd.DataFrame, keys: list[str], d: int, w, a: float):
    lo, hi = window_days(d, w)
    hist = actions[(actions["date_"] >= lo) & (actions["date_"] <= hi)]
    allh = actions[actions["date_"] < d]
    p = {act: allh[act].mean() for act in ACTIONS}
    g = hist.groupby(keys).agg(count=("date_", "size"), play=("play", "sum"), fin=("finish", "sum"),
                               days=("date_", "nunique"), **{act: (act, "sum") for act in ACTIONS})
    m = target[keys].merge(g, left_on=keys, right_index=True, how="left").fillna(0.0)
    out = {"count": m["count"], "active_days": m["days"],
           "play_mean": np.where(m["count"] > 0, m["play"] / m["count"].clip(lower=1), allh["play"].mean()) / 1000,
           "finish_mean": np.where(m["count"] > 0, m["fin"] / m["count"].clip(lower=1), allh["finish"].mean())}
    for act in ACTIONS:
        out[f"sum_{act}"] = m[act]
        out[f"rate_{act}"] = (m[act] + a * p[act]) / (m["count"] + a)
    return {k: np.asarray(v, dtype=np.float64) for k, v in out.items()}


def test_random_world_matches_pandas_reference(tmp_path):
    paths = make_world(tmp_path, n_users=25, n_feeds=40, rows_per_day=100, seed=3)
    cfg = small_config(days=[2, 4, 8, 14, 15])
    ws = cfg["features"]["window_stats"]
    full = ["count", "sum", "rate", "play_mean", "finish_mean", "active_days"]
    ws["blocks"] = [{"key": k, "windows": [3, 7, "all"], "stats": full, "actions": "all"}
                    for k in ("user", "feed", "author", "user_author")]
    build.run(paths, cfg, progress=False)
    fs = FeatureStore(paths)
    actions = pd.read_parquet(paths.prepared / "actions.parquet")
    feeds = fs.side_table("feeds")[["feedid", "authorid", "videoplayseconds"]]
    actions = actions.merge(feeds, on="feedid", how="left")
    actions["finish"] = actions["play"] / (actions["videoplayseconds"] * 1000.0)
    keymap = {"user": ["userid"], "feed": ["feedid"], "author": ["authorid"], "user_author": ["userid", "authorid"]}
    checked = 0
    for d in fs.days:
        df = fs.load_day(d)
        for name, keys in keymap.items():
            for w in (3, 7, "all"):
                ref = reference(actions, df, keys, d, w, ws["prior_strength"])
                wl = "all" if w == "all" else f"w{w}"
                for stat, exp in ref.items():
                    got = df[f"{name}_{wl}_{stat}"].to_numpy(np.float64)
                    np.testing.assert_allclose(got, exp, rtol=1e-5, atol=1e-6, err_msg=f"{name}_{wl}_{stat} day {d}")
                    checked += 1
    assert checked == 5 * 4 * 3 * 18


def test_sums_over_the_keys_asked_for_equal_the_sums_over_every_key_cut_to_them():
    """``window_sum_of`` and ``history_mean`` add up only the rows of the keys asked for (a user
    bucket's users, not every user of the world): bit-identical to summing every key and
    cutting, for vector and scalar columns, per-row ids with repeats, absent keys and none."""
    from wbdc.features.history import aggregate_vectors, history_mean

    rng = np.random.default_rng(5)
    n_keys, dim, m = 5_000, 8, 40_000
    key, day = rng.integers(0, n_keys, m), np.sort(rng.integers(1, 14, m))
    t = aggregate_vectors(key, day, n_keys, rng.integers(-1, 300, m), rng.normal(size=(300, dim)))
    for lo, hi in ((1, 13), (4, 9), (7, 7)):
        for keys in (np.unique(rng.integers(0, n_keys, 700)), np.arange(n_keys), np.array([3, n_keys - 1]),
                     np.zeros(0, np.int64)):
            for name in ("count", "vec"):
                assert np.array_equal(t.window_sum_of(name, lo, hi, keys), t.window_sum(name, lo, hi)[keys])
        ids = rng.integers(0, n_keys, 3_000)          # per-row ids: repeats, some without history
        cnt = t.window_sum("count", lo, hi)
        mean = t.window_sum("vec", lo, hi) / np.maximum(cnt, 1)[:, None]
        got_mean, got_cnt = history_mean(t.before(hi + 1), ids, lo, hi)
        assert np.array_equal(got_mean, mean[ids]) and np.array_equal(got_cnt, cnt[ids])
        assert (got_cnt == 0).any() and (got_cnt > 0).any()
    empty_mean, empty_cnt = history_mean(t, np.array([1, 2]), 5, 4)
    assert empty_mean.shape == (2, dim) and not empty_cnt.any()
