"""The LightGBM stage on a Dask cluster (``cluster.address`` set): ``lightgbm.dask``.

Same models as :mod:`wbdc.lgb` in intent -- one binary booster per action, the same parameters
(configs/lgb.yaml), the same seeded per-action negative down-sampling, the same cross-fitted
day-14 selection and the same files -- but the rows never pass through the stage's process:

* **Data.**  One Dask chunk per store part (day, user bucket).  The client reads only the labels
  (``FeatureStore.packed_labels``: one byte per row) and scatters each day's to the cluster; a
  cheap first pass on the workers reads each part's ``row`` column and returns how many rows
  every action keeps there (:func:`part_keep_counts`), so every chunk's shape is known; then per
  action a task per part reads the part's feature columns from the shared root and keeps the
  rows of that action's sample (:func:`part_xy`), assembled with ``da.from_delayed`` /
  ``da.concatenate``.  The kept rows are exactly the single-machine path's (same uniforms
  ``row_uniforms(seed, day)``, same ``keep_mask``), in part order instead of day order.
* **Training.**  ``lightgbm.dask.DaskLGBMClassifier`` (data-parallel: every worker holding
  chunks is one LightGBM machine).
* **Early stopping on a grid.**  lightgbm.dask has no early stopping (its ``eval_set`` is
  evaluated per worker on that worker's rows; our metric is a per-user AUC over all of day 14,
  so neither its early stopping nor a custom feval can see it).  So the stage trains
  ``lgb.dask_eval_every`` rounds at a time, each step continuing the previous trees
  (``init_model``; the rows persisted on the workers), and scores the new grid point on the
  day-14 parts (:func:`train_with_grid_stopping`): each part is scored on a worker and returns
  each user's AUC (:func:`grid_user_aucs`).  Users are disjoint across parts, so the client's
  mean over the concatenated per-user AUCs is bit for bit the single-process ``uauc_by_half`` of
  the same predictions (:func:`combine_user_aucs`).  Training stops when the all-users uAUC has
  not improved for ``lgb.early_stopping_rounds`` rounds (or at ``lgb.num_boost_round``).  Each
  user half picks its grid point on its own users among the rounds trained and is scored on the
  other half (cross-fitting, as before); the day-14 rows are then predicted at the three chosen
  iterations on the workers.
* **Online.**  Refit on days up to 14 for the scaled rounds (the same rule, row counts from the
  count pass), then the test parts are predicted on the workers.

Known problems (README, "Running on a Dask cluster"):

* Workers without data: only workers holding at least one chunk take part in training
  (lightgbm.dask builds ``machines`` from where the chunks landed); parts that keep no row for an
  action are left out of its array, since a worker whose every chunk is empty would bring an
  empty LightGBM Dataset.  Every worker holding data needs the whole training: a worker lost
  mid-training fails the fit (no elastic recovery).
* Labels per worker: ``LGBMClassifier`` label-encodes each worker's labels on their own; a worker
  holding only positives would see them encoded as 0.  A part keeping only positives is
  therefore refused with a one-line error (it cannot happen with real negatives kept at
  ``neg_rate``, only with parts of a handful of rows).
* Ports: by default lightgbm.dask opens a random free port on every worker
  (``_assign_open_ports_to_workers``) and holds it until training starts; the workers connect to
  each other directly on those ports.  A firewalled cluster must open a fixed range between the
  workers and pass ``--set lgb.params.local_listen_port=12400`` (one worker per host) or
  ``lgb.params.machines=host1:12400,host2:12401,...`` (every worker, fixed ports).
* Threads: lightgbm.dask overrides ``num_threads`` with each worker's ``nthreads``
  (``client_for`` starts 1-thread workers; run ``dask worker --nthreads K`` for more).  Idle
  OpenMP threads spin-wait by default, which starves other processes on a shared machine:
  the stage sets ``OMP_WAIT_POLICY=PASSIVE`` before LightGBM loads and ``local:N`` workers inherit
  it; for a ``tcp://`` cluster export it in the workers' environment.  The scoring tasks give
  LightGBM's predictor and numba the worker's thread count.
* Memory: lightgbm.dask holds every chunk of an action in the workers' memory (float32), then
  concatenates each worker's chunks (a second copy) before LightGBM bins them: about
  ``2 x 4 x features`` bytes per kept row of that action, spread over the workers.
"""
from __future__ import annotations

