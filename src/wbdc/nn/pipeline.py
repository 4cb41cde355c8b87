"""Offline and online runs of one architecture over a FeatureStore.

Offline: encoder fitted on the training days (<= 13), trained with early stopping on the day-14
weighted uAUC, best state kept; each of the two shared user halves also keeps the predictions of
the epoch it prefers, and the honest day-14 score is cross-fitted from them (chosen on one
half, scored on the other, both ways, averaged).  Online: a fresh encoder and model fitted on days <= 14 for the
offline best number of epochs, then predicting day 15.  No file is written here; the stage does
that.
"""
from __future__ import annotations

import sys
import time
from dataclasses import dataclass
from pathlib import Path
from typing import Sequence

import numpy as np
import pandas as pd
import torch

from ..io import InputError, atomic_path
from ..metrics import HALVES, crossfit_scores, mean_predictions, seed_curve, split_halves, weighted_uauc
from ..schema import ACTIONS, LAST_TRAIN_DAY, TEST_DAY
from .data import (EncodedArrays, Encoder, FeatureSelection, NegativeSampled, StreamedRows, encoded_row_bytes,
                   label_bits, select_features)
from .diagnostics import gate_means
from .inputs import InputLayer
from .losses import build_balancer
from .models import MultiTaskNet, build_model, count_parameters, parse_funnels
from .trainer import (FitResult, TrainConfig, Trainer, fit_epochs, offline_epochs, predict, resolve_device,
                      seed_everything)

VALID_DAY = LAST_TRAIN_DAY


def _log(msg: str) -> None:
    print(f"[train_nn] {msg}", file=sys.stderr, flush=True)


@dataclass
class RunResult:
    model: MultiTaskNet
    encoder: Encoder
    fit: FitResult
    preds: pd.DataFrame           # userid, feedid, 7 actions
    gates: pd.DataFrame | None    # offline only
    n_train: int
    n_params: int
    seconds: dict
    half_preds: dict | None = None      # offline: half -> day-14 predictions of its best epoch
    half_epochs: dict | None = None     # offline: half -> its best epoch
    scores: dict | None = None          # offline: honest day-14 scores (cross-fitted halves)
    scores_insample: dict | None = None  # offline: the best epoch's own day-14 scores
    labels: pd.DataFrame | None = None   # offline: the day-14 labels, in ``preds`` order
    seed: int | None = None              # the net's seed (nn.seed)


def net_seed(cfg: dict) -> int:
    s = cfg["nn"].get("seed")
    return int(cfg["data"]["seed"] if s is None else s)


def seed_configs(cfg: dict) -> list[dict]:
    """One config per net seed: ``nn.seeds`` (a list: each net trained once per seed and the
    predictions averaged) or the single ``nn.seed`` / ``data.seed``."""
    import copy
    seeds = cfg["nn"].get("seeds")
    if not seeds:
        return [cfg]
    if len(set(int(s) for s in seeds)) != len(seeds):
        raise ValueError(f"nn.seeds={list(seeds)}: the seeds must differ")
    out = []
    for s in seeds:
        c = copy.deepcopy(cfg)
        c["nn"]["seed"] = int(s)
        out.append(c)
    return out


def average_offline(runs: Sequence[RunResult], halves_seed: int) -> tuple[RunResult, list[dict]]:
    """The seed average of offline runs: day-14 predictions averaged over the seeds, each user
    half's selection averaged over the seeds' selections on that half, so the cross-fitted score
    of the average is as honest as each one's.  Also the curve: the honest score of the average
    of the first k seeds, k = 1..K, with the training seconds it cost."""
    first = runs[0]
    if len(runs) == 1:
        return first, []
    halves = split_halves(halves_seed, first.preds["userid"].to_numpy())
    curve = seed_curve(first.labels, [r.half_preds for r in runs], halves, [r.seed for r in runs],
                       [r.scores["weighted"] for r in runs], [r.seconds.get("train", 0.0) for r in runs])
    frame = mean_predictions([r.preds for r in runs])
    half_preds = {h: mean_predictions([r.half_preds[h] for r in runs]) for h in HALVES}
    seconds = {k: round(sum(float(r.seconds.get(k, 0.0)) for r in runs), 2) for k in first.seconds}
    avg = RunResult(first.model, first.encoder, first.fit, frame, first.gates, first.n_train,
                    first.n_params, seconds, half_preds=half_preds, half_epochs=first.half_epochs,
                    scores=crossfit_scores(first.labels, half_preds["A"], half_preds["B"], halves),
                    scores_insample=weighted_uauc(first.labels, frame, groups=halves.groups),
                    labels=first.labels, seed=first.seed)
    return avg, curve


