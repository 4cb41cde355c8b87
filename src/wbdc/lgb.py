"""LightGBM single-task baselines: one binary model per action over the feature tables.

Offline, each action's model trains on days ``[first_day..13]`` and early-stops on the
project's uAUC of that action on day 14 (a custom ``feval`` over a user grouping computed once).
The feval also records the uAUC of each of the two shared user halves (``wbdc.metrics``) every
round; each half picks its own best iteration and the reported day-14 score is cross-fitted:
the predictions chosen on one half scored on the other, both ways, averaged.
Online, it is refit on days ``[first_day..14]`` for the offline best iteration scaled up for the
extra day and predicts day 15.

Negative down-sampling (per action, seeded).  Every positive is kept and each negative with
probability ``rate``.  Uniform down-sampling of negatives multiplies the odds the model learns
by ``rate``: ``logit(p_model) = logit(p_true) + log(rate)``, the same constant for every row.
That is a monotone transform, so each user's ordering of their rows -- all that uAUC reads --
is unchanged in expectation; ``calibrate`` inverts it, ``p / (p + (1 - p) / rate)``, so the
written probabilities keep the full data's base rate (useful for blending and for reading
them as probabilities).  One seeded uniform draw ``u`` per row is shared by all actions and
action ``a`` keeps the negatives with ``u < rate_a`` (nested samples): each action's sample is
still a uniform sample of its negatives, and the union over actions -- the rows that have to be
read at all -- is only ``max(rate)`` of the negatives plus the positives.

Training memory: the union of the kept rows of all actions is read day by day into one float32
matrix, binned once into a LightGBM ``Dataset``; each action trains on a ``subset`` of it (the
binning is shared, nothing is re-binned per action).  Day 14 is read in full, as the
validation set (binned with the training bins) and for the online refit's sampled rows.
"""
from __future__ import annotations

import math
import os
import sys
from dataclasses import dataclass
from pathlib import Path
from typing import Iterable, Mapping, Sequence

import lightgbm as lgb
import numpy as np
import pandas as pd
from tqdm.auto import tqdm

from .io import InputError, atomic_path, write_csv, write_parquet
from .metrics import (HALF_PRED_FILES, HALVES, Halves, UserGroups, crossfit_scores, group_by_user,
                      split_halves, uauc, uauc_by_half, weighted_uauc)
from .schema import ACTIONS, LAST_TRAIN_DAY, TEST_DAY

VALID_DAY = LAST_TRAIN_DAY            # offline validation day (14)
ROUND_SCALINGS = ("rows", "days")


# ------------------------------------------------------------------------------ settings

@dataclass(frozen=True)
class LgbSettings:
    """The ``lgb`` config section, validated."""

    params: dict
    neg_rate: dict[str, float]
    drop: tuple[str, ...] = ()
    categorical: tuple[str, ...] = ()
    calibrate: bool = True
    round_scaling: str = "rows"
    num_boost_round: int = 2000
    early_stopping_rounds: int = 50
    first_day: int | None = None
    seed: int = 2021
    halves_seed: int = 2021        # data.seed: the day-14 user halves every model shares

    @classmethod
    def from_config(cls, cfg: dict) -> "LgbSettings":
        """From the resolved config (sections ``lgb`` and ``data``)."""
        sec = cfg["lgb"]
        seed = sec["params"]["seed"]
        seed = int(cfg["data"]["seed"] if seed is None else seed)
        params = {k: v for k, v in dict(sec["params"]).items() if v is not None}
        params["seed"] = seed
        params.setdefault("num_threads", os.cpu_count() or 1)
        rates = {a: float(sec["neg_rate"][a]) for a in ACTIONS}
        bad = {a: r for a, r in rates.items() if not 0.0 < r <= 1.0}
        if bad:
            raise ValueError(f"lgb.neg_rate must be in (0, 1], got {bad}")
        scaling = str(sec["round_scaling"])
        if scaling not in ROUND_SCALINGS:
            raise ValueError(f"lgb.round_scaling must be one of {ROUND_SCALINGS}, got {scaling!r}")
        first = sec["first_day"]
        return cls(params=params, neg_rate=rates, drop=tuple(sec["drop"]),
                   categorical=tuple(sec["categorical"]), calibrate=bool(sec["calibrate"]),
                   round_scaling=scaling, num_boost_round=int(sec["num_boost_round"]),
                   early_stopping_rounds=int(sec["early_stopping_rounds"]),
                   first_day=None if first is None else int(first), seed=seed,
                   halves_seed=int(cfg["data"]["seed"]))


