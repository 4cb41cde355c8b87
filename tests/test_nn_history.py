"""The nets' DIN-style history block: the (user, day) table, its no-leak rule, the encoder's key
column, the attention block and the pipeline with it (fake store; the real store's door in
test ``test_labelled_history_of_the_real_store_stops_before_the_day``)."""
from __future__ import annotations

import numpy as np
import pandas as pd
import pytest
import torch

from test_nn_fakes import FakeStore, small_nn_config
from wbdc.nn.data import Encoder, select_features
from wbdc.nn.history import build_history, history_windows, pair_codes
from wbdc.nn.inputs import HistoryAttention, HistoryField
from wbdc.nn.pipeline import build_net, load_checkpoint, predict_rows, run_offline, save_checkpoint


def test_windows_are_the_last_rows_before_the_day_in_file_order():
    #            user 7: d1 d1 d2 d3 | user 9: d2
    userid = np.array([7, 7, 9, 7, 7], np.int32)
    feedid = np.array([10, 11, 50, 12, 13], np.int32)
    day = np.array([1, 1, 2, 2, 3], np.int8)
    bits = np.array([1, 2, 4, 8, 16], np.uint8)
    t = history_windows(userid, feedid, day, bits, days=[2, 3, 4], max_len=2)
    got = {int(c): (list(f), list(b), int(n)) for c, f, b, n in zip(t.codes, t.feeds, t.bits, t.length)}
    assert got == {
        int(pair_codes(7, 2)): ([10, 11], [1, 2], 2),      # day 1's two rows, file order
        int(pair_codes(7, 3)): ([11, 12], [2, 8], 2),      # the last two before day 3
        int(pair_codes(7, 4)): ([12, 13], [8, 16], 2),
        int(pair_codes(9, 3)): ([0, 50], [0, 4], 1),       # one row, right-aligned, padded left
        int(pair_codes(9, 4)): ([0, 50], [0, 4], 1),
    }                                                      # (9, 2): nothing before day 2
    rows = t.lookup(np.array([7, 9, 9, 8]), np.array([3, 2, 3, 3]))
    assert rows[1] == 0 and rows[3] == 0 and rows[0] > 0 and rows[2] > 0
    assert t.codes[rows[0] - 1] == pair_codes(7, 3)


def test_history_of_day_d_ignores_everything_on_and_after_d():
    rng = np.random.default_rng(0)
    n = 3000
    userid = rng.integers(0, 40, n).astype(np.int32)
    feedid = rng.integers(1, 200, n).astype(np.int32)
    day = rng.integers(1, 15, n).astype(np.int8)
    bits = rng.integers(0, 128, n).astype(np.uint8)
    d = 9
    base = history_windows(userid, feedid, day, bits, [d], 16)
    late = day >= d
    f2, b2 = feedid.copy(), bits.copy()
    f2[late] = rng.integers(1, 200, late.sum())
    b2[late] = rng.integers(0, 128, late.sum())
    # and the late rows moved around in the file
    perm = np.concatenate([np.flatnonzero(~late), rng.permutation(np.flatnonzero(late))])
    other = history_windows(userid[perm], f2[perm], day[perm], b2[perm], [d], 16)
    for a, b in zip(base.state_dict().values(), other.state_dict().values()):
        np.testing.assert_array_equal(a, b)
    assert base.length.max() == 16 and len(base) == 40


def test_labelled_history_of_the_real_store_stops_before_the_day(tiny_root):
    from wbdc.features.store import FeatureStore
    from wbdc.paths import Paths
    store = FeatureStore(Paths(tiny_root))
    userid, feedid, day, bits = store.labelled_history(9)
    assert len(day) and day.max() == 8 and day.min() == 1
    lab = pd.concat([store.load_labels(d) for d in range(1, 9)], ignore_index=True)
    assert len(lab) == len(day)
    assert int(bits.astype(np.int64).sum()) == int((lab.to_numpy().astype(np.int64)
                                                    << np.arange(7)).sum())


@pytest.fixture(scope="module")
def store():
    return FakeStore(rows_per_day=400)


def _encoder(store, n=8):
    cfg = small_nn_config("sb")
    cfg["nn"]["features"]["history_len"] = n
    sel = select_features(store, cfg["nn"]["features"])
    days = [d for d in store.days if d <= 13]
    enc = Encoder.fit((store.load_day(d, sel.columns()) for d in days), store, sel)
    return cfg, sel, enc


