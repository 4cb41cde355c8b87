"""Weighted per-user AUC (uAUC), the WBDC 2021 metric, exact and fast.

Per action, each user's rows give one AUC (ties count one half, i.e. average ranks, the same
value as sklearn's ``roc_auc_score`` on that user's rows); users whose labels are all 0 or all 1
are skipped and uAUC is the plain mean over the rest.  The weighted score is
``sum(w_a * uAUC_a) / sum(w_a)`` with ``wbdc.schema.ACTION_WEIGHTS``.

Speed comes from two choices:

* rows are grouped by user once (:func:`group_by_user`: a stable order plus segment offsets,
  a counting sort for integer ids) and the :class:`UserGroups` is reused for every action and,
  via ``groups=``, for every later call on the same rows (early stopping, blend searches);
* inside a user only the smaller class is sorted; each row of the larger class then finds how
  many of the smaller class lie below / tie with it by binary search.  The Mann-Whitney count is
  accumulated in integers (doubled, so ties stay integral), hence exact, and users whose labels
  have one class only are skipped before any sorting, which makes the rare actions almost free.

Results are deterministic: every user's AUC is written to its own slot and the mean is taken
in user order, whatever the number of numba threads.
"""
from __future__ import annotations

import warnings
from dataclasses import dataclass
from typing import Mapping

import numba
import numpy as np
import pandas as pd
from numba import njit, prange

from .schema import ACTION_WEIGHTS, ACTIONS

__all__ = [
    "UAUCWarning", "UserGroups", "group_by_user", "per_user_auc", "uauc", "weighted_uauc",
    "warm_up", "Halves", "user_halves", "split_halves", "HALVES", "HALF_PRED_FILES",
    "uauc_by_half", "weighted_uauc_by_half", "crossfit_scores",
]


class UAUCWarning(RuntimeWarning):
    """An action could not be scored (no user has both a positive and a negative row)."""


# ------------------------------------------------------------------------------ grouping

@dataclass(frozen=True)
class UserGroups:
    """Rows grouped by user: ``order`` lists row indices user by user (stable), and user ``j``
    (id ``user_ids[j]``, ascending) owns ``order[offsets[j]:offsets[j+1]]``.

    ``order`` is None when the rows already come sorted by user (no reordering needed).
    Build it with :func:`group_by_user` and pass it as ``groups=`` to score the same rows
    many times while paying for the grouping once.
    """

    order: np.ndarray | None
    offsets: np.ndarray
    user_ids: np.ndarray
    n_rows: int

    @property
    def n_users(self) -> int:
        return len(self.user_ids)

    @property
    def sizes(self) -> np.ndarray:
        """Rows per user, aligned with ``user_ids``."""
        return np.diff(self.offsets)

    def take(self, values: np.ndarray) -> np.ndarray:
        """``values`` (one per row, original order) rearranged into user order."""
        return values if self.order is None else values[self.order]

    def blocks(self, n_threads: int) -> np.ndarray:
        """Row-balanced user blocks for ``n_threads`` threads (cached per thread count)."""
        cache = self.__dict__.setdefault("_blocks", {})
        if n_threads not in cache:
            cache[n_threads] = _block_starts(self.offsets, n_threads)
        return cache[n_threads]


@njit(cache=True)
def _counting_order(codes, n_codes):
    """Stable counting sort of codes in [0, n_codes): (order, offsets over all n_codes)."""
    n = codes.shape[0]
    offsets = np.zeros(n_codes + 1, np.int64)
    for i in range(n):
        offsets[codes[i] + 1] += 1
    for c in range(n_codes):
        offsets[c + 1] += offsets[c]
    nxt = offsets[:-1].copy()
    order = np.empty(n, np.int64)
    for i in range(n):
        c = codes[i]
        order[nxt[c]] = i
        nxt[c] += 1
    return order, offsets


@njit(cache=True)
def _is_sorted(a):
    for i in range(1, a.shape[0]):
        if a[i] < a[i - 1]:
            return False
    return True


@njit(cache=True)
def _sorted_offsets(a):
    """Segment offsets of equal runs in a sorted array."""
    n = a.shape[0]
    starts = np.empty(n + 1, np.int64)
    k = 0
    for i in range(n):
        if i == 0 or a[i] != a[i - 1]:
            starts[k] = i
            k += 1
    starts[k] = n
    return starts[:k + 1].copy()