def average_online(runs: Sequence[RunResult]) -> RunResult:
    """The seed average of online runs (test predictions averaged; the first seed's model)."""
    if len(runs) == 1:
        return runs[0]
    first = runs[0]
    seconds = {k: round(sum(float(r.seconds.get(k, 0.0)) for r in runs), 2) for k in first.seconds}
    return RunResult(first.model, first.encoder, first.fit, mean_predictions([r.preds for r in runs]),
                     None, first.n_train, first.n_params, seconds, seed=first.seed)


def train_days(store, last_day: int, first_day: int | None) -> list[int]:
    days = [d for d in store.days if d <= last_day and (first_day is None or d >= first_day)]
    if not days:
        raise InputError(f"the feature store has no target day <= {last_day} "
                         f"(days: {list(store.days)})")
    return days


def user_slot(encoder: Encoder, interactions: str) -> int | None:
    """Column of ``userid`` among the nets' ids (``interactions: content`` multiplies its
    embedding); a configuration without it is refused in one line."""
    if interactions != "content":
        return None
    cats = list(encoder.selection.categorical)
    if "userid" not in cats:
        from ..config import ConfigError
        raise ConfigError("nn.embedding.interactions: content needs userid in nn.features.categorical")
    return cats.index("userid")


def build_net(arch: str, encoder: Encoder, store, nn_cfg: dict) -> MultiTaskNet:
    emb = nn_cfg["embedding"]
    bags, tables = encoder.side_tables(store)
    inputs = InputLayer(encoder.cat_cardinalities, int(emb["dim"]), len(encoder.selection.dense),
                        bags, tables, bag_dim=int(emb["bag_dim"] or emb["dim"]),
                        pretrained_trainable=bool(emb["pretrained_trainable"]),
                        sparse=bool(emb["sparse"]), history=encoder.history_field(),
                        history_dim=int(emb["history_dim"]),
                        interactions=str(emb["interactions"]),
                        user_slot=user_slot(encoder, str(emb["interactions"])))
    return build_model(arch, inputs, list(ACTIONS), nn_cfg[arch],
                       parse_funnels(nn_cfg.get("funnels"), list(ACTIONS)),
                       aux=list(nn_cfg["aux"]["tasks"]))


def make_score_fn(valid: EncodedArrays | StreamedRows, halves_seed: int | None = None):
    """Weighted uAUC of predictions on ``valid`` (rounded to 6 decimals like the official
    scorer); the user grouping is built once and reused at every evaluation.  With
    ``halves_seed`` the scores of the two shared user halves come too (``"A/<key>"``,
    ``"B/<key>"``, each user's AUC computed once), so each half can pick its own epoch."""
    from ..metrics import group_by_user, split_halves, weighted_uauc, weighted_uauc_by_half

    groups = group_by_user(valid.userid)
    labels = valid.labels_frame()
    halves = None if halves_seed is None else split_halves(halves_seed, groups=groups)

    def score(preds: np.ndarray) -> dict:
        p = {a: np.round(preds[:, i].astype(np.float64), 6) for i, a in enumerate(ACTIONS)}
        if halves is None:
            return weighted_uauc(labels, p, groups=groups)
        by = weighted_uauc_by_half(labels, p, halves)
        out = dict(by["all"])
        for h in ("A", "B"):
            out.update({f"{h}/{k}": v for k, v in by[h].items()})
        return out

    return score


def prediction_frame(arrays: EncodedArrays | StreamedRows, preds: np.ndarray) -> pd.DataFrame:
    out = pd.DataFrame({"userid": arrays.userid, "feedid": arrays.feedid})
    for i, a in enumerate(ACTIONS):
        out[a] = preds[:, i].astype(np.float32)
    return out


