"""Leak check: scrambling every label, play and stay of day d and later leaves every feature
of days <= d bit-identical (and does change later days, so the check has teeth).  The scrambled
world is built in one user bucket and in three (the out-of-core path), and compared with the
one-bucket build of the original world."""
from __future__ import annotations

import numpy as np
import pandas as pd
import pyarrow as pa
import pyarrow.parquet as pq
import pytest
from test_features_world import make_world, small_config

from wbdc.features import build
from wbdc.features.store import FeatureStore
from wbdc.schema import ACTIONS


def scramble_from(paths, d: int, seed: int) -> None:
    """Permute and flip every label and permute play / stay on rows of day >= d, in place."""
    path = paths.prepared / "actions.parquet"
    a = pd.read_parquet(path)
    rng = np.random.default_rng(seed)
    late = np.flatnonzero(a["date_"].to_numpy() >= d)
    for c in (*ACTIONS, "play", "stay"):
        v = a[c].to_numpy().copy()
        v[late] = rng.permutation(v[late])
        if c in ACTIONS:
            flip = rng.random(len(late)) < 0.3
            v[late[flip]] = 1 - v[late[flip]]
        a[c] = v.astype(a[c].dtype)
    pq.write_table(pa.Table.from_pandas(a, preserve_index=False), path)


def leak_config() -> dict:
    """The test config with every optional family on (per-action interest vectors on the PCA
    and word2vec tables; the same-day similarities, which read day d's exposures; the
    seen-history similarities)."""
    cfg = small_config()
    cfg["features"]["pca"]["action_sims"] = "all"
    cfg["features"]["w2v"]["action_sims"] = "main"
    cfg["features"]["pca"]["today_sims"] = cfg["features"]["w2v"]["today_sims"] = True
    cfg["features"]["pca"]["seen_sims"] = ["all", 3]
    return cfg


@pytest.fixture(scope="module")
def original(tmp_path_factory):
    paths = make_world(tmp_path_factory.mktemp("orig"), seed=7)
    build.run(paths, leak_config(), progress=False)
    return paths


@pytest.mark.parametrize("buckets", [1, 3])
@pytest.mark.parametrize("d", [5, 12])
def test_scrambling_day_d_and_later_leaves_day_d_identical(original, tmp_path, d, buckets):
    paths = make_world(tmp_path, seed=7)
    scramble_from(paths, d, seed=d)
    summary = build.run(paths, leak_config(), progress=False, n_buckets=buckets)
    assert summary["buckets"] == buckets
    assert summary["built"] == list(range(2, 16))
    fs0, fs1 = FeatureStore(original), FeatureStore(paths)
    assert fs0.columns("dense") == fs1.columns("dense")
    for day in range(2, d + 1):
        a, b = fs0.load_day(day), fs1.load_day(day)   # includes the joined user vectors
        pd.testing.assert_frame_equal(a, b, check_exact=True)
    # the scramble really changed the labels and hence later features
    assert not fs0.load_labels(d).equals(fs1.load_labels(d))
    later = fs0.load_day(d + 1), fs1.load_day(d + 1)
    changed = [c for c in fs0.columns("dense") if not later[0][c].equals(later[1][c])]
    assert any(c.startswith("user_w3_rate") for c in changed)
    assert "user_feed_pca_affinity" in changed or "user_engaged_count" in changed
    assert "user_like_pca_sim" in changed and "user_read_comment_feed_w2v_sim" in changed
