"""The nets with torch DistributedDataParallel on a Dask cluster (wbdc.nn.distributed).

* the per-rank shards: disjoint, covering every training block, equal step counts (streamed and
  in memory), the encoder merged from per-rank partials equal to one fit;
* DDP arithmetic: two ranks each taking half of every batch follow one process step for step
  (same day-14 predictions and uAUC), in-process on the session's LocalCluster;
* the stage on ``local:2``: the same files, the same row order as one process, scores within
  tiny's data-order noise, the online refit on the cluster too.
"""
from __future__ import annotations

import json
import shutil
from pathlib import Path

import numpy as np
import pandas as pd
import pytest
import torch

from conftest import run_stage
from wbdc.schema import ACTIONS

SMALL = ["--set", "nn.embedding.dim=4", "--set", "nn.embedding.bag_dim=4",
         "--set", "nn.mmoe.expert_dims=[16,8]", "--set", "nn.mmoe.n_experts=3",
         "--set", "nn.train.progress=false", "--set", "nn.train.batch_size=2048",
         "--set", "nn.threads=1", "--set", "nn.train.epochs=2",
         # one epoch all the same: nn.train.max_rows cuts it, on one process and on the ranks
         "--set", "nn.train.max_rows=1",
         # every row on both (the ranks' down-sampling is tested on its own below)
         "--set", "nn.train.neg_rate=null",
         # the stage comparison below is calibrated on tiny's shuffle noise without the history
         # block (more parameters, noisier on 4 rows per user); DDP with the history block is
         # checked step for step in test_two_ddp_ranks_follow_one_process_step_for_step
         "--set", "nn.features.history_len=0",
         # nor the same-day similarities (three more dense inputs: noisier still on tiny's day 14)
         "--set", "nn.features.dense_exclude=[feed_pca_*,feed_w2v_*,user_*_pca_sim,user_*_feed_w2v_sim,today_*_sim]",
         # and at a constant rate: one annealed epoch of tiny's few steps learns too little for it
         "--set", "nn.train.lr_schedule=constant"]


def _store(root):
    from wbdc.features.store import FeatureStore
    from wbdc.paths import Paths
    return FeatureStore(Paths.at(root))


# ------------------------------------------------------------------------------ shards

