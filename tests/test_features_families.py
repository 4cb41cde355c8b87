"""The feature-family interface: a new family is one class; its columns reach the manifest and
the store, its hooks see the rows the build promises (shared day = every bucket in prepared
order, bucket = whole users), and its values do not depend on the number of buckets."""
from __future__ import annotations

import numpy as np
import pandas as pd
import pytest
from test_features_world import make_world, small_config

from wbdc.features import build
from wbdc.features.families import FAMILIES, Family, _col
from wbdc.features.store import FeatureStore


class PreviousDay(Family):
    """Toy family: the feed's exposures on day d-1 over every user (shared hook) and the
    user's exposures on day d-1 (bucket hook); label-free."""
    name = "previous_day"

    def columns(self):
        return [_col("feed_prev_day_expo", "float32", ["dense"], "previous_day"),
                _col("user_prev_day_expo", "float32", ["dense"], "previous_day")]

    def shared_day(self, d, rows):
        self.__dict__.setdefault("feed", {})[d] = np.bincount(rows.expo["feedid"], minlength=1000)
        assert np.array_equal(rows.row, np.arange(len(rows.row)))     # the whole day, in order

    def open_bucket(self, rows):
        return rows

    def transform(self, d, rs, state):
        r = rs.day_rows(d)
        prev = rs.day_rows(d - 1)
        users = np.bincount(rs.expo["userid"][prev], minlength=1000)
        feed = self.feed.get(d - 1, np.zeros(1000, np.int64))
        return {"feed_prev_day_expo": feed[rs.expo["feedid"][r]].astype(np.float32),
                "user_prev_day_expo": users[rs.expo["userid"][r]].astype(np.float32)}, {}


@pytest.mark.parametrize("buckets", [1, 3])
def test_a_new_family_is_one_class(tmp_path, monkeypatch, buckets):
    monkeypatch.setattr(build, "FAMILIES", (*FAMILIES, PreviousDay))
    paths = make_world(tmp_path, seed=6)
    build.run(paths, small_config(days=[2, 5, 15]), progress=False, n_buckets=buckets)
    fs = FeatureStore(paths)
    assert fs.manifest["families"] == ["ids", "static", "window_stats", "w2v", "pca", "previous_day"]
    assert fs.columns("dense", groups=["previous_day"]) == ["feed_prev_day_expo", "user_prev_day_expo"]
    actions = pd.read_parquet(paths.prepared / "actions.parquet")
    test = pd.read_parquet(paths.prepared / "test.parquet").assign(date_=15)
    expo = pd.concat([actions, test], ignore_index=True)
    for d in (2, 5, 15):
        df = fs.load_day(d, columns=["feed_prev_day_expo", "user_prev_day_expo"])
        prev = expo[expo["date_"] == d - 1]
        want_feed = df["feedid"].map(prev["feedid"].value_counts()).fillna(0).to_numpy()
        want_user = df["userid"].map(prev["userid"].value_counts()).fillna(0).to_numpy()
        assert np.array_equal(df["feed_prev_day_expo"].to_numpy(), want_feed)
        assert np.array_equal(df["user_prev_day_expo"].to_numpy(), want_user)
        assert want_user.sum() > 0


def test_word2vec_auto_is_one_worker_up_to_the_row_limit_and_corpus_file_threads_above():
    from wbdc.features.families import w2v_corpus_file, w2v_deterministic, w2v_workers
    f = {"w2v": {"deterministic": "auto", "auto_max_rows": 1000, "workers": 2, "corpus_file": "auto"}}
    assert w2v_deterministic(f, 1000) and w2v_workers(f, 1000) == 1 and not w2v_corpus_file(f, 1000)
    assert not w2v_deterministic(f, 1001) and w2v_workers(f, 1001) == 2 and w2v_corpus_file(f, 1001)
    f["w2v"].update(deterministic=True, corpus_file=True)           # explicit values win at any size
    assert w2v_workers(f, 10**9) == 1 and w2v_corpus_file(f, 10)
    f["w2v"].update(deterministic=False, corpus_file=False)
    assert w2v_workers(f, 10) == 2 and not w2v_corpus_file(f, 10**9)


def test_the_default_keeps_one_worker_through_full_and_threads_at_final():
    from wbdc.config import resolve_argv
    from wbdc.features.families import w2v_workers
    fcfg = resolve_argv([])["features"]
    assert w2v_workers(fcfg, 7_767_471) == 1            # full: actions + test rows
    assert w2v_workers(fcfg, 77_363_460) == 2           # final
