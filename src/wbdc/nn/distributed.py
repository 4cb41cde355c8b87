"""The nets on a Dask cluster: torch DistributedDataParallel, one rank per Dask worker.

The stage's process is the client: it picks a rendezvous port on rank 0's machine, submits one
``rank_main`` per worker (rank order = ``wbdc.cluster.worker_addresses``) and gets back the
finished run from rank 0 (``RunResult``, the same object the one-process pipeline returns, so
the stage writes the same files).  On the workers:

* rendezvous: ``torch.distributed.init_process_group`` (gloo; nccl when the nets run on CUDA
  and every rank has a GPU) at ``tcp://<rank 0's host>:<port>``, with ``nn.distributed.timeout_s``
  as the limit of the rendezvous and of every collective, so a rank that fails does not leave the
  others waiting forever; the group is always destroyed.
* training rows: the blocks of ``StreamedRows`` (16,384-row row groups of one day and user
  bucket) are dealt to the ranks once (``shard_blocks``: a seeded order, each block to the rank
  holding the fewest rows so far); a rank reads, encodes and shuffles only its own blocks (in
  memory or streamed, ``nn.stream`` as for one process).  The encoder is fitted the same way:
  each rank summarises its own blocks (``Encoder.fit_partial``), the summaries are all-gathered
  and merged, so every rank holds the same encoder without any rank reading every row.
* equal steps: every rank runs ``min over ranks of ceil(rows / batch)`` steps per epoch (the
  larger shares drop their last few rows of each epoch, different ones each epoch as the share is
  reshuffled); DDP needs the same number of backward passes everywhere.
* the model: the same seed on every rank (DDP broadcasts rank 0's weights anyway), wrapped in
  ``DistributedDataParallel``; embedding gradients are dense under DDP (``nn.embedding.sparse``
  is forced off: gloo's sparse all-reduce is not reliable).  Each rank keeps the batch of
  ``nn.train.batch_size``, so a step sees W x batch rows; the learning rate is
  ``nn.train.lr`` times ``nn.distributed.lr_scale`` (none = 1, sqrt = sqrt(W), linear = W).
* evaluation (day 14) and prediction (day 15): the day's blocks are cut into W runs of about
  equal rows, each rank predicts its run, the predictions are all-gathered and put back in row
  order; rank 0 scores them (weighted uAUC and the two user halves) and broadcasts the scores, so
  the early stopping and the halves' cross-fitted choices are the same on every rank.
"""
from __future__ import annotations

import functools
import itertools
import math
import socket
import sys
import time
import uuid
from dataclasses import dataclass
from datetime import timedelta
from pathlib import Path
from typing import Sequence

import numpy as np
import pandas as pd
import torch
import torch.distributed as dist

from ..cluster import ClusterError, worker_addresses
from ..io import InputError
from ..schema import ACTIONS, LAST_TRAIN_DAY, TEST_DAY
from .data import EncodedArrays, Encoder, NegativeSampled, StreamedRows, ShardRows, select_features
from .models import count_parameters

LR_SCALES = ("none", "sqrt", "linear")


# ------------------------------------------------------------------------------ sharding

def shard_blocks(sizes: Sequence[int], world: int, seed: int) -> list[list[int]]:
    """Deal block indices to ``world`` ranks: the blocks in a seeded random order, each to the
    rank holding the fewest rows so far (ties: the lowest rank).  Disjoint, covering every
    block, the ranks' rows within one block of each other."""
    if world < 1:
        raise ValueError(f"world size {world}; need at least 1 rank")
    order = np.random.default_rng(int(seed)).permutation(len(sizes))
    shards: list[list[int]] = [[] for _ in range(world)]
    rows = [0] * world
    for k in order:
        r = min(range(world), key=lambda i: (rows[i], i))
        shards[r].append(int(k))
        rows[r] += int(sizes[k])
    return shards


