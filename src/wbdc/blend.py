"""Blend model predictions by validated weighted uAUC.

Non-negative weights summing to 1 over the models, found by a derivative-free search on the
simplex (:func:`simplex_search`; uAUC is a step function of the weights).  ``scope``:
``equal`` fits nothing: the plain mean of the models (the baselines of ``equal_exclude`` left
out), the only choice on day 14 being the input below; ``shared`` fits one weight vector for
every action on the weighted uAUC (the competition's score); ``action`` fits each action on its
own uAUC (seven times the free weights, which the few users of the rare actions overfit).  With
a few strong models of about the same score, the fitted weights did not carry over from one
user half to the other, and the plain mean scored higher held out (README, "The blend:
fitted weights or the plain mean").  Two
inputs are tried:

* ``prob``: the models' probabilities as they are;
* ``rank``: each model's per-user percentile ranks (:func:`per_user_pct_rank`).  uAUC only
  looks at the order inside a user, and ranks make models with different calibration (a
  down-sampled GBDT against a net trained on all rows) comparable before they are mixed;
* ``logit``: the models' log-odds, the blend mapped back through the sigmoid (a weighted
  geometric mean of the odds): a model's confident rows count by how far their odds move, not
  by how close to 0 or 1 a probability can go, and the order of one model's rows is kept as the
  probabilities' is.

Choosing weights on day 14 and scoring them on day 14 flatters the blend, so the users are
split in the two seeded halves every model shares (``wbdc.metrics.split_halves``).  On each
half H the models' predictions *chosen on H* (each model's iteration / epoch picked on H:
``pred_offline_sel_<h>.parquet``) are blended with weights and an input (prob, rank or logit) fitted
on H, and scored on the other half; the mean of the two out-of-half uAUCs is the *held-out*
score, the blend's honest figure.  For the online predictions the input with the better
cross-fitted score is refitted on all users over ``pred_offline.parquet`` (its day-14 score is
in-sample).

Each search evaluation is one matrix-vector product and one uAUC call on precomputed user
groups restricted to the users that can be scored for that action (both classes present):
for the rare actions that is a small fraction of the rows.
"""
from __future__ import annotations

import sys
import warnings
from dataclasses import asdict, dataclass, field
from pathlib import Path
from typing import Callable, Mapping, Sequence

import numpy as np
import pandas as pd
import pyarrow.parquet as pq

from .io import InputError
from .metrics import (HALF_PRED_FILES, HALVES, Halves, UAUCWarning, UserGroups, group_by_user,
                      split_halves, uauc, user_codes)
from .schema import ACTION_WEIGHTS, ACTIONS

METHODS = ("prob", "rank", "logit")
#: ``logit``: probabilities clipped to [LOGIT_EPS, 1 - LOGIT_EPS] before the log-odds
LOGIT_EPS = 1e-6
SCOPES = ("equal", "shared", "action")
KEYS = ("userid", "feedid")
PRED_FILES = {"offline": "pred_offline.parquet", "online": "pred_online.parquet",
              **{f"offline_sel_{h.lower()}": f for h, f in HALF_PRED_FILES.items()}}
#: what the blend needs of every model offline: day 14 as chosen on all users and on each half
OFFLINE_FILES = ("offline", *(f"offline_sel_{h.lower()}" for h in HALF_PRED_FILES))
MODEL_HINT = "run a model stage first (src/stages/train_lgb.py or src/stages/train_nn.py)"


# ------------------------------------------------------------------------------ settings