def group_by_user(userids) -> UserGroups:
    """Group row positions by user id; O(n) for integer ids of moderate range."""
    ids = np.asarray(userids)
    if ids.ndim != 1:
        raise ValueError(f"userids must be 1-D, got shape {ids.shape}")
    n = len(ids)
    if n == 0:
        return UserGroups(None, np.zeros(1, np.int64), ids[:0], 0)
    if ids.dtype.kind == "f" and np.isnan(ids).any():
        raise ValueError("userids contain NaN")
    if ids.dtype.kind in "iub":
        if ids.dtype.kind == "b":
            ids = ids.astype(np.int8)
        if _is_sorted(ids):
            offsets = _sorted_offsets(ids)
            return UserGroups(None, offsets, ids[offsets[:-1]], n)
        lo, hi = int(ids.min()), int(ids.max())
        span = hi - lo + 1
        if span <= max(4 * n, 1 << 20):
            # subtract in the ids' own dtype (span is small, so this cannot overflow)
            codes = (ids - ids.dtype.type(lo)).astype(np.int64, copy=False)
            order, offsets = _counting_order(codes, span)
            present = np.flatnonzero(np.diff(offsets))
            offsets = np.concatenate([offsets[present], offsets[-1:]])
            return UserGroups(order, offsets, ids[order[offsets[:-1]]], n)
    # general ids (huge integer range, floats, strings): factorize to dense sorted codes
    codes, uniques = pd.factorize(ids, sort=True)
    order, offsets = _counting_order(codes.astype(np.int64), len(uniques))
    return UserGroups(order, offsets, np.asarray(uniques), n)


# ------------------------------------------------------------------------------ kernel

@njit(cache=True, inline="always")
def _count_below(sorted_vals, m, x):
    """(# values < x, # values <= x) among sorted_vals[:m]."""
    lo, hi = 0, m
    while lo < hi:
        mid = (lo + hi) >> 1
        if sorted_vals[mid] < x:
            lo = mid + 1
        else:
            hi = mid
    lt = lo
    hi = m
    while lo < hi:
        mid = (lo + hi) >> 1
        if sorted_vals[mid] <= x:
            lo = mid + 1
        else:
            hi = mid
    return lt, lo


@njit(cache=True)
def _auc_block(labels, preds, order, has_order, offsets, u0, u1, out, buf):
    """AUC of users u0..u1-1 into out (NaN for one-class users).

    User u owns rows ``order[offsets[u]:offsets[u+1]]`` (or that range itself when
    ``has_order`` is False); rows are read in place, never copied into user order first.
    """
    for u in range(u0, u1):
        s, e = offsets[u], offsets[u + 1]
        n_pos = 0
        for i in range(s, e):
            n_pos += labels[order[i] if has_order else i]
        n_neg = (e - s) - n_pos
        if n_pos == 0 or n_neg == 0:
            out[u] = np.nan
            continue
        # sort the smaller class, binary-search each row of the larger one into it
        small = 1 if n_pos <= n_neg else 0
        m = 0
        for i in range(s, e):
            r = order[i] if has_order else i
            if labels[r] == small:
                buf[m] = preds[r]
                m += 1
        if m > 1:
            buf[:m].sort()
        twice_u = 0  # 2 * Mann-Whitney U of the positives: integral even with ties
        for i in range(s, e):
            r = order[i] if has_order else i
            if labels[r] != small:
                lt, le = _count_below(buf, m, preds[r])
                if small == 1:   # row r is a negative: positives above it, ties half
                    twice_u += 2 * (m - le) + (le - lt)
                else:            # row r is a positive: negatives below it, ties half
                    twice_u += 2 * lt + (le - lt)
        out[u] = twice_u / (2.0 * n_pos * n_neg)


@njit(cache=True, parallel=True)
def _user_aucs(labels, preds, order, has_order, offsets, block_starts):
    """Per-user AUCs; users are split into row-balanced blocks processed in parallel."""
    n_users = offsets.shape[0] - 1
    out = np.empty(n_users, np.float64)
    n_blocks = block_starts.shape[0] - 1
    for b in prange(n_blocks):
        u0, u1 = block_starts[b], block_starts[b + 1]
        longest = 0
        for u in range(u0, u1):
            longest = max(longest, offsets[u + 1] - offsets[u])
        buf = np.empty(longest, preds.dtype)
        _auc_block(labels, preds, order, has_order, offsets, u0, u1, out, buf)
    return out