def parse_actions(spec: str | Sequence[str] | None) -> list[str]:
    """Action subset in ACTIONS order from a list or a comma-separated string (None = all)."""
    if spec is None:
        return list(ACTIONS)
    names = [s.strip() for s in spec.split(",")] if isinstance(spec, str) else list(spec)
    names = [n for n in names if n]
    bad = [n for n in names if n not in ACTIONS]
    if bad or not names:
        raise ValueError(f"unknown actions {bad or names}; expected names from {list(ACTIONS)}")
    return [a for a in ACTIONS if a in names]


# ------------------------------------------------------------------------------ features

@dataclass(frozen=True)
class FeatureSpec:
    names: list[str]
    categorical: list[str]


def select_features(dense: Sequence[str], categorical: Sequence[str], keys: Sequence[str],
                    drop: Iterable[str] = (), as_categorical: Iterable[str] = ()) -> FeatureSpec:
    """The model's columns from the manifest roles.

    Dense columns and categorical ids are used, minus ``drop`` and minus pure keys (date_);
    the ids in ``as_categorical`` become LightGBM categorical features, other ids plain numbers.
    """
    drop = set(drop)
    pure_keys = set(keys) - set(categorical) - set(dense)
    names = [c for c in dict.fromkeys([*categorical, *dense]) if c not in drop and c not in pure_keys]
    missing = [c for c in as_categorical if c not in categorical and c not in drop]
    if missing:
        raise ValueError(f"lgb.categorical lists {missing}, which the features manifest does not "
                         f"mark as categorical (categorical columns: {list(categorical)})")
    cats = [c for c in names if c in set(as_categorical)]
    if not names:
        raise ValueError("no feature columns left after lgb.drop")
    return FeatureSpec(names, cats)


def feature_spec(fs, settings: LgbSettings) -> FeatureSpec:
    return select_features(fs.columns("dense"), fs.columns("categorical"), fs.columns("key"),
                           settings.drop, settings.categorical)


# ------------------------------------------------------------------------------ sampling

def row_uniforms(day: int, n: int, seed: int) -> np.ndarray:
    """One seeded uniform per row of ``day``; depends only on (seed, day, n)."""
    return np.random.default_rng([int(seed), int(day)]).random(n, dtype=np.float32)


def keep_mask(labels: np.ndarray, u: np.ndarray, rate: float) -> np.ndarray:
    """Rows kept for one action: every positive, and the negatives with ``u < rate``."""
    labels = np.asarray(labels)
    if rate >= 1.0:
        return np.ones(len(labels), dtype=bool)
    return (labels != 0) | (u < rate)


def calibrate(p: np.ndarray, rate: float) -> np.ndarray:
    """Undo negative down-sampling at ``rate``: odds * rate, i.e. ``p / (p + (1 - p) / rate)``."""
    p = np.asarray(p, dtype=np.float64)
    if rate >= 1.0:
        return p
    return p / (p + (1.0 - p) / rate)


def scale_rounds(best_iteration: int, n_offline: float, n_online: float) -> int:
    """Online rounds for a refit on more data: ``round(best * n_online / n_offline)``, >= 1.

    The refit sees ``n_online / n_offline`` times the rows, so at the same learning rate it needs
    proportionally more rounds to take the same number of steps per row (the usual rule when a
    model is refit on train + validation with the validation's best iteration count).
    """
    if best_iteration < 1:
        raise ValueError(f"best_iteration must be >= 1, got {best_iteration}")
    if n_offline <= 0 or n_online < n_offline:
        raise ValueError(f"need 0 < n_offline <= n_online, got {n_offline}, {n_online}")
    return max(1, int(round(best_iteration * n_online / n_offline)))


