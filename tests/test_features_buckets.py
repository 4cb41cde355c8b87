"""The out-of-core feature build: the values do not depend on the number of user buckets, equal
the in-memory build that preceded it, and the store reads a day whole or part by part."""
from __future__ import annotations

import hashlib

import numpy as np
import pandas as pd
import pytest
from test_features_world import make_world, small_config

from wbdc.budget import BudgetError, choose_buckets
from wbdc.features import build
from wbdc.features.partition import bucket_edges
from wbdc.features.store import ROW_KEY, FeatureStore
from wbdc.io import InputError, read_json
from wbdc.paths import Paths


#: sha256 of every day table (columns in order: name, dtype, bytes) and pretrained table of
#: make_world(seed=1) under small_config(), as written by the in-memory build of commit ba8cb9b
#: (one table per day, before user buckets existed), on each kind of CPU it was run on: the
#: floating-point sums (numpy's SIMD kernels, the BLAS under gensim and PCA) round differently
#: with and without AVX-512, so the bytes are per machine kind, and the bucketed build must give
#: the in-memory build's bytes of the machine it runs on (it is one of these, or the test names
#: the digest to add after running ba8cb9b's build there).  A deliberate change to a feature's
#: definition changes them: recompute with `frames_digest` and say so in the commit.
IN_MEMORY_DIGESTS = {
    "cffa3a699a7e544443eb67a3a5ff08ebe1f29077a98fa31cd9fbd212a21d2109": "AVX2 (no AVX-512)",
    "faf67ea7f6f465a4145bc73ca01ac9a4502681397fdd0fcb3960e898630c6931": "AMD EPYC with AVX-512",
}


def frames_digest(fs: FeatureStore) -> str:
    h = hashlib.sha256()
    for d in fs.days:
        df = fs.load_day(d)
        for c in df.columns:
            h.update(c.encode())
            h.update(str(df[c].dtype).encode())
            h.update(np.ascontiguousarray(df[c].to_numpy()).tobytes())
    for name in sorted(fs.manifest["pretrained"]):
        for a in fs.pretrained(name):
            h.update(name.encode())
            h.update(np.ascontiguousarray(a).tobytes())
    return h.hexdigest()


@pytest.fixture(scope="module")
def builds(tmp_path_factory):
    """make_world(seed=1) built in 1, 3 and 5 user buckets."""
    out = {}
    for p in (1, 3, 5):
        paths = make_world(tmp_path_factory.mktemp(f"p{p}"), seed=1)
        summary = build.run(paths, small_config(), progress=False, n_buckets=p)
        assert summary["buckets"] == p
        out[p] = FeatureStore(paths)
    return out


def test_one_bucket_equals_the_in_memory_build_it_replaced(builds):
    assert frames_digest(builds[1]) in IN_MEMORY_DIGESTS, frames_digest(builds[1])


@pytest.mark.parametrize("p", [3, 5])
def test_every_value_is_the_same_whatever_the_number_of_buckets(builds, p):
    one, many = builds[1], builds[p]
    assert len(many.parts(14)) > 1
    for d in one.days:
        pd.testing.assert_frame_equal(one.load_day(d), many.load_day(d), check_exact=True)
    users = one.side_table("users")
    assert list(users.columns[:2]) == ["userid", "date_"] and "day" not in users.columns   # no hive keys
    pd.testing.assert_frame_equal(users, many.side_table("users"), check_exact=True)
    for name in one.manifest["pretrained"]:
        for a, b in zip(one.pretrained(name), many.pretrained(name)):
            assert np.array_equal(a, b), name
    assert frames_digest(many) in IN_MEMORY_DIGESTS