def _block_starts(offsets: np.ndarray, n_threads: int) -> np.ndarray:
    """User indices splitting the users into blocks of roughly equal row counts."""
    n_users = len(offsets) - 1
    n_blocks = int(min(n_users, 16 * n_threads))
    if n_blocks <= 1:
        return np.array([0, n_users], np.int64)
    targets = np.linspace(0, offsets[-1], n_blocks + 1)[1:-1]
    cuts = np.searchsorted(offsets, targets)
    return np.unique(np.concatenate([[0], cuts, [n_users]])).astype(np.int64)


# ------------------------------------------------------------------------------ validation

def _as_labels(values, name: str) -> np.ndarray:
    a = np.asarray(values)
    if a.ndim != 1:
        raise ValueError(f"{name}: labels must be 1-D, got shape {a.shape}")
    if a.dtype.kind == "b":
        return np.ascontiguousarray(a).view(np.int8)
    if a.dtype.kind not in "iuf":
        raise ValueError(f"{name}: labels must be numeric 0/1, got dtype {a.dtype}")
    if a.dtype.kind == "f":
        bad = ~((a == 0) | (a == 1))
        if bad.any():
            raise ValueError(f"{name}: labels must be 0 or 1, found {a[np.argmax(bad)].item()} "
                             f"at row {int(np.argmax(bad))}")
    elif len(a) and (a.min() < 0 or a.max() > 1):
        bad = (a < 0) | (a > 1)
        raise ValueError(f"{name}: labels must be 0 or 1, found {a[np.argmax(bad)].item()} "
                         f"at row {int(np.argmax(bad))}")
    if a.dtype == np.uint8:
        return np.ascontiguousarray(a).view(np.int8)
    return np.ascontiguousarray(a, dtype=np.int8)


def _as_preds(values, name: str) -> np.ndarray:
    a = np.asarray(values)
    if a.ndim != 1:
        raise ValueError(f"{name}: predictions must be 1-D, got shape {a.shape}")
    if a.dtype.kind not in "iufb":
        raise ValueError(f"{name}: predictions must be numeric, got dtype {a.dtype}")
    a = np.ascontiguousarray(a, dtype=a.dtype if a.dtype == np.float32 else np.float64)
    finite = np.isfinite(a)
    if not finite.all():
        i = int(np.argmin(finite))
        raise ValueError(f"{name}: predictions must be finite, found {a[i]} at row {i} "
                         f"({int((~finite).sum())} non-finite values)")
    return a


def _resolve_groups(userids, groups: UserGroups | None, n: int, name: str) -> UserGroups:
    if groups is None:
        if userids is None:
            raise ValueError(f"{name}: give userids or groups=")
        if len(userids) != n:
            raise ValueError(f"{name}: length mismatch: {n} labels/predictions "
                             f"but {len(userids)} userids")
        return group_by_user(userids)
    if groups.n_rows != n:
        raise ValueError(f"{name}: length mismatch: {n} labels/predictions "
                         f"but groups were built on {groups.n_rows} rows")
    if userids is not None and len(userids) != n:
        raise ValueError(f"{name}: length mismatch: {n} labels/predictions "
                         f"but {len(userids)} userids")
    return groups


def _checked_pair(labels, preds, name: str) -> tuple[np.ndarray, np.ndarray]:
    y = _as_labels(labels, name)
    p = _as_preds(preds, name)
    if len(y) != len(p):
        raise ValueError(f"{name}: length mismatch: {len(y)} labels but {len(p)} predictions")
    return y, p


_NO_ORDER = np.zeros(0, np.int64)


def _aucs_grouped(y: np.ndarray, p: np.ndarray, groups: UserGroups) -> np.ndarray:
    has_order = groups.order is not None
    return _user_aucs(y, p, groups.order if has_order else _NO_ORDER, has_order,
                      groups.offsets, groups.blocks(numba.get_num_threads()))


# ------------------------------------------------------------------------------ public API