import functools
import sys
from dataclasses import dataclass
from typing import Mapping, Sequence

import lightgbm as lgb
import numpy as np
import pandas as pd
import pyarrow.parquet as pq
from tqdm.auto import tqdm

from .features.store import ROW_KEY, FeatureStore
from .io import InputError
from .lgb import (VALID_DAY, FeatureSpec, LgbSettings, OfflineResult, OnlineResult, feature_spec,
                  finish_predictions, half_best_iteration, keep_mask, labels_frame, refit_rounds,
                  cap_settings, row_uniforms, training_days)
from .metrics import (HALVES, Halves, _nanmean_quiet, crossfit_scores, group_by_user,
                      per_user_auc, split_halves, weighted_uauc)
from .paths import Paths
from .schema import ACTIONS, TEST_DAY

#: lightgbm.dask sets these itself (num_threads = the worker's nthreads, num_machines from the
#: workers holding data); passing them only draws its warnings
_DASK_OWNED = ("num_threads", "num_machines")


# ------------------------------------------------------------------------------ on the workers

@functools.lru_cache(maxsize=4)
def _store(root: str) -> FeatureStore:
    """The FeatureStore at ``root`` (opened once per worker process)."""
    return FeatureStore(Paths.at(root))


def _worker_threads() -> int:
    """The running Dask worker's thread count (1 outside a worker)."""
    try:
        from distributed import get_worker
        return max(1, int(get_worker().state.nthreads))
    except (ImportError, ValueError, AttributeError):
        return 1


def _limit_numba(n: int) -> None:
    import numba
    numba.set_num_threads(max(1, min(n, numba.config.NUMBA_NUM_THREADS)))


def _part_rows(fs: FeatureStore, day: int, index: int) -> np.ndarray:
    """The ``row`` key of one part (its rows' positions in the day), reading that column only."""
    f = fs.dir / fs.parts(day)[index]["file"]
    return pq.read_table(f, columns=[ROW_KEY], partitioning=None).column(ROW_KEY).to_numpy()


def _action_labels(bits: np.ndarray, rows: np.ndarray, j: int) -> np.ndarray:
    return ((bits[rows] >> j) & 1).astype(np.int8)


def _keep(bits: np.ndarray, rows: np.ndarray, day: int, n_day: int, seed: int, j: int,
          rate: float) -> tuple[np.ndarray, np.ndarray]:
    """(keep mask, labels) of action ``j`` on a part's rows: the single-machine sample exactly
    (one uniform per row of the day, ``row_uniforms(day, n_day, seed)``, indexed by ``row``)."""
    lab = _action_labels(bits, rows, j)
    u = row_uniforms(day, n_day, seed)[rows]
    return keep_mask(lab, u, rate), lab


def part_keep_counts(root: str, day: int, index: int, bits: np.ndarray, n_day: int, seed: int,
                     rates: Sequence[float]) -> np.ndarray:
    """Task: ``[len(ACTIONS), 2]`` int64 (rows kept, positives kept) of every action in one part;
    reads the part's ``row`` column only."""
    fs = _store(root)
    rows = _part_rows(fs, day, index)
    out = np.zeros((len(ACTIONS), 2), np.int64)
    for j, rate in enumerate(rates):
        keep, lab = _keep(bits, rows, day, n_day, seed, j, rate)
        out[j] = int(keep.sum()), int(lab[keep].sum())
    return out


def part_xy(root: str, day: int, index: int, features: Sequence[str], bits: np.ndarray, n_day: int,
            seed: int, j: int, rate: float, n_expected: int) -> tuple[np.ndarray, np.ndarray]:
    """Task: (X float32 [kept, features], y float32 [kept]) of action ``j``'s sample in one part."""
    fs = _store(root)
    df = fs.read_part(day, index, list(features))
    rows = df[ROW_KEY].to_numpy()
    keep, lab = _keep(bits, rows, day, n_day, seed, j, rate)
    X = df[list(features)].to_numpy(np.float32)[keep]
    if len(X) != n_expected:
        raise InputError(f"day {day} part {index}: {len(X)} rows kept but {n_expected} counted; "
                         "the features changed during the run")
    return X, lab[keep].astype(np.float32)