@dataclass(frozen=True)
class BlendSettings:
    """Search settings (``configs/blend.yaml``).

    Weights live on a grid of ``1 / grid_units``; the search moves ``start_step`` units of
    weight between two models at a time and halves the step when no move helps.
    """

    methods: tuple[str, ...]
    seed: int
    grid_units: int
    start_step: int
    max_evals: int
    scope: str                 # action: weights per action; shared: one vector on the weighted uAUC;
                               # equal: the plain mean of the models not in ``equal_exclude``
    equal_exclude: tuple[str, ...]

    @classmethod
    def from_config(cls, cfg: Mapping) -> "BlendSettings":
        """From the resolved config (``blend`` section; the user halves are ``data.seed``'s,
        shared with every model's selection).  No defaults here: configs/blend.yaml has them."""
        b, search = cfg["blend"], cfg["blend"]["search"]
        methods = tuple(b["methods"])
        bad = [m for m in methods if m not in METHODS]
        if bad or not methods:
            raise ValueError(f"blend.methods: unknown {bad} (choose from {list(METHODS)})")
        s = cls(methods=methods, seed=int(cfg["data"]["seed"]),
                grid_units=int(search["grid_units"]),
                start_step=int(search["start_step_units"]),
                max_evals=int(search["max_evals"]), scope=str(b["scope"]),
                equal_exclude=tuple(b["equal_exclude"] or ()))
        if s.scope not in SCOPES:
            raise ValueError(f"blend.scope: {s.scope!r} is not one of {list(SCOPES)}")
        if s.grid_units < 1 or not 1 <= s.start_step <= s.grid_units or s.max_evals < 1:
            raise ValueError("blend.search: need grid_units >= 1, 1 <= start_step_units <= "
                             f"grid_units and max_evals >= 1 (got {s.grid_units}, "
                             f"{s.start_step}, {s.max_evals})")
        return s


# ------------------------------------------------------------------------------ rank transform

def per_user_pct_rank(values: np.ndarray, groups: UserGroups) -> np.ndarray:
    """Per-user percentile rank ``(average rank - 0.5) / n_user`` in (0, 1), float32.

    Ties get the same (average) rank, so within every user the order, ties included, is
    exactly that of ``values`` and the uAUC of the ranks equals the uAUC of the values.
    """
    v = np.asarray(values, dtype=np.float64)
    n = len(v)
    if n != groups.n_rows:
        raise ValueError(f"per_user_pct_rank: {n} values but groups built on {groups.n_rows} rows")
    if n == 0:
        return np.zeros(0, np.float32)
    sizes = groups.sizes
    code = np.repeat(np.arange(groups.n_users, dtype=np.int64), sizes)  # user code, user order
    vu = groups.take(v)
    srt = np.lexsort((vu, code))                       # by user, then by value
    vs, cs = vu[srt], code[srt]
    new = np.empty(n, bool)
    new[0] = True
    new[1:] = (vs[1:] != vs[:-1]) | (cs[1:] != cs[:-1])
    starts = np.flatnonzero(new)
    ends = np.append(starts[1:], n)
    tie_id = np.cumsum(new) - 1
    avg_pos = ((starts + ends - 1) / 2.0)[tie_id]      # 0-based position in the sorted array
    user_start = groups.offsets[:-1][cs]
    pct_sorted = (avg_pos - user_start + 0.5) / sizes[cs]
    pct_user = np.empty(n, np.float64)
    pct_user[srt] = pct_sorted
    out = np.empty(n, np.float32)
    if groups.order is None:
        out[:] = pct_user
    else:
        out[groups.order] = pct_user
    return out


# ------------------------------------------------------------------------------ search

@dataclass
class SearchResult:
    weights: np.ndarray   # float64, non-negative, sums to 1
    score: float
    evals: int


def _even_split(total: int, m: int) -> tuple[int, ...]:
    base, extra = divmod(total, m)
    return tuple(base + (1 if i < extra else 0) for i in range(m))