def equal_steps(shard_rows: Sequence[int], batch_size: int) -> int:
    """Steps per epoch every rank runs: the fewest any rank's share fills (at least 1)."""
    return max(1, min(math.ceil(int(n) / int(batch_size)) for n in shard_rows))


def contiguous_shards(sizes: Sequence[int], world: int) -> list[list[int]]:
    """Cut blocks in order into ``world`` runs of about equal rows (evaluation, prediction)."""
    total = int(sum(sizes))
    shards: list[list[int]] = [[] for _ in range(world)]
    start = 0
    for k, n in enumerate(sizes):
        mid = start + int(n) / 2
        r = min(world - 1, int(mid * world / total)) if total else 0
        shards[r].append(k)
        start += int(n)
    return shards


class EqualSteps:
    """One rank's training rows with the step count every rank shares (the trainer's row
    source: ``epoch_batches`` yields exactly ``steps_per_epoch`` batches)."""

    def __init__(self, source, shard_rows: Sequence[int], global_rows: int, label_means: list[float],
                 aux_means: list[float] | None = None):
        self.source = source
        self.shard_rows = [int(n) for n in shard_rows]
        self.global_rows = int(global_rows)
        self._label_means = label_means
        self._aux_means = aux_means
        self.labels = getattr(source, "labels", None)
        self.packed = getattr(source, "packed", None)

    def __len__(self) -> int:
        return len(self.source)

    def steps_per_epoch(self, batch_size: int) -> int:
        return equal_steps(self.shard_rows, batch_size)

    def label_means(self) -> list[float]:
        return self._label_means

    def aux_means(self) -> list[float] | None:
        return self._aux_means

    def epoch_batches(self, batch_size: int, generator: torch.Generator):
        return itertools.islice(self.source.epoch_batches(batch_size, generator),
                                self.steps_per_epoch(batch_size))


class PositionedRows:
    """Rows in memory that report their positions in the full rows (``ordered_batches``)."""

    def __init__(self, arrays: EncodedArrays, positions: np.ndarray):
        self.arrays, self.positions = arrays, positions

    def __len__(self) -> int:
        return len(self.arrays)

    def ordered_batches(self, batch_size: int):
        for idx, batch in self.arrays.ordered_batches(batch_size):
            yield self.positions[idx], batch


# ------------------------------------------------------------------------------ collectives

def _all_gather(obj) -> list:
    out = [None] * dist.get_world_size()
    dist.all_gather_object(out, obj)
    return out


def _broadcast(obj, src: int = 0):
    box = [obj]
    dist.broadcast_object_list(box, src=src)
    return box[0]


@torch.no_grad()
def predict_share(model, data, batch_size: int, precision: str) -> tuple[np.ndarray, np.ndarray]:
    """(positions, probabilities [n, T]) of one rank's share of an evaluation day."""
    from .trainer import amp_dtype, autocast, model_device, to_device
    model.eval()
    device, dtype = model_device(model), amp_dtype(precision)
    pos, out = [], []
    for p, batch in data.ordered_batches(batch_size):
        with autocast(device, dtype):
            logits = model(to_device(batch, device))
        pos.append(np.asarray(p, np.int64))
        out.append(torch.sigmoid(logits.float()).cpu().numpy())
    if not out:
        return np.zeros(0, np.int64), np.zeros((0, len(ACTIONS)), np.float32)
    return np.concatenate(pos), np.concatenate(out).astype(np.float32)


def gather_predictions(share: tuple[np.ndarray, np.ndarray], n_rows: int) -> np.ndarray:
    """Every rank's share put back in row order (the same array on every rank); fails when the
    shares do not cover each row exactly once."""
    out = np.zeros((n_rows, len(ACTIONS)), np.float32)
    seen = np.zeros(n_rows, np.int32)
    for pos, p in _all_gather(share):
        out[pos] = p
        np.add.at(seen, pos, 1)
    if not (seen == 1).all():
        raise RuntimeError(f"the ranks' predictions cover {int((seen > 0).sum())} of {n_rows} rows "
                           f"({int((seen > 1).sum())} twice)")
    return out