# ------------------------------------------------------------------------------ loading

@dataclass
class TrainRows:
    """Rows of some days: features (float32), labels (int8, ACTIONS order), day, uniforms."""

    X: np.ndarray
    labels: np.ndarray
    day: np.ndarray
    u: np.ndarray

    def __len__(self) -> int:
        return len(self.day)


def _label_matrix(fs, d: int) -> np.ndarray:
    lab = fs.load_labels(d)
    return lab[list(ACTIONS)].to_numpy(np.int8)


def union_mask(labels: np.ndarray, u: np.ndarray, rates: Mapping[str, float],
               actions: Sequence[str]) -> np.ndarray:
    """Rows needed by at least one of ``actions``."""
    keep = np.zeros(len(u), dtype=bool)
    for a in actions:
        keep |= keep_mask(labels[:, ACTIONS.index(a)], u, rates[a])
    return keep


def load_rows(fs, days: Sequence[int], features: Sequence[str], settings: LgbSettings,
              sample: bool = True, progress: bool = True,
              desc: str = "load") -> tuple[TrainRows, pd.DataFrame]:
    """Feature rows of ``days`` (only those some action keeps, when ``sample``) and their keys.

    The sample is the union over all 7 actions even when fewer are trained, so the rows (and
    hence the bins and every model) of a one-action run equal those of the full run.
    """
    parts, keys = [], []
    for d in tqdm(list(days), desc=desc, unit="day", disable=not progress, file=sys.stderr):
        df = fs.load_day(d, columns=list(features))
        lab = _label_matrix(fs, d)
        if len(lab) != len(df):
            raise InputError(f"day {d}: {len(lab)} label rows but {len(df)} feature rows")
        u = row_uniforms(d, len(df), settings.seed)
        idx = np.flatnonzero(union_mask(lab, u, settings.neg_rate, ACTIONS)) if sample \
            else np.arange(len(df))
        X = df[list(features)].to_numpy(np.float32)[idx]
        parts.append(TrainRows(X, lab[idx], np.full(len(idx), d, np.int8), u[idx]))
        keys.append(df[["userid", "feedid"]].iloc[idx].reset_index(drop=True))
        del df
    rows = TrainRows(np.concatenate([p.X for p in parts]) if parts else np.zeros((0, len(features)), np.float32),
                     np.concatenate([p.labels for p in parts]) if parts else np.zeros((0, len(ACTIONS)), np.int8),
                     np.concatenate([p.day for p in parts]) if parts else np.zeros(0, np.int8),
                     np.concatenate([p.u for p in parts]) if parts else np.zeros(0, np.float32))
    return rows, pd.concat(keys, ignore_index=True) if keys else pd.DataFrame()


# ------------------------------------------------------------------------------ training

class UAUCEval:
    """``feval`` for lightgbm: the uAUC of one action on the validation rows.

    The user grouping is computed once and the labels rearranged once; each round only
    scores the current predictions (rank-based, so raw or sigmoid scores give the same value).
    With ``halves`` it also reports the uAUC of each half of the users (``uauc_A``,
    ``uauc_B``; each user's AUC is computed once, so this costs nothing extra); early stopping
    reads the first value only, the uAUC over all users.
    """

    def __init__(self, labels: np.ndarray, groups: UserGroups, halves: Halves | None = None):
        self.labels = np.asarray(labels)
        self.groups = groups
        self.halves = halves

    def __call__(self, preds: np.ndarray, eval_data):
        if self.halves is None:
            return "uauc", uauc(self.labels, preds, groups=self.groups), True
        s = uauc_by_half(self.labels, preds, self.halves)
        return [("uauc", s["all"], True), ("uauc_A", s["A"], True), ("uauc_B", s["B"], True)]