def simplex_search(score: Callable[[np.ndarray], float], n_models: int, *, grid_units: int = 40,
                   start_step: int = 8, max_evals: int = 200) -> SearchResult:
    """Maximise ``score(weights)`` over non-negative weights summing to 1.

    Starts from the best of every single model and the (near) equal mix, then hill-climbs by
    moving ``step / grid_units`` of weight from one model to another, halving the step when
    no move improves; stops at step 0 or after ``max_evals`` distinct evaluations.  Only
    strict improvements are taken, so the result is at least as good as every single model,
    and ties keep the earlier (simpler) point.  Deterministic.  NaN scores count as -inf.
    """
    if n_models < 1:
        raise ValueError("simplex_search: need at least one model")
    cache: dict[tuple[int, ...], float] = {}

    def f(units: tuple[int, ...]) -> float:
        if units not in cache:
            s = float(score(np.asarray(units, np.float64) / grid_units))
            cache[units] = -np.inf if np.isnan(s) else s
        return cache[units]

    if n_models == 1:
        one = (grid_units,)
        return SearchResult(np.ones(1), f(one), len(cache))
    starts = [tuple(grid_units if j == i else 0 for j in range(n_models)) for i in range(n_models)]
    starts.append(_even_split(grid_units, n_models))
    best = starts[0]
    for s in starts:
        if f(s) > f(best):
            best = s
    step = start_step
    while step >= 1 and len(cache) < max_evals:
        improved = False
        for i in range(n_models):           # receiver
            for j in range(n_models):       # donor
                if i == j or best[j] < step or len(cache) >= max_evals:
                    continue
                cand = list(best)
                cand[i] += step
                cand[j] -= step
                cand = tuple(cand)
                if f(cand) > f(best):
                    best, improved = cand, True
        if not improved:
            step //= 2
    return SearchResult(np.asarray(best, np.float64) / grid_units, f(best), len(cache))


# ------------------------------------------------------------------------------ model inputs

def find_models(models_dir: str | Path, names: Sequence[str] | None = None,
                which: Sequence[str] = ("offline", "online")) -> tuple[list[str], list[str]]:
    """Models under ``models_dir`` holding the prediction files ``which`` (offline, online),
    sorted by name (or in the order of ``names``); plus one warning line per folder skipped for
    lacking a file.

    A name in ``names`` without a folder is an error (likely a typo).
    """
    models_dir = Path(models_dir)
    if names:
        missing = [n for n in names if not (models_dir / n).is_dir()]
        if missing:
            have = sorted(p.name for p in models_dir.glob("*") if p.is_dir()) if models_dir.is_dir() else []
            raise FileNotFoundError(f"{models_dir}: no model folder for {', '.join(missing)} "
                                    f"(found: {', '.join(have) or 'none'}); {MODEL_HINT}")
        candidates = list(dict.fromkeys(names))
    else:
        candidates = sorted(p.name for p in models_dir.glob("*") if p.is_dir()
                            and not p.name.startswith(".")) if models_dir.is_dir() else []
    found, skipped = [], []
    for n in candidates:
        lacking = [PRED_FILES[w] for w in which if not (models_dir / n / PRED_FILES[w]).is_file()]
        if lacking:
            skipped.append(f"{models_dir / n}: skipped, no {' / '.join(lacking)}")
        else:
            found.append(n)
    return found, skipped


@dataclass
class ModelSet:
    """Several models' predictions on the same rows (checked against ``keys``); columns are
    read from disk per action so only one action's matrix is in memory at a time."""

    names: list[str]
    files: list[Path]
    keys: pd.DataFrame

    def __len__(self) -> int:
        return len(self.keys)

    def column(self, action: str) -> np.ndarray:
        """float32 [n_rows, n_models] predictions of ``action``."""
        out = np.empty((len(self.keys), len(self.names)), np.float32)
        for j, f in enumerate(self.files):
            out[:, j] = _read_checked(f, action)
        return out

    def frame(self, name: str) -> pd.DataFrame:
        """One model's userid, feedid and 7 action columns."""
        f = self.files[self.names.index(name)]
        df = self.keys.copy()
        for a in ACTIONS:
            df[a] = _read_checked(f, a)
        return df