def make_trainer_class():
    from .trainer import Trainer

    class DDPTrainer(Trainer):
        """A ``Trainer`` whose training forward pass goes through ``DistributedDataParallel``
        and whose ``predict`` predicts this rank's share and gathers every rank's."""

        def __init__(self, model, balancer, cfg, rank: int, world: int, device_ids=None,
                     aux_weight: float = 0.0):
            super().__init__(model, balancer, cfg, aux_weight)
            from torch.nn.parallel import DistributedDataParallel
            self.rank, self.world = rank, world
            # buffers (side tables, gate indices) never change: synced once at init, not every step
            self.train_model = DistributedDataParallel(self.model, device_ids=device_ids,
                                                       forward_sync_buffers=False)
            # the shuffles and dropout of each rank differ (the weights were seeded alike)
            self.generator = torch.Generator().manual_seed(int(cfg.seed) + 1_000_003 * rank)
            torch.manual_seed(int(cfg.seed) + 1_000_003 * rank)

        def _after_backward(self) -> None:
            for p in self.balancer.parameters():      # learnable loss weights live outside DDP
                if p.grad is not None:
                    dist.all_reduce(p.grad)
                    p.grad /= self.world

        def _mean_loss(self, loss_sum: float, loss_n: int) -> float:
            t = torch.tensor([loss_sum, float(loss_n)], dtype=torch.float64)
            dist.all_reduce(t)
            return float(t[0] / t[1])

        def predict(self, data) -> np.ndarray:
            share = predict_share(self.model, data, self.cfg.predict_batch_size, self.precision)
            return gather_predictions(share, data.n_full)

    return DDPTrainer


class EvalShare(PositionedRows):
    """One rank's share of an evaluation day (streamed or in memory) and the day's size."""

    def __init__(self, source, n_full: int):
        self.source, self.n_full = source, int(n_full)

    def __len__(self) -> int:
        return len(self.source)

    def ordered_batches(self, batch_size: int):
        return self.source.ordered_batches(batch_size)


# ------------------------------------------------------------------------------ one rank

@dataclass
class RankSpec:
    """What the client tells each rank."""
    rank: int
    world: int
    master: str          # tcp://host:port
    threads: int         # torch threads of this rank
    timeout_s: float
    backend: str         # gloo | nccl
    local_rank: int      # index among the ranks on the same host (CUDA device)


def _log(spec: RankSpec, msg: str) -> None:
    if spec.rank == 0:
        print(f"[train_nn] {msg}", file=sys.stderr, flush=True)


def _rank_cfg(cfg: dict, spec: RankSpec) -> dict:
    import copy
    cfg = copy.deepcopy(cfg)
    nn = cfg["nn"]
    nn["embedding"]["sparse"] = False          # dense gradients under DDP (module doc)
    nn["threads"] = spec.threads
    scale = {"none": 1.0, "sqrt": math.sqrt(spec.world), "linear": float(spec.world)}[
        nn["distributed"]["lr_scale"]]
    nn["train"]["lr"] = float(nn["train"]["lr"]) * scale
    if spec.rank != 0:
        nn["train"]["progress"] = False
    if spec.backend == "nccl":
        nn["train"]["device"] = f"cuda:{spec.local_rank % torch.cuda.device_count()}"
    elif nn["train"]["device"] == "auto":
        nn["train"]["device"] = "cpu"
    return cfg


def _fit_encoder(store, shard: ShardRows, selection, cfg: dict) -> Encoder:
    """Each rank summarises its own training blocks; the summaries are merged everywhere."""
    fcfg = cfg["nn"]["features"]
    part = Encoder.fit_partial(shard.iter_frames(selection.columns()), selection)
    parts = [p for p in _all_gather(part) if len(p["feeds"])]
    return Encoder.from_partials(parts, store, selection, int(fcfg["max_list_len"]),
                                 str(fcfg["dense_dtype"]))


