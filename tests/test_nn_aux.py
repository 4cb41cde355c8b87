"""Auxiliary engagement tasks (``nn.aux``): the store's targets, their path through the rows
(in memory and streamed) and a net trained with them."""
from __future__ import annotations

import numpy as np
import pandas as pd
import pytest
import torch

from test_nn_fakes import FakeStore, small_nn_config
from wbdc.nn.data import Encoder, StreamedRows, select_features
from wbdc.nn.pipeline import build_net, run_offline
from wbdc.schema import ACTIONS


def test_engagement_targets_of_the_real_store(tiny_root):
    from wbdc.features.store import FeatureStore
    from wbdc.paths import Paths
    store = FeatureStore(Paths(tiny_root))
    got = store.engagement([3, 5], ["finish_ratio", "log_stay"])
    acts = pd.read_parquet(tiny_root / "data/prepared/actions.parquet")
    feeds = pd.read_parquet(tiny_root / "data/prepared/feeds.parquet").set_index("feedid")
    for d in (3, 5):
        day = acts[acts["date_"] == d].reset_index(drop=True)
        assert got[d].shape == (store.n_rows(d), 2) and got[d].dtype == np.float32
        secs = feeds.loc[day["feedid"], "videoplayseconds"].to_numpy(np.float64)
        want = np.clip(day["play"].to_numpy(np.float64) / 1000.0 / secs, 0, 3)
        np.testing.assert_allclose(got[d][:, 0], want, rtol=1e-6)
        np.testing.assert_allclose(got[d][:, 1], np.log1p(day["stay"].to_numpy(np.float64) / 1000.0), rtol=1e-6)
    with pytest.raises(ValueError, match="unknown engagement target 'watch'"):
        store.engagement([3], ["watch"])
    with pytest.raises(ValueError, match="no labels for day 15"):
        store.engagement([15], ["log_stay"])


@pytest.fixture(scope="module")
def store():
    return FakeStore(rows_per_day=400)


def test_streamed_and_in_memory_rows_carry_the_targets_row_for_row(store):
    cfg = small_nn_config("sb")
    sel = select_features(store, cfg["nn"]["features"])
    days = [3, 4]
    enc = Encoder.fit(store.load_days(days, sel.columns()), store, sel)
    rows = StreamedRows(store, enc, days, True, buffer_rows=300, prefetch=False, aux=["log_stay"])
    want = np.concatenate([store.engagement([d], ["log_stay"])[d] for d in days])
    mem = rows.materialize()
    np.testing.assert_array_equal(mem.aux.numpy(), want)
    seen = np.zeros(len(rows), bool)
    for pos, batch in rows.ordered_batches(128):
        np.testing.assert_array_equal(batch["aux"].numpy(), want[pos])
        seen[pos] = True
    assert seen.all()
    g = torch.Generator().manual_seed(0)
    n = sum(len(b["aux"]) for b in rows.epoch_batches(256, g))
    assert n == len(rows)
    assert StreamedRows(store, enc, days, True, aux=[]).aux is None


def test_a_net_with_auxiliary_towers_learns_them_and_predicts_the_actions_only(store):
    cfg = small_nn_config("mmoe", epochs=2)
    cfg["nn"]["aux"] = {"tasks": ["finish_ratio", "log_stay"], "weight": 1.0}
    res = run_offline(store, "mmoe", cfg)
    model = res.model
    assert model.core.towers.n_tasks == len(ACTIONS) + 2 and model.aux == ["finish_ratio", "log_stay"]
    assert list(res.preds.columns) == ["userid", "feedid", *ACTIONS]
    # the towers fit the targets better than their mean would
    sel = res.encoder.selection
    day = [d for d in store.days if d <= 13]
    rows = StreamedRows(store, res.encoder, day, True, prefetch=False, aux=["finish_ratio", "log_stay"]).materialize()
    model.eval()
    with torch.no_grad():
        b = rows.batch(torch.arange(len(rows)))
        logits, aux = model(b, with_aux=True)
    assert logits.shape == (len(rows), len(ACTIONS))
    mse = ((aux - b["aux"]) ** 2).mean(0)
    var = b["aux"].var(0)
    assert (mse < 0.9 * var).all(), (mse, var)
    assert len(res.gates) == len(ACTIONS) + 2 and list(res.gates["action"])[-2:] == ["finish_ratio", "log_stay"]
    assert sel.columns()       # the selection is unchanged by the auxiliary tasks