class RoundProgress:
    """lightgbm callback: a tqdm bar over rounds showing the current and best validation value."""

    order = 15  # before early stopping (30), so the last round is shown too

    def __init__(self, total: int, desc: str, enabled: bool = True):
        self.bar = tqdm(total=total, desc=desc, unit="round", disable=not enabled,
                        file=sys.stderr, leave=True, dynamic_ncols=True)
        self.best = -math.inf

    def __call__(self, env) -> None:
        self.bar.update(1)
        if env.evaluation_result_list:
            _, name, value, higher = env.evaluation_result_list[0][:4]
            self.best = max(self.best, value) if higher else -min(-self.best, value)
            self.bar.set_postfix_str(f"{name} {value:.5f} best {self.best:.5f}", refresh=False)

    def close(self) -> None:
        if self.bar.n < (self.bar.total or 0):   # stopped early: end the bar where it stopped
            self.bar.total = self.bar.n
            self.bar.refresh()
        self.bar.close()


def train_booster(params: dict, train: lgb.Dataset, rounds: int, *, valid: lgb.Dataset | None = None,
                  feval=None, early_stopping_rounds: int | None = None, desc: str = "train",
                  progress: bool = True, history: list | None = None,
                  metrics: dict | None = None) -> lgb.Booster:
    """lightgbm.train with an optional validation feval (early stopping on its first value) and
    a progress bar; ``history`` receives the first validation value of every round,
    ``metrics`` every value by name.  Every tree grown is kept (also those after the best
    iteration), so the booster can predict at any iteration up to where training stopped."""
    params = {**params, "metric": "None"}
    bar = RoundProgress(rounds, desc, progress)
    callbacks: list = [bar]
    evals: dict = {}
    if valid is not None:
        callbacks.append(lgb.record_evaluation(evals))
        if early_stopping_rounds:
            callbacks.append(lgb.early_stopping(early_stopping_rounds, first_metric_only=True,
                                                verbose=False))
    try:
        booster = lgb.train(params, train, num_boost_round=rounds,
                            valid_sets=[valid] if valid is not None else None,
                            valid_names=[f"day{VALID_DAY}"] if valid is not None else None,
                            feval=feval if valid is not None else None, callbacks=callbacks,
                            keep_training_booster=True)
    finally:
        bar.close()
    recorded = next(iter(evals.values())) if evals else {}
    if history is not None and recorded:
        history.extend(float(v) for v in next(iter(recorded.values())))
    if metrics is not None:
        metrics.update({k: [float(x) for x in v] for k, v in recorded.items()})
    if valid is None or not booster.best_iteration:
        booster.best_iteration = booster.current_iteration()
    return booster


# ------------------------------------------------------------------------------ fitting

@dataclass
class FitData:
    """Everything both fits read: the sampled training rows of days [first..13] binned once,
    and day 14 in full (validation set, and the online refit's extra day)."""

    spec: FeatureSpec
    days: list[int]
    rows: TrainRows            # days first..13, rows some requested action keeps
    base: lgb.Dataset          # ``rows`` binned; its bins are reused by every other Dataset
    valid_rows: TrainRows      # day 14, every row, in order
    valid_keys: pd.DataFrame   # userid, feedid of day 14
    groups: UserGroups         # day-14 user grouping for uAUC
    halves: Halves             # the shared day-14 user halves (selection cross-fitted on them)


def training_days(fs, settings: LgbSettings, last: int) -> list[int]:
    first = settings.first_day if settings.first_day is not None else min(fs.days)
    missing = [d for d in range(first, last + 1) if d not in fs.days]
    if first > last or missing:
        raise FileNotFoundError(f"feature tables of days {missing or [first]} missing "
                                f"(built: {fs.days}); run the features stage (src/stages/features.py)")
    return list(range(first, last + 1))


