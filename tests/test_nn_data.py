"""Array layer: vocabularies from training rows only, dense standardisation, side tables, batches."""
from __future__ import annotations

import numpy as np
import pandas as pd
import pytest
import torch

from test_nn_fakes import FakeStore
from wbdc.nn.data import (Encoder, FeatureSelection, RunningStats, _lookup, _padded, _to_csr,
                          batch_indices, select_features)
from wbdc.nn.inputs import BagField, InputLayer, PretrainedTable
from wbdc.schema import ACTIONS
from wbdc.config import default_config

NN_FEATURES = default_config()["nn"]["features"]


def test_lookup_is_one_based_with_zero_for_unseen():
    vocab = np.array([3, 10, 42])
    assert _lookup(vocab, np.array([42, 3, 5, 10, 99, -1])).tolist() == [3, 1, 0, 2, 0, 0]
    assert _lookup(np.array([], np.int64), np.array([1, 2])).tolist() == [0, 0]


def test_csr_forms_agree():
    lists = [np.array([5, 6]), np.array([], np.int64), np.array([7])]
    indptr, values = _to_csr(lists)
    assert indptr.tolist() == [0, 2, 2, 3] and values.tolist() == [5, 6, 7]
    again = _to_csr((np.array([0, 2, 2, 3]), np.array([5, 6, 7])))
    assert again[0].tolist() == indptr.tolist() and again[1].tolist() == values.tolist()


def test_padded_lists_drop_unmapped_tokens_and_cut_long_lists():
    indptr = np.array([0, 3, 3, 7])
    tokens = np.array([2, 0, 5, 1, 2, 3, 4])     # 0 = token unseen in training: dropped
    rows = np.array([2, 1, 3])                   # key row of each list (row 0 = unknown key)
    out = _padded(indptr, tokens, rows, n_rows=4, max_len=3)
    assert out.tolist() == [[0, 0, 0], [0, 0, 0], [2, 5, 0], [1, 2, 3]]


def _frame(userid, feedid, count, rate):
    return pd.DataFrame({"userid": userid, "feedid": feedid,
                         "count": np.asarray(count, np.float32),
                         "rate": np.asarray(rate, np.float32)})


def test_encoder_vocab_and_dense_stats_come_from_training_rows_only():
    sel = FeatureSelection(["userid", "feedid"], ["count", "rate"], [], [])
    train = _frame([7, 9, 7, 11], [100, 100, 200, 300], [0, 3, 7, np.nan], [0.1, 0.5, np.nan, 0.3])
    enc = Encoder.fit(train, None, sel)
    assert enc.vocab["userid"].tolist() == [7, 9, 11]
    assert enc.cat_cardinalities == [4, 4]
    # count: non-negative with max > 1 -> log1p then z-score over the finite training values
    lc = np.log1p([0.0, 3.0, 7.0])
    assert enc.dense_stats["log"].tolist() == [True, False]
    assert enc.dense_stats["mean"][0] == pytest.approx(lc.mean())
    assert enc.dense_stats["std"][0] == pytest.approx(lc.std())
    r = np.array([0.1, 0.5, 0.3], np.float32).astype(np.float64)
    assert enc.dense_stats["mean"][1] == pytest.approx(r.mean())

    test = _frame([9, 12, 7], [300, 999, 100], [3, 1e9, np.nan], [0.5, 0.2, np.nan])
    arr = enc.encode(test)
    # userid 12 and feedid 999 never appear in training -> reserved index 0
    assert arr.cat.tolist() == [[2, 3], [0, 0], [1, 1]]
    d = arr.dense.numpy()
    assert d[0, 0] == pytest.approx((np.log1p(3) - lc.mean()) / lc.std(), rel=1e-5)
    assert d[1, 0] == 10.0                       # clipped at +10
    assert d[2].tolist() == [0.0, 0.0]           # NaN -> the training mean (0 after z-score)
    assert arr.labels is None and arr.dense.dtype == torch.float32 and arr.cat.dtype == torch.int32