def test_parts_hold_disjoint_user_ranges_and_row_keys_map_back(builds):
    fs = builds[3]
    edges = fs.manifest["buckets"]["user_edges"]
    for d in (2, 9, 14, 15):
        whole = fs.load_day(d, columns=["user_all_count", "user_feed_w2v_0"])
        seen = np.zeros(len(whole), int)
        for b, part in enumerate(fs.iter_day(d, columns=["user_all_count", "user_feed_w2v_0"])):
            users = part["userid"].to_numpy()
            assert ((users >= edges[b]) & (users < edges[b + 1])).all()
            row = part[ROW_KEY].to_numpy()
            seen[row] += 1
            back = whole.iloc[row].reset_index(drop=True)
            pd.testing.assert_frame_equal(part.drop(columns=[ROW_KEY]), back, check_exact=True)
        assert (seen == 1).all()          # every row of the day in exactly one part
        chunks = list(fs.iter_day(d, columns=["user_all_count", "user_feed_w2v_0"], batch_rows=7))
        assert max(len(c) for c in chunks) <= 7 and sum(len(c) for c in chunks) == len(whole)
        joined = pd.concat(chunks, ignore_index=True)
        order = np.argsort(joined[ROW_KEY].to_numpy())
        pd.testing.assert_frame_equal(joined.iloc[order].drop(columns=[ROW_KEY]).reset_index(drop=True),
                                      whole, check_exact=True)
        if d <= 14:
            labels = fs.load_labels(d)
            part = next(fs.iter_day(d, columns=[]))
            assert len(labels.iloc[part[ROW_KEY].to_numpy()]) == len(part)


def test_a_slice_of_a_day_reads_the_row_groups_that_can_hold_it(builds, tiny_root_3_buckets, monkeypatch):
    """``iter_rows(d, first, last)`` yields every row of the slice (with rows of the same row
    groups beside them), reading only the groups whose ``row`` statistics overlap it: in the tiny
    world (as in the official files) a day's rows are in user order, so a slice inside one part
    reads that part alone; where the day interleaves the buckets (``builds``) every part holds
    some of it; a file without statistics is read whole."""
    interleaved = builds[3]
    n = interleaved.n_rows(14)
    row = np.concatenate([c[ROW_KEY].to_numpy() for c in interleaved.iter_rows(14, 5, 6, columns=[])])
    assert {5, 6} <= set(row.tolist()) and len(row) == n
    fs = FeatureStore(Paths.at(tiny_root_3_buckets[0]))
    for d in (2, 14, 15):
        n = fs.n_rows(d)
        for i in range(len(fs.parts(d))):          # the statistics are the groups' own keys
            got = fs.row_ranges(d, i)
            keys = [g[ROW_KEY].to_numpy() for g in (fs.read_row_group(d, i, k, columns=[])
                                                  for k in range(len(fs.row_groups(d, i))))]
            assert got.tolist() == [[int(k.min()), int(k.max())] for k in keys]
        inner = fs.row_ranges(d, 1)[0]
        for first, last in ((0, n - 1), (int(inner[0]) + 2, int(inner[0]) + 9), (n - 3, n - 1)):
            chunks = list(fs.iter_rows(d, first, last, columns=["user_all_count"], batch_rows=5))
            row = np.concatenate([c[ROW_KEY].to_numpy() for c in chunks])
            inside = row[(row >= first) & (row <= last)]
            assert sorted(inside.tolist()) == list(range(first, last + 1))
            assert max(len(c) for c in chunks) <= 5 and len(set(row.tolist())) == len(row)
            if last - first < 10:
                assert len(row) < n / 2            # the other parts were not read
        monkeypatch.setattr(fs, "row_ranges", lambda d, i: None)
        row = np.concatenate([c[ROW_KEY].to_numpy() for c in fs.iter_rows(d, 3, 4, columns=[])])
        assert len(row) == n
        monkeypatch.undo()