def _read_checked(path: Path, action: str) -> np.ndarray:
    v = pq.read_table(path, columns=[action]).column(0).to_numpy().astype(np.float32, copy=False)
    bad = ~((v >= 0) & (v <= 1))           # NaN fails both comparisons
    if bad.any():
        i = int(np.argmax(bad))
        raise InputError(f"{path}: column {action} has {int(bad.sum())} values that are NaN or "
                         f"outside [0, 1] (first {v[i]} at row {i + 1})")
    return v


def open_predictions(models_dir: str | Path, names: Sequence[str], which: str,
                     keys: pd.DataFrame, keys_name: str) -> ModelSet:
    """Check every model's ``pred_<which>.parquet`` against ``keys`` (same rows, same order)."""
    models_dir = Path(models_dir)
    files = []
    want = [*KEYS, *ACTIONS]
    k_user = keys["userid"].to_numpy()
    k_feed = keys["feedid"].to_numpy()
    for n in names:
        f = models_dir / n / PRED_FILES[which]
        schema_names = pq.read_schema(f).names
        missing = [c for c in want if c not in schema_names]
        if missing:
            raise InputError(f"{f}: missing columns {', '.join(missing)}")
        t = pq.read_table(f, columns=list(KEYS))
        if t.num_rows != len(keys):
            raise InputError(f"{f}: {t.num_rows:,} rows but {keys_name} has {len(keys):,}; "
                             f"predictions must have one row per {keys_name} row, in order")
        u = t.column("userid").to_numpy()
        fe = t.column("feedid").to_numpy()
        bad = (u != k_user) | (fe != k_feed)
        if bad.any():
            i = int(np.argmax(bad))
            raise InputError(f"{f}: rows do not align with {keys_name} on (userid, feedid): "
                             f"{int(bad.sum()):,} differ, first at row {i + 1} "
                             f"(got {u[i]}, {fe[i]}; expected {k_user[i]}, {k_feed[i]})")
        files.append(f)
    return ModelSet(list(names), files, keys[list(KEYS)].reset_index(drop=True))


# ------------------------------------------------------------------------------ weights

@dataclass
class ActionBlend:
    """The blend of one action: the chosen input, its weights, and what it scored."""

    method: str                      # the input of the refit on all users (the online blend)
    weights: dict[str, float]        # its weights
    in_sample: float | None = None   # their uAUC on the users they were fitted on
    heldout: float | None = None     # honest: mean of the two out-of-half uAUCs (half_method)
    heldout_by_method: dict[str, float | None] = field(default_factory=dict)  # picks ``method``
    half_weights: dict[str, dict[str, dict[str, float]]] = field(default_factory=dict)
    half_method: dict[str, str] = field(default_factory=dict)   # half -> input chosen on it
    evals: int = 0


@dataclass
class BlendWeights:
    models: list[str]
    actions: dict[str, ActionBlend]

    def to_json(self) -> dict:
        return {"models": list(self.models),
                "actions": {a: asdict(b) for a, b in self.actions.items()}}

    @classmethod
    def from_json(cls, d: Mapping) -> "BlendWeights":
        return cls(list(d["models"]), {a: ActionBlend(**b) for a, b in d["actions"].items()})

    def weight_vector(self, action: str) -> np.ndarray:
        w = self.actions[action].weights
        return np.asarray([w.get(m, 0.0) for m in self.models], np.float32)

    def apply(self, preds: ModelSet, groups: UserGroups | None = None) -> pd.DataFrame:
        """userid, feedid and the 7 blended columns (float32) for the rows of ``preds``.

        ``groups`` (the user grouping of those rows) is needed when an action blends ranks;
        it is computed here when not given.
        """
        if list(preds.names) != list(self.models):
            raise ValueError(f"blend weights are for models {self.models}, "
                             f"predictions hold {preds.names}")
        out = preds.keys.copy()
        for a in ACTIONS:
            method = self.actions[a].method
            if method == "rank" and groups is None:
                groups = group_by_user(preds.keys["userid"].to_numpy())
            x = blend_input(preds.column(a), method, groups)
            out[a] = blend_output(x @ self.weight_vector(a), method)
        return out