def test_encoder_puts_each_rows_user_day_in_the_last_key_column(store):
    _, sel, enc = _encoder(store)
    assert "date_" in sel.columns() and enc.history is not None
    df = store.load_day(14, sel.columns())
    keys = enc.encode(df).keys.numpy()
    assert keys.shape[1] == len(enc.key_names) + 1
    row = keys[:, -1]
    t = enc.history
    hit = row > 0
    assert hit.mean() > 0.9
    np.testing.assert_array_equal(t.codes[row[hit] - 1], pair_codes(df["userid"].to_numpy()[hit], 14))
    # the table covers the training days and the day after them, built from days < 14 only
    assert sorted(set((t.codes & 63).tolist())) == list(range(3, 15))
    # a checkpointed encoder keeps its table
    again = Encoder.from_state_dict(enc.state_dict())
    np.testing.assert_array_equal(again.encode(df).keys.numpy(), keys)


def test_attention_block_is_zero_without_history_and_masks_padding():
    feeds = torch.tensor([[0, 0, 0], [0, 2, 3], [1, 2, 3]], dtype=torch.int32)
    bits = torch.tensor([[0, 0, 0], [0, 5, 1], [9, 5, 1]], dtype=torch.uint8)
    length = torch.tensor([0, 2, 3], dtype=torch.int16)
    field = HistoryField(feeds, bits, length, key_slot=1, feed_slot=0, n_feed_rows=5)
    torch.manual_seed(0)
    block = HistoryAttention(field, dim=4, pretrained_dims=[2])
    pre = torch.randn(5, 2)
    keys = torch.tensor([[2, 0], [2, 1], [4, 1]])
    out = block(keys, [pre])
    assert out.shape == (3, 12)
    assert torch.all(out[0] == 0)
    # the padded slot of row 1 must not matter: changing the feed behind it changes nothing
    with torch.no_grad():
        field2 = HistoryField(feeds.clone(), bits, length, 1, 0, 5)
        field2.feeds[1, 0] = 4
        block2 = HistoryAttention(field2, dim=4, pretrained_dims=[2])
        block2.load_state_dict(block.state_dict())
        torch.testing.assert_close(block2(keys, [pre])[1], out[1])
        field2.feeds[1, 1] = 4      # a real slot does
        block3 = HistoryAttention(field2, dim=4, pretrained_dims=[2])
        block3.load_state_dict(block.state_dict())
        assert not torch.allclose(block3(keys, [pre])[1], out[1])


def test_negative_history_length_is_a_one_line_error(store):
    cfg = small_nn_config("sb")
    cfg["nn"]["features"]["history_len"] = -2
    with pytest.raises(ValueError, match=r"^nn.features.history_len=-2: expected 0"):
        select_features(store, cfg["nn"]["features"])


@pytest.mark.parametrize("arch", ["sb", "omoe", "ple"])
def test_offline_run_with_history_and_its_checkpoint(store, arch, tmp_path):
    cfg = small_nn_config(arch, epochs=1)
    cfg["nn"]["features"]["history_len"] = 8
    res = run_offline(store, arch, cfg)
    assert res.model.inputs.history is not None
    assert 0.0 < res.scores["weighted"] < 1.0
    path = tmp_path / "ck.pt"
    save_checkpoint(path, arch, res, cfg["nn"])
    model, enc = load_checkpoint(path, store)
    df = store.load_day(14, enc.selection.columns())
    got = predict_rows(model, enc, df)
    np.testing.assert_allclose(got[list(res.preds.columns[2:])].to_numpy(),
                               res.preds.iloc[:, 2:].to_numpy(), rtol=0, atol=1e-6)


def test_history_changes_the_net_input_width(store):
    cfg, _, enc = _encoder(store)
    with_h = build_net("sb", enc, store, cfg["nn"])
    cfg0 = small_nn_config("sb")
    cfg0["nn"]["features"]["history_len"] = 0
    sel0 = select_features(store, cfg0["nn"]["features"])
    enc0 = Encoder.fit(store.load_days([d for d in store.days if d <= 13], sel0.columns()), store, sel0)
    without = build_net("sb", enc0, store, cfg0["nn"])
    assert with_h.inputs.output_dim == without.inputs.output_dim + 3 * cfg["nn"]["embedding"]["history_dim"]