def per_user_auc(labels, preds, userids=None, *, groups: UserGroups | None = None
                 ) -> tuple[np.ndarray, np.ndarray]:
    """Each user's AUC: ``(user_ids, aucs)``, users ascending, NaN for users with one class."""
    y, p = _checked_pair(labels, preds, "per_user_auc")
    g = _resolve_groups(userids, groups, len(y), "per_user_auc")
    return g.user_ids, _aucs_grouped(y, p, g)


def _mean_valid(aucs: np.ndarray, name: str) -> float:
    valid = aucs[~np.isnan(aucs)]
    if len(valid) == 0:
        warnings.warn(f"{name}: no user has both a positive and a negative row; uAUC is NaN",
                      UAUCWarning, stacklevel=3)
        return float("nan")
    return float(valid.mean())


def uauc(labels, preds, userids=None, *, groups: UserGroups | None = None) -> float:
    """Mean per-user AUC over users having both classes.

    ``labels`` 0/1 (or bool), ``preds`` finite numbers, ``userids`` any hashable ids, all of
    one length; or ``groups=`` from :func:`group_by_user` on the same rows instead of (or
    besides) ``userids``.  NaN plus a :class:`UAUCWarning` when no user has both classes;
    ``ValueError`` on non-finite predictions, non-0/1 labels or mismatched lengths.
    """
    y, p = _checked_pair(labels, preds, "uauc")
    g = _resolve_groups(userids, groups, len(y), "uauc")
    return _mean_valid(_aucs_grouped(y, p, g), "uauc")


def _column(table, action: str):
    return table[action].to_numpy() if isinstance(table, pd.DataFrame) else table[action]


def weighted_uauc(labels, preds, userids=None, *, groups: UserGroups | None = None,
                  weights: Mapping[str, float] | None = None) -> dict[str, float]:
    """uAUC of every action present in both ``labels`` and ``preds`` plus the weighted mean.

    ``labels`` and ``preds`` map action name -> array (dicts or DataFrames, aligned by
    position; names outside ``wbdc.schema.ACTIONS`` are ignored).  Returns
    ``{action: uAUC, ..., "weighted": score}`` in ACTIONS order.  The weighted score is
    ``sum(w_a * uAUC_a) / sum(w_a)`` over the scored actions (``weights`` default:
    ACTION_WEIGHTS); an action whose uAUC is NaN (no user with both classes, warned about)
    is left out and the remaining weights are renormalised, so the score stays a weighted
    mean of the actions that could be scored (NaN only if none could).
    The user grouping is computed once (or taken from ``groups=``) and shared by all actions.
    """
    weights = dict(ACTION_WEIGHTS if weights is None else weights)
    label_names = set(labels.columns if isinstance(labels, pd.DataFrame) else labels.keys())
    pred_names = set(preds.columns if isinstance(preds, pd.DataFrame) else preds.keys())
    actions = [a for a in ACTIONS if a in label_names and a in pred_names]
    if not actions:
        raise ValueError(f"weighted_uauc: no action among {list(ACTIONS)} is present in both "
                         f"labels and predictions")
    missing_w = [a for a in actions if a not in weights]
    if missing_w:
        raise ValueError(f"weighted_uauc: no weight for {missing_w}")
    pairs = {a: _checked_pair(_column(labels, a), _column(preds, a), f"weighted_uauc[{a}]")
             for a in actions}
    n = len(pairs[actions[0]][0])
    for a, (y, _) in pairs.items():
        if len(y) != n:
            raise ValueError(f"weighted_uauc: length mismatch: {actions[0]} has {n} rows "
                             f"but {a} has {len(y)}")
    g = _resolve_groups(userids, groups, n, "weighted_uauc")
    out: dict[str, float] = {}
    for a in actions:
        out[a] = _mean_valid(_aucs_grouped(*pairs[a], g), f"uauc[{a}]")
    scored = [a for a in actions if not np.isnan(out[a])]
    if len(scored) < len(actions):
        warnings.warn(f"weighted_uauc: averaged over {len(scored)} of {len(actions)} actions "
                      f"(NaN: {[a for a in actions if a not in scored]}), weights renormalised",
                      UAUCWarning, stacklevel=2)
    if scored:
        total = sum(weights[a] for a in scored)
        out["weighted"] = float(sum(weights[a] * out[a] for a in scored) / total)
    else:
        out["weighted"] = float("nan")
    return out