def grid_user_aucs(booster: lgb.Booster, X: np.ndarray, labels: np.ndarray, userids: np.ndarray,
                   grid: Sequence[int], n_threads: int = 1) -> tuple[np.ndarray, np.ndarray]:
    """Each user's AUC at every grid point (``grid`` ascending numbers of trees): ``(user_ids
    ascending, aucs [len(grid), users])``, NaN for one-class users.  One pass over the trees: the
    raw score of the first ``k`` trees is the running sum of the tree chunks
    ``predict(start_iteration=prev, num_iteration=k - prev, raw_score=True)`` (AUC reads ranks,
    so raw scores rank as the probabilities do)."""
    groups = group_by_user(np.asarray(userids))
    raw = np.zeros(len(X), np.float64)
    aucs = np.empty((len(grid), groups.n_users), np.float64)
    prev = 0
    for g, k in enumerate(grid):
        if k > prev and len(X):
            raw += booster.predict(X, start_iteration=prev, num_iteration=int(k) - prev,
                                   raw_score=True, num_threads=n_threads)
        prev = int(k)
        aucs[g] = per_user_auc(labels, raw, groups=groups)[1] if len(X) else aucs[g]
    return groups.user_ids, aucs


def part_grid_aucs(root: str, day: int, index: int, features: Sequence[str], bits: np.ndarray,
                   j: int, booster: lgb.Booster, grid: Sequence[int]) -> tuple[np.ndarray, np.ndarray]:
    """Task: :func:`grid_user_aucs` of action ``j`` on one part of day ``day``."""
    n = _worker_threads()
    _limit_numba(n)
    df = _store(root).read_part(day, index, list(features))
    lab = _action_labels(bits, df[ROW_KEY].to_numpy(), j)
    return grid_user_aucs(booster, df[list(features)].to_numpy(np.float32), lab,
                          df["userid"].to_numpy(), grid, n)


def part_predict(root: str, day: int, index: int, features: Sequence[str],
                 wanted: Mapping[str, tuple[lgb.Booster, Sequence[int]]]) -> dict:
    """Task: the probabilities of one part's rows for every ``name -> (booster, iterations)``:
    ``{"row", "userid", "feedid", (name, iteration): float64 array}``."""
    n = _worker_threads()
    df = _store(root).read_part(day, index, list(features))
    X = df[list(features)].to_numpy(np.float32)
    out = {"row": df[ROW_KEY].to_numpy(), "userid": df["userid"].to_numpy(),
           "feedid": df["feedid"].to_numpy()}
    for name, (booster, its) in wanted.items():
        for it in dict.fromkeys(int(i) for i in its):
            out[(name, it)] = booster.predict(X, num_iteration=it, num_threads=n) if len(X) \
                else np.zeros(0, np.float64)
    return out


# ------------------------------------------------------------------------------ combining

@dataclass(frozen=True)
class GridScores:
    """Day-14 uAUC of one action at every grid point, over all users and each half."""

    grid: np.ndarray
    all: np.ndarray
    A: np.ndarray
    B: np.ndarray

    def best(self, key: str) -> int:
        """Index of the first grid point maximising ``key``'s uAUC (``all``, ``A`` or ``B``; the
        last one when none could be scored)."""
        return half_best_iteration(getattr(self, key), len(self.grid)) - 1


def combine_user_aucs(parts: Sequence[tuple[np.ndarray, np.ndarray]], halves: Halves) -> GridScores:
    """Per-part per-user AUCs -> uAUC of every grid point over all users and each half, exactly
    the values ``uauc_by_half`` gives on the same predictions of all rows: each user's AUC
    depends on that user's rows only, users are disjoint across parts, and the means are taken
    over the same per-user array in the same (ascending user) order."""
    if not parts:
        raise ValueError("combine_user_aucs: no parts")
    ids = np.concatenate([p[0] for p in parts])
    aucs = np.concatenate([p[1] for p in parts], axis=1)
    order = np.argsort(ids, kind="stable")
    ids, aucs = ids[order], aucs[:, order]
    if len(ids) > 1 and (np.diff(ids) == 0).any():
        raise InputError("day-14 parts share users; the store's buckets must be disjoint user ranges")
    if not np.array_equal(ids, halves.groups.user_ids):
        raise InputError("day-14 users of the scored parts differ from the day's users")
    n = aucs.shape[0]
    stat = lambda m: np.array([_nanmean_quiet(aucs[g][m]) for g in range(n)])  # noqa: E731
    every = np.ones(len(ids), bool)
    return GridScores(np.arange(n), stat(every), stat(halves.in_a), stat(~halves.in_a))