def test_running_stats_over_chunks_equal_numpy_on_the_whole_column():
    rng = np.random.default_rng(3)
    counts = rng.poisson(50, 1000).astype(float)
    signed = rng.normal(5, 2, 1000)
    signed[::7] = np.nan
    st = RunningStats(2)
    for chunk in np.array_split(np.arange(1000), [10, 11, 500]):   # uneven chunks, one of size 1
        st.update(0, counts[chunk])
        st.update(1, signed[chunk])
    out = st.finalize()
    assert out["log"].tolist() == [True, False]
    assert out["mean"][0] == pytest.approx(np.log1p(counts).mean(), rel=1e-12)
    assert out["std"][0] == pytest.approx(np.log1p(counts).std(), rel=1e-10)
    assert out["mean"][1] == pytest.approx(np.nanmean(signed), rel=1e-12)
    assert out["std"][1] == pytest.approx(np.nanstd(signed), rel=1e-10)
    empty = RunningStats(1).finalize()
    assert empty["mean"].tolist() == [0.0] and empty["std"].tolist() == [1.0]


def test_day_by_day_encoding_equals_encoding_the_stacked_frame():
    store = FakeStore(rows_per_day=70)
    sel = select_features(store, {**NN_FEATURES, "dense": "all", "multi_hot": ["manual_tag_list"],
                                  "pretrained": "all"})
    days = [2, 3, 4]
    frame = store.load_days(days, sel.columns())
    labels = pd.concat([store.load_labels(d) for d in days], ignore_index=True)
    a = Encoder.fit(frame, store, sel).encode(frame, labels)
    enc = Encoder.fit_days(store, days, sel)
    b = enc.encode_days(store, days, labels=True)
    for f in ("cat", "keys", "labels"):
        assert torch.equal(getattr(a, f), getattr(b, f)), f
    torch.testing.assert_close(a.dense, b.dense, rtol=1e-6, atol=1e-6)
    assert (a.userid == b.userid).all()
    half = Encoder.fit_days(store, days, sel, dense_dtype="float16").encode_days(store, days, False)
    assert half.dense.dtype == torch.float16 and half.labels is None
    assert half.batch(torch.arange(4))["dense"].dtype == torch.float32
    torch.testing.assert_close(half.dense.float(), b.dense, rtol=1e-3, atol=1e-2)


def test_encoder_state_round_trips():
    store = FakeStore(rows_per_day=60)
    sel = select_features(store, {**NN_FEATURES, "categorical": ["userid", "feedid", "authorid"], "dense": "all",
                                  "multi_hot": ["manual_tag_list"], "pretrained": "all"})
    train = store.load_days([2, 3], sel.columns())
    enc = Encoder.fit(train, store, sel)
    again = Encoder.from_state_dict(enc.state_dict())
    day15 = store.load_day(15, sel.columns())
    a, b = enc.encode(day15), again.encode(day15)
    assert torch.equal(a.cat, b.cat) and torch.equal(a.keys, b.keys) and torch.equal(a.dense, b.dense)


def test_select_features_skips_what_the_store_lacks():
    store = FakeStore(rows_per_day=20)
    sel = select_features(store, {**NN_FEATURES, "categorical": ["userid", "nope"], "dense": "all",
                                  "dense_exclude": ["neg_*"], "multi_hot": ["manual_tag_list", "x"],
                                  "pretrained": ["feed_pca", "missing_w2v"]})
    assert sel.categorical == ["userid"]
    assert sel.dense == ["user_count", "feed_rate"]
    assert sel.bags == ["manual_tag_list"] and sel.pretrained == ["feed_pca"]
    assert sel.keys == ["feedid"]
    assert sel.skipped == ["nope", "x", "missing_w2v"]


