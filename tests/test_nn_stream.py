"""Streamed training rows (wbdc.nn.data.StreamedRows): blocks of the store read into shuffle
buffers give every row once per pass, in full batches, with labels and row positions intact;
the in-memory path is the same rows encoded once; the memory plan picks between them."""
from __future__ import annotations

import shutil

import numpy as np
import pandas as pd
import pyarrow.parquet as pq
import pytest
import torch

from test_nn_fakes import FakeStore, small_nn_config
from wbdc.budget import BudgetError
from wbdc.nn.data import Encoder, StreamedRows, select_features, unpack_labels
from wbdc.nn.pipeline import MIN_BUFFERS, new_trainer, plan_rows
from wbdc.nn.trainer import predict
from wbdc.schema import ACTIONS

TRAIN_DAYS = list(range(2, 14))


@pytest.fixture(scope="module")
def fake():
    store = FakeStore(rows_per_day=400)
    cfg = small_nn_config("mmoe")
    sel = select_features(store, cfg["nn"]["features"])
    enc = Encoder.fit_days(store, TRAIN_DAYS, sel, dense_dtype="float32")
    return store, cfg, enc


def _rows_bytes(cat, keys, dense, labels) -> list[bytes]:
    """One byte string per row (ids, keys, dense values, labels) so passes compare as multisets."""
    m = np.concatenate([cat.numpy().view(np.uint8).reshape(len(cat), -1),
                        keys.numpy().view(np.uint8).reshape(len(keys), -1),
                        dense.float().numpy().view(np.uint8).reshape(len(dense), -1),
                        labels.numpy().astype(np.uint8).reshape(len(labels), -1)], axis=1)
    return sorted(bytes(r) for r in m)


def test_materialized_rows_equal_the_day_by_day_encoding(fake):
    store, _, enc = fake
    mat = StreamedRows(store, enc, TRAIN_DAYS, labels=True).materialize()
    ref = enc.encode_days(store, TRAIN_DAYS, labels=True)
    for name in ("cat", "keys", "dense", "labels"):
        assert torch.equal(getattr(mat, name), getattr(ref, name)), name
    assert np.array_equal(mat.userid, ref.userid) and np.array_equal(mat.feedid, ref.feedid)


def test_packed_labels_unpack_to_the_label_table(fake):
    store, _, _ = fake
    bits = store.packed_labels([3])[3]
    assert np.array_equal(unpack_labels(bits), store.load_labels(3).to_numpy(np.uint8))