def test_gather_gives_the_values_of_load_day_as_float32(builds, tiny_root_3_buckets):
    """``gather`` (LightGBM's reader): the rows asked for, day-table and user-table columns
    alike, equal ``load_day``'s values cast to float32, bit for bit, from a store whose parts
    interleave the day (``builds``) and one in user order; a part read whole equals
    ``read_part``; rows out of order or not in the part are refused."""
    fs_tiny = FeatureStore(Paths.at(tiny_root_3_buckets[0]))
    rng, tables = np.random.default_rng(3), set()
    for fs in (builds[3], fs_tiny):
        names = [c["name"] for c in fs.manifest["columns"]
                 if {"dense", "categorical", "vector"} & set(c["roles"]) and c["name"] not in ("userid", "feedid")]
        tables |= {fs.column_info(c)["table"] for c in names}
        for d in (2, 14, 15):
            whole = fs.load_day(d, names)[names].to_numpy(np.float32)
            n = len(whole)
            for rows in (np.arange(n), np.sort(rng.choice(n, n // 10, replace=False)), np.array([n - 1]),
                         np.zeros(0, np.int64)):
                np.testing.assert_array_equal(fs.gather(d, rows, names, batch_rows=7), whole[rows])
            for i in range(len(fs.parts(d))):
                keys = fs.read_part(d, i, [])[ROW_KEY].to_numpy()
                np.testing.assert_array_equal(fs.gather(d, keys, names, part=i), whole[keys])
                with pytest.raises(InputError, match=rf"^day {d} part {i}: rows differ from the part's listing$"):
                    fs.gather(d, keys[::-1].copy(), names, part=i)
            with pytest.raises(ValueError, match="ascending"):
                fs.gather(d, np.array([3, 1]), names)
            with pytest.raises(InputError, match=rf"^day {d}: 1 of the 2 rows asked for found in the store$"):
                fs.gather(d, np.array([0, n + 5]), names)
    assert tables == {"day", "users"}                   # the user vectors' columns are joined too


def test_bucket_edges_balance_rows_and_cover_every_user():
    rows = np.r_[np.full(100, 10), np.full(100, 30)]       # users 100..199 carry 3x the rows
    edges = bucket_edges(rows, 4)
    assert edges[0] == 0 and edges[-1] == len(rows) and (np.diff(edges) >= 0).all()
    per = [rows[a:b].sum() for a, b in zip(edges[:-1], edges[1:])]
    assert max(per) - min(per) <= 30 and sum(per) == rows.sum()
    heavy = bucket_edges(np.r_[1, 1000, 1], 3)          # one user outweighs a bucket: empties allowed
    assert heavy[0] == 0 and heavy[-1] == 3 and (np.diff(heavy) >= 0).all()


def test_auto_buckets_follow_the_memory_budget(tmp_path):
    paths = make_world(tmp_path, seed=2)
    meta = read_json(paths.prepared / "meta.json")
    meta_rows = meta["n_actions"] + meta["n_test"]
    cfg = small_config()
    cfg["data"]["memory_gb"] = 64
    assert choose_buckets(cfg, paths.prepared) == 1
    from wbdc import budget
    cfg["data"]["memory_gb"] = (budget.FEATURES_FIXED_MB + meta_rows * budget.FEATURES_TOTAL_ROW_BYTES / 2**20
                                + meta_rows * budget.FEATURES_ROW_BYTES / 2**20 / 2.5) / 1024
    assert choose_buckets(cfg, paths.prepared) == 3
    cfg["features"]["buckets"] = 7
    assert choose_buckets(cfg, paths.prepared) == 7
    cfg["features"]["buckets"] = "auto"
    cfg["data"]["memory_gb"] = 0.1
    with pytest.raises(BudgetError, match=r"features: needs about .* GB even in 256 user buckets"):
        choose_buckets(cfg, paths.prepared)


def test_keys_the_buckets_cannot_share_are_refused_in_one_line(tmp_path):
    paths = make_world(tmp_path, seed=3)
    cfg = small_config()
    cfg["features"]["window_stats"]["keys"]["feed_author"] = ["feedid", "authorid"]
    cfg["features"]["window_stats"]["same_day"] = ["feed_author"]
    with pytest.raises(ValueError, match=r"keys.feed_author: a key without userid must be one column"):
        build.run(paths, cfg, progress=False)


def test_the_tiny_preset_in_three_buckets_equals_one(tiny_root, tiny_root_3_buckets):
    """The tiny synthetic world (session fixture, built with the default `auto` = one bucket)
    rebuilt by the stage CLI in three buckets: every day equal."""
    root, r = tiny_root_3_buckets
    assert "in 3 user bucket(s)" in r.stderr
    one, three = FeatureStore(Paths.at(tiny_root)), FeatureStore(Paths.at(root))
    assert len(one.parts(14)) == 1 and len(three.parts(14)) == 3
    for d in one.days:
        pd.testing.assert_frame_equal(one.load_day(d), three.load_day(d), check_exact=True)