def _dataset_params(params: dict) -> dict:
    keys = ("max_bin", "min_data_in_bin", "bin_construct_sample_cnt", "seed", "verbosity",
            "num_threads", "max_cat_to_onehot", "min_data_in_leaf", "feature_pre_filter",
            "data_random_seed", "force_col_wise", "force_row_wise", "max_cat_threshold")
    return {k: params[k] for k in keys if k in params}


def _dataset(X, n: int, spec: FeatureSpec, params: dict, reference=None) -> lgb.Dataset:
    return lgb.Dataset(X, label=np.zeros(n, np.float32), feature_name=list(spec.names),
                       categorical_feature=list(spec.categorical) or "auto",
                       params=_dataset_params(params), reference=reference,
                       free_raw_data=True).construct()


def load_fit_data(fs, settings: LgbSettings, progress: bool = True) -> FitData:
    spec = feature_spec(fs, settings)
    days = training_days(fs, settings, VALID_DAY - 1)
    if VALID_DAY not in fs.days:
        raise FileNotFoundError(f"feature table of day {VALID_DAY} missing (built: {fs.days}); "
                                "run the features stage (src/stages/features.py)")
    rows, _ = load_rows(fs, days, spec.names, settings, progress=progress, desc="load train days")
    valid_rows, valid_keys = load_rows(fs, [VALID_DAY], spec.names, settings, sample=False,
                                       progress=False)
    base = _dataset(rows.X, len(rows), spec, settings.params)
    groups = group_by_user(valid_keys["userid"].to_numpy())
    return FitData(spec, days, rows, base, valid_rows, valid_keys, groups,
                   split_halves(settings.halves_seed, groups=groups))


def action_rows(labels: np.ndarray, u: np.ndarray, action: str, rate: float) -> np.ndarray:
    """Row indices ``action`` trains on (int32, ascending)."""
    return np.flatnonzero(keep_mask(labels[:, ACTIONS.index(action)], u, rate)).astype(np.int32)


def _action_subset(base: lgb.Dataset, labels: np.ndarray, u: np.ndarray, action: str,
                   rate: float) -> lgb.Dataset:
    """The rows ``action`` keeps, as a subset sharing ``base``'s bins, labelled for ``action``."""
    idx = action_rows(labels, u, action, rate)
    ds = base.subset(idx).construct()
    ds.set_label(labels[idx, ACTIONS.index(action)].astype(np.float32))
    return ds


def finish_predictions(raw: np.ndarray, settings: LgbSettings, action: str) -> np.ndarray:
    """Model output -> written probability: undo the down-sampling if configured; float32."""
    rate = settings.neg_rate[action]
    p = calibrate(raw, rate) if settings.calibrate else np.asarray(raw, np.float64)
    return np.clip(p, 0.0, 1.0).astype(np.float32)


def labels_frame(labels: np.ndarray, actions: Sequence[str]) -> pd.DataFrame:
    return pd.DataFrame({a: labels[:, ACTIONS.index(a)] for a in actions})


def half_best_iteration(values: Sequence[float], fallback: int) -> int:
    """1-based round of the first maximum of one half's per-round uAUC (``fallback`` when the
    half could not be scored in any round)."""
    v = np.asarray(values, np.float64)
    if len(v) == 0 or np.isnan(v).all():
        return int(fallback)
    return int(np.nanargmax(v)) + 1


@dataclass
class OfflineResult:
    boosters: dict[str, lgb.Booster]
    best_iteration: dict[str, int]           # chosen on all day-14 users: the online refit's
    scores: dict[str, float]                 # honest day-14 uAUC: cross-fitted over the halves
    scores_insample: dict[str, float]        # uAUC of ``preds`` (chosen and scored on day 14)
    preds: pd.DataFrame                      # userid, feedid, actions: day-14 rows in order
    importance: pd.DataFrame                 # feature, action, gain
    history: pd.DataFrame                    # action, round, uauc, uauc_A, uauc_B
    train_rows: dict[str, int]
    half_best_iteration: dict[str, dict[str, int]] = None   # half -> action -> iteration
    half_preds: dict[str, pd.DataFrame] = None              # half -> day-14 predictions at it


