"""Per-(key, day) aggregates of the labelled history: the only form in which labels reach a
feature builder.

A :class:`DailyTable` holds one row per (key id, day) with summed values, sorted by day, so
"the history strictly before day d" is a prefix of its rows.  :meth:`DailyTable.before`
returns that prefix as a new table whose ``last_day`` is ``d - 1``; every window query checks
it never reads past ``last_day``.  A builder for day d is handed ``table.before(d)`` and so
cannot see labels of day d or later: the no-leak rule is structural, not a convention.

Window sums are ``np.bincount`` over a contiguous slice of rows (days ``[lo, hi]``), so each
(target day, window) costs O(rows in the window + number of keys) and no Python loop runs per
key or per row.  Floating sums only ever add rows of the requested days in a fixed order,
which makes day-d features bit-identical whatever happens to the rows of later days.
"""
from __future__ import annotations

from dataclasses import dataclass, field

import numpy as np
import pandas as pd


@dataclass
class DailyTable:
    n_keys: int
    day: np.ndarray                # int8/int16 [m], non-decreasing
    key_id: np.ndarray             # int64 [m], in [0, n_keys)
    values: dict[str, np.ndarray] = field(default_factory=dict)  # [m] or [m, k]
    last_day: int = 10**6

    @classmethod
    def aggregate(cls, key_id: np.ndarray, day: np.ndarray, n_keys: int,
                  values: dict[str, np.ndarray]) -> "DailyTable":
        """Sum ``values`` over rows sharing (day, key id); the ``count`` column is added."""
        code = day.astype(np.int64) * n_keys + key_id.astype(np.int64)
        order = np.argsort(code, kind="stable")
        code_sorted = code[order]
        starts = np.flatnonzero(np.r_[True, code_sorted[1:] != code_sorted[:-1]]) if len(code) else np.zeros(0, np.int64)
        out: dict[str, np.ndarray] = {"count": np.diff(np.r_[starts, len(code)]).astype(np.int64)}
        for name, v in values.items():
            vs = v[order]
            acc = np.float64 if vs.dtype.kind == "f" else np.int64
            out[name] = np.add.reduceat(vs.astype(acc, copy=False), starts, axis=0) if len(starts) else \
                np.zeros((0, *vs.shape[1:]), acc)
        ucode = code_sorted[starts]
        return cls(n_keys, (ucode // n_keys).astype(np.int16), ucode % n_keys, out)

    @classmethod
    def concat(cls, parts: list["DailyTable"], n_keys: int, value_names: tuple[str, ...] = ()) -> "DailyTable":
        """Stack tables of consecutive, ascending days (e.g. one aggregated per day) into one;
        equal to aggregating all their rows at once, since rows are sorted by (day, key) either
        way and each (day, key) sum adds the same rows in the same order."""
        parts = [p for p in parts if len(p.day)]
        if not parts:
            return cls(n_keys, np.zeros(0, np.int16), np.zeros(0, np.int64),
                       {"count": np.zeros(0, np.int64),
                        **{v: np.zeros(0, np.int64) for v in value_names}})
        values = {k: np.concatenate([p.values[k] for p in parts]) for k in parts[0].values}
        return cls(n_keys, np.concatenate([p.day for p in parts]),
                   np.concatenate([p.key_id for p in parts]), values)

    def _bounds(self, lo: int, hi: int) -> tuple[int, int]:
        if hi > self.last_day:
            raise ValueError(f"window [{lo}, {hi}] reads past the history's last day {self.last_day}")
        a, b = np.searchsorted(self.day, [lo, hi + 1])
        return int(a), int(b)

    def before(self, d: int) -> "DailyTable":
        """The rows of days < d only (views, no copy)."""
        end = int(np.searchsorted(self.day, d))
        return DailyTable(self.n_keys, self.day[:end], self.key_id[:end],
                          {k: v[:end] for k, v in self.values.items()}, min(self.last_day, d - 1))

    def window_sum(self, name: str, lo: int, hi: int) -> np.ndarray:
        """Per-key sum of ``name`` over days [lo, hi] as float64 [n_keys] (or [n_keys, k])."""
        a, b = self._bounds(lo, hi)
        return _sum_by(self.key_id[a:b], self.values[name][a:b], self.n_keys)

    def window_sum_of(self, name: str, lo: int, hi: int, keys: np.ndarray) -> np.ndarray:
        """``window_sum(name, lo, hi)[keys]`` for ascending distinct ``keys``, adding up only
        their rows: the same values (each key's rows are added in the same order from zero), at
        the cost of the window's rows instead of ``n_keys`` per column (a user bucket asks for
        its ~25k users of the final round's 200k)."""
        a, b = self._bounds(lo, hi)
        ids, v = self.key_id[a:b], self.values[name][a:b]
        if len(keys) == 0:
            return np.zeros((0, *v.shape[1:]))
        pos = np.minimum(np.searchsorted(keys, ids), len(keys) - 1)
        hit = keys[pos] == ids
        if not hit.all():
            pos, v = pos[hit], v[hit]
        return _sum_by(pos, v, len(keys))

    def active_days(self, lo: int, hi: int) -> np.ndarray:
        """Per key: number of days in [lo, hi] with at least one row."""
        a, b = self._bounds(lo, hi)
        return np.bincount(self.key_id[a:b], minlength=self.n_keys).astype(np.float64)

    def present(self, lo: int, hi: int) -> np.ndarray:
        """Boolean [n_keys]: key has a row on some day in [lo, hi]."""
        a, b = self._bounds(lo, hi)
        seen = np.zeros(self.n_keys, dtype=bool)
        seen[self.key_id[a:b]] = True
        return seen


def window_days(d: int, window: int | str, first_day: int = 1) -> tuple[int, int]:
    """Days [lo, hi] a window reads for target day d: the last ``window`` days before d
    (clipped at ``first_day``), or every earlier day for ``"all"``."""
    hi = d - 1
    if window == "all":
        return first_day, hi
    return max(first_day, d - int(window)), hi


def dense_codes(*cols: np.ndarray) -> tuple[np.ndarray, int]:
    """Dense ids for a (possibly composite) key: one non-negative int column is used as is
    (ids = values, n = max + 1); tuples are factorised in first-seen order."""
    if len(cols) == 1:
        c = cols[0].astype(np.int64)
        if len(c) and c.min() < 0:
            raise ValueError("key values must be non-negative")
        return c, int(c.max()) + 1 if len(c) else 1
    code = np.zeros(len(cols[0]), dtype=np.int64)
    for c in cols:
        c = c.astype(np.int64)
        code = code * (int(c.max()) + 1 if len(c) else 1) + c
    ids, uniq = pd.factorize(code, sort=False)
    return ids.astype(np.int64), max(len(uniq), 1)


def _sum_by(ids: np.ndarray, v: np.ndarray, n: int) -> np.ndarray:
    """float64 sums of ``v`` ([m] or [m, k]) per id in [0, n), rows added in their order."""
    if v.ndim == 1:
        return np.bincount(ids, weights=v.astype(np.float64, copy=False), minlength=n)
    return np.stack([np.bincount(ids, weights=v[:, j].astype(np.float64, copy=False), minlength=n)
                     for j in range(v.shape[1])], axis=1)


def aggregate_vectors(key_id: np.ndarray, day: np.ndarray, n_keys: int, item_row: np.ndarray,
                      item_vectors: np.ndarray) -> DailyTable:
    """Per-(key, day) sums of ``item_vectors[item_row]`` (values ``vec`` [m, dim] and ``count``)
    without materialising one vector per row: a sparse (group x item) matrix times the table.
    Rows with ``item_row < 0`` (item without a vector) count but add nothing."""
    from scipy import sparse

    code = day.astype(np.int64) * n_keys + key_id.astype(np.int64)
    ucode, inv = np.unique(code, return_inverse=True)
    ok = item_row >= 0
    m = sparse.csr_matrix((np.ones(int(ok.sum())), (inv[ok], item_row[ok])),
                          shape=(len(ucode), len(item_vectors)))
    vec = np.asarray(m @ item_vectors.astype(np.float64))
    count = np.bincount(inv, minlength=len(ucode)).astype(np.int64)
    return DailyTable(n_keys, (ucode // n_keys).astype(np.int16), ucode % n_keys,
                      {"count": count, "vec": vec})


def id_rows(table_ids: np.ndarray, query: np.ndarray) -> np.ndarray:
    """Row of each query id in ``table_ids`` (non-negative int ids), -1 where absent."""
    n = int(max(table_ids.max(initial=-1), query.max(initial=-1))) + 1
    pos = np.full(n, -1, dtype=np.int64)
    pos[table_ids] = np.arange(len(table_ids))
    return pos[query]


def cosine(a: np.ndarray, b: np.ndarray) -> np.ndarray:
    """Row-wise cosine similarity; 0 where either row is all zeros."""
    num = np.einsum("ij,ij->i", a, b, dtype=np.float64)
    den = np.sqrt(np.einsum("ij,ij->i", a, a, dtype=np.float64) * np.einsum("ij,ij->i", b, b, dtype=np.float64))
    return np.where(den > 0, num / np.where(den > 0, den, 1.0), 0.0)


def same_day_cosine(uid: np.ndarray, cand: np.ndarray, keep: np.ndarray | None = None) -> np.ndarray:
    """Per row of one day: the cosine between the row's vector and the mean vector of the
    user's *other* rows of that day that ``keep`` marks (every row by default; 0 where the user
    has no other such row).  Exposures only, no labels: the day's list is known on the test day
    too; it stands for what the recommender showed the user that day.  Sums are float64
    bincounts in row order, so the values do not depend on anything but the day's rows."""
    if len(uid) == 0:
        return np.zeros(0)
    _, upos = np.unique(uid, return_inverse=True)
    upos = upos.reshape(-1)
    kept = np.ones(len(uid), bool) if keep is None else np.asarray(keep, bool)
    n_users = int(upos.max()) + 1
    total = _sum_by(upos[kept], cand[kept], n_users)
    n_others = np.bincount(upos[kept], minlength=n_users)[upos] - kept
    others = (total[upos] - np.where(kept[:, None], cand, 0.0)) / np.maximum(n_others, 1)[:, None]
    others[n_others < 1] = 0.0
    return cosine(others, cand)


def history_mean(table: DailyTable, ids: np.ndarray, lo: int, hi: int) -> tuple[np.ndarray, np.ndarray]:
    """(mean vector [n, dim] float64, count [n]) of the ``vec`` rows of days [lo, hi] per key."""
    dim = table.values["vec"].shape[1]
    if hi < lo:
        return np.zeros((len(ids), dim)), np.zeros(len(ids))
    keys, inv = np.unique(ids, return_inverse=True)     # only the keys asked for are summed
    cnt = table.window_sum_of("count", lo, hi, keys)
    total = table.window_sum_of("vec", lo, hi, keys)
    mean = total / np.maximum(cnt, 1)[:, None]
    return mean[inv.reshape(-1)], cnt[inv.reshape(-1)]