def rank_columns(x: np.ndarray, groups: UserGroups) -> np.ndarray:
    return np.stack([per_user_pct_rank(x[:, j], groups) for j in range(x.shape[1])], axis=1)


def blend_input(x: np.ndarray, method: str, groups: UserGroups | None) -> np.ndarray:
    """The models' columns (rows x models, probabilities) as the blend mixes them: as they are
    (prob), per-user percentile ranks (rank) or log-odds (logit); float32."""
    if method == "prob":
        return x
    if method == "rank":
        return rank_columns(x, groups)
    if method == "logit":
        p = np.clip(np.asarray(x, np.float64), LOGIT_EPS, 1.0 - LOGIT_EPS)
        return np.log(p / (1.0 - p)).astype(np.float32)
    raise ValueError(f"unknown blend input {method!r} (choose from {list(METHODS)})")


def blend_output(z: np.ndarray, method: str) -> np.ndarray:
    """A mix of :func:`blend_input` columns back in [0, 1] (float32): log-odds through the
    sigmoid, probabilities and ranks clipped (a monotone map: the order, all uAUC reads, stays)."""
    z = np.asarray(z)
    if method == "logit":
        return (1.0 / (1.0 + np.exp(-z.astype(np.float64)))).astype(np.float32)
    return np.clip(z, 0.0, 1.0).astype(np.float32)


def _nan_to_none(v: float) -> float | None:
    return None if v is None or np.isnan(v) else float(v)


def _quiet_uauc(y, p, groups) -> float:
    with warnings.catch_warnings():
        warnings.simplefilter("ignore", UAUCWarning)
        return uauc(y, p, groups=groups)


@dataclass
class _Subset:
    """The rows of the scoreable users (both classes) of one action inside one user set."""

    rows: np.ndarray
    groups: UserGroups
    y: np.ndarray


def _subset(user_code: np.ndarray, y: np.ndarray, user_mask: np.ndarray,
            userids: np.ndarray) -> _Subset | None:
    n_users = len(user_mask)
    pos = np.bincount(user_code, weights=y, minlength=n_users)
    size = np.bincount(user_code, minlength=n_users)
    ok = user_mask & (pos > 0) & (pos < size)
    rows = np.flatnonzero(ok[user_code])
    if len(rows) == 0:
        return None
    return _Subset(rows, group_by_user(userids[rows]), y[rows])


def _fit(x: np.ndarray, sub: _Subset | None, n_models: int, s: BlendSettings) -> SearchResult:
    if sub is None:   # nothing to learn from: equal weights
        return SearchResult(np.asarray(_even_split(s.grid_units, n_models), np.float64)
                            / s.grid_units, float("nan"), 0)
    xs = np.ascontiguousarray(x[sub.rows])

    def score(w: np.ndarray) -> float:
        return _quiet_uauc(sub.y, xs @ w.astype(np.float32), sub.groups)

    return simplex_search(score, n_models, grid_units=s.grid_units, start_step=s.start_step,
                          max_evals=s.max_evals)


@dataclass
class BlendFit:
    weights: BlendWeights
    offline: pd.DataFrame    # in-sample blend (weights fitted on all users, on pred_offline)
    heldout: pd.DataFrame    # cross-fitted blend: each half's rows blended as the other chose
    half_preds: dict[str, pd.DataFrame] = field(default_factory=dict)  # half -> its choice, all rows


def _half_score(x: np.ndarray, sub: _Subset | None) -> float:
    return float("nan") if sub is None else _quiet_uauc(sub.y, x[sub.rows], sub.groups)


def _action_x(preds: ModelSet, a: str, method: str, groups: UserGroups) -> np.ndarray:
    """The blend input of action ``a`` (:func:`blend_input`)."""
    return blend_input(preds.column(a), method, groups)