@pytest.mark.parametrize("buffer_rows,prefetch", [(300, True), (300, False), (10**6, True)])
def test_a_pass_yields_every_row_once_in_full_batches(fake, buffer_rows, prefetch):
    store, _, enc = fake
    rows = StreamedRows(store, enc, TRAIN_DAYS, labels=True, buffer_rows=buffer_rows, prefetch=prefetch)
    assert len(rows.blocks) > 2 * len(TRAIN_DAYS)          # several row groups per day
    batches = list(rows.epoch_batches(256, torch.Generator().manual_seed(5)))
    sizes = [len(b["cat"]) for b in batches]
    assert len(batches) == -(-len(rows) // 256) and all(s == 256 for s in sizes[:-1])
    got = _rows_bytes(*(torch.cat([b[k] for b in batches]) for k in ("cat", "keys", "dense", "labels")))
    ref = enc.encode_days(store, TRAIN_DAYS, labels=True)
    assert got == _rows_bytes(ref.cat, ref.keys, ref.dense, ref.labels)


def test_the_pass_order_depends_on_the_seed_only(fake):
    store, _, enc = fake

    def first_batches(seed, prefetch):
        rows = StreamedRows(store, enc, TRAIN_DAYS, labels=True, buffer_rows=500, prefetch=prefetch)
        it = rows.epoch_batches(256, torch.Generator().manual_seed(seed))
        return [next(it)["cat"] for _ in range(3)]

    a, b, c = first_batches(1, True), first_batches(1, False), first_batches(2, True)
    assert all(torch.equal(x, y) for x, y in zip(a, b))
    assert not all(torch.equal(x, y) for x, y in zip(a, c))
    # a buffer mixes several blocks: the first batch holds rows of more than one day
    rows = StreamedRows(store, enc, TRAIN_DAYS, labels=True, buffer_rows=500)
    assert len(rows.buffers(torch.Generator().manual_seed(1))[0]) > 1


def test_streamed_prediction_comes_back_in_row_order(fake):
    store, cfg, enc = fake
    trainer = new_trainer("mmoe", enc, store, cfg)
    streamed = StreamedRows(store, enc, [13, 14], labels=True, buffer_rows=300)
    mat = streamed.materialize()
    p_stream, p_mem = predict(trainer.model, streamed, 100), predict(trainer.model, mat, 100)
    assert p_stream.shape == (len(mat), len(ACTIONS))
    np.testing.assert_allclose(p_stream, p_mem, rtol=1e-5, atol=1e-6)
    assert np.array_equal(streamed.userid, mat.userid)
    assert np.array_equal(streamed.labels_frame().to_numpy(), mat.labels_frame().to_numpy())
    assert streamed.label_means() == pytest.approx(mat.label_means())


def test_training_on_streamed_rows_learns(fake):
    store, cfg, enc = fake
    train = StreamedRows(store, enc, TRAIN_DAYS, labels=True, buffer_rows=600)
    valid = StreamedRows(store, enc, [14], labels=True, buffer_rows=600)
    from wbdc.nn.pipeline import make_score_fn
    trainer = new_trainer("mmoe", enc, store, cfg, train)
    fit = trainer.fit(train, 2, valid, make_score_fn(valid))
    assert fit.steps == 2 * -(-len(train) // 256) and fit.samples == 2 * len(train)
    assert fit.best_score > 0.55          # the fake labels follow a learnable affinity


def test_plan_keeps_rows_in_memory_when_they_fit_and_streams_otherwise(fake):
    store, cfg, enc = fake
    sel = enc.selection
    cfg = {**cfg, "data": {**cfg["data"], "memory_gb": 4}}
    plan = plan_rows(store, cfg, sel, TRAIN_DAYS, [14])
    assert not plan.train_streamed and not plan.eval_streamed
    tight = {**cfg, "data": {**cfg["data"], "memory_gb": 1e-6}}
    plan = plan_rows(store, tight, sel, TRAIN_DAYS, [14])
    assert plan.train_streamed and plan.eval_streamed and plan.buffer_rows >= 16_384
    forced = {**cfg, "nn": {**cfg["nn"], "stream": {**cfg["nn"]["stream"], "mode": "stream"}}}
    assert plan_rows(store, forced, sel, TRAIN_DAYS, [14]).train_streamed
    # an epoch is cut into at least MIN_BUFFERS buffers (prefetch overlaps), never below a block
    n_train = sum(store.n_rows(d) for d in TRAIN_DAYS)
    huge = {**forced, "nn": {**forced["nn"], "stream": {**forced["nn"]["stream"], "buffer_rows": 10**9}}}
    assert plan_rows(store, huge, sel, TRAIN_DAYS, [14]).buffer_rows == max(16_384, -(-n_train // MIN_BUFFERS))
    mem = {**tight, "nn": {**cfg["nn"], "stream": {**cfg["nn"]["stream"], "mode": "memory"}}}
    with pytest.raises(BudgetError, match="nn.stream.mode=memory: .* over the memory budget"):
        plan_rows(store, mem, sel, TRAIN_DAYS, [14])


# ------------------------------------------------------------------------------ the real store

def test_real_store_rows_stream_the_same_from_small_row_groups(tiny_root_3_buckets, tmp_path):
    """The tiny store in three buckets, its parts rewritten in 500-row row groups: the blocks
    stream the same rows as the in-memory encoding, and the labels match load_labels."""
    from wbdc.features.store import FeatureStore
    from wbdc.paths import Paths

    root, _ = tiny_root_3_buckets
    copy = tmp_path / "root"
    shutil.copytree(root / "data" / "prepared", copy / "data" / "prepared")
    shutil.copytree(root / "features", copy / "features")
    for f in (copy / "features").glob("day=*/part-*.parquet"):
        pq.write_table(pq.read_table(f, partitioning=None), f, row_group_size=500)
    store = FeatureStore(Paths.at(copy))
    assert store.row_groups(14, 0)[0] == 500 and len(store.row_groups(14, 0)) > 1
    cfg = small_nn_config("mmoe")
    sel = select_features(store, cfg["nn"]["features"])
    days = [12, 13]
    enc = Encoder.fit_days(store, days, sel, dense_dtype="float32")
    ref = enc.encode_days(store, days, labels=True)
    mat = StreamedRows(store, enc, days, labels=True).materialize()
    for name in ("cat", "keys", "dense", "labels"):
        assert torch.equal(getattr(mat, name), getattr(ref, name)), name
    labels = pd.concat([store.load_labels(d) for d in days], ignore_index=True)
    assert np.array_equal(ref.labels.numpy(), labels.to_numpy(np.uint8))
    rows = StreamedRows(store, enc, days, labels=True, buffer_rows=1000)
    batches = list(rows.epoch_batches(512, torch.Generator().manual_seed(0)))
    got = _rows_bytes(*(torch.cat([b[k] for b in batches]) for k in ("cat", "keys", "dense", "labels")))
    assert got == _rows_bytes(ref.cat, ref.keys, ref.dense, ref.labels)


# ------------------------------------------------------------------------------ negative sampling

def _pass_rows(rows, seed: int, bs: int = 256):
    """One pass of ``rows`` (a row source): the batches and every row's bytes."""
    batches = list(rows.epoch_batches(bs, torch.Generator().manual_seed(seed)))
    cols = [torch.cat([b[k] for b in batches]) for k in ("cat", "keys", "dense", "labels")]
    return batches, _rows_bytes(*cols)


@pytest.mark.parametrize("streamed", [False, True])
def test_negative_sampling_keeps_every_row_with_an_action_and_a_fresh_share_of_the_rest(fake, streamed):
    from wbdc.nn.data import NegativeSampled
    store, _, enc = fake
    full = StreamedRows(store, enc, TRAIN_DAYS, labels=True, buffer_rows=300)
    ref = full.materialize()
    rows = NegativeSampled(full if streamed else ref, 0.3)
    y = ref.labels.numpy()
    pos, neg = y.any(1), ~y.any(1)
    assert 0 < pos.sum() < len(y) and len(rows) == pos.sum() + round(0.3 * neg.sum()) < len(y)
    assert rows.label_means() == pytest.approx((y.sum(0) / len(rows)).tolist())

    batches, got = _pass_rows(rows, 5)
    assert len(batches) == -(-len(rows) // 256) and all(len(b["cat"]) == 256 for b in batches[:-1])
    assert len(got) == len(rows)
    with_action = _rows_bytes(ref.cat[pos], ref.keys[pos], ref.dense[pos], ref.labels[pos])
    without = _rows_bytes(ref.cat[neg], ref.keys[neg], ref.dense[neg], ref.labels[neg])
    assert [r for r in got if _has_action(r)] == with_action
    picked = [r for r in got if not _has_action(r)]
    assert len(picked) == round(0.3 * neg.sum()) and set(picked) <= set(without)
    # the same seed draws the same rows in memory and streamed; the next pass draws others
    assert _pass_rows(NegativeSampled(ref if streamed else full, 0.3), 5)[1] == got
    gen = torch.Generator().manual_seed(5)
    first, second = rows.keep(gen), rows.keep(gen)
    assert first.sum() == second.sum() == len(rows) and not np.array_equal(first, second)
    assert np.all(first[pos] & second[pos])


def _has_action(row: bytes) -> bool:
    """Whether a row of :func:`_rows_bytes` has an action (its last 7 bytes are the labels)."""
    return any(row[-len(ACTIONS):])


def test_negative_sampled_rows_train_the_configured_steps(fake):
    from wbdc.nn.pipeline import make_score_fn, negative_sampled
    store, cfg, enc = fake
    full = StreamedRows(store, enc, TRAIN_DAYS, labels=True, buffer_rows=600)
    train = negative_sampled(full, {**cfg["nn"]["train"], "neg_rate": 0.5})
    valid = StreamedRows(store, enc, [14], labels=True).materialize()
    cfg = {**cfg, "nn": {**cfg["nn"], "train": {**cfg["nn"]["train"], "lr_schedule": "constant"}}}
    trainer = new_trainer("mmoe", enc, store, cfg, train)   # 2 x 14 steps: at a constant rate
    fit = trainer.fit(train, 2, valid, make_score_fn(valid))
    assert len(train) < 0.8 * len(full)
    assert fit.steps == 2 * -(-len(train) // 256) and fit.samples == 2 * len(train)
    assert fit.best_score > 0.55


@pytest.mark.parametrize("rate,ok", [(None, True), (1, True), (1.0, True), (0.25, True), ("auto", True),
                                     (0, False), (1.5, False), (-0.1, False), (True, False), ("half", False)])
def test_neg_rate_is_auto_a_share_or_null_and_one_means_every_row(fake, rate, ok):
    from wbdc.config import ConfigError
    from wbdc.nn.data import NegativeSampled
    from wbdc.nn.pipeline import negative_sampled
    store, cfg, enc = fake
    rows = StreamedRows(store, enc, [12, 13], labels=True)
    tcfg = {**cfg["nn"]["train"], "neg_rate": rate}
    if not ok:
        with pytest.raises(ConfigError, match=r"^nn.train.neg_rate: expected auto, a share in \(0, 1\] or null, got "):
            negative_sampled(rows, tcfg)
        return
    out = negative_sampled(rows, tcfg)
    assert isinstance(out, NegativeSampled) == (rate == 0.25)
    assert (out is rows) == (rate != 0.25)


def test_auto_neg_rate_cuts_a_pass_to_max_rows_only_when_a_pass_is_over_it(fake):
    from wbdc.nn.data import NegativeSampled
    from wbdc.nn.pipeline import AUTO_NEG_FLOOR, auto_neg_rate, negative_sampled
    assert auto_neg_rate(100, 90, None) is None and auto_neg_rate(100, 90, 100) is None
    assert auto_neg_rate(100, 90, 55) == pytest.approx(0.5)          # 10 + 0.5 x 90 = 55
    assert auto_neg_rate(100, 90, 11) == AUTO_NEG_FLOOR               # never below the floor
    assert auto_neg_rate(100, 0, 50) is None                          # nothing to down-sample
    store, cfg, enc = fake
    rows = StreamedRows(store, enc, TRAIN_DAYS, labels=True)
    n_pos = int((~np.all(unpack_labels(rows.labels_bits) == 0, axis=1)).sum())
    tcfg = {**cfg["nn"]["train"], "neg_rate": "auto"}
    assert negative_sampled(rows, {**tcfg, "max_rows": len(rows)}) is rows
    assert negative_sampled(rows, {**tcfg, "max_rows": None}) is rows
    cap = (len(rows) + n_pos) // 2
    out = negative_sampled(rows, {**tcfg, "max_rows": cap})
    assert isinstance(out, NegativeSampled) and abs(len(out) - cap) <= 1
    from wbdc.nn.trainer import offline_epochs
    assert offline_epochs({**tcfg, "max_rows": cap}, len(out)) == 1.0


# ------------------------------------------------------------------------------ encoder cache

def _same_encoder(a, b) -> None:
    assert a.vocab.keys() == b.vocab.keys() and all(np.array_equal(a.vocab[k], b.vocab[k]) for k in a.vocab)
    assert all(np.array_equal(a.dense_stats[k], b.dense_stats[k]) for k in ("log", "mean", "std"))
    assert a.key_ids.keys() == b.key_ids.keys() and all(np.array_equal(a.key_ids[k], b.key_ids[k]) for k in a.key_ids)
    assert all(np.array_equal(a.token_vocab[k], b.token_vocab[k]) for k in a.token_vocab)


def test_the_encoder_cache_gives_the_same_encoder_and_is_read_by_later_fits(tiny_root_3_buckets, tmp_path, monkeypatch):
    from wbdc.features.store import FeatureStore
    from wbdc.nn import data as nd
    from wbdc.paths import Paths

    root, _ = tiny_root_3_buckets
    store = FeatureStore(Paths.at(root))
    sel = select_features(store, small_nn_config("mmoe")["nn"]["features"])
    offline, online = [d for d in store.days if d <= 13], [d for d in store.days if d <= 14]
    cache = tmp_path / "cache"
    plain = Encoder.fit_days(store, online, sel)
    first = Encoder.fit_days(store, offline, sel, cache_dir=cache)
    assert first.cached_days == 0 and len(list(cache.glob("day=*.pkl"))) == len(offline)
    # the online refit fits day 14 only; the others come from the cache
    fitted = []
    real = Encoder.fit_partial
    monkeypatch.setattr(Encoder, "fit_partial", staticmethod(lambda fr, s: fitted.append(1) or real(fr, s)))
    again = Encoder.fit_days(store, online, sel, cache_dir=cache)
    assert again.cached_days == len(offline) and len(fitted) == 1
    _same_encoder(again, plain)
    # one pass over all the days gives the same vocabularies and the moments up to rounding
    single = Encoder.fit((df for d in online for df in store.iter_day(d, columns=sel.columns())), store, sel)
    assert all(np.array_equal(single.vocab[k], plain.vocab[k]) for k in plain.vocab)
    np.testing.assert_allclose(single.dense_stats["mean"], plain.dense_stats["mean"], rtol=1e-12, atol=1e-12)
    np.testing.assert_allclose(single.dense_stats["std"], plain.dense_stats["std"], rtol=1e-12)
    # other columns: another key, fitted again and the day's old partial replaced
    fewer = nd.FeatureSelection(**{**sel.__dict__, "dense": sel.dense[:-1]})
    assert nd.partial_key(store, 3, fewer) != nd.partial_key(store, 3, sel)
    fitted.clear()
    Encoder.fit_days(store, [3], fewer, cache_dir=cache)
    assert len(fitted) == 1 and len(list(cache.glob("day=03-*.pkl"))) == 1
    # an unreadable partial is fitted again and rewritten, never an error
    bad = next(cache.glob("day=05-*.pkl"))
    bad.write_bytes(b"not a pickle")
    fitted.clear()
    enc = Encoder.fit_days(store, [5], sel, cache_dir=cache)
    assert len(fitted) == 1 and enc.cached_days == 0 and bad.stat().st_size > 100
    # a store without fingerprints (the fakes) caches nothing
    assert nd.partial_key(FakeStore(rows_per_day=20), 3, sel) is None