def eval_grid(num_boost_round: int, every: int) -> list[int]:
    """Rounds scored for the selection: every ``every``-th, and the last one."""
    if every < 1:
        raise ValueError(f"lgb.dask_eval_every must be >= 1, got {every}")
    return sorted({*range(every, num_boost_round + 1, every), num_boost_round})


# ------------------------------------------------------------------------------ the client

@dataclass(frozen=True)
class Part:
    day: int
    index: int
    rows: int


class ClusterData:
    """What the client knows of the store: the parts of every day, each day's label bits
    scattered to the cluster, and every part's kept-row counts per action."""

    def __init__(self, client, fs: FeatureStore, settings: LgbSettings, days: Sequence[int],
                 progress: bool = False):
        self.client, self.fs, self.settings = client, fs, settings
        self.root = str(fs.paths.root)
        self.spec: FeatureSpec = feature_spec(fs, settings)
        self.parts = {d: [Part(d, i, int(p["rows"])) for i, p in enumerate(fs.parts(d))] for d in days}
        self.n_day = {d: fs.n_rows(d) for d in days}
        labelled = [d for d in days if d <= VALID_DAY]
        packed = fs.packed_labels(labelled)
        # the rates capped by lgb.max_train_rows over the offline training days, as on one machine
        self.settings = settings = cap_settings(settings, {d: packed[d] for d in labelled
                                                            if d < VALID_DAY})
        self.bits = {d: client.scatter(packed[d], hash=False) for d in labelled}
        rates = tuple(settings.neg_rate[a] for a in ACTIONS)
        futs = {(p.day, p.index): client.submit(part_keep_counts, self.root, p.day, p.index,
                                                self.bits[p.day], self.n_day[p.day], settings.seed,
                                                rates, pure=False)
                for d in labelled for p in self.parts[d]}
        self.counts: dict[tuple[int, int], np.ndarray] = dict(zip(futs, client.gather(list(futs.values()))))

    def n_kept(self, action: str, days: Sequence[int]) -> int:
        j = ACTIONS.index(action)
        return int(sum(self.counts[(p.day, p.index)][j, 0] for d in days for p in self.parts[d]))

    def arrays(self, action: str, days: Sequence[int]):
        """(X, y) dask arrays of ``action``'s sample of ``days``: one chunk per part keeping rows."""
        import dask
        import dask.array as da
        j, rate = ACTIONS.index(action), self.settings.neg_rate[action]
        names, xs, ys = self.spec.names, [], []
        for d in days:
            for p in self.parts[d]:
                n, pos = (int(v) for v in self.counts[(d, p.index)][j])
                if n == 0:
                    continue
                if pos == n:
                    raise InputError(f"day {d} part {p.index} keeps only positives of {action}; "
                                     "lightgbm.dask would label-encode a worker holding only such "
                                     "parts wrongly (rebuild the features with fewer buckets)")
                t = dask.delayed(part_xy, pure=False, nout=2)(
                    self.root, d, p.index, names, self.bits[d], self.n_day[d], self.settings.seed,
                    j, rate, n)
                xs.append(da.from_delayed(t[0], shape=(n, len(names)), dtype=np.float32))
                ys.append(da.from_delayed(t[1], shape=(n,), dtype=np.float32))
        if not xs:
            raise InputError(f"{action}: no training rows kept on days {list(days)}")
        return da.concatenate(xs), da.concatenate(ys)

    def close(self) -> None:
        for f in self.bits.values():
            f.release()


def dask_params(params: Mapping) -> dict:
    """The stage's LightGBM parameters for DaskLGBMClassifier (LightGBM's own names win over the
    sklearn wrapper's aliases; the threads and machine count are lightgbm.dask's to set)."""
    return {**{k: v for k, v in params.items() if k not in _DASK_OWNED}, "metric": "None"}


def train_dask(client, settings: LgbSettings, spec: FeatureSpec, X, y, rounds: int,
               init_model: lgb.Booster | None = None) -> lgb.Booster:
    """``rounds`` boosting rounds of DaskLGBMClassifier (continuing ``init_model``'s trees when
    given); the trained booster, local."""
    import warnings
    from lightgbm.dask import DaskLGBMClassifier
    model = DaskLGBMClassifier(client=client, n_estimators=int(rounds), **dask_params(settings.params))
    with warnings.catch_warnings():   # the sklearn wrapper's n_jobs=None, dropped by lightgbm.dask
        warnings.filterwarnings("ignore", message="Parameter n_jobs will be ignored")
        model.fit(X, y, feature_name=list(spec.names), categorical_feature=list(spec.categorical) or "auto",
                  **({"init_model": init_model} if init_model is not None else {}))
    return model.to_local().booster_