def test_side_tables_line_up_with_the_key_rows():
    store = FakeStore(rows_per_day=80)
    sel = select_features(store, {**NN_FEATURES, "categorical": ["userid"], "dense": [],
                                  "multi_hot": ["manual_keyword_list"], "pretrained": "all"})
    train = store.load_days([d for d in store.days if d <= 13], sel.columns())
    enc = Encoder.fit(train, store, sel, max_list_len=3)
    bags, tables = enc.side_tables(store)
    day = store.load_day(15, sel.columns())
    arr = enc.encode(day)
    feed_slot, author_slot = enc.key_names.index("feedid"), enc.key_names.index("authorid")
    train_feeds = set(train["feedid"])
    seen_tokens = set(np.concatenate([store.keywords[i] for i, f in enumerate(store.feed_ids)
                                      if f in train_feeds]).tolist())
    kw = bags[0].lists.numpy()
    for r in range(len(day)):
        f = day["feedid"].iloc[r]
        i = int(np.flatnonzero(store.feed_ids == f)[0])
        row = int(arr.keys[r, feed_slot])
        want = [t for t in store.keywords[i].tolist() if t in seen_tokens][:3]
        got = [int(enc.token_vocab["manual_keyword_list"][t - 1]) for t in kw[row] if t > 0]
        assert got == want
        # pretrained feed_pca row = the store's vector, z-scored per column
        ids, mat = store.pretrained("feed_pca")
        z = (mat - mat.mean(0)) / mat.std(0)
        pca = next(t for t in tables if t.name == "feed_pca")
        np.testing.assert_allclose(pca.matrix[row].numpy(), z[i], rtol=1e-5, atol=1e-5)
        assert int(arr.keys[r, author_slot]) > 0
    assert kw[0].tolist() == [0, 0, 0] and tables[0].matrix[0].abs().sum() == 0


def test_labels_travel_with_the_rows():
    store = FakeStore(rows_per_day=50)
    sel = select_features(store, {**NN_FEATURES, "categorical": ["userid"], "dense": [], "multi_hot": [],
                                  "pretrained": []})
    df = store.load_day(4, sel.columns())
    enc = Encoder.fit(df, store, sel)
    arr = enc.encode(df, store.load_labels(4))
    assert arr.labels.dtype == torch.uint8
    idx = torch.tensor([3, 0, 7])
    b = arr.batch(idx)
    np.testing.assert_array_equal(b["labels"].numpy(),
                                  store.load_labels(4)[list(ACTIONS)].to_numpy()[[3, 0, 7]])
    pd.testing.assert_frame_equal(arr.labels_frame(), store.load_labels(4).astype(np.uint8))


def test_batch_indices_cover_every_row_once():
    g = torch.Generator().manual_seed(1)
    chunks = list(batch_indices(10, 4, shuffle=True, generator=g))
    assert [len(c) for c in chunks] == [4, 4, 2]
    assert sorted(torch.cat(chunks).tolist()) == list(range(10))
    assert torch.cat(list(batch_indices(5, 2, shuffle=False))).tolist() == [0, 1, 2, 3, 4]


def test_input_layer_concatenates_every_part():
    lists = torch.tensor([[0, 0], [1, 2], [3, 0]])
    layer = InputLayer([3, 5], emb_dim=2, n_dense=1,
                       bags=[BagField("kw", lists, n_tokens=4, key_slot=0)],
                       pretrained=[PretrainedTable("pca", torch.arange(9.0).view(3, 3), key_slot=1)],
                       bag_dim=2)
    assert layer.output_dim == 2 * 2 + 2 + 3 + 1
    batch = {"cat": torch.tensor([[1, 4], [0, 0]], dtype=torch.int32),
             "keys": torch.tensor([[1, 2], [0, 0]], dtype=torch.int32),
             "dense": torch.tensor([[0.5], [-1.0]])}
    x = layer(batch)
    E, B = layer.cat_embedding.weight, layer.bags[0].weight
    torch.testing.assert_close(x[0, :2], E[1])
    torch.testing.assert_close(x[0, 2:4], E[3 + 4])                # second column offset by 3
    torch.testing.assert_close(x[0, 4:6], (B[1] + B[2]) / 2)       # mean over the bag
    torch.testing.assert_close(x[1, 4:6], torch.zeros(2))          # empty bag, unknown feed
    assert x[0, 6:9].tolist() == [6.0, 7.0, 8.0] and x[1, 6:9].tolist() == [0.0, 1.0, 2.0]
    assert x[:, 9].tolist() == [0.5, -1.0]
    assert not layer.pretrained[0].weight.requires_grad