def _weighted_score(xs: Mapping[str, np.ndarray], subs: Mapping[str, "_Subset | None"],
                    w: np.ndarray) -> float:
    """The weighted uAUC (ACTION_WEIGHTS over the actions that can be scored) of the mix ``w``;
    ``xs[a]``: action ``a``'s input restricted to ``subs[a].rows``.  NaN if none can be scored."""
    scored = [a for a in ACTIONS if subs.get(a) is not None]
    if not scored:
        return float("nan")
    w32 = np.asarray(w, np.float32)
    return sum(ACTION_WEIGHTS[a] * _quiet_uauc(subs[a].y, xs[a] @ w32, subs[a].groups)
               for a in scored) / sum(ACTION_WEIGHTS[a] for a in scored)


def _fit_shared(xs: Mapping[str, np.ndarray], subs: Mapping[str, "_Subset | None"], n_models: int,
                s: BlendSettings) -> SearchResult:
    """One weight vector for every action, maximising the weighted uAUC (the competition's
    score).  ``xs[a]``: action ``a``'s input restricted to ``subs[a].rows``."""
    if not any(subs.get(a) is not None for a in ACTIONS):
        return SearchResult(np.asarray(_even_split(s.grid_units, n_models), np.float64)
                            / s.grid_units, float("nan"), 0)
    return simplex_search(lambda w: _weighted_score(xs, subs, w), n_models, grid_units=s.grid_units,
                          start_step=s.start_step, max_evals=s.max_evals)


def equal_weights(names: Sequence[str], exclude: Sequence[str]) -> np.ndarray:
    """Scope ``equal``: the same weight for every model not in ``exclude`` (every model when
    that would leave none)."""
    keep = np.asarray([n not in set(exclude) for n in names], np.float64)
    if not keep.any():
        keep[:] = 1.0
    return keep / keep.sum()


def _fits(preds: ModelSet, subs: Mapping[str, Mapping[str, "_Subset | None"]], key: str, method: str,
          groups: UserGroups, n_models: int, s: BlendSettings) -> dict[str, SearchResult]:
    """Per action, the weights fitted on the users ``key`` (a half or "all") of one input:
    an own search per action (scope ``action``), one search shared by all (``shared``), or no
    search (``equal``: the plain mean; its weighted score on ``key`` still picks the input)."""
    if s.scope == "action":
        return {a: _fit(_action_x(preds, a, method, groups), subs[a][key], n_models, s) for a in ACTIONS}
    xs = {a: np.ascontiguousarray(_action_x(preds, a, method, groups)[subs[a][key].rows])
          for a in ACTIONS if subs[a][key] is not None}
    if s.scope == "equal":
        w = equal_weights(preds.names, s.equal_exclude)
        score = _weighted_score(xs, {a: subs[a][key] for a in ACTIONS}, w)
        shared = SearchResult(w, score, 1)
    else:
        shared = _fit_shared(xs, {a: subs[a][key] for a in ACTIONS}, n_models, s)
    return {a: shared for a in ACTIONS}