def train_with_grid_stopping(client, data: "ClusterData", settings: LgbSettings, j: int, X, y, eval_every: int,
                             halves_of) -> tuple[lgb.Booster, list[int], GridScores]:
    """Early stopping on a cluster: lightgbm.dask has none, so train ``eval_every`` rounds at a
    time (each step continues the previous trees through ``init_model``; the rows stay persisted
    on the workers), score the new grid point on the day-14 parts (per-user AUCs, combined
    exactly), and stop once the all-users uAUC has not improved for ``early_stopping_rounds``
    rounds or at ``num_boost_round``.  Returns the booster, the grid trained and its scores."""
    X, y = client.persist([X, y])
    booster, grid, cols = None, [], []
    while not grid or grid[-1] < settings.num_boost_round:
        step = min(int(eval_every), settings.num_boost_round - (grid[-1] if grid else 0))
        booster = train_dask(client, settings, data.spec, X, y, step, init_model=booster)
        grid.append(booster.current_iteration())
        sent = client.scatter(booster, broadcast=True, hash=False)
        cols.append(client.gather([client.submit(part_grid_aucs, data.root, VALID_DAY, p.index, data.spec.names,
                                                 data.bits[VALID_DAY], j, sent, [grid[-1]], pure=False)
                                   for p in data.parts[VALID_DAY]]))
        sent.release()
        per_part = [(steps[0][0], np.concatenate([st[1] for st in steps], axis=0))   # part: every step
                    for steps in zip(*cols)]
        sc = combine_user_aucs(per_part, halves_of(per_part))
        if grid[-1] - grid[sc.best("all")] >= settings.early_stopping_rounds:
            break
    del X, y
    return booster, grid, sc


def _gather_predictions(client, data: ClusterData, day: int, wanted: Mapping) -> dict:
    """:func:`part_predict` on every part of ``day`` (boosters sent once to every worker), the
    parts' results concatenated and put in the day's row order."""
    sent = {name: (client.scatter(b, broadcast=True, hash=False), its) for name, (b, its) in wanted.items()}
    futs = [client.submit(part_predict, data.root, day, p.index, data.spec.names,
                          {k: (f, its) for k, (f, its) in sent.items()}, pure=False)
            for p in data.parts[day]]
    res = client.gather(futs)
    for f, _ in sent.values():
        f.release()
    out = {k: np.concatenate([r[k] for r in res]) for k in res[0]}
    order = np.argsort(out["row"], kind="stable")
    if not np.array_equal(out["row"][order], np.arange(data.n_day[day])):
        raise InputError(f"day {day}: the parts' row keys are not 0..{data.n_day[day] - 1}")
    return {k: v[order] for k, v in out.items()}


