"""A small in-memory stand-in for ``wbdc.features.store.FeatureStore`` used by the nn tests,
plus checks that it keeps the real store's interface.

Labels follow a logistic model of a user x feed affinity plus one dense column, so a net can
learn them; day 15 holds users and feeds that no earlier day has (cold start).
"""
from __future__ import annotations

import inspect

import numpy as np
import pandas as pd
import pytest

from wbdc.schema import ACTIONS

KEYS = ["userid", "feedid", "date_", "device"]
ROW = "row"
GROUP_ROWS = 128      # row group size of the fake parts: several blocks per day, like the real store


class FakeStore:
    def __init__(self, n_users: int = 40, n_feeds: int = 60, rows_per_day: int = 300,
                 days=range(2, 16), seed: int = 0, cold_users: int = 5, cold_feeds: int = 8):
        rng = np.random.default_rng(seed)
        self.days = list(days)
        self.n_users, self.n_feeds = n_users, n_feeds
        n_all_users, n_all_feeds = n_users + cold_users, n_feeds + cold_feeds
        # raw ids deliberately sparse/unordered so vocabularies are really needed
        self.user_ids = rng.choice(np.arange(1000, 5000), n_all_users, replace=False).astype(np.int32)
        self.feed_ids = rng.choice(np.arange(10, 90000), n_all_feeds, replace=False).astype(np.int32)
        self.author_of = rng.integers(0, 12, n_all_feeds).astype(np.int32) * 7 + 3
        self.song_of = np.where(rng.random(n_all_feeds) < 0.3, -1,
                                rng.integers(0, 20, n_all_feeds)).astype(np.int32)
        u_vec = rng.normal(size=(n_all_users, 4))
        f_vec = rng.normal(size=(n_all_feeds, 4))
        bias = np.array([-2.0, -2.3, -3.0, -3.5, -3.5, -4.0, -4.0])
        self._days: dict[int, pd.DataFrame] = {}
        self._labels: dict[int, pd.DataFrame] = {}
        for d in self.days:
            if d == 15:
                u = rng.integers(0, n_all_users, rows_per_day)
                f = rng.integers(0, n_all_feeds, rows_per_day)
            else:
                u = rng.integers(0, n_users, rows_per_day)
                f = rng.integers(0, n_feeds, rows_per_day)
            count = rng.poisson(20, rows_per_day).astype(np.float32)
            rate = rng.random(rows_per_day).astype(np.float32)
            rate[rng.random(rows_per_day) < 0.1] = np.nan
            df = pd.DataFrame({
                "userid": self.user_ids[u], "feedid": self.feed_ids[f],
                "date_": np.full(rows_per_day, d, np.int8),
                "device": rng.integers(1, 3, rows_per_day).astype(np.int8),
                "authorid": self.author_of[f], "bgm_song_id": self.song_of[f],
                "bgm_singer_id": (self.song_of[f] // 2).astype(np.int32),
                "user_count": count, "feed_rate": rate,
                "neg_score": rng.normal(size=rows_per_day).astype(np.float32),
            })
            self._days[d] = df
            if d <= 14:
                aff = (u_vec[u] * f_vec[f]).sum(1) + 1.5 * np.nan_to_num(rate - 0.5)
                p = 1 / (1 + np.exp(-(bias[None, :] + 1.2 * aff[:, None])))
                y = (rng.random(p.shape) < p).astype(np.int8)
                self._labels[d] = pd.DataFrame(y, columns=list(ACTIONS))
        self.keywords = [rng.integers(100, 140, rng.integers(0, 5)).astype(np.int32)
                         for _ in range(n_all_feeds)]
        self.tags = [rng.integers(1, 30, rng.integers(1, 4)).astype(np.int32)
                     for _ in range(n_all_feeds)]
        self._pretrained = {
            "feed_pca": (self.feed_ids.copy(), rng.normal(size=(n_all_feeds, 8)).astype(np.float32)),
            "author_w2v": (np.unique(self.author_of),
                           rng.normal(size=(len(np.unique(self.author_of)), 4)).astype(np.float32)),
        }
        self.manifest = {"pretrained": ["feed_pca", "author_w2v"]}

    def columns(self, role: str) -> list[str]:
        return {"key": list(KEYS),
                "categorical": ["authorid", "bgm_song_id", "bgm_singer_id"],
                "dense": ["user_count", "feed_rate", "neg_score"]}[role]

    def cardinality(self, col: str) -> int:
        return int(max(int(df[col].max()) for df in self._days.values())) + 1

    def load_day(self, d: int, columns=None) -> pd.DataFrame:
        df = self._days[d]
        if columns is None:
            return df.copy()
        cols = list(dict.fromkeys([*KEYS, *columns]))
        return df[cols].copy()

    def n_rows(self, d: int) -> int:
        return len(self._days[d])

    # -- the partitioned interface: two user "buckets" (userid parity) per day, row groups of
    # GROUP_ROWS rows, each row carrying its position in the day (like the real store)
    def _part_rows(self, d: int, index: int) -> np.ndarray:
        return np.flatnonzero(self._days[d]["userid"].to_numpy() % 2 == index)

    def parts(self, d: int) -> list[dict]:
        return [{"file": f"day={d:02d}/part-{i:02d}", "rows": len(self._part_rows(d, i))} for i in (0, 1)]

    def row_groups(self, d: int, index: int) -> list[int]:
        n = len(self._part_rows(d, index))
        return [min(GROUP_ROWS, n - s) for s in range(0, n, GROUP_ROWS)]

    def _rows(self, d: int, rows: np.ndarray, columns) -> pd.DataFrame:
        df = self.load_day(d, columns).iloc[rows].reset_index(drop=True)
        df[ROW] = rows.astype(np.int64)
        return df

    def read_row_group(self, d: int, index: int, group: int, columns=None) -> pd.DataFrame:
        rows = self._part_rows(d, index)[group * GROUP_ROWS:(group + 1) * GROUP_ROWS]
        return self._rows(d, rows, columns)

    def iter_day(self, d: int, columns=None, batch_rows=None):
        for i in (0, 1):
            yield self._rows(d, self._part_rows(d, i), columns)

    def packed_labels(self, days) -> dict:
        out = {}
        for d in days:
            y = self.load_labels(d).to_numpy(np.uint8)
            out[int(d)] = (y << np.arange(y.shape[1], dtype=np.uint8)).sum(1).astype(np.uint8)
        return out

    def labelled_history(self, before_day: int):
        days = [d for d in self.days if d < before_day and d in self._labels]
        packed = self.packed_labels(days)
        return (np.concatenate([self._days[d]["userid"].to_numpy(np.int32) for d in days]),
                np.concatenate([self._days[d]["feedid"].to_numpy(np.int32) for d in days]),
                np.concatenate([self._days[d]["date_"].to_numpy(np.int8) for d in days]),
                np.concatenate([packed[d] for d in days]))

    def engagement(self, days, names) -> dict:
        """Deterministic fake targets: finish ratio from the user count, log stay from the rate."""
        out = {}
        for d in days:
            df = self._days[int(d)]
            cols = {"finish_ratio": np.clip(df["user_count"].to_numpy(np.float64) / 20.0, 0, 3),
                    "log_stay": np.log1p(np.nan_to_num(df["feed_rate"].to_numpy(np.float64)) * 10)}
            out[int(d)] = np.stack([cols[n] for n in names], axis=1).astype(np.float32)
        return out

    def load_days(self, days, columns=None) -> pd.DataFrame:
        return pd.concat([self.load_day(d, columns) for d in days], ignore_index=True)

    def load_labels(self, d: int) -> pd.DataFrame:
        if d not in self._labels:
            raise KeyError(f"no labels for day {d}")
        return self._labels[d].copy()

    def pretrained(self, name: str):
        return self._pretrained[name]

    def pretrained_key(self, name: str) -> str:
        return "authorid" if name.startswith("author") else "feedid"

    def feed_lists(self) -> dict:
        return {"manual_keyword_list": (self.feed_ids.copy(), list(self.keywords)),
                "manual_tag_list": (self.feed_ids.copy(), list(self.tags))}


def small_nn_config(arch: str = "mmoe", **train) -> dict:
    """The repo's nn config with tiny dims for fast tests."""
    from wbdc.config import load_defaults

    cfg = load_defaults()
    nn = cfg["nn"]
    nn["threads"] = 1
    nn["embedding"].update({"dim": 4, "bag_dim": 4, "history_dim": 4})
    nn["features"]["history_len"] = 8
    nn["train"].update({"batch_size": 256, "epochs": 2, "progress": False, "lr": 0.01, **train})
    nn["sb"].update({"bottom_dims": [16, 8], "tower_dims": [4]})
    nn["mmoe"].update({"n_experts": 3, "expert_dims": [16, 8], "tower_dims": [4]})
    nn["omoe"].update({"n_experts": 3, "expert_dims": [16, 8], "tower_dims": [4]})
    nn["ple"].update({"n_levels": 2, "n_specific": 1, "n_shared": 2, "expert_dims": [12, 8],
                      "tower_dims": [4]})
    cfg.setdefault("data", {})["seed"] = 11
    return cfg


def test_fake_store_labels_align_with_days():
    s = FakeStore(rows_per_day=50)
    for d in (2, 14):
        assert len(s.load_labels(d)) == len(s.load_day(d)) == 50
        assert list(s.load_labels(d).columns) == list(ACTIONS)
    with pytest.raises(KeyError):
        s.load_labels(15)
    # day 15 really holds ids that days <= 14 never show
    seen = set(s.load_days([d for d in s.days if d <= 14])["userid"])
    assert not set(s.load_day(15)["userid"]) <= seen


def test_fake_store_has_the_real_store_interface():
    from wbdc.features.store import FeatureStore as real
    for name in ("columns", "cardinality", "load_day", "load_days", "load_labels", "pretrained",
                 "pretrained_key", "feed_lists", "n_rows", "parts", "row_groups", "read_row_group",
                 "iter_day", "packed_labels", "labelled_history", "engagement"):
        assert callable(getattr(real, name, None)), f"FeatureStore lacks {name}"
        ours = inspect.signature(getattr(FakeStore, name)).parameters
        theirs = inspect.signature(getattr(real, name)).parameters
        assert list(ours)[:2] == list(theirs)[:2], name