def fit_blend(labels: pd.DataFrame, preds: ModelSet, settings: BlendSettings,
              groups: UserGroups | None = None, progress: bool = True,
              half_preds: Mapping[str, ModelSet] | None = None,
              halves: Halves | None = None) -> BlendFit:
    """Fit blend weights on ``labels`` (userid, feedid, 7 actions; rows of ``preds``).

    ``settings.scope``: ``action`` fits each action's weights on its own uAUC; ``shared`` fits
    one weight vector for all actions on the weighted uAUC (7 times fewer free weights: the
    per-action fit overfits the few users of the rare actions); ``equal`` fits no weights (the
    mean of the models not in ``settings.equal_exclude``), only the input.

    Honest (held-out) blend, per user half H: the models' predictions chosen on H
    (``half_preds[H]``, e.g. LightGBM at H's best iteration; ``preds`` itself for a model with
    no selection) are blended with weights fitted on H's users, for each input of blend.methods,
    and the input that fits H better is kept; that blend scores the other half.  Nothing seen
    by the scored half's labels enters its predictions.

    Online blend: the input with the better cross-fitted score (per action for ``action``, on
    the weighted score otherwise) is refitted on all users over ``preds`` (the in-sample blend).
    ``halves``: the shared user halves (default: ``settings.seed`` over ``labels``).
    """
    userids = labels["userid"].to_numpy()
    if groups is None:
        groups = group_by_user(userids) if halves is None else halves.groups
    if halves is None:
        halves = split_halves(settings.seed, groups=groups)
    if half_preds is None:
        half_preds = {h: preds for h in HALVES}
    for h in HALVES:
        if list(half_preds[h].names) != list(preds.names):
            raise ValueError(f"half {h} predictions hold models {half_preds[h].names}, "
                             f"expected {preds.names}")
    user_code = user_codes(groups)
    all_users = np.ones(groups.n_users, bool)
    m = len(preds.names)
    names = list(preds.names)
    subs: dict[str, dict[str, _Subset | None]] = {}
    for a in ACTIONS:
        y = labels[a].to_numpy().astype(np.int8)
        subs[a] = {"all": _subset(user_code, y, all_users, userids),
                   **{h: _subset(user_code, y, halves.user_mask(h), userids) for h in HALVES}}
    steps = [(method, h) for method in settings.methods for h in HALVES]
    it = steps
    if progress:
        from tqdm import tqdm
        it = tqdm(steps, desc=f"blend ({settings.scope})", unit="fit", file=sys.stderr)
    fitted: dict[str, dict[str, dict[str, SearchResult]]] = {mth: {} for mth in settings.methods}
    for method, h in it:     # method -> half -> action -> weights fitted on that half
        fitted[method][h] = _fits(half_preds[h], subs, h, method, groups, m, settings)

    offline = preds.keys.copy()
    heldout = preds.keys.copy()
    chosen = {h: preds.keys.copy() for h in HALVES}
    half_method: dict[str, dict[str, str]] = {}
    by_method: dict[str, dict[str, float]] = {}
    honest: dict[str, float] = {}
    for a in ACTIONS:
        out_of_half: dict[str, dict[str, float]] = {}   # method -> half -> score on the other
        blended: dict[str, dict[str, np.ndarray]] = {}
        for method in settings.methods:
            blended[method], out_of_half[method] = {}, {}
            for h in HALVES:
                x = _action_x(half_preds[h], a, method, groups)
                blended[method][h] = blend_output(x @ fitted[method][h][a].weights.astype(np.float32), method)
                out_of_half[method][h] = _half_score(blended[method][h], subs[a][Halves.other(h)])
        # each half keeps the input that fits *it* better (ties: the first listed)
        half_method[a] = {}
        for h in HALVES:
            best = settings.methods[0]
            for mth in settings.methods[1:]:
                if fitted[mth][h][a].score > fitted[best][h][a].score:
                    best = mth
            half_method[a][h] = best
            chosen[h][a] = blended[best][h]
            heldout.loc[halves.row_mask(Halves.other(h)), a] = blended[best][h][
                halves.row_mask(Halves.other(h))]
        honest[a] = _nanmean2(out_of_half[half_method[a]["A"]]["A"], out_of_half[half_method[a]["B"]]["B"])
        by_method[a] = {mth: _nanmean2(v["A"], v["B"]) for mth, v in out_of_half.items()}
        del blended

    # the online blend: the input with the better cross-fitted score, refitted on everyone
    def better(score_of) -> str:
        method = settings.methods[0]
        for mth in settings.methods[1:]:
            if score_of(mth) > score_of(method):
                method = mth
        return method

    if settings.scope != "action":
        def weighted(mth: str) -> float:
            vals = [(ACTION_WEIGHTS[a], by_method[a][mth]) for a in ACTIONS if not np.isnan(by_method[a][mth])]
            return sum(w * v for w, v in vals) / sum(w for w, _ in vals) if vals else -np.inf
        shared_method = better(weighted)
        online_method = {a: shared_method for a in ACTIONS}
        full = _fits(preds, subs, "all", shared_method, groups, m, settings)
    else:
        online_method = {a: better(lambda mth, a=a: by_method[a][mth]) for a in ACTIONS}
        full = {a: _fit(_action_x(preds, a, online_method[a], groups), subs[a]["all"], m, settings)
                for a in ACTIONS}
    blends: dict[str, ActionBlend] = {}
    for a in ACTIONS:
        method = online_method[a]
        x_all = _action_x(preds, a, method, groups)
        offline[a] = blend_output(x_all @ full[a].weights.astype(np.float32), method)
        in_sample = full[a].score if settings.scope == "action" else _half_score(offline[a].to_numpy(), subs[a]["all"])
        blends[a] = ActionBlend(
            method=method, weights=dict(zip(names, map(float, full[a].weights))),
            in_sample=_nan_to_none(in_sample), heldout=_nan_to_none(honest[a]),
            heldout_by_method={k: _nan_to_none(v) for k, v in by_method[a].items()},
            half_weights={mth: {h: dict(zip(names, map(float, fitted[mth][h][a].weights)))
                                for h in HALVES} for mth in settings.methods},
            half_method=half_method[a],
            evals=(full[a].evals + sum(fitted[mth][h][a].evals for mth in settings.methods for h in HALVES)))
    for frame in (offline, heldout, *chosen.values()):
        for a in ACTIONS:
            frame[a] = frame[a].astype(np.float32)
    return BlendFit(BlendWeights(names, blends), offline, heldout, chosen)


