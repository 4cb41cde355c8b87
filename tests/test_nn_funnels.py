"""Funnel heads (``nn.funnels``): the mixture logit, the config's one-line errors, a run with them."""
from __future__ import annotations

import numpy as np
import pytest
import torch

from test_nn_fakes import FakeStore, small_nn_config
from wbdc.nn.models import funnel_logit, parse_funnels
from wbdc.nn.pipeline import run_offline
from wbdc.schema import ACTIONS


def test_funnel_logit_is_the_total_probability_in_log_space():
    g = torch.Generator().manual_seed(0)
    a, b1, b0 = (torch.randn(1000, generator=g, dtype=torch.float64) * 4 for _ in range(3))
    s = torch.sigmoid
    p = s(a) * s(b1) + (1 - s(a)) * s(b0)
    torch.testing.assert_close(torch.sigmoid(funnel_logit(a, b1, b0)), p)
    # extreme logits stay finite (no sigmoid rounding to 0 or 1)
    big = torch.tensor([-60.0, 60.0])
    assert torch.isfinite(funnel_logit(big, big, -big)).all()


def test_parse_funnels_and_its_errors():
    acts = list(ACTIONS)
    assert parse_funnels(["read_comment>comment", "click_avatar > follow"], acts) == [
        (acts.index("read_comment"), acts.index("comment")), (acts.index("click_avatar"), acts.index("follow"))]
    assert parse_funnels([], acts) == []
    for bad in (["read_comment-comment"], ["read>comment"], ["like>like"]):
        with pytest.raises(ValueError, match=r"^nn.funnels: .* is not FIRST>THEN"):
            parse_funnels(bad, acts)
    with pytest.raises(ValueError, match="later step of two funnels"):
        parse_funnels(["read_comment>comment", "like>comment"], acts)


@pytest.mark.parametrize("arch", ["sb", "mmoe"])
def test_a_net_with_funnels_trains_and_names_its_extra_towers(arch):
    store = FakeStore(rows_per_day=400)
    cfg = small_nn_config(arch, epochs=1)
    cfg["nn"]["funnels"] = ["read_comment>comment", "click_avatar>follow"]
    res = run_offline(store, arch, cfg)
    model = res.model
    assert model.core.towers.n_tasks == len(ACTIONS) + 2
    assert model.task_names(list(ACTIONS))[-2:] == ["comment|not read_comment", "follow|not click_avatar"]
    assert res.preds.shape[1] == 2 + len(ACTIONS)
    p = res.preds[list(ACTIONS)].to_numpy()
    assert np.isfinite(p).all() and (p > 0).all() and (p < 1).all()
    if arch == "mmoe":
        assert len(res.gates) == len(ACTIONS) + 2


def test_task_specs_key_every_tower_by_name():
    from wbdc.nn.models import task_specs
    acts = list(ACTIONS)
    specs = task_specs(acts, parse_funnels(["click_avatar>follow"], acts), ["log_stay"])
    assert [(t.name, t.kind, t.predicted, t.role) for t in specs[-2:]] == [
        ("follow|not click_avatar", "binary", False, "funnel"), ("log_stay", "regression", False, "aux")]
    assert [t.name for t in specs if t.predicted] == acts
    store = FakeStore(rows_per_day=200)
    cfg = small_nn_config("sb", epochs=1)
    cfg["nn"]["funnels"] = ["click_avatar>follow"]
    cfg["nn"]["aux"] = {"tasks": ["log_stay"], "weight": 0.1}
    res = run_offline(store, "sb", cfg)
    model = res.model
    enc = res.encoder
    arr = enc.encode(store.load_day(14, enc.selection.columns()))
    import torch
    with torch.no_grad():
        named = model.named(arr.batch(torch.arange(len(arr))))
        logits = model(arr.batch(torch.arange(len(arr))))
    assert set(named) == {t.name for t in specs} | {f"logit/{a}" for a in acts}
    torch.testing.assert_close(named["logit/like"], logits[:, acts.index("like")])
    torch.testing.assert_close(named["logit/like"], named["like"])          # no funnel: the tower itself
    assert not torch.allclose(named["logit/follow"], named["follow"])       # funnel: the mixture