def fit_offline(data: FitData, settings: LgbSettings, actions: Sequence[str],
                progress: bool = True) -> OfflineResult:
    """Per action: train on days [first..13], early-stop on the day-14 uAUC, predict day 14.

    The uAUC of each user half is recorded every round too; each half picks its own best
    iteration among the rounds trained (no extra training) and the day-14 rows are predicted
    at it, so the reported score is cross-fitted (chosen on one half, scored on the other).
    """
    valid = _dataset(data.valid_rows.X, len(data.valid_rows), data.spec, settings.params,
                     reference=data.base)
    boosters, best, n_rows = {}, {}, {}
    preds = data.valid_keys[["userid", "feedid"]].copy()
    half_preds = {h: preds.copy() for h in HALVES}
    half_best: dict[str, dict[str, int]] = {h: {} for h in HALVES}
    imp, hist = [], []
    for a in actions:
        j = ACTIONS.index(a)
        train_ds = _action_subset(data.base, data.rows.labels, data.rows.u, a, settings.neg_rate[a])
        n_rows[a] = train_ds.num_data()
        valid.set_label(data.valid_rows.labels[:, j].astype(np.float32))
        metrics: dict[str, list[float]] = {}
        booster = train_booster(settings.params, train_ds, settings.num_boost_round, valid=valid,
                                feval=UAUCEval(data.valid_rows.labels[:, j], data.groups, data.halves),
                                early_stopping_rounds=settings.early_stopping_rounds,
                                desc=f"{a} offline", progress=progress, metrics=metrics)
        best[a] = int(booster.best_iteration)
        raw = booster.predict(data.valid_rows.X, num_iteration=best[a])
        preds[a] = finish_predictions(raw, settings, a)
        for h in HALVES:
            it = half_best_iteration(metrics.get(f"uauc_{h}", []), best[a])
            half_best[h][a] = it
            half_preds[h][a] = (preds[a].to_numpy() if it == best[a] else finish_predictions(
                booster.predict(data.valid_rows.X, num_iteration=it), settings, a))
        imp.append(pd.DataFrame({"feature": data.spec.names, "action": a,
                                 "gain": booster.feature_importance("gain", iteration=best[a])
                                 .astype(np.float64)}))
        n_hist = len(metrics.get("uauc", []))
        hist.append(pd.DataFrame({"action": a, "round": np.arange(1, n_hist + 1),
                                  **{k: metrics.get(k, [np.nan] * n_hist)
                                     for k in ("uauc", "uauc_A", "uauc_B")}}))
        booster.free_dataset()
        boosters[a] = booster
        del train_ds
    labels = labels_frame(data.valid_rows.labels, actions)
    insample = weighted_uauc(labels, preds, groups=data.groups)
    scores = crossfit_scores(labels, half_preds["A"], half_preds["B"], data.halves)
    return OfflineResult(boosters, best, scores, insample, preds, pd.concat(imp, ignore_index=True),
                         pd.concat(hist, ignore_index=True), n_rows, half_best, half_preds)


@dataclass
class OnlineResult:
    boosters: dict[str, lgb.Booster]
    rounds: dict[str, int]
    preds: pd.DataFrame                      # userid, feedid, actions: test rows in order
    train_rows: dict[str, int]


def online_rounds(best_iteration: Mapping[str, int], n_offline: Mapping[str, int],
                  n_online: Mapping[str, int], days_offline: int, days_online: int,
                  scaling: str) -> dict[str, int]:
    """Per action: the offline best iteration scaled to the online training set."""
    if scaling == "rows":
        return {a: scale_rounds(b, n_offline[a], n_online[a]) for a, b in best_iteration.items()}
    if scaling == "days":
        return {a: scale_rounds(b, days_offline, days_online) for a, b in best_iteration.items()}
    raise ValueError(f"round scaling must be one of {ROUND_SCALINGS}, got {scaling!r}")