def _nanmean2(u: float, v: float) -> float:
    vals = [x for x in (u, v) if not np.isnan(x)]
    return float(np.mean(vals)) if vals else float("nan")


# ------------------------------------------------------------------------------ stage inputs

def load_day_labels(actions_path: str | Path, day: int) -> pd.DataFrame:
    """userid, feedid and the 7 labels of the prepared actions of ``day``, in stored order,
    read batch by batch so the full table never sits in memory."""
    cols = [*KEYS, "date_", *ACTIONS]
    pf = pq.ParquetFile(actions_path)
    parts = []
    for batch in pf.iter_batches(columns=cols, batch_size=1 << 20):
        df = batch.to_pandas()
        parts.append(df.loc[df["date_"] == day, [*KEYS, *ACTIONS]])
    if not parts:
        return pd.DataFrame({c: pd.Series(dtype=np.int32 if c in KEYS else np.int8) for c in [*KEYS, *ACTIONS]})
    return pd.concat(parts, ignore_index=True)


def align_truth(truth: pd.DataFrame, keys: pd.DataFrame, name: str) -> pd.DataFrame:
    """``truth`` checked to hold one row per ``keys`` row in order (userid, feedid, actions).

    A truth file written for the raw day-14 rows (a world whose user_action.csv repeats some
    (userid, feedid) pairs) is first de-duplicated as prepare de-duplicates the actions:
    the last row of each pair is kept."""
    missing = [c for c in [*KEYS, *ACTIONS] if c not in truth.columns]
    if missing:
        raise InputError(f"{name}: missing columns {', '.join(missing)}")
    if len(truth) > len(keys) and truth.duplicated(list(KEYS)).any():
        truth = truth.drop_duplicates(list(KEYS), keep="last")
    if len(truth) != len(keys):
        raise InputError(f"{name}: {len(truth):,} rows but expected {len(keys):,}")
    bad = ((truth["userid"].to_numpy() != keys["userid"].to_numpy())
           | (truth["feedid"].to_numpy() != keys["feedid"].to_numpy()))
    if bad.any():
        raise InputError(f"{name}: rows do not align on (userid, feedid), first mismatch at "
                         f"row {int(np.argmax(bad)) + 1}")
    return truth.reset_index(drop=True)