@dataclass
class RowsPlan:
    """How a run holds its rows (``nn.stream``, sized from ``data.memory_gb``)."""
    train_streamed: bool
    eval_streamed: bool
    buffer_rows: int
    row_bytes: int
    budget_gb: float

    def describe(self) -> str:
        if not (self.train_streamed or self.eval_streamed):
            return f"rows in memory ({self.row_bytes} bytes per row, budget {self.budget_gb:.1f} GB)"
        parts = []
        if self.train_streamed:
            parts.append(f"training rows streamed in shuffle buffers of {self.buffer_rows:,} rows")
        parts.append(f"evaluation rows {'streamed' if self.eval_streamed else 'in memory'}")
        return f"{', '.join(parts)} ({self.row_bytes} bytes per row, budget {self.budget_gb:.1f} GB)"


#: Shares of data.memory_gb: all encoded rows (training + evaluation) stay in memory when they
#: take at most IN_MEMORY_SHARE of it; when streaming, the evaluation day stays in memory up to
#: EVAL_SHARE and a shuffle buffer (held about three times over: the one training, the next one
#: being read, the concatenation) takes at most BUFFER_SHARE.
IN_MEMORY_SHARE, EVAL_SHARE, BUFFER_SHARE = 0.5, 0.25, 0.08
#: A streamed epoch is cut into at least this many shuffle buffers, so reading and encoding the
#: next one overlaps training on the current one (an epoch of one buffer reads it all first).
MIN_BUFFERS = 4