def load_test(fs, features: Sequence[str]) -> tuple[np.ndarray, pd.DataFrame]:
    if TEST_DAY not in fs.days:
        raise FileNotFoundError(f"feature table of day {TEST_DAY} (the test rows) missing; "
                                "run the features stage (src/stages/features.py)")
    df = fs.load_day(TEST_DAY, columns=list(features))
    return df[list(features)].to_numpy(np.float32), df[["userid", "feedid"]].reset_index(drop=True)


def fit_online(data: FitData, fs, settings: LgbSettings, actions: Sequence[str],
               best_iteration: Mapping[str, int] | None = None, fixed_rounds: int | None = None,
               progress: bool = True) -> OnlineResult:
    """Refit on days [first..14] (day 14 down-sampled like the others) and predict day 15.

    Rounds: ``fixed_rounds`` for every action if given, else ``best_iteration`` scaled by
    ``settings.round_scaling`` (see :func:`online_rounds`).
    """
    v = data.valid_rows
    extra = np.flatnonzero(union_mask(v.labels, v.u, settings.neg_rate, ACTIONS))
    labels = np.concatenate([data.rows.labels, v.labels[extra]])
    u = np.concatenate([data.rows.u, v.u[extra]])
    online = _dataset([data.rows.X, v.X[extra]], len(u), data.spec, settings.params,
                      reference=data.base)
    n_off = {a: len(action_rows(data.rows.labels, data.rows.u, a, settings.neg_rate[a]))
             for a in actions}
    n_on = {a: len(action_rows(labels, u, a, settings.neg_rate[a])) for a in actions}
    if fixed_rounds is not None:
        rounds = {a: int(fixed_rounds) for a in actions}
    else:
        if best_iteration is None or any(a not in best_iteration for a in actions):
            raise ValueError("online refit needs the offline best iterations of "
                             f"{list(actions)} (run --mode offline first) or --rounds")
        rounds = online_rounds({a: best_iteration[a] for a in actions}, n_off, n_on,
                               len(data.days), len(data.days) + 1, settings.round_scaling)
    X_test, test_keys = load_test(fs, data.spec.names)
    boosters = {}
    preds = test_keys.copy()
    for a in actions:
        train_ds = _action_subset(online, labels, u, a, settings.neg_rate[a])
        booster = train_booster(settings.params, train_ds, rounds[a],
                                desc=f"{a} online", progress=progress)
        del train_ds
        preds[a] = finish_predictions(booster.predict(X_test, num_iteration=rounds[a]), settings, a)
        booster.free_dataset()
        boosters[a] = booster
    return OnlineResult(boosters, rounds, preds, n_on)


# ------------------------------------------------------------------------------ artifacts

def model_file(out_dir: Path, kind: str, action: str) -> Path:
    """``model_<offline|online>_<action>.txt`` (LightGBM text format, trimmed to the rounds used)."""
    return Path(out_dir) / f"model_{kind}_{action}.txt"


def save_boosters(boosters: Mapping[str, lgb.Booster], out_dir: Path, kind: str,
                  rounds: Mapping[str, int]) -> None:
    for a, booster in boosters.items():
        with atomic_path(model_file(out_dir, kind, a)) as tmp:
            tmp.write_text(booster.model_to_string(num_iteration=int(rounds[a])))


def write_offline(result: OfflineResult, out_dir: Path) -> None:
    out_dir = Path(out_dir)
    save_boosters(result.boosters, out_dir, "offline", result.best_iteration)
    write_parquet(result.preds, out_dir / "pred_offline.parquet")
    for h, f in HALF_PRED_FILES.items():
        write_parquet(result.half_preds[h], out_dir / f)
    write_csv(result.importance, out_dir / "importance.csv")
    write_csv(result.history, out_dir / "eval_history.csv")


def write_online(result: OnlineResult, out_dir: Path) -> None:
    out_dir = Path(out_dir)
    save_boosters(result.boosters, out_dir, "online", result.rounds)
    write_parquet(result.preds, out_dir / "pred_online.parquet")