@pytest.mark.parametrize("dtype", ["float64", "float32", "int64", "int16", "uint8", "Int64", "bool"])
@pytest.mark.parametrize("use_log", [False, True])
def test_standardising_kernel_equals_the_numpy_expression(dtype, use_log):
    """The one-pass kernel gives the float64 numpy expression's values (NaN -> 0, +-inf and far
    values clipped, negatives floored before log1p), whatever the column's dtype."""
    from wbdc.nn.data import DENSE_CLIP, _standardise
    rng = np.random.default_rng(0)
    raw = np.concatenate([rng.normal(3, 50, 500), [np.nan, np.inf, -np.inf, -5.0, 0.0, 1e12]])
    if dtype in ("float64", "float32"):
        s = pd.Series(raw.astype(dtype))
    elif dtype == "Int64":
        s = pd.Series(np.nan_to_num(raw, posinf=9, neginf=-9).round()).astype("Int64")
        s[3] = pd.NA
    elif dtype == "bool":
        s = pd.Series(raw > 3)
    else:
        s = pd.Series(np.clip(np.nan_to_num(raw, posinf=100, neginf=-100), 0 if dtype == "uint8" else -100, 100)
                      .round().astype(dtype))
    mean, std = 2.5, 7.0
    x = s.to_numpy(np.float64, na_value=np.nan)
    if use_log:
        x = np.log1p(np.maximum(x, 0.0))
    want = np.clip(np.nan_to_num((x - mean) / std, nan=0.0, posinf=DENSE_CLIP, neginf=-DENSE_CLIP),
                   -DENSE_CLIP, DENSE_CLIP)
    col = s.to_numpy()
    if col.dtype.kind not in "iuf":
        col = s.to_numpy(np.float64, na_value=np.nan)
    out = np.empty(len(s))
    _standardise(col, use_log, mean, std, out)
    # log1p of the C library vs numpy's vectorised one: at most an ulp of float64 apart, which
    # the cast to the storage dtype (float16 by default) rounds away
    np.testing.assert_allclose(out, want, rtol=1e-15, atol=1e-15)
    np.testing.assert_array_equal(out.astype(np.float16), want.astype(np.float16))
    if not use_log:
        np.testing.assert_array_equal(out, want)


def test_the_store_reopens_its_parts_after_pickling(tiny_root):
    """A FeatureStore keeps the parts a thread read last open (one footer parse for a run of
    row groups), never pickles them (a Dask worker opens its own), and reads the same rows
    through them as through a fresh store."""
    import pickle
    from wbdc.features.store import OPEN_PARTS, FeatureStore
    from wbdc.paths import Paths

    fs = FeatureStore(Paths.at(tiny_root))
    d = fs.days[-1]
    first = fs.read_row_group(d, 0, 0)
    again = fs.read_row_group(d, 0, 0)
    assert len(fs._open.files) == 1
    pd.testing.assert_frame_equal(first, again)
    for i in range(len(fs.parts(d))):
        fs.read_row_group(d, i, 0)
    assert len(fs._open.files) == min(OPEN_PARTS, len(fs.parts(d)))
    clone = pickle.loads(pickle.dumps(fs))
    assert getattr(clone._open, "files", None) is None
    pd.testing.assert_frame_equal(clone.read_row_group(d, 0, 0), first)
    pd.testing.assert_frame_equal(FeatureStore(Paths.at(tiny_root)).read_row_group(d, 0, 0), first)