def plan_rows(store, cfg: dict, selection: FeatureSelection, train: Sequence[int],
              evaluate: Sequence[int]) -> RowsPlan:
    """In memory (the fast path: encoded once, identical to ``Encoder.encode_days``) when the
    encoded rows fit, else streamed from the store (``nn.stream.mode`` forces either)."""
    from ..budget import BudgetError, memory_budget_gb
    from ..features.store import ROW_GROUP_ROWS

    scfg = cfg["nn"]["stream"]
    budget = memory_budget_gb(cfg)
    fcfg = cfg["nn"]["features"]
    row_bytes = encoded_row_bytes(selection, str(fcfg["dense_dtype"]))
    n_train = sum(store.n_rows(d) for d in train)
    n_eval = sum(store.n_rows(d) for d in evaluate)
    need = (n_train + n_eval) * row_bytes / 2**30
    mode = scfg["mode"]
    if mode == "memory" or (mode == "auto" and need <= IN_MEMORY_SHARE * budget):
        if need > budget:
            raise BudgetError(f"nn.stream.mode=memory: the {n_train + n_eval:,} encoded rows need about "
                              f"{need:.1f} GB, over the memory budget of {budget:.1f} GB (data.memory_gb); "
                              f"use nn.stream.mode=auto or stream")
        return RowsPlan(False, False, int(scfg["buffer_rows"]), row_bytes, budget)
    cap = int(BUFFER_SHARE * budget * 2**30 / row_bytes)
    per_epoch = -(-n_train // MIN_BUFFERS)
    # the budget and the epoch's size never cut below a block
    buffer_rows = min(int(scfg["buffer_rows"]), max(ROW_GROUP_ROWS, min(cap, per_epoch)))
    eval_streamed = n_eval * row_bytes / 2**30 > EVAL_SHARE * budget
    return RowsPlan(True, eval_streamed, buffer_rows, row_bytes, budget)


def load_rows(store, enc: Encoder, days: Sequence[int], labels: bool, streamed: bool,
              plan: RowsPlan, cfg: dict, aux: Sequence[str] = ()) -> EncodedArrays | StreamedRows:
    """``aux``: engagement targets to carry (training rows of nets with auxiliary towers)."""
    rows = StreamedRows(store, enc, days, labels, plan.buffer_rows,
                        bool(cfg["nn"]["stream"]["prefetch"]), ids=streamed and not labels, aux=aux)
    return rows if streamed else rows.materialize()


def _prepare(store, cfg: dict, days: list[int], selection: FeatureSelection, plan: RowsPlan):
    """Fit the encoder on ``days`` (one streaming pass) and open their rows (in memory: a
    second pass encodes them; streamed: read block by block while training)."""
    t0 = time.perf_counter()
    fcfg = cfg["nn"]["features"]
    cache = encoder_cache_dir(store, cfg)
    enc = Encoder.fit_days(store, days, selection, int(fcfg["max_list_len"]), str(fcfg["dense_dtype"]),
                           progress=bool(cfg["nn"]["train"]["progress"]), cache_dir=cache)
    arrays = load_rows(store, enc, days, True, plan.train_streamed, plan, cfg,
                       aux=list(cfg["nn"]["aux"]["tasks"]))
    cached = f"; the encoder's statistics of {enc.cached_days} of {len(days)} days read from {cache}" \
        if enc.cached_days else ""
    _log(f"days {days[0]}..{days[-1]}: {len(arrays):,} rows, {len(selection.categorical)} ids, "
         f"{len(selection.dense)} dense, {len(selection.bags)} multi-hot, "
         f"{len(selection.pretrained)} pretrained; {plan.describe()}{cached} ({time.perf_counter() - t0:.1f} s)")
    return enc, negative_sampled(arrays, cfg["nn"]["train"])


#: Where the nets keep each training day's encoder statistics (``nn.features.encoder_cache``),
#: under the root's models/ (a dot folder: no model's).
ENCODER_CACHE = ".nn_encoder"


def encoder_cache_dir(store, cfg: dict) -> Path | None:
    """``models/.nn_encoder`` of the store's root with ``nn.features.encoder_cache`` (a store
    without a root, as in the tests' fakes: None)."""
    paths = getattr(store, "paths", None)
    if not cfg["nn"]["features"]["encoder_cache"] or paths is None:
        return None
    return Path(paths.models) / ENCODER_CACHE


#: ``nn.train.neg_rate: auto`` never keeps less than this share of the rows with no action.
AUTO_NEG_FLOOR = 0.05


def neg_rate(train_cfg: dict) -> float | str | None:
    """``nn.train.neg_rate`` checked: None (or 1) = every training row each pass, ``"auto"``, or
    the share of the rows with no action kept per pass; anything else is refused in one line."""
    rate = train_cfg.get("neg_rate")
    if rate is None or rate == "auto":
        return rate
    if isinstance(rate, bool) or not isinstance(rate, (int, float)) or not 0.0 < float(rate) <= 1.0:
        from ..config import ConfigError
        raise ConfigError(f"nn.train.neg_rate: expected auto, a share in (0, 1] or null, got {rate!r}")
    return None if float(rate) == 1.0 else float(rate)


def auto_neg_rate(n_rows: int, n_negatives: int, max_rows: int | None) -> float | None:
    """``neg_rate: auto``: None (every row) while one epoch fits ``nn.train.max_rows``; above it,
    the share of the rows with no action that brings one epoch to ``max_rows`` rows with every
    row with an action kept (at least :data:`AUTO_NEG_FLOOR`)."""
    if max_rows is None or n_rows <= int(max_rows) or n_negatives == 0:
        return None
    n_pos = n_rows - n_negatives
    return float(min(1.0, max(AUTO_NEG_FLOOR, (int(max_rows) - n_pos) / n_negatives)))


def sampling_rate(train_cfg: dict, n_rows: int, bits) -> tuple[float | None, str]:
    """The share of the rows with no action a pass keeps (None: every row) and why, for
    ``n_rows`` training rows whose label bits ``bits()`` gives (read only for ``auto`` above
    ``nn.train.max_rows``): one process and the DDP ranks (all of them, from the full rows)
    decide alike."""
    rate = neg_rate(train_cfg)
    why = "nn.train.neg_rate"
    if rate == "auto":
        cap = train_cfg.get("max_rows")
        offline_epochs(train_cfg, n_rows)              # a bad max_rows is refused here first
        if cap is None or n_rows <= int(cap):
            return None, ""
        rate = auto_neg_rate(n_rows, int((bits() == 0).sum()), cap)
        why = f"nn.train.neg_rate auto: one epoch of {n_rows:,} rows is over nn.train.max_rows {int(cap):,}"
    if rate is None or rate >= 1.0:
        return None, ""
    return float(rate), why


def negative_sampled(rows, train_cfg: dict):
    """The training rows as the trainer sees them: ``rows``, or with ``nn.train.neg_rate`` the
    rows with no action down-sampled afresh each pass (:class:`NegativeSampled`)."""
    rate, why = sampling_rate(train_cfg, len(rows), lambda: label_bits(rows))
    if rate is None:
        return rows
    out = NegativeSampled(rows, rate)
    n_neg = len(out.negatives)
    _log(f"rows with no action down-sampled to {rate:.4g} per pass ({why}): a pass sees "
         f"{len(out):,} of {len(rows):,} rows ({len(rows) - n_neg:,} with an action, "
         f"{out.n_negatives_kept:,} of {n_neg:,} without)")
    return out


def new_trainer(arch: str, enc: Encoder, store, cfg: dict,
                 train: EncodedArrays | StreamedRows | None = None) -> Trainer:
    nn_cfg = cfg["nn"]
    seed = net_seed(cfg)
    seed_everything(seed, nn_cfg["threads"], bool(nn_cfg["deterministic"]))
    model = build_net(arch, enc, store, nn_cfg)
    if train is not None:
        model.set_output_bias(train.label_means(), train.aux_means())
    balancer = build_balancer(nn_cfg["loss"])
    tcfg = TrainConfig.from_dict({**nn_cfg["train"], "seed": seed})
    return Trainer(model, balancer, tcfg, aux_weight=float(nn_cfg["aux"]["weight"]))


def run_offline(store, arch: str, cfg: dict) -> RunResult:
    nn_cfg = cfg["nn"]
    selection = select_features(store, nn_cfg["features"])
    if selection.skipped:
        _log(f"not in the feature store, skipped: {', '.join(selection.skipped)}")
    if VALID_DAY not in store.days:
        raise InputError(f"the feature store has no day {VALID_DAY} to validate on")
    t0 = time.perf_counter()
    days = train_days(store, VALID_DAY - 1, nn_cfg["train"].get("first_day"))
    plan = plan_rows(store, cfg, selection, days, [VALID_DAY])
    enc, train = _prepare(store, cfg, days, selection, plan)
    valid = load_rows(store, enc, [VALID_DAY], True, plan.eval_streamed, plan, cfg)
    t_data = time.perf_counter() - t0
    trainer = new_trainer(arch, enc, store, cfg, train)
    _log(f"{arch}: {count_parameters(trainer.model):,} parameters, input width "
         f"{trainer.model.inputs.output_dim}")
    fit = trainer.fit(train, fit_epochs(nn_cfg["train"], len(train), _log), valid,
                      make_score_fn(valid, int(cfg["data"]["seed"])))
    t1 = time.perf_counter()
    gates = gate_means(trainer.model, valid, trainer.cfg.predict_batch_size,
                       trainer.model.task_names(), nn_cfg["gates"]["max_rows"])
    if not nn_cfg["gates"]["all_levels"] and not gates.empty:
        gates = gates[gates["level"] == gates["level"].max()].reset_index(drop=True)
    preds = fit.best_preds if fit.best_preds is not None else trainer.predict(valid)
    res = offline_result(trainer.model, enc, fit, valid, preds, gates, len(train), int(cfg["data"]["seed"]),
                         {"data": round(t_data, 2), "train": round(fit.train_seconds, 2),
                          "diagnostics": round(time.perf_counter() - t1, 2)})
    res.seed = net_seed(cfg)
    return res


def offline_result(model, enc: Encoder, fit: FitResult, valid, preds: np.ndarray, gates, n_train: int,
                   seed: int, seconds: dict) -> RunResult:
    """The offline run's result from its day-14 predictions (``valid``: the day's encoded rows,
    in row order): the frames of the best epoch and of each user half's best epoch, the
    cross-fitted and in-sample scores (one process and the DDP ranks alike)."""
    frame = prediction_frame(valid, preds)
    half_preds = {h: (prediction_frame(valid, fit.half_best[h]["preds"]) if h in fit.half_best
                      else frame) for h in HALVES}
    half_epochs = {h: round(fit.half_best[h]["epoch"] if h in fit.half_best else fit.best_epoch, 4)
                   for h in HALVES}
    labels = valid.labels_frame()
    halves = split_halves(seed, valid.userid)
    return RunResult(model, enc, fit, frame, gates, n_train, count_parameters(model), seconds,
                     half_preds=half_preds, half_epochs=half_epochs,
                     scores=crossfit_scores(labels, half_preds["A"], half_preds["B"], halves),
                     scores_insample=weighted_uauc(labels, frame, groups=halves.groups),
                     labels=labels)


def run_online(store, arch: str, cfg: dict, epochs: float) -> RunResult:
    nn_cfg = cfg["nn"]
    selection = select_features(store, nn_cfg["features"])
    if TEST_DAY not in store.days:
        raise InputError(f"the feature store has no test day {TEST_DAY}")
    t0 = time.perf_counter()
    days = train_days(store, LAST_TRAIN_DAY, nn_cfg["train"].get("first_day"))
    plan = plan_rows(store, cfg, selection, days, [TEST_DAY])
    enc, train = _prepare(store, cfg, days, selection, plan)
    test = load_rows(store, enc, [TEST_DAY], False, plan.eval_streamed, plan, cfg)
    t_data = time.perf_counter() - t0
    trainer = new_trainer(arch, enc, store, cfg, train)
    fit = trainer.fit(train, float(epochs))
    preds = trainer.predict(test)
    return RunResult(trainer.model, enc, fit, prediction_frame(test, preds), None, len(train),
                     count_parameters(trainer.model),
                     {"data": round(t_data, 2), "train": round(fit.train_seconds, 2)},
                     seed=net_seed(cfg))


# ------------------------------------------------------------------------------ checkpoints

def save_checkpoint(path: str | Path, arch: str, result: RunResult, nn_cfg: dict) -> None:
    state = {"arch": arch, "nn_config": nn_cfg, "model": result.model.state_dict(),
             "encoder": result.encoder.state_dict(), "precision": result.fit.precision}
    with atomic_path(path) as tmp:
        torch.save(state, tmp)


def load_checkpoint(path: str | Path, store) -> tuple[MultiTaskNet, Encoder]:
    """Rebuild a saved net (side tables re-derived from ``store``, then overwritten by the saved
    buffers) and its encoder.  ``model.precision`` is the precision it was trained and predicted
    in (bf16 autocast where ``auto`` chose it), which :func:`predict_rows` uses again."""
    state = torch.load(path, map_location="cpu", weights_only=True)
    enc = Encoder.from_state_dict(state["encoder"])
    model = build_net(state["arch"], enc, store, state["nn_config"])
    model.load_state_dict(state["model"])
    model.eval()
    model.precision = state.get("precision", "fp32")
    return model, enc


def checkpoint_files(out_dir: str | Path, kind: str, seeds: Sequence[int]) -> list[Path]:
    """Where the stage keeps the nets of ``seeds`` (``kind``: offline | online): the first seed's
    ``checkpoint_<kind>.pt``, the others' ``checkpoint_<kind>_seed<s>.pt``."""
    out_dir = Path(out_dir)
    return [out_dir / (f"checkpoint_{kind}.pt" if i == 0 else f"checkpoint_{kind}_seed{s}.pt")
            for i, s in enumerate(seeds)]


def predict_test_day(store, checkpoint: str | Path, cfg: dict) -> pd.DataFrame:
    """The test day's rows as a saved net predicts them, with the net's own encoder (the rows
    streamed where ``data.memory_gb`` says, as the online refit's), on ``nn.train.device``."""
    if TEST_DAY not in store.days:
        raise InputError(f"the feature store has no test day {TEST_DAY}")
    model, enc = load_checkpoint(checkpoint, store)
    model.to(resolve_device(cfg["nn"]["train"]["device"]))
    plan = plan_rows(store, cfg, enc.selection, [], [TEST_DAY])
    rows = load_rows(store, enc, [TEST_DAY], False, plan.eval_streamed, plan, cfg)
    preds = predict(model, rows, int(cfg["nn"]["train"]["predict_batch_size"]), model.precision)
    return prediction_frame(rows, preds)


def aligned(frame: pd.DataFrame, like: pd.DataFrame) -> pd.DataFrame:
    """``frame``'s predictions in the row order of ``like`` (the same userid, feedid pairs)."""
    keys = ["userid", "feedid"]
    if len(frame) == len(like) and (frame[keys].to_numpy() == like[keys].to_numpy()).all():
        return frame
    out = like[keys].merge(frame, on=keys, how="left", validate="one_to_one")
    if len(out) != len(like) or out.drop(columns=keys).isna().any().any():
        raise ValueError("the predictions hold other rows than the test day's")
    return out


def predict_rows(model: MultiTaskNet, enc: Encoder, df: pd.DataFrame,
                 batch_size: int = 16384, precision: str | None = None) -> pd.DataFrame:
    """Predictions of ``df``'s rows; ``precision`` defaults to the one the model was trained in
    (set by :func:`load_checkpoint`; fp32 otherwise)."""
    arrays = enc.encode(df)
    precision = precision or getattr(model, "precision", "fp32")
    return prediction_frame(arrays, predict(model, arrays, batch_size, precision))