def warm_up() -> float:
    """Compile (or load from cache) every numba kernel for the usual dtypes; returns seconds."""
    import time
    t0 = time.perf_counter()
    ids = np.array([3, 1, 3, 1, 2, 5], np.int32)
    y = np.array([1, 0, 0, 1, 0, 1], np.int8)
    for p in (np.linspace(0, 1, 6), np.linspace(0, 1, 6).astype(np.float32)):
        uauc(y, p, ids)
        uauc(y, p, np.sort(ids))
        uauc(y, p, ids.astype(np.int64) * 10**12)
    return time.perf_counter() - t0


# ------------------------------------------------------------------------------ user halves
#
# Honest day-14 scores.  Whatever is chosen on day 14 (LightGBM's iteration, a net's epoch, the
# blend's weights and input) is chosen twice, once on each of two seeded halves of the day-14
# users, and each choice is scored on the *other* half; a model's reported day-14 score is the
# mean of those two out-of-half scores (:func:`crossfit_scores`).  Every model and the blend
# split with :func:`split_halves` and the same seed (``data.seed``), so they share the halves.

HALVES = ("A", "B")
#: the day-14 predictions selected on each half (every row), written next to pred_offline.parquet
HALF_PRED_FILES = {"A": "pred_offline_sel_a.parquet", "B": "pred_offline_sel_b.parquet"}
_HALF_SALT = 0x48414C46   # "HALF": keeps the split's stream apart from other uses of the seed