def test_shards_are_disjoint_cover_every_block_and_give_equal_steps(tiny_root_3_buckets):
    from wbdc.nn.data import Encoder, ShardRows, StreamedRows, select_features
    from wbdc.nn.distributed import EqualSteps, contiguous_shards, shard_blocks

    root, _ = tiny_root_3_buckets
    store = _store(root)
    sel = select_features(store, {"categorical": ["userid", "feedid"], "extra_categorical": False,
                                  "dense": "all", "dense_exclude": [], "multi_hot": [],
                                  "max_list_len": 4, "pretrained": []})
    days = [d for d in store.days if d <= 13]
    full = StreamedRows(store, None, days, True, buffer_rows=20_000, prefetch=False)
    sizes = [b[3] for b in full.blocks]
    assert len(sizes) == 3 * len(days)
    for world in (1, 2, 3, 5):
        shards = shard_blocks(sizes, world, seed=7)
        flat = sorted(k for s in shards for k in s)
        assert flat == list(range(len(sizes)))                     # disjoint, covering
        rows = [sum(sizes[k] for k in s) for s in shards]
        assert max(rows) - min(rows) <= max(sizes)                 # balanced within a block
        assert shards == shard_blocks(sizes, world, seed=7)        # seeded
        ev = contiguous_shards(sizes, world)
        assert [k for s in ev for k in s] == list(range(len(sizes)))
    assert shard_blocks(sizes, 2, seed=7) != shard_blocks(sizes, 2, seed=8)

    # the encoder merged from the ranks' partials = one fit over every row
    shards = shard_blocks(sizes, 2, seed=7)
    parts = [Encoder.fit_partial(ShardRows(full, s).iter_frames(sel.columns()), sel) for s in shards]
    merged = Encoder.from_partials(parts, store, sel)
    one = Encoder.fit_days(store, days, sel)
    for c in sel.categorical:
        np.testing.assert_array_equal(merged.vocab[c], one.vocab[c])
    for k in ("mean", "std"):
        np.testing.assert_allclose(merged.dense_stats[k], one.dense_stats[k], rtol=1e-9, atol=1e-12)
    np.testing.assert_array_equal(merged.dense_stats["log"], one.dense_stats["log"])
    full.encoder = merged

    # every rank runs the same number of steps, streamed or in memory, epoch after epoch
    bs = 1000
    counts, seen_rows = [], 0
    for r, s in enumerate(shards):
        share = ShardRows(full, s)
        for source in (share, share.materialize()):
            es = EqualSteps(source, [sum(sizes[k] for k in t) for t in shards], full.n, full.label_means())
            g = torch.Generator().manual_seed(r)
            for _ in range(2):
                n_batches = sum(1 for _ in es.epoch_batches(bs, g))
                counts.append((n_batches, es.steps_per_epoch(bs)))
        seen_rows += len(share)
    assert seen_rows == full.n
    assert len({c for c, _ in counts}) == 1 and all(c == s for c, s in counts)
    assert counts[0][0] == min(-(-sum(sizes[k] for k in s) // bs) for s in shards)


def test_a_cluster_without_workers_is_one_line():
    from wbdc.cluster import ClusterError
    from wbdc.nn.distributed import run_distributed

    class NoWorkers:
        def scheduler_info(self):
            return {"workers": {}}

    cfg = {"nn": {"distributed": {"lr_scale": "none"}, "train": {"device": "cpu"}}}
    with pytest.raises(ClusterError, match="0 workers"):
        run_distributed(NoWorkers(), "/nonexistent", "mmoe", cfg, "offline")


def test_a_rank_stuck_after_the_others_finished_is_named(dask_client):
    """A rank still running long after another finished (they share the last collective, so it
    is stuck) ends the wait with a one-line ClusterError naming it, not a hang."""
    import time

    from wbdc.cluster import ClusterError, worker_addresses
    from wbdc.nn.distributed import _wait_ranks

    addrs = worker_addresses(dask_client)
    futs = [dask_client.submit(time.sleep, s, workers=[a], allow_other_workers=False, pure=False)
            for s, a in zip((0, 8), addrs)]   # a running task cannot be stopped: keep it short
    t = time.monotonic()
    with pytest.raises(ClusterError, match=r"^DDP rank\(s\) 1 still running 1 s after"):
        _wait_ranks(dask_client, futs, addrs, poll_s=0.2, straggler_s=1)
    assert time.monotonic() - t < 6
    assert futs[1].status == "cancelled"


# ------------------------------------------------------------------------------ DDP = one process

def _fit(root: str, rank: int, world: int, master: str | None, steps_epochs: float):
    """Train a small MMoE on tiny with batches of 2048 rows: one process (world 1, no group)
    or ``world`` DDP ranks, each taking every world-th row of the same batches.  Returns the
    day-14 predictions (rank 0) in row order."""
    from datetime import timedelta

    import torch.distributed as dist

    from wbdc.features.store import FeatureStore
    from wbdc.nn.data import Encoder, StreamedRows, batch_indices, select_features
    from wbdc.nn.distributed import make_trainer_class
    from wbdc.nn.losses import build_balancer
    from wbdc.nn.models import build_model
    from wbdc.nn.inputs import InputLayer
    from wbdc.nn.trainer import TrainConfig, Trainer, predict, seed_everything
    from wbdc.paths import Paths

    store = FeatureStore(Paths.at(root))
    sel = select_features(store, {"categorical": ["userid", "feedid", "authorid"], "extra_categorical": False,
                                  "dense": "all", "dense_exclude": [], "multi_hot": [],
                                  "max_list_len": 4, "pretrained": [], "history_len": 6})
    days = [d for d in store.days if d <= 13]
    enc = Encoder.fit_days(store, days, sel)
    train = StreamedRows(store, enc, days, True, prefetch=False).materialize()
    valid = StreamedRows(store, enc, [14], True, prefetch=False).materialize()
    seed_everything(7, 1, True)
    bags, tables = enc.side_tables(store)
    inputs = InputLayer(enc.cat_cardinalities, 4, len(sel.dense), bags, tables,
                        history=enc.history_field(), history_dim=4)     # the history block too
    model = build_model("mmoe", inputs, list(ACTIONS), {"n_experts": 3, "expert_dims": [16, 8],
                                                         "tower_dims": [8], "dropout": 0.0})
    model.core.towers.set_output_bias(train.label_means())
    tcfg = TrainConfig(batch_size=2048 // world, lr=0.002, optimizer="adam", weight_decay=0.0, patience=1,
                       eval_every_steps=0, predict_batch_size=4096, device="cpu", precision="fp32",
                       seed=7, progress=False)

    class RankHalf:                        # every rank: its slice of the one-process batches
        labels = train.labels

        def __len__(self):
            return len(train)

        def steps_per_epoch(self, bs):
            return -(-len(train) // 2048)

        def epoch_batches(self, bs, generator):
            for idx in batch_indices(len(train), 2048, True, generator):
                yield train.batch(idx[rank::world])

    if world > 1:
        dist.init_process_group("gloo", init_method=master, rank=rank, world_size=world,
                                timeout=timedelta(seconds=120))
    try:
        if world > 1:
            trainer = make_trainer_class()(model, build_balancer({"balancing": "competition", "weights": None,
                                                                  "init_log_var": 0.0}), tcfg, rank, world)
            trainer.generator = torch.Generator().manual_seed(7)     # the same batches everywhere
        else:
            trainer = Trainer(model, build_balancer({"balancing": "competition", "weights": None,
                                                     "init_log_var": 0.0}), tcfg)
        trainer.fit(RankHalf(), steps_epochs)
        return predict(trainer.model, valid, 4096) if rank == 0 else None
    finally:
        if world > 1:
            dist.destroy_process_group()


def test_two_ddp_ranks_follow_one_process_step_for_step(tiny_root, dask_client):
    """Averaging the two ranks' gradients of half batches = the gradient of the whole batch:
    after two epochs the predictions and the day-14 weighted uAUC agree (to float rounding)."""
    import cloudpickle

    import test_nn_ddp
    from wbdc.cluster import worker_addresses
    from wbdc.metrics import weighted_uauc
    from wbdc.nn.distributed import _free_port, _host, _wait_ranks

    cloudpickle.register_pickle_by_value(test_nn_ddp)
    addrs = worker_addresses(dask_client)
    assert len(addrs) == 2
    port = dask_client.submit(_free_port, workers=[addrs[0]], pure=False).result()[1]
    master = f"tcp://{_host(addrs[0])}:{port}"
    futs = [dask_client.submit(_fit, str(tiny_root), r, 2, master, 2.0, workers=[a],
                               allow_other_workers=False, pure=False) for r, a in enumerate(addrs)]
    # the stage's own wait: both ranks, with a clear error if a rank fails, its worker leaves or
    # it is still running long after the other finished
    _wait_ranks(dask_client, futs, addrs, straggler_s=240)
    ddp = futs[0].result()
    assert futs[1].result() is None
    one = _fit(str(tiny_root), 0, 1, None, 2.0)
    labels = _store(tiny_root).load_labels(14)
    userid = _store(tiny_root).load_day(14, columns=[])["userid"].to_numpy()
    s_one = weighted_uauc(labels, {a: one[:, i] for i, a in enumerate(ACTIONS)}, userid)["weighted"]
    s_ddp = weighted_uauc(labels, {a: ddp[:, i] for i, a in enumerate(ACTIONS)}, userid)["weighted"]
    assert abs(s_one - s_ddp) < 0.01, (s_one, s_ddp)
    np.testing.assert_allclose(ddp, one, atol=2e-3)
    # and it trained: the predictions moved away from the initial output bias
    assert np.abs(one - one.mean(0)).max() > 1e-3


def test_each_rank_samples_its_own_rows_with_no_action_and_the_steps_stay_equal(tiny_root_3_buckets):
    """nn.train.neg_rate on the ranks: each share keeps every row of its blocks with an action
    and round(rate x its rows without), nothing outside its blocks, a fresh draw per pass,
    streamed or in memory; the ranks' counts make the equal step count."""
    from wbdc.nn.data import Encoder, NegativeSampled, ShardRows, StreamedRows, select_features
    from wbdc.nn.distributed import EqualSteps, shard_blocks

    root, _ = tiny_root_3_buckets
    store = _store(root)
    sel = select_features(store, {"categorical": ["userid", "feedid"], "extra_categorical": False,
                                  "dense": [], "dense_exclude": [], "multi_hot": [],
                                  "max_list_len": 4, "pretrained": []})
    days = [d for d in store.days if d <= 13]
    full = StreamedRows(store, None, days, True, buffer_rows=20_000, prefetch=False)
    full.encoder = Encoder.fit_days(store, days, sel)
    bits = full.labels_bits
    shards = shard_blocks([b[3] for b in full.blocks], 2, seed=7)
    masks = [ShardRows(full, s).row_mask() for s in shards]
    assert not (masks[0] & masks[1]).any() and (masks[0] | masks[1]).all()
    rate, bs, lens, steps = 0.5, 500, [], []
    for r, (s, mask) in enumerate(zip(shards, masks)):
        share = ShardRows(full, s)
        pos, neg = int(((bits != 0) & mask).sum()), int(((bits == 0) & mask).sum())
        streamed = NegativeSampled(share, rate, within=mask)
        in_memory = NegativeSampled(share.materialize(), rate)
        assert len(streamed) == len(in_memory) == pos + round(rate * neg) < mask.sum()
        lens.append(len(streamed))
        g = torch.Generator().manual_seed(r)
        first, second = streamed.keep(g), streamed.keep(g)
        for keep in (first, second):
            assert keep.sum() == len(streamed) and not (keep & ~mask).any()
            assert (keep[(bits != 0) & mask]).all()
        assert not np.array_equal(first, second)
        # the rows a streamed pass yields are exactly the kept ones, labels and all
        rows = sum(len(b["labels"]) for b in streamed.epoch_batches(bs, torch.Generator().manual_seed(3)))
        assert rows == len(streamed)
        steps.append(-(-len(streamed) // bs))
    for r, s in enumerate(shards):
        es = EqualSteps(NegativeSampled(ShardRows(full, s), rate, within=masks[r]), lens, sum(lens),
                        full.label_means())
        assert sum(1 for _ in es.epoch_batches(bs, torch.Generator().manual_seed(r))) == min(steps)


# ------------------------------------------------------------------------------ the stage

@pytest.fixture(scope="module")
def ddp_runs(tiny_root_3_buckets, tmp_path_factory):
    """train_nn --arch mmoe --mode all on tiny (3 user buckets, so day 14 splits across the ranks):
    one process and a LocalCluster of 2 ranks, each in its own copy of the artifact root."""
    src, _ = tiny_root_3_buckets
    out = {}
    for name, extra in (("one", []), ("ddp", ["--set", "cluster.address=local:2"])):
        root = tmp_path_factory.mktemp(f"nn_{name}")
        shutil.copytree(src / "data", root / "data")
        shutil.copytree(src / "features", root / "features")
        r = run_stage("train_nn.py", root, "--arch", "mmoe", "--mode", "all", "--preset", "tiny",
                      "--seed", "7", *SMALL, *extra)
        out[name] = (root, r)
    return out


def test_ddp_stage_writes_what_one_process_writes(ddp_runs):
    (one, _), (ddp, r) = ddp_runs["one"], ddp_runs["ddp"]
    m_one, m_ddp = one / "models" / "mmoe", ddp / "models" / "mmoe"
    names = lambda d: {p.name for p in d.iterdir()}  # noqa: E731
    assert names(m_ddp) == names(m_one)
    assert {"pred_offline.parquet", "pred_offline_sel_a.parquet", "pred_offline_sel_b.parquet",
            "pred_online.parquet", "scores.json", "checkpoint_offline.pt", "checkpoint_online.pt",
            "gates.csv"} <= names(m_ddp)
    assert "DistributedDataParallel over 2 ranks (gloo)" in r.stderr
    for out in (ddp_runs["one"][1].stderr, r.stderr):
        assert "training rows: at most 1 epoch instead of 2 (nn.train.max_rows=1)" in out
    info = json.loads((m_ddp / "run_info_train_nn_mmoe.json").read_text())
    peaks = info["worker_peaks_mb"]                    # the ranks' workers (bench_cluster reads them)
    assert len(peaks) == 2 and all(v > 100 for v in peaks.values())
    assert "worker_peaks_mb" not in json.loads((m_one / "run_info_train_nn_mmoe.json").read_text())
    s_one = json.loads((m_one / "scores.json").read_text())
    s_ddp = json.loads((m_ddp / "scores.json").read_text())
    assert set(s_ddp) - set(s_one) == {"distributed"} and s_ddp["distributed"]["world_size"] == 2
    assert s_ddp["n_train_rows"] == s_one["n_train_rows"]
    assert s_ddp["epochs_run"] == s_one["epochs_run"] == 1.0
    assert set(s_ddp["offline"]) == set(s_one["offline"])
    for f in ("pred_offline.parquet", "pred_offline_sel_a.parquet", "pred_online.parquet"):
        a, b = pd.read_parquet(m_one / f), pd.read_parquet(m_ddp / f)
        assert list(a.columns) == list(b.columns)
        np.testing.assert_array_equal(a[["userid", "feedid"]].to_numpy(), b[["userid", "feedid"]].to_numpy())
        p = b[list(ACTIONS)].to_numpy()
        assert np.isfinite(p).all() and (p > 0).all() and (p < 1).all()
    gates = pd.read_csv(m_ddp / "gates.csv")
    np.testing.assert_allclose(gates.drop(columns=["level", "action"]).sum(1), 1.0, atol=1e-5)
    # the checkpoint loads back into the one-process code and predicts what was written
    from wbdc.nn.pipeline import load_checkpoint
    from wbdc.nn.trainer import predict
    store = _store(ddp)
    model, enc = load_checkpoint(m_ddp / "checkpoint_offline.pt", store)
    again = predict(model, enc.encode(store.load_day(14, columns=enc.selection.columns())), 4096,
                    s_ddp["precision"])
    np.testing.assert_allclose(again,
                               pd.read_parquet(m_ddp / "pred_offline.parquet")[list(ACTIONS)].to_numpy(),
                               atol=1e-5)


def test_ddp_stage_scores_like_one_process(ddp_runs):
    """Same settings, one epoch: the day-14 weighted uAUC of 2 DDP ranks within 0.03 of one
    process.  Tiny's day 14 (3,951 rows, ~4 per user) is noisy: one-process runs that differ
    only in the shuffle order already differ by up to ~0.025, so 0.01 is asserted where the
    batches are the same (test_two_ddp_ranks_follow_one_process_step_for_step)."""
    s_one = json.loads((ddp_runs["one"][0] / "models" / "mmoe" / "scores.json").read_text())
    s_ddp = json.loads((ddp_runs["ddp"][0] / "models" / "mmoe" / "scores.json").read_text())
    w1, w2 = s_one["offline_insample"]["weighted"], s_ddp["offline_insample"]["weighted"]
    assert abs(w1 - w2) <= 0.03, (w1, w2)
    assert s_ddp["offline_insample"]["weighted"] > 0.5
    # the reported score is recomputed from the written files (all rows, in row order)
    from wbdc.metrics import weighted_uauc
    root = ddp_runs["ddp"][0]
    pred = pd.read_parquet(root / "models" / "mmoe" / "pred_offline.parquet")
    store = _store(root)
    again = weighted_uauc(store.load_labels(14), pred, pred["userid"].to_numpy())["weighted"]
    assert again == pytest.approx(s_ddp["offline_insample"]["weighted"], abs=1e-6)


def test_the_ranks_down_sample_as_one_process_does(tiny_root_3_buckets, tmp_path):
    """nn.train.neg_rate auto on local:2: one epoch over nn.train.max_rows (1 here) makes every
    rank keep its rows with an action and the rate's share of the others, as one process would;
    the pass's rows add up over the ranks, and the run scores and writes its files."""
    from wbdc.nn.data import StreamedRows
    from wbdc.nn.pipeline import AUTO_NEG_FLOOR

    src, _ = tiny_root_3_buckets
    root = tmp_path / "root"
    shutil.copytree(src / "data", root / "data")
    shutil.copytree(src / "features", root / "features")
    r = run_stage("train_nn.py", root, "--arch", "mmoe", "--mode", "offline", "--preset", "tiny",
                  "--seed", "7", *SMALL, "--set", "nn.train.neg_rate=auto", "--set", "cluster.address=local:2")
    assert r.returncode == 0, r.stderr[-3000:]
    line = next(x for x in r.stderr.splitlines() if "down-sampled" in x)
    assert (f"rows with no action down-sampled to {AUTO_NEG_FLOOR:.4g} per pass on every rank "
            "(nn.train.neg_rate auto: one epoch of") in line
    n_pass = int(line.split("a pass sees ")[1].split(" of them")[0].replace(",", ""))
    bits = StreamedRows(_store(root), None, [d for d in _store(root).days if d <= 13], True).labels_bits
    pos, neg = int((bits != 0).sum()), int((bits == 0).sum())
    assert abs(n_pass - (pos + AUTO_NEG_FLOOR * neg)) <= 2 and n_pass < len(bits)   # rounded per rank
    scores = json.loads((root / "models" / "mmoe" / "scores.json").read_text())
    assert scores["n_train_rows"] == n_pass and scores["distributed"]["world_size"] == 2
    pred = pd.read_parquet(root / "models" / "mmoe" / "pred_offline.parquet")[list(ACTIONS)].to_numpy()
    assert np.isfinite(pred).all() and (pred > 0).all() and (pred < 1).all()