def fit_offline_dask(client, data: ClusterData, settings: LgbSettings, actions: Sequence[str],
                     eval_every: int, progress: bool = True) -> OfflineResult:
    """Per action: DaskLGBMClassifier on days [first..13] for ``num_boost_round`` rounds; the
    rounds chosen on the day-14 grid (all users, and each half for the cross-fitted score);
    day 14 predicted at them.  Returns what :func:`wbdc.lgb.write_offline` writes."""
    days = [d for d in data.parts if d < VALID_DAY]
    eval_grid(settings.num_boost_round, eval_every)                 # checks eval_every
    labels14 = data.fs.packed_labels([VALID_DAY])[VALID_DAY]
    boosters, best, n_rows, imp, hist = {}, {}, {}, [], []
    half_best: dict[str, dict[str, int]] = {h: {} for h in HALVES}
    wanted, keys = {}, None
    shared: dict[str, Halves] = {}

    def halves_of(per_part) -> Halves:   # the shared day-14 halves, from every user of the day
        if "h" not in shared:
            shared["h"] = split_halves(settings.halves_seed, np.sort(np.concatenate([p[0] for p in per_part])))
        return shared["h"]

    for a in tqdm(actions, desc="lgb.dask offline", unit="action", disable=not progress, file=sys.stderr):
        j = ACTIONS.index(a)
        X, y = data.arrays(a, days)
        n_rows[a] = int(X.shape[0])
        booster, grid, sc = train_with_grid_stopping(client, data, settings, j, X, y, eval_every, halves_of)
        best[a] = grid[sc.best("all")]
        for h in HALVES:
            half_best[h][a] = grid[sc.best(h)]
        hist.append(pd.DataFrame({"action": a, "round": grid, "uauc": sc.all, "uauc_A": sc.A,
                                  "uauc_B": sc.B}))
        imp.append(pd.DataFrame({"feature": data.spec.names, "action": a,
                                 "gain": booster.feature_importance("gain", iteration=best[a])
                                 .astype(np.float64)}))
        boosters[a] = booster
        wanted[a] = (booster, [best[a], *(half_best[h][a] for h in HALVES)])
    pred = _gather_predictions(client, data, VALID_DAY, wanted)     # one pass, every action
    keys = pd.DataFrame({"userid": pred["userid"], "feedid": pred["feedid"]})
    preds = keys.copy()
    half_preds = {h: keys.copy() for h in HALVES}
    for a in actions:
        preds[a] = finish_predictions(pred[(a, best[a])], settings, a)
        for h in HALVES:
            half_preds[h][a] = finish_predictions(pred[(a, half_best[h][a])], settings, a)
    lab = np.stack([(labels14 >> ACTIONS.index(a)) & 1 for a in ACTIONS], axis=1).astype(np.int8)
    labels = labels_frame(lab, actions)
    groups = group_by_user(keys["userid"].to_numpy())
    day_halves = split_halves(settings.halves_seed, groups=groups)
    insample = weighted_uauc(labels, preds, groups=groups)
    scores = crossfit_scores(labels, half_preds["A"], half_preds["B"], day_halves)
    return OfflineResult(boosters, best, scores, insample, preds, pd.concat(imp, ignore_index=True),
                         pd.concat(hist, ignore_index=True), n_rows, half_best, half_preds, labels)


def fit_online_dask(client, data: ClusterData, settings: LgbSettings, actions: Sequence[str],
                    best_iteration: Mapping[str, int] | None = None, fixed_rounds: int | None = None,
                    progress: bool = True) -> OnlineResult:
    """Refit on days [first..14] for the scaled offline rounds (or ``fixed_rounds``) with
    DaskLGBMClassifier and predict the test parts on the workers."""
    off_days = [d for d in data.parts if d < VALID_DAY]
    on_days = [*off_days, VALID_DAY]
    n_off = {a: data.n_kept(a, off_days) for a in actions}
    n_on = {a: data.n_kept(a, on_days) for a in actions}
    rounds = refit_rounds(actions, fixed_rounds, best_iteration, n_off, n_on, len(off_days), len(on_days),
                          settings.round_scaling)
    if TEST_DAY not in data.parts:
        raise FileNotFoundError(f"feature table of day {TEST_DAY} (the test rows) missing; "
                                "run the features stage (src/stages/features.py)")
    boosters = {}
    for a in tqdm(actions, desc="lgb.dask online", unit="action", disable=not progress, file=sys.stderr):
        X, y = data.arrays(a, on_days)
        boosters[a] = train_dask(client, settings, data.spec, X, y, rounds[a])
    pred = _gather_predictions(client, data, TEST_DAY, {a: (boosters[a], [rounds[a]]) for a in actions})
    preds = pd.DataFrame({"userid": pred["userid"], "feedid": pred["feedid"]})
    for a in actions:
        preds[a] = finish_predictions(pred[(a, rounds[a])], settings, a)
    return OnlineResult(boosters, rounds, preds, n_on)


def cluster_data(client, fs: FeatureStore, settings: LgbSettings, mode: str) -> ClusterData:
    """The parts of the days a run of ``mode`` reads (training days, 14, and 15 for online)."""
    days = training_days(fs, settings, VALID_DAY - 1)
    if VALID_DAY not in fs.days:
        raise FileNotFoundError(f"feature table of day {VALID_DAY} missing (built: {fs.days}); "
                                "run the features stage (src/stages/features.py)")
    days = [*days, VALID_DAY]
    if mode in ("online", "all") and TEST_DAY in fs.days:
        days.append(TEST_DAY)
    return ClusterData(client, fs, settings, days)