def user_halves(user_ids, seed: int) -> np.ndarray:
    """Seeded half split of distinct users: bool per id (True = half A), ``n // 2`` ids in A.

    Depends only on the *set* of ids and the seed (ids are sorted first), so every model that
    scores the same day-14 rows gets the same halves whatever order it holds them in.
    """
    ids = np.asarray(user_ids)
    uniq, inv = np.unique(ids, return_inverse=True)
    if len(uniq) != len(ids):
        raise ValueError("user_halves: user ids must be distinct")
    n = len(uniq)
    in_a = np.zeros(n, bool)
    in_a[np.random.default_rng([int(seed), _HALF_SALT]).permutation(n)[: n // 2]] = True
    return in_a[inv.reshape(-1)]


@dataclass(frozen=True)
class Halves:
    """The day-14 rows' user grouping and its two halves: ``in_a`` per user (aligned with
    ``groups.user_ids``), ``row_in_a`` per row (original order)."""

    groups: UserGroups
    in_a: np.ndarray
    row_in_a: np.ndarray

    def user_mask(self, half: str) -> np.ndarray:
        return self.in_a if half == "A" else ~self.in_a

    def row_mask(self, half: str) -> np.ndarray:
        return self.row_in_a if half == "A" else ~self.row_in_a

    @staticmethod
    def other(half: str) -> str:
        return "B" if half == "A" else "A"


def user_codes(groups: UserGroups) -> np.ndarray:
    """Per row (original order): the index of its user in ``groups.user_ids``."""
    code = np.empty(groups.n_rows, np.int64)
    per_user = np.repeat(np.arange(groups.n_users, dtype=np.int64), groups.sizes)
    if groups.order is None:
        code[:] = per_user
    else:
        code[groups.order] = per_user
    return code


def split_halves(seed: int, userids=None, *, groups: UserGroups | None = None) -> Halves:
    """The shared day-14 half split of the rows of ``userids`` (or ``groups``)."""
    if groups is None:
        if userids is None:
            raise ValueError("split_halves: give userids or groups=")
        groups = group_by_user(userids)
    in_a = user_halves(groups.user_ids, seed)
    return Halves(groups, in_a, in_a[user_codes(groups)])


def _nanmean_quiet(v: np.ndarray) -> float:
    v = v[~np.isnan(v)]
    return float(v.mean()) if len(v) else float("nan")


def uauc_by_half(labels, preds, halves: Halves) -> dict[str, float]:
    """``{"all", "A", "B"}``: the uAUC over all users and over each half's users, from one pass
    over the rows (each user's AUC is computed once).  NaN where no user can be scored."""
    y, p = _checked_pair(labels, preds, "uauc_by_half")
    g = _resolve_groups(None, halves.groups, len(y), "uauc_by_half")
    aucs = _aucs_grouped(y, p, g)
    return {"all": _nanmean_quiet(aucs), "A": _nanmean_quiet(aucs[halves.in_a]),
            "B": _nanmean_quiet(aucs[~halves.in_a])}


def _weighted_of(per_action: Mapping[str, float], weights: Mapping[str, float]) -> float:
    scored = [a for a, v in per_action.items() if not np.isnan(v)]
    if not scored:
        return float("nan")
    return float(sum(weights[a] * per_action[a] for a in scored) / sum(weights[a] for a in scored))


def weighted_uauc_by_half(labels, preds, halves: Halves,
                          weights: Mapping[str, float] | None = None) -> dict[str, dict[str, float]]:
    """:func:`weighted_uauc` over all users and over each half: ``{"all": {...}, "A": {...},
    "B": {...}}``, each ``{action: uAUC, ..., "weighted": x}`` (actions present in both
    ``labels`` and ``preds``; NaN actions left out of that set's weighted mean, no warning)."""
    weights = dict(ACTION_WEIGHTS if weights is None else weights)
    label_names = set(labels.columns if isinstance(labels, pd.DataFrame) else labels.keys())
    pred_names = set(preds.columns if isinstance(preds, pd.DataFrame) else preds.keys())
    actions = [a for a in ACTIONS if a in label_names and a in pred_names]
    if not actions:
        raise ValueError("weighted_uauc_by_half: no action present in both labels and predictions")
    out: dict[str, dict[str, float]] = {k: {} for k in ("all", *HALVES)}
    for a in actions:
        for k, v in uauc_by_half(_column(labels, a), _column(preds, a), halves).items():
            out[k][a] = v
    for k in out:
        out[k]["weighted"] = _weighted_of({a: out[k][a] for a in actions}, weights)
    return out


def crossfit_scores(labels, sel_a, sel_b, halves: Halves,
                    weights: Mapping[str, float] | None = None) -> dict[str, float]:
    """The honest day-14 score of a selection made on each half.

    ``sel_a`` / ``sel_b``: predictions of every day-14 row whose selection (iteration, epoch,
    blend weights) was made on half A / half B.  Each is scored on the other half's users and
    every key (each action and ``weighted``) is the mean of the two out-of-half values (the one
    that exists when the other is NaN; NaN when neither does).
    """
    out_a = weighted_uauc_by_half(labels, sel_a, halves, weights)["B"]   # chosen on A, scored on B
    out_b = weighted_uauc_by_half(labels, sel_b, halves, weights)["A"]   # chosen on B, scored on A
    return {k: _nanmean_quiet(np.array([out_a[k], out_b[k]], np.float64)) for k in out_a}


# ------------------------------------------------------------------------------ seed averages
# A model trained once per seed (nn.seeds, lgb.seeds) and its predictions averaged: each user
# half's selection is the mean of the seeds' selections on that half, so the average is scored
# cross-fitted exactly as one seed is.

def mean_predictions(frames) -> pd.DataFrame:
    """The row-wise mean of prediction frames (userid, feedid, then action columns; the same
    rows in the same order), float32 like every prediction file."""
    first = frames[0]
    keys = first[["userid", "feedid"]]
    for f in frames[1:]:
        if len(f) != len(first) or not (f[["userid", "feedid"]].to_numpy() == keys.to_numpy()).all():
            raise ValueError("mean_predictions: the frames hold other rows or another order")
    out = keys.copy()
    for a in [c for c in first.columns if c not in ("userid", "feedid")]:
        out[a] = np.mean([f[a].to_numpy(np.float64) for f in frames], axis=0).astype(np.float32)
    return out


def seed_curve(labels, half_preds: list[Mapping[str, pd.DataFrame]], halves: Halves,
               seeds, alone, seconds) -> list[dict]:
    """The honest weighted uAUC of the average of the first k seeds, k = 1..K (``half_preds``:
    each seed's per-half selections), with each seed's own score and the cumulated seconds."""
    curve, spent = [], 0.0
    for k in range(1, len(half_preds) + 1):
        spent += float(seconds[k - 1])
        half = {h: mean_predictions([hp[h] for hp in half_preds[:k]]) for h in HALVES}
        curve.append({"seeds": k, "seed": int(seeds[k - 1]), "alone": round(float(alone[k - 1]), 6),
                      "average": round(crossfit_scores(labels, half["A"], half["B"], halves)["weighted"], 6),
                      "train_seconds": round(spent, 1)})
    return curve