def _open_rows(store, cfg: dict, spec: RankSpec, days: list[int], eval_day: int, labels_eval: bool):
    """This rank's training share (EqualSteps), its evaluation share and the full evaluation
    rows (ids and labels only, read on rank 0), plus the encoder and the rows plan."""
    from .pipeline import plan_rows, sampling_rate
    from ..features.store import ROW_GROUP_ROWS

    nn_cfg = cfg["nn"]
    selection = select_features(store, nn_cfg["features"])
    plan = plan_rows(store, cfg, selection, days, [eval_day])
    buffer_rows = max(ROW_GROUP_ROWS, plan.buffer_rows // spec.world)   # per worker: 1/W of the budget
    prefetch = bool(nn_cfg["stream"]["prefetch"])
    full = StreamedRows(store, None, days, True, buffer_rows, prefetch,
                        aux=list(nn_cfg["aux"]["tasks"]))
    sizes = [b[3] for b in full.blocks]
    shards = shard_blocks(sizes, spec.world, int(cfg["_net_seed"]))
    mine = ShardRows(full, shards[spec.rank])
    t0 = time.perf_counter()
    enc = _fit_encoder(store, mine, selection, cfg)
    full.encoder = mine.encoder = enc
    source = mine if plan.train_streamed else mine.materialize()
    shard_rows = [sum(sizes[k] for k in s) for s in shards]
    label_means, sampled = full.label_means(), ""
    bits = functools.cache(lambda: full.labels_bits)   # every day's labels, joined once if asked
    rate, why = sampling_rate(nn_cfg["train"], full.n, bits)
    if rate is not None:
        # each rank keeps its rows with an action and draws round(rate x its others) afresh each
        # pass, as one process draws from all of them; the step count follows the kept rows
        source = NegativeSampled(source, rate, within=mine.row_mask() if plan.train_streamed else None)
        shard_rows = [int(n) for n in _all_gather(len(source))]
        bits = bits()
        label_means = [float(((bits >> i) & 1).sum()) / max(1, sum(shard_rows)) for i in range(len(ACTIONS))]
        sampled = (f"; rows with no action down-sampled to {rate:.4g} per pass on every rank "
                   f"({why}): a pass sees {sum(shard_rows):,} of them")
    train = EqualSteps(source, shard_rows, sum(shard_rows), label_means, full.aux_means())
    # evaluation day: contiguous runs of blocks; the full rows' ids (and labels) on rank 0 only
    efull = StreamedRows(store, enc, [eval_day], labels_eval and spec.rank == 0, buffer_rows, prefetch,
                         ids=spec.rank == 0)
    eshards = contiguous_shards([b[3] for b in efull.blocks], spec.world)
    eshare = ShardRows(efull, eshards[spec.rank])
    if plan.eval_streamed:
        valid = EvalShare(eshare, efull.n)
    else:
        arr, pos = eshare.materialize_with_positions()
        valid = EvalShare(PositionedRows(arr, pos), efull.n)
    bs = int(nn_cfg["train"]["batch_size"])
    steps = train.steps_per_epoch(bs)
    dropped = sum(max(0, n - steps * bs) for n in shard_rows)
    _log(spec, f"days {days[0]}..{days[-1]}: {full.n:,} training rows in {len(full.blocks)} blocks{sampled}, "
               f"per rank {shard_rows}; {steps} steps of {bs} rows per rank and epoch "
               f"(equal steps: {dropped:,} rows of the larger shares left out per epoch); "
               f"day {eval_day}: {efull.n:,} rows in {len(efull.blocks)} blocks, rank 0 predicts "
               f"{len(valid):,}; {plan.describe()} ({time.perf_counter() - t0:.1f} s)")
    return enc, train, valid, efull, selection


def _new_trainer(arch, enc, store, cfg, train, spec: RankSpec):
    from .losses import build_balancer
    from .pipeline import build_net
    from .trainer import TrainConfig, seed_everything
    nn_cfg = cfg["nn"]
    seed = int(cfg["_net_seed"])
    seed_everything(seed, nn_cfg["threads"], bool(nn_cfg["deterministic"]))
    model = build_net(arch, enc, store, nn_cfg)
    model.set_output_bias(train.label_means(), train.aux_means())
    balancer = build_balancer(nn_cfg["loss"])
    tcfg = TrainConfig.from_dict({**nn_cfg["train"], "seed": seed})
    device_ids = [torch.device(nn_cfg["train"]["device"]).index] if spec.backend == "nccl" else None
    return make_trainer_class()(model, balancer, tcfg, spec.rank, spec.world, device_ids,
                                float(nn_cfg["aux"]["weight"]))


def _throughput(fit) -> None:
    """The fit's rows and rows/s summed over the ranks (rank 0's wall time)."""
    samples = sum(s for s in _all_gather(int(fit.samples)))
    fit.samples = samples
    fit.samples_per_s = samples / fit.train_seconds if fit.train_seconds > 0 else float("nan")


def _combined_gates(trainer, valid, max_rows: int | None = None) -> pd.DataFrame | None:
    from .diagnostics import gate_means
    g = gate_means(trainer.model, valid, trainer.cfg.predict_batch_size,
                   trainer.model.task_names(), max_rows)
    parts = _all_gather((g, int(g.attrs.get("rows", len(valid)))))
    if g.empty:
        return g
    total = sum(n for _, n in parts)
    slots = [c for c in g.columns if c not in ("level", "action")]
    out = parts[0][0].copy()
    out[slots] = sum(f[slots].to_numpy() * n for f, n in parts) / max(total, 1)
    return out


def _offline(store, arch: str, cfg: dict, spec: RankSpec):
    from .pipeline import VALID_DAY, make_score_fn, offline_result, train_days
    from .trainer import fit_epochs
    nn_cfg = cfg["nn"]
    if VALID_DAY not in store.days:
        raise InputError(f"the feature store has no day {VALID_DAY} to validate on")
    t0 = time.perf_counter()
    days = train_days(store, VALID_DAY - 1, nn_cfg["train"].get("first_day"))
    enc, train, valid, efull, _ = _open_rows(store, cfg, spec, days, VALID_DAY, True)
    t_data = time.perf_counter() - t0
    trainer = _new_trainer(arch, enc, store, cfg, train, spec)
    _log(spec, f"{arch}: {count_parameters(trainer.model):,} parameters, input width "
               f"{trainer.model.inputs.output_dim}; DistributedDataParallel over {spec.world} ranks "
               f"({spec.backend}), lr {trainer.cfg.lr:g}")
    local_score = make_score_fn(efull, int(cfg["data"]["seed"])) if spec.rank == 0 else None

    def score(preds: np.ndarray) -> dict:      # decided on rank 0, the same everywhere
        return _broadcast(local_score(preds) if spec.rank == 0 else None)

    fit = trainer.fit(train, fit_epochs(nn_cfg["train"], train.global_rows,
                                        (lambda m: _log(spec, m)) if spec.rank == 0 else None), valid, score)
    _throughput(fit)
    t1 = time.perf_counter()
    gates = _combined_gates(trainer, valid, nn_cfg["gates"]["max_rows"])
    preds = fit.best_preds if fit.best_preds is not None else trainer.predict(valid)
    if spec.rank != 0:
        return None
    if not nn_cfg["gates"]["all_levels"] and gates is not None and not gates.empty:
        gates = gates[gates["level"] == gates["level"].max()].reset_index(drop=True)
    result = offline_result(trainer.model.cpu(), enc, fit, efull, preds, gates, train.global_rows,
                            int(cfg["data"]["seed"]),
                            {"data": round(t_data, 2), "train": round(fit.train_seconds, 2),
                             "diagnostics": round(time.perf_counter() - t1, 2)})
    fit.best_preds = None                        # already in the frames: keep the reply small
    fit.half_best = {h: {k: v for k, v in b.items() if k != "preds"} for h, b in fit.half_best.items()}
    return result


def _online(store, arch: str, cfg: dict, spec: RankSpec, epochs: float):
    from .pipeline import RunResult, prediction_frame, train_days
    nn_cfg = cfg["nn"]
    if TEST_DAY not in store.days:
        raise InputError(f"the feature store has no test day {TEST_DAY}")
    t0 = time.perf_counter()
    days = train_days(store, LAST_TRAIN_DAY, nn_cfg["train"].get("first_day"))
    enc, train, test, tfull, _ = _open_rows(store, cfg, spec, days, TEST_DAY, False)
    t_data = time.perf_counter() - t0
    trainer = _new_trainer(arch, enc, store, cfg, train, spec)
    fit = trainer.fit(train, float(epochs))
    _throughput(fit)
    preds = trainer.predict(test)
    if spec.rank != 0:
        return None
    return RunResult(trainer.model.cpu(), enc, fit, prediction_frame(tfull, preds), None,
                     train.global_rows, count_parameters(trainer.model),
                     {"data": round(t_data, 2), "train": round(fit.train_seconds, 2)})


def rank_main(spec: RankSpec, root: str, arch: str, cfg: dict, mode: str, epochs: float | None):
    """One rank's whole run (a Dask task): join the group, train, leave the group."""
    from ..features.store import FeatureStore
    from ..paths import Paths

    dist.init_process_group(spec.backend, init_method=spec.master, rank=spec.rank,
                            world_size=spec.world, timeout=timedelta(seconds=spec.timeout_s))
    try:
        cfg = _rank_cfg(cfg, spec)
        store = FeatureStore(Paths.at(root))
        if mode == "offline":
            return _offline(store, arch, cfg, spec)
        return _online(store, arch, cfg, spec, float(epochs))
    finally:
        dist.destroy_process_group()


# ------------------------------------------------------------------------------ the client

def _free_port() -> tuple[str, int]:
    """A port free right now on this machine (the rendezvous of rank 0) and the host name."""
    with socket.socket(socket.AF_INET, socket.SOCK_STREAM) as s:
        s.bind(("", 0))
        return socket.gethostname(), int(s.getsockname()[1])


def _has_cuda() -> bool:
    return bool(torch.cuda.is_available())


def _host(address: str) -> str:
    """The host of a Dask worker address (``tcp://10.0.0.5:40123`` -> ``10.0.0.5``)."""
    rest = address.split("://", 1)[-1]
    host = rest.rsplit(":", 1)[0]
    return host.strip("[]")


def _wait_ranks(client, futures, addrs: list[str], poll_s: float = 2.0,
                straggler_s: float | None = None) -> None:
    """Wait for every rank; on the first failed rank raise its error at once (the others stop
    at their next collective's timeout), and raise when a rank's worker left the cluster (its
    task, pinned to that worker, would otherwise wait forever). With ``straggler_s``: once one
    rank has finished, the others must finish within that many seconds (they share its last
    collective, so only a stuck rank is slower), else a ``ClusterError`` names them."""
    from distributed import wait
    from distributed import TimeoutError as DaskTimeout
    pending = list(futures)
    first_done = None
    while pending:
        try:
            wait(pending, timeout=poll_s, return_when="FIRST_COMPLETED")
        except (DaskTimeout, TimeoutError):
            pass
        for f in pending:
            if f.status in ("error", "cancelled"):
                for g in futures:
                    if g is not f:
                        g.cancel()
                f.result()
        pending = [f for f in pending if f.status == "pending"]
        if pending and len(pending) < len(futures):
            first_done = first_done or time.monotonic()
            if straggler_s is not None and time.monotonic() - first_done > straggler_s:
                client.cancel(futures)
                ranks = ", ".join(str(futures.index(f)) for f in pending)
                raise ClusterError(f"DDP rank(s) {ranks} still running {straggler_s:.0f} s after another "
                                   "rank finished (stuck? see the worker logs); rerun")
        if pending:
            alive = set(client.scheduler_info()["workers"])
            gone = [a for a in addrs if a not in alive]
            if gone:
                client.cancel(futures)
                raise ClusterError(f"Dask worker(s) {', '.join(gone)} left the cluster during train_nn "
                                   "(killed for memory? see the worker logs); rerun, perhaps with a "
                                   "larger data.memory_gb or fewer workers")


def run_distributed(client, root: str | Path, arch: str, cfg: dict, mode: str,
                    epochs: float | None = None, log=None):
    """Train ``arch`` (``mode`` offline or online) with one DDP rank per worker of ``client``;
    returns rank 0's ``RunResult`` (plus ``.distributed``, a description of the run)."""
    from .pipeline import net_seed
    from .trainer import available_threads

    if mode not in ("offline", "online"):
        raise ValueError(f"mode {mode!r}; expected offline or online")
    scale = cfg["nn"]["distributed"]["lr_scale"]
    if scale not in LR_SCALES:
        raise InputError(f"nn.distributed.lr_scale={scale!r}; expected one of {', '.join(LR_SCALES)}")
    addrs = worker_addresses(client)
    if not addrs:
        raise ClusterError("the Dask cluster has 0 workers; the nets need at least one (one rank per worker)")
    world = len(addrs)
    hosts = [_host(a) for a in addrs]
    want_cuda = cfg["nn"]["train"]["device"] != "cpu"
    cuda = want_cuda and all(client.run(_has_cuda, workers=addrs).values())
    if cfg["nn"]["train"]["device"] == "cuda" and not cuda:
        raise InputError("nn.train.device=cuda but not every Dask worker sees a CUDA device; "
                         "use cpu or auto")
    backend = "nccl" if cuda else "gloo"
    port = client.submit(_free_port, workers=[addrs[0]], allow_other_workers=False,
                         pure=False).result()[1]
    master = f"tcp://{hosts[0]}:{port}"
    threads_cfg = cfg["nn"]["threads"]
    per_host = {h: hosts.count(h) for h in hosts}
    cores = dict(client.run(available_threads, workers=addrs))
    cfg = {**cfg, "_net_seed": net_seed(cfg)}
    run_id = uuid.uuid4().hex[:8]
    futures = []
    for r, a in enumerate(addrs):
        threads = (max(1, int(cores[a]) // per_host[hosts[r]]) if threads_cfg in (None, "auto", 0)
                   else int(threads_cfg))
        spec = RankSpec(r, world, master, threads, float(cfg["nn"]["distributed"]["timeout_s"]), backend,
                        hosts[:r].count(hosts[r]))
        futures.append(client.submit(rank_main, spec, str(Path(root).resolve()), arch, cfg, mode, epochs,
                                     key=f"train_nn-{arch}-{mode}-{run_id}-rank{r}",
                                     workers=[a], allow_other_workers=False, pure=False, retries=0))
    if log:
        log(f"{arch} {mode}: {world} DDP rank(s) ({backend}) on {', '.join(addrs)}; rendezvous {master}")
    _wait_ranks(client, futures, addrs, straggler_s=2 * float(cfg["nn"]["distributed"]["timeout_s"]))
    res = futures[0].result()
    res.distributed = {"world_size": world, "backend": backend, "workers": addrs,
                       "lr": float(cfg["nn"]["train"]["lr"]) * {"none": 1.0, "sqrt": math.sqrt(world),
                                                                "linear": float(world)}[scale],
                       "lr_scale": scale, "batch_size_per_rank": int(cfg["nn"]["train"]["batch_size"])}
    return res
