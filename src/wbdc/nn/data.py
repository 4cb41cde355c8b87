"""Array-backed data for the nets: feature selection, an encoder fitted on the training days,
pre-built tensors and index batches.

``Encoder.fit`` sees only the training rows: id vocabularies (index 0 is reserved for ids never
seen in training, so a day-15 id that training never saw maps there), dense statistics and the
token vocabularies of the multi-hot fields (tokens of feeds seen in training).  Side tables
(multi-hot lists, pretrained vectors) are re-indexed onto one row space per key (``feedid``,
``authorid``), row 0 = unknown key, so a batch carries one row number per key.
"""
from __future__ import annotations

import fnmatch
import hashlib
import json
import pickle
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any, Iterable, Iterator, Sequence

import numba
import numpy as np
import pandas as pd
import torch
from torch import Tensor

from ..features.store import unpack_labels  # noqa: F401  (re-exported: the nets' label reader)
from ..schema import ACTIONS
from .history import HistoryTable, build_history
from .inputs import BagField, HistoryField, PretrainedTable

DENSE_CLIP = 10.0


# ------------------------------------------------------------------------------ selection

@dataclass
class FeatureSelection:
    """Which store columns and side tables feed the net."""
    categorical: list[str]
    dense: list[str]
    bags: list[str]
    pretrained: list[str]
    keys: list[str] = field(default_factory=list)     # id columns the side tables hang on
    skipped: list[str] = field(default_factory=list)
    history_len: int = 0        # the user's last N exposures before the row's day (0 = none)

    def columns(self) -> list[str]:
        """Day-table columns to load (keys the side tables hang on included)."""
        cols = ["userid", "feedid", *self.categorical, *self.keys, *self.dense]
        if self.history_len:
            cols.append("date_")
        return list(dict.fromkeys(cols))


def _as_list(value: Any, available: Sequence[str]) -> list[str]:
    if value in (None, False):
        return []
    if value in ("all", True):
        return list(available)
    if isinstance(value, str):
        return [value]
    return [str(v) for v in value]


def select_features(store, cfg: dict) -> FeatureSelection:
    """Resolve ``nn.features`` against what the store offers.

    Requested names the store lacks are skipped (and listed in ``skipped``) rather than failing,
    so one config serves worlds whose feature sets differ a little.
    """
    keys = list(store.columns("key"))
    cats_avail = list(store.columns("categorical"))
    dense_avail = list(store.columns("dense"))
    table_cols = set(keys) | set(cats_avail) | set(dense_avail)
    skipped: list[str] = []

    cats = []
    for c in _as_list(cfg["categorical"], cats_avail):
        (cats if c in table_cols else skipped).append(c)
    if cfg["extra_categorical"]:
        cats += [c for c in cats_avail if c not in cats]

    exclude = list(cfg["dense_exclude"])
    dense = []
    for c in _as_list(cfg["dense"], dense_avail):
        if c not in dense_avail:
            skipped.append(c)
        elif not any(fnmatch.fnmatchcase(c, pat) for pat in exclude) and c not in cats:
            dense.append(c)

    lists_avail = list(store.feed_lists().keys()) if cfg["multi_hot"] else []
    bags = []
    for b in _as_list(cfg["multi_hot"], lists_avail):
        (bags if b in lists_avail else skipped).append(b)

    pre_avail = list(store.manifest.get("pretrained", []))
    pretrained = []
    for p in _as_list(cfg["pretrained"], pre_avail):
        if p not in pre_avail:
            skipped.append(p)
        elif store.pretrained_key(p) not in table_cols:
            skipped.append(f"{p} (key {store.pretrained_key(p)} not in the day tables)")
        else:
            pretrained.append(p)
    history_len = int(cfg.get("history_len") or 0)
    if history_len < 0:
        raise ValueError(f"nn.features.history_len={history_len}: expected 0 (off) or a positive "
                         "number of past exposures")
    side_keys = (["feedid"] if bags or history_len else []) + [store.pretrained_key(p) for p in pretrained]
    return FeatureSelection(cats, dense, bags, pretrained, list(dict.fromkeys(side_keys)), skipped,
                            history_len)


# ------------------------------------------------------------------------------ helpers

def encoded_row_bytes(selection: "FeatureSelection", dense_dtype: str) -> int:
    """Bytes one encoded row holds: ids, side-table keys (the history row too), userid and
    feedid (int32), the dense values, the labels (uint8)."""
    n_keys = len(selection.keys) + (1 if selection.history_len else 0)
    return (4 * (len(selection.categorical) + n_keys) + 8 + len(ACTIONS)
            + np.dtype(dense_dtype).itemsize * len(selection.dense))


@numba.njit(cache=True, nogil=True)
def _standardise(x, use_log, mean, std, out):
    """``out[i]`` = the clipped z-score of ``x[i]`` (log1p of it first when ``use_log``; NaN ->
    0, beyond +-DENSE_CLIP -> the bound), in float64 like the numpy expression it replaces, in
    one pass and without the GIL (the prefetch thread encodes beside the training)."""
    for i in range(x.shape[0]):
        v = np.float64(x[i])
        if use_log:
            if v < 0.0:
                v = 0.0
            v = np.log1p(v)
        z = (v - mean) / std
        if np.isnan(z):
            z = 0.0
        elif z > DENSE_CLIP:
            z = DENSE_CLIP
        elif z < -DENSE_CLIP:
            z = -DENSE_CLIP
        out[i] = z


def _lookup(sorted_ids: np.ndarray, values: np.ndarray) -> np.ndarray:
    """1-based position of each value in ``sorted_ids``; 0 where absent.  Vectorised."""
    values = np.asarray(values)
    if len(sorted_ids) == 0:
        return np.zeros(len(values), np.int32)
    pos = np.searchsorted(sorted_ids, values)
    pos_c = np.minimum(pos, len(sorted_ids) - 1)
    hit = sorted_ids[pos_c] == values
    return np.where(hit, pos_c + 1, 0).astype(np.int32)


def _to_csr(lists: Any) -> tuple[np.ndarray, np.ndarray]:
    """(indptr int64 [n+1], values int64) from a CSR pair, scipy sparse matrix or list of arrays."""
    if hasattr(lists, "indptr") and hasattr(lists, "indices"):       # scipy.sparse CSR
        return np.asarray(lists.indptr, np.int64), np.asarray(lists.indices, np.int64)
    if isinstance(lists, tuple) and len(lists) == 2:
        indptr, values = (np.asarray(a) for a in lists)
        if indptr.ndim == 1 and values.ndim == 1 and len(indptr) >= 1 and indptr[0] == 0 \
                and indptr[-1] == len(values):
            return indptr.astype(np.int64), values.astype(np.int64)
    seq = list(lists)
    lengths = np.fromiter((0 if s is None else len(s) for s in seq), np.int64, len(seq))
    indptr = np.concatenate([[0], np.cumsum(lengths)]).astype(np.int64)
    chunks = [np.asarray(s, np.int64) for s in seq if s is not None and len(s)]
    values = np.concatenate(chunks) if chunks else np.zeros(0, np.int64)
    return indptr, values


def _padded(indptr: np.ndarray, tokens: np.ndarray, rows: np.ndarray, n_rows: int,
            max_len: int) -> np.ndarray:
    """Scatter CSR lists (already mapped to token indices, 0 dropped) into ``[n_rows, L]``."""
    keep = tokens > 0
    lengths = np.diff(indptr)
    owner = np.repeat(np.arange(len(lengths)), lengths)[keep]
    tok = tokens[keep]
    # position of each kept token within its list, after dropping the unmapped ones
    counts = np.bincount(owner, minlength=len(lengths))
    starts = np.concatenate([[0], np.cumsum(counts)[:-1]])
    pos = np.arange(len(tok)) - starts[owner]
    width = int(min(max_len, counts.max() if len(counts) else 0)) or 1
    out = np.zeros((n_rows, width), np.int32)
    sel = (pos < width) & (rows[owner] > 0)          # row 0 stays the empty "unknown" list
    out[rows[owner[sel]], pos[sel]] = tok[sel]
    return out


# ------------------------------------------------------------------------------ arrays

@dataclass
class EncodedArrays:
    """Row-aligned tensors of one set of rows (a few days, or the test day)."""
    cat: Tensor                 # int32 [N, C]
    keys: Tensor                # int32 [N, K]
    dense: Tensor               # float16 or float32 [N, D]; batches are float32
    labels: Tensor | None       # uint8 [N, T] or None
    userid: np.ndarray
    feedid: np.ndarray
    aux: Tensor | None = None   # float32 [N, A]: engagement targets of the auxiliary towers

    def __len__(self) -> int:
        return int(self.cat.shape[0])

    def batch(self, idx: Tensor) -> dict[str, Tensor]:
        out = {"cat": self.cat.index_select(0, idx), "keys": self.keys.index_select(0, idx),
               "dense": self.dense.index_select(0, idx).float()}
        if self.labels is not None:
            out["labels"] = self.labels.index_select(0, idx).float()
        if self.aux is not None:
            out["aux"] = self.aux.index_select(0, idx)
        return out

    def labels_frame(self) -> pd.DataFrame:
        assert self.labels is not None
        return pd.DataFrame(self.labels.numpy(), columns=list(ACTIONS))

    def label_means(self) -> list[float]:
        assert self.labels is not None
        return self.labels.float().mean(0).tolist()

    def aux_means(self) -> list[float] | None:
        """Means of the engagement targets (None without them): the regression towers' start."""
        return None if self.aux is None else self.aux.double().mean(0).tolist()

    # -- the row-source interface the trainer reads (shared with StreamedRows)
    def epoch_batches(self, batch_size: int, generator: torch.Generator,
                      keep: np.ndarray | None = None) -> Iterator[dict[str, Tensor]]:
        """One shuffled pass: ``ceil(len / batch_size)`` batches; with ``keep`` (bool [N]) over
        the kept rows only, ``ceil(keep.sum() / batch_size)`` batches."""
        if keep is None:
            for idx in batch_indices(len(self), batch_size, shuffle=True, generator=generator):
                yield self.batch(idx)
            return
        rows = torch.from_numpy(np.flatnonzero(keep))
        order = rows[torch.randperm(len(rows), generator=generator)]
        for s in range(0, len(order), batch_size):
            yield self.batch(order[s:s + batch_size])

    def ordered_batches(self, batch_size: int) -> Iterator[tuple[np.ndarray, dict[str, Tensor]]]:
        """Row-order batches with the row positions they hold."""
        for idx in batch_indices(len(self), batch_size, shuffle=False):
            yield idx.numpy(), self.batch(idx)

    @classmethod
    def concat(cls, parts: Sequence["EncodedArrays"]) -> "EncodedArrays":
        if len(parts) == 1:
            return parts[0]
        labels = None if parts[0].labels is None else torch.cat([p.labels for p in parts])
        aux = None if parts[0].aux is None else torch.cat([p.aux for p in parts])
        return cls(torch.cat([p.cat for p in parts]), torch.cat([p.keys for p in parts]),
                   torch.cat([p.dense for p in parts]), labels,
                   np.concatenate([p.userid for p in parts]), np.concatenate([p.feedid for p in parts]),
                   aux)

    def take(self, idx: Tensor) -> "EncodedArrays":
        i = idx.numpy()
        return EncodedArrays(self.cat.index_select(0, idx), self.keys.index_select(0, idx),
                             self.dense.index_select(0, idx),
                             None if self.labels is None else self.labels.index_select(0, idx),
                             self.userid[i], self.feedid[i],
                             None if self.aux is None else self.aux.index_select(0, idx))


def batch_indices(n: int, batch_size: int, shuffle: bool,
                  generator: torch.Generator | None = None) -> Iterator[Tensor]:
    """Index tensors over ``n`` rows: one permutation per call when shuffling, else in order."""
    order = torch.randperm(n, generator=generator) if shuffle else torch.arange(n)
    for s in range(0, n, batch_size):
        yield order[s:s + batch_size]


# ------------------------------------------------------------------------------ statistics

class RunningStats:
    """Per-column count, mean and M2 over finite values, merged chunk by chunk (Chan et al.),
    for the raw values and for log1p of them, plus min and max: one pass over the days decides
    the transform and gives its moments."""

    def __init__(self, d: int):
        self.n = np.zeros(d)
        self.mean = np.zeros((2, d))
        self.m2 = np.zeros((2, d))
        self.lo = np.full(d, np.inf)
        self.hi = np.full(d, -np.inf)

    def update(self, j: int, x: np.ndarray) -> None:
        x = x[np.isfinite(x)]
        if len(x) == 0:
            return
        self.lo[j] = min(self.lo[j], float(x.min()))
        self.hi[j] = max(self.hi[j], float(x.max()))
        nb = len(x)
        na = self.n[j]
        n = na + nb
        for k, v in enumerate((x, np.log1p(np.maximum(x, 0.0)))):
            mb = float(v.mean())
            m2b = float(((v - mb) ** 2).sum())
            delta = mb - self.mean[k, j]
            self.mean[k, j] += delta * nb / n
            self.m2[k, j] += m2b + delta * delta * na * nb / n
        self.n[j] = n

    def merge(self, other: "RunningStats") -> "RunningStats":
        """Fold another chunk's statistics into these (the pairwise formula of Chan et al.):
        the per-rank statistics of the distributed nets combined into the whole."""
        na, nb = self.n, other.n
        n = na + nb
        w = np.divide(nb, n, out=np.zeros_like(n), where=n > 0)
        delta = other.mean - self.mean
        self.mean = self.mean + delta * w
        self.m2 = self.m2 + other.m2 + delta * delta * na * w
        self.n = n
        self.lo = np.minimum(self.lo, other.lo)
        self.hi = np.maximum(self.hi, other.hi)
        return self

    def finalize(self) -> dict[str, np.ndarray]:
        """``log`` (log1p for non-negative columns reaching above 1: counts, durations),
        ``mean`` and ``std`` of the chosen transform (std 1 for constant or empty columns)."""
        use_log = (self.n > 0) & (self.lo >= 0) & (self.hi > 1)
        k = use_log.astype(int)
        cols = np.arange(len(self.n))
        mean = np.where(self.n > 0, self.mean[k, cols], 0.0)
        std = np.sqrt(np.where(self.n > 0, self.m2[k, cols] / np.maximum(self.n, 1), 1.0))
        std = np.where(std > 1e-12, std, 1.0)
        return {"log": use_log, "mean": mean, "std": std}


def _day_sizes(store, days: Sequence[int]) -> list[int]:
    if hasattr(store, "n_rows"):
        return [int(store.n_rows(d)) for d in days]
    return [len(store.load_day(d, columns=[])) for d in days]


def _history_of(store, days_seen: Sequence[int], max_len: int) -> HistoryTable:
    """The history table of the training days and the day after them (the day the model is
    scored on: 14 offline, 15 online), built from the labelled rows before each day."""
    if not days_seen:
        raise ValueError("nn.features.history_len: no training days seen to build the history for")
    days = sorted(set(int(d) for d in days_seen) | {max(days_seen) + 1})
    return build_history(store, days, max_len)


# ------------------------------------------------------------------------------ encoder

class Encoder:
    """Maps store rows to ``EncodedArrays``; fitted on training rows only (see module doc)."""

    def __init__(self, selection: FeatureSelection, vocab: dict[str, np.ndarray],
                 dense_stats: dict[str, np.ndarray], key_ids: dict[str, np.ndarray],
                 token_vocab: dict[str, np.ndarray], max_list_len: int,
                 dense_dtype: str = "float32", history: HistoryTable | None = None):
        self.selection = selection
        self.vocab = vocab                    # column -> sorted raw ids seen in training
        self.dense_stats = dense_stats        # "log" bool [D], "mean", "std" float64 [D]
        self.key_ids = key_ids                # key -> sorted raw ids of the side-table rows
        self.token_vocab = token_vocab        # bag -> sorted raw token ids seen in training
        self.max_list_len = int(max_list_len)
        if dense_dtype not in ("float16", "float32"):
            raise ValueError(f"dense_dtype must be float16 or float32, got {dense_dtype!r}")
        self.dense_dtype = dense_dtype
        self.history = history                # (user, day) -> last exposures before the day
        self.cached_days = 0                  # fit_days: days whose partial came from the cache

    # -- fitting
    @classmethod
    def fit(cls, train: pd.DataFrame | Iterable[pd.DataFrame], store, selection: FeatureSelection,
            max_list_len: int = 16, dense_dtype: str = "float32") -> "Encoder":
        """Fit on one frame or on an iterable of frames (one day at a time keeps memory low)."""
        return cls.from_partials([cls.fit_partial(train, selection)], store, selection,
                                 max_list_len, dense_dtype)

    @staticmethod
    def fit_partial(train: pd.DataFrame | Iterable[pd.DataFrame], selection: FeatureSelection) -> dict:
        """What one set of training rows contributes to the encoder: the ids of each categorical
        column, the feeds seen and the running dense statistics (picklable; the distributed nets
        fit one per rank on its own blocks and combine them with ``from_partials``)."""
        frames = [train] if isinstance(train, pd.DataFrame) else train
        uniques: dict[str, list[np.ndarray]] = {c: [] for c in selection.categorical}
        feeds_seen: list[np.ndarray] = []
        days_seen: set[int] = set()
        stats = RunningStats(len(selection.dense))
        for df in frames:
            if selection.history_len:
                days_seen.update(int(d) for d in np.unique(df["date_"].to_numpy()))
            for c in selection.categorical:
                uniques[c].append(np.unique(df[c].to_numpy()))
            feeds_seen.append(np.unique(df["feedid"].to_numpy()))
            for j, c in enumerate(selection.dense):
                stats.update(j, df[c].to_numpy(np.float64, na_value=np.nan))
        vocab = {c: np.unique(np.concatenate(u)) if u else np.zeros(0, np.int64)
                 for c, u in uniques.items()}
        feeds = np.unique(np.concatenate(feeds_seen)) if feeds_seen else np.zeros(0, np.int64)
        return {"vocab": vocab, "feeds": feeds, "stats": stats, "days": sorted(days_seen)}

    @classmethod
    def from_partials(cls, parts: Sequence[dict], store, selection: FeatureSelection,
                      max_list_len: int = 16, dense_dtype: str = "float32") -> "Encoder":
        """The encoder of the union of the rows behind ``parts`` (``fit_partial``): the same
        vocabularies as one fit over all of them, the dense moments equal up to rounding."""
        if not parts:
            raise ValueError("no training rows to fit the encoder on")
        if len(parts) == 1:
            vocab, train_feeds, stats = parts[0]["vocab"], parts[0]["feeds"], parts[0]["stats"]
        else:
            vocab = {c: np.unique(np.concatenate([p["vocab"][c] for p in parts]))
                     for c in selection.categorical}
            train_feeds = np.unique(np.concatenate([p["feeds"] for p in parts]))
            stats = RunningStats(len(selection.dense))
            for p in parts:
                stats.merge(p["stats"])
        key_sets: dict[str, list[np.ndarray]] = {}
        history = None
        if selection.history_len:
            history = _history_of(store, [d for p in parts for d in p.get("days", [])],
                                  selection.history_len)
            key_sets["feedid"] = [train_feeds, history.feed_ids()]
        for p in selection.pretrained:
            key_sets.setdefault(store.pretrained_key(p), []).append(
                np.asarray(store.pretrained(p)[0]))
        token_vocab: dict[str, np.ndarray] = {}
        if selection.bags:
            lists = store.feed_lists()
            for b in selection.bags:
                feeds, raw = lists[b]
                feeds = np.asarray(feeds)
                key_sets.setdefault("feedid", []).append(feeds)
                indptr, values = _to_csr(raw)
                owner = np.repeat(np.arange(len(feeds)), np.diff(indptr))
                seen = np.isin(feeds, train_feeds)[owner]
                token_vocab[b] = np.unique(values[seen])
        key_ids = {k: np.unique(np.concatenate(v)) for k, v in key_sets.items()}
        return cls(selection, vocab, stats.finalize(), key_ids, token_vocab, max_list_len,
                   dense_dtype, history)

    @classmethod
    def fit_days(cls, store, days: Sequence[int], selection: FeatureSelection,
                 max_list_len: int = 16, dense_dtype: str = "float32", progress: bool = False,
                 cache_dir: str | Path | None = None) -> "Encoder":
        """Fit in one streaming pass over the days' parts (one user bucket of one day at a time;
        ``progress``: a bar of the rows read, on stderr), one :meth:`fit_partial` per day merged
        in day order.  With ``cache_dir`` each day's partial is kept there under a key of the
        day's store fingerprint and the selected columns (:func:`partial_key`) and read back by
        any later fit that needs that day: the online refit reads the offline fit's days, and the
        next net all of them.  The same encoder with or without the cache; ``cached_days`` on
        the result says how many days came from it."""
        import sys

        from tqdm.auto import tqdm
        cols = selection.columns()
        total = sum(store.n_rows(d) for d in days) if progress else 0
        parts, hits = [], 0
        with tqdm(total=total, desc="fit the encoder", unit="row", unit_scale=True, file=sys.stderr,
                  disable=not progress) as bar:
            for d in days:
                key = partial_key(store, d, selection) if cache_dir is not None else None
                path = Path(cache_dir) / f"day={int(d):02d}-{key}.pkl" if key else None
                part = _read_partial(path) if path is not None else None
                if part is not None:
                    hits += 1
                    bar.update(store.n_rows(d) if progress else 0)
                else:
                    def frames(d=d):
                        for df in store.iter_day(d, columns=cols):
                            yield df
                            bar.update(len(df))
                    part = cls.fit_partial(frames(), selection)
                    if path is not None:
                        _write_partial(path, part)
                parts.append(part)
        enc = cls.from_partials(parts, store, selection, max_list_len, dense_dtype)
        enc.cached_days = hits
        return enc

    # -- shapes
    @property
    def key_names(self) -> list[str]:
        return list(self.key_ids)

    @property
    def cat_cardinalities(self) -> list[int]:
        return [len(self.vocab[c]) + 1 for c in self.selection.categorical]

    # -- encoding
    def _fill(self, df: pd.DataFrame, cat: np.ndarray, keys: np.ndarray, dense: np.ndarray) -> None:
        sel = self.selection
        for j, c in enumerate(sel.categorical):
            cat[:, j] = _lookup(self.vocab[c], df[c].to_numpy())
        for j, k in enumerate(self.key_ids):
            keys[:, j] = _lookup(self.key_ids[k], df[k].to_numpy())
        if self.history is not None:
            keys[:, len(self.key_ids)] = self.history.lookup(df["userid"].to_numpy(),
                                                             df["date_"].to_numpy())
        st = self.dense_stats
        z = np.empty((len(sel.dense), len(df)), np.float64)     # column-major: one pass per column
        for j, c in enumerate(sel.dense):
            x = df[c].to_numpy()
            if x.dtype.kind not in "iuf":
                x = df[c].to_numpy(np.float64, na_value=np.nan)
            _standardise(x, bool(st["log"][j]), float(st["mean"][j]), float(st["std"][j]), z[j])
        dense[...] = z.T                                          # one cast to the storage dtype

    def _alloc(self, n: int):
        sel = self.selection
        return (np.zeros((n, len(sel.categorical)), np.int32),
                np.zeros((n, len(self.key_ids) + (self.history is not None)), np.int32),
                np.zeros((n, len(sel.dense)), np.dtype(self.dense_dtype)))

    def encode(self, df: pd.DataFrame, labels: pd.DataFrame | None = None) -> EncodedArrays:
        n = len(df)
        cat, keys, dense = self._alloc(n)
        self._fill(df, cat, keys, dense)
        y = None
        if labels is not None:
            if len(labels) != n:
                raise ValueError(f"labels have {len(labels)} rows, features {n}")
            y = torch.from_numpy(labels[list(ACTIONS)].to_numpy(np.uint8))
        return EncodedArrays(torch.from_numpy(cat), torch.from_numpy(keys),
                             torch.from_numpy(dense), y,
                             df["userid"].to_numpy(np.int32), df["feedid"].to_numpy(np.int32))

    def encode_days(self, store, days: Sequence[int], labels: bool) -> EncodedArrays:
        """Encode several days into preallocated arrays, one day table in memory at a time."""
        sizes = _day_sizes(store, days)
        n = int(sum(sizes))
        cat, keys, dense = self._alloc(n)
        y = np.zeros((n, len(ACTIONS)), np.uint8) if labels else None
        userid, feedid = np.zeros(n, np.int32), np.zeros(n, np.int32)
        cols = self.selection.columns()
        off = 0
        for d, size in zip(days, sizes):
            df = store.load_day(d, columns=cols)
            if len(df) != size:
                raise ValueError(f"day {d}: {len(df)} rows, the store announced {size}")
            sl = slice(off, off + size)
            self._fill(df, cat[sl], keys[sl], dense[sl])
            userid[sl], feedid[sl] = df["userid"].to_numpy(), df["feedid"].to_numpy()
            if labels:
                lab = store.load_labels(d)
                if len(lab) != size:
                    raise ValueError(f"day {d}: {len(lab)} label rows but {size} feature rows")
                y[sl] = lab[list(ACTIONS)].to_numpy(np.uint8)
            off += size
            del df
        return EncodedArrays(torch.from_numpy(cat), torch.from_numpy(keys),
                             torch.from_numpy(dense), None if y is None else torch.from_numpy(y),
                             userid, feedid)

    # -- side tables
    def side_tables(self, store) -> tuple[list[BagField], list[PretrainedTable]]:
        """Multi-hot lists and pretrained matrices on the encoder's key rows (row 0 = unknown).

        Pretrained columns are z-scored over their known rows so PCA and word2vec vectors
        enter the net on the scale of the other inputs.
        """
        slot = {k: j for j, k in enumerate(self.key_ids)}
        bags: list[BagField] = []
        if self.selection.bags:
            lists = store.feed_lists()
            n_rows = len(self.key_ids["feedid"]) + 1
            for b in self.selection.bags:
                feeds, raw = lists[b]
                indptr, values = _to_csr(raw)
                rows = _lookup(self.key_ids["feedid"], np.asarray(feeds)).astype(np.int64)
                tokens = _lookup(self.token_vocab[b], values).astype(np.int64)
                mat = _padded(indptr, tokens, rows, n_rows, self.max_list_len)
                bags.append(BagField(b, torch.from_numpy(mat), len(self.token_vocab[b]) + 1,
                                     slot["feedid"]))
        tables: list[PretrainedTable] = []
        for p in self.selection.pretrained:
            key = store.pretrained_key(p)
            ids, matrix = store.pretrained(p)
            matrix = np.asarray(matrix, np.float32)
            mean, std = matrix.mean(0), matrix.std(0)
            std[std < 1e-12] = 1.0
            full = np.zeros((len(self.key_ids[key]) + 1, matrix.shape[1]), np.float32)
            full[_lookup(self.key_ids[key], np.asarray(ids))] = (matrix - mean) / std
            full[0] = 0.0
            tables.append(PretrainedTable(p, torch.from_numpy(full), slot[key]))
        return bags, tables

    def history_field(self) -> HistoryField | None:
        """The history table on the encoder's feed rows (row 0 = no history), for the input
        layer; the row's history sits in the last column of ``keys``."""
        if self.history is None:
            return None
        h = self.history
        rows = _lookup(self.key_ids["feedid"], h.feeds.ravel()).reshape(h.feeds.shape)
        n = h.max_len
        rows[np.arange(n)[None, :] < (n - h.length.astype(np.int64))[:, None]] = 0
        pad = lambda a: np.concatenate([np.zeros((1, *a.shape[1:]), a.dtype), a])   # noqa: E731
        return HistoryField(torch.from_numpy(pad(rows.astype(np.int32))),
                            torch.from_numpy(pad(h.bits)), torch.from_numpy(pad(h.length)),
                            key_slot=len(self.key_ids),
                            feed_slot=list(self.key_ids).index("feedid"),
                            n_feed_rows=len(self.key_ids["feedid"]) + 1)

    # -- checkpointing: plain tensors and python values only (loads with weights_only=True)
    def state_dict(self) -> dict:
        sel = self.selection
        return {
            "selection": {"categorical": sel.categorical, "dense": sel.dense, "bags": sel.bags,
                          "pretrained": sel.pretrained, "keys": sel.keys,
                          "history_len": sel.history_len},
            "vocab": {c: torch.from_numpy(np.asarray(v, np.int64)) for c, v in self.vocab.items()},
            "dense_stats": {k: torch.from_numpy(np.asarray(v)) for k, v in self.dense_stats.items()},
            "key_ids": {k: torch.from_numpy(np.asarray(v, np.int64)) for k, v in self.key_ids.items()},
            "token_vocab": {b: torch.from_numpy(np.asarray(v, np.int64))
                            for b, v in self.token_vocab.items()},
            "max_list_len": self.max_list_len,
            "dense_dtype": self.dense_dtype,
            "history": None if self.history is None else
            {k: torch.from_numpy(np.ascontiguousarray(v)) for k, v in self.history.state_dict().items()},
        }

    @classmethod
    def from_state_dict(cls, state: dict) -> "Encoder":
        s = state["selection"]
        sel = FeatureSelection(list(s["categorical"]), list(s["dense"]), list(s["bags"]),
                               list(s["pretrained"]), list(s["keys"]),
                               history_len=int(s.get("history_len", 0)))
        np_ = {k: {kk: vv.numpy() for kk, vv in state[k].items()}
               for k in ("vocab", "dense_stats", "key_ids", "token_vocab")}
        hist = state.get("history")
        return cls(sel, np_["vocab"], np_["dense_stats"], np_["key_ids"], np_["token_vocab"],
                   state["max_list_len"], state.get("dense_dtype", "float32"),
                   None if hist is None else HistoryTable.from_state_dict(
                       {k: v.numpy() for k, v in hist.items()}))


# ------------------------------------------------------------------------------ encoder cache

#: What :meth:`Encoder.fit_partial` computes, versioned: a cached partial of another version is
#: never read (bump it when fit_partial or RunningStats change).
PARTIAL_VERSION = 1


def partial_key(store, d: int, selection: FeatureSelection) -> str | None:
    """The cache key of day ``d``'s encoder partial: a digest of the day's store fingerprint and
    parts (``manifest.json``) and of the columns the partial reads; None for a store without
    fingerprints (nothing is cached)."""
    manifest = getattr(store, "manifest", None)
    entry = (manifest or {}).get("day_tables", {}).get(str(int(d)))
    if not entry or not entry.get("fingerprint"):
        return None
    blob = json.dumps({"version": PARTIAL_VERSION, "fingerprint": entry["fingerprint"],
                       "parts": entry.get("parts"), "categorical": list(selection.categorical),
                       "dense": list(selection.dense), "days": bool(selection.history_len)},
                      sort_keys=True, default=str)
    return hashlib.sha256(blob.encode()).hexdigest()[:24]


def _read_partial(path: Path) -> dict | None:
    """A cached partial, or None when it is missing or unreadable (then it is fitted again)."""
    try:
        with open(path, "rb") as fh:
            part = pickle.load(fh)
    except (OSError, EOFError, pickle.UnpicklingError, AttributeError, ValueError, TypeError):
        return None
    return part if isinstance(part, dict) and {"vocab", "feeds", "stats"} <= set(part) else None


def _write_partial(path: Path, part: dict) -> None:
    """Keep a partial (written to a temporary name, then renamed); the day's partials under
    other keys (an older store or column selection) are removed.  A cache that cannot be written
    only costs the next fit its time."""
    from ..io import atomic_path
    try:
        with atomic_path(path) as tmp:
            with open(tmp, "wb") as fh:
                pickle.dump(part, fh, protocol=pickle.HIGHEST_PROTOCOL)
        day = path.name.split("-", 1)[0]
        for old in path.parent.glob(f"{day}-*.pkl"):
            if old != path:
                old.unlink(missing_ok=True)
    except OSError:
        pass


# ------------------------------------------------------------------------------ streamed rows

class StreamedRows:
    """The rows of some days read from the feature store block by block, never all at once.

    A block is one parquet row group of one day's part (one user bucket of one day, at most
    ``ROW_GROUP_ROWS`` rows).  A training pass shuffles the block order, reads consecutive
    blocks into a shuffle buffer of about ``buffer_rows`` rows, encodes them, shuffles the
    buffer and cuts it into batches; while one buffer trains, a background thread reads and
    encodes the next (``prefetch``).  The rows a buffer leaves over (less than a batch) move into
    the next buffer, so a pass yields ``ceil(len / batch_size)`` full batches like the in-memory
    arrays.  Prediction reads the blocks in order and reports each row's position (days in the
    given order, each day in its row order), so predictions come back in ``load_day`` order.
    Labels travel as one byte per row (``FeatureStore.packed_labels``).

    ``materialize()`` encodes everything once into ``EncodedArrays`` in that same order: the
    in-memory fast path, identical to ``Encoder.encode_days``.
    """

    def __init__(self, store, encoder: Encoder, days: Sequence[int], labels: bool,
                 buffer_rows: int = 1 << 20, prefetch: bool = True, ids: bool = False,
                 aux: Sequence[str] = ()):
        from ..features.store import ROW_KEY
        self.store, self.encoder, self.days = store, encoder, [int(d) for d in days]
        self.row_key = ROW_KEY
        self.buffer_rows = max(1, int(buffer_rows))
        self.prefetch = bool(prefetch)
        self.blocks: list[tuple[int, int, int, int]] = []       # (day, part, row group, rows)
        self.day_offset: dict[int, int] = {}
        off = 0
        for d in self.days:
            self.day_offset[d] = off
            for i in range(len(store.parts(d))):
                for g, n in enumerate(store.row_groups(d, i)):
                    if n:
                        self.blocks.append((d, i, g, int(n)))
            off += int(store.n_rows(d))
        self.n = off
        if sum(b[3] for b in self.blocks) != self.n:
            raise ValueError("the store's row groups do not add up to its day sizes")
        self.packed = store.packed_labels(self.days) if labels else None
        self.aux = store.engagement(self.days, list(aux)) if labels and aux else None
        self._ids = self._read_ids() if ids else None

    def __len__(self) -> int:
        return self.n

    # -- reading
    def _read_ids(self) -> tuple[np.ndarray, np.ndarray]:
        userid, feedid = np.zeros(self.n, np.int32), np.zeros(self.n, np.int32)
        for d in self.days:
            for df in self.store.iter_day(d, columns=[]):
                pos = self.day_offset[d] + df[self.row_key].to_numpy(np.int64)
                userid[pos], feedid[pos] = df["userid"].to_numpy(), df["feedid"].to_numpy()
        return userid, feedid

    @property
    def userid(self) -> np.ndarray:
        if self._ids is None:
            self._ids = self._read_ids()
        return self._ids[0]

    @property
    def feedid(self) -> np.ndarray:
        if self._ids is None:
            self._ids = self._read_ids()
        return self._ids[1]

    @property
    def labels_bits(self) -> np.ndarray:
        assert self.packed is not None, "rows read without labels"
        return np.concatenate([self.packed[d] for d in self.days])

    def labels_frame(self) -> pd.DataFrame:
        return pd.DataFrame(unpack_labels(self.labels_bits), columns=list(ACTIONS))

    def aux_means(self) -> list[float] | None:
        if self.aux is None:
            return None
        parts = [self.aux[d] for d in self.days]
        n = sum(len(p) for p in parts)
        return (sum(p.astype(np.float64).sum(0) for p in parts) / max(n, 1)).tolist()

    def label_means(self) -> list[float]:
        bits = self.labels_bits
        return [float(((bits >> i) & 1).mean()) if len(bits) else 0.0 for i in range(len(ACTIONS))]

    def _block(self, block: tuple[int, int, int, int],
               keep: np.ndarray | None = None) -> tuple[EncodedArrays, np.ndarray]:
        """One block encoded and its rows' positions; with ``keep`` (bool over every row) only
        the kept rows, dropped before encoding."""
        d, i, g, _ = block
        df = self.store.read_row_group(d, i, g, columns=self.encoder.selection.columns())
        row = df[self.row_key].to_numpy(np.int64)
        if keep is not None:
            sel = np.flatnonzero(keep[self.day_offset[d] + row])
            if len(sel) < len(row):
                df, row = df.take(sel), row[sel]
        arr = self.encoder.encode(df)
        if self.packed is not None:
            arr.labels = torch.from_numpy(unpack_labels(self.packed[d][row]))
        if self.aux is not None:
            arr.aux = torch.from_numpy(self.aux[d][row])
        return arr, self.day_offset[d] + row

    def _load(self, blocks: Sequence[tuple[int, int, int, int]],
              keep: np.ndarray | None = None) -> EncodedArrays:
        """A shuffle buffer's blocks, read part by part (the buffer is shuffled after: the order
        it is read in changes nothing but how often a part's footer is parsed)."""
        return EncodedArrays.concat([self._block(b, keep)[0] for b in sorted(blocks)])

    def _prefetched(self, jobs: Sequence, fn) -> Iterator:
        """``fn(job)`` for each job in order, the next one computed in a background thread."""
        if not self.prefetch or len(jobs) < 2:
            for j in jobs:
                yield fn(j)
            return
        from concurrent.futures import ThreadPoolExecutor
        with ThreadPoolExecutor(1, thread_name_prefix="wbdc-prefetch") as pool:
            fut = pool.submit(fn, jobs[0])
            for k in range(len(jobs)):
                out = fut.result()
                if k + 1 < len(jobs):
                    fut = pool.submit(fn, jobs[k + 1])
                yield out

    # -- the row-source interface
    def buffers(self, generator: torch.Generator) -> list[list[tuple[int, int, int, int]]]:
        """One pass's shuffle buffers: the blocks in a seeded random order, cut into runs of
        about ``buffer_rows`` rows (at least one block each)."""
        order = torch.randperm(len(self.blocks), generator=generator).tolist()
        out, cur, rows = [], [], 0
        for k in order:
            b = self.blocks[k]
            if cur and rows + b[3] > self.buffer_rows:
                out.append(cur)
                cur, rows = [], 0
            cur.append(b)
            rows += b[3]
        if cur:
            out.append(cur)
        return out

    def epoch_batches(self, batch_size: int, generator: torch.Generator,
                      keep: np.ndarray | None = None) -> Iterator[dict[str, Tensor]]:
        """One shuffled pass (see the class); with ``keep`` (bool [N]) over the kept rows only,
        the others dropped as each block is read, before encoding."""
        groups = self.buffers(generator)
        left: EncodedArrays | None = None
        load = self._load if keep is None else (lambda blocks: self._load(blocks, keep))
        for k, loaded in enumerate(self._prefetched(groups, load)):
            buf = loaded if left is None else EncodedArrays.concat([left, loaded])
            order = torch.randperm(len(buf), generator=generator)
            last = k == len(groups) - 1
            full = len(buf) if last else len(buf) // batch_size * batch_size
            for s in range(0, full, batch_size):
                yield buf.batch(order[s:s + batch_size])
            left = buf.take(order[full:]) if full < len(buf) else None
            del buf, loaded

    def ordered_batches(self, batch_size: int) -> Iterator[tuple[np.ndarray, dict[str, Tensor]]]:
        for arr, pos in self._prefetched(self.blocks, self._block):
            for s in range(0, len(arr), batch_size):
                idx = torch.arange(s, min(len(arr), s + batch_size))
                yield pos[s:s + batch_size], arr.batch(idx)

    def materialize(self) -> EncodedArrays:
        """Every row encoded once, in the order ``ordered_batches`` reports (the in-memory path)."""
        cat, keys, dense = self.encoder._alloc(self.n)
        y = None if self.packed is None else np.zeros((self.n, len(ACTIONS)), np.uint8)
        aux = None if self.aux is None else np.zeros((self.n, next(iter(self.aux.values())).shape[1]), np.float32)
        userid, feedid = np.zeros(self.n, np.int32), np.zeros(self.n, np.int32)
        for arr, pos in self._prefetched(self.blocks, self._block):
            cat[pos], keys[pos], dense[pos] = arr.cat.numpy(), arr.keys.numpy(), arr.dense.numpy()
            userid[pos], feedid[pos] = arr.userid, arr.feedid
            if y is not None:
                y[pos] = arr.labels.numpy()
            if aux is not None:
                aux[pos] = arr.aux.numpy()
        return EncodedArrays(torch.from_numpy(cat), torch.from_numpy(keys), torch.from_numpy(dense),
                             None if y is None else torch.from_numpy(y), userid, feedid,
                             None if aux is None else torch.from_numpy(aux))


class ShardRows(StreamedRows):
    """A subset of the blocks of a ``StreamedRows`` (one rank's share of the distributed nets):
    reads and encodes only those blocks; ``ordered_batches`` reports the rows' positions in the
    full rows, so the shares' predictions put together give the full row order.  The label
    means are those of the full rows (every rank starts from the same output bias)."""

    def __init__(self, full: StreamedRows, block_ids: Sequence[int]):
        self.__dict__.update({k: v for k, v in full.__dict__.items() if k != "_ids"})
        self.full = full
        self.block_ids = [int(i) for i in block_ids]
        self.blocks = [full.blocks[i] for i in self.block_ids]
        self.n = int(sum(b[3] for b in self.blocks))
        self._ids = None

    def label_means(self) -> list[float]:
        return self.full.label_means()

    def iter_frames(self, columns: Sequence[str]) -> Iterator[pd.DataFrame]:
        """The share's blocks as store frames (``columns`` plus keys), in block order."""
        for d, i, g, _ in self.blocks:
            yield self.store.read_row_group(d, i, g, columns=columns)

    def _read_ids(self):  # the full rows' ids: ask ``full`` (a share has no row order of its own)
        raise TypeError("a ShardRows has no full-row ids; read them from ShardRows.full")

    def labels_frame(self) -> pd.DataFrame:
        raise TypeError("a ShardRows has no full-row labels; read them from ShardRows.full")

    def materialize_with_positions(self) -> tuple[EncodedArrays, np.ndarray]:
        """The share encoded once into memory (block order) and each row's full-row position."""
        arrs, pos = [], []
        for arr, p in self._prefetched(self.blocks, self._block):
            arrs.append(arr)
            pos.append(p)
        if not arrs:
            cat, keys, dense = self.encoder._alloc(0)
            y = None if self.packed is None else torch.zeros((0, len(ACTIONS)), dtype=torch.uint8)
            return (EncodedArrays(torch.from_numpy(cat), torch.from_numpy(keys), torch.from_numpy(dense),
                                  y, np.zeros(0, np.int32), np.zeros(0, np.int32)), np.zeros(0, np.int64))
        return EncodedArrays.concat(arrs), np.concatenate(pos)

    def materialize(self) -> EncodedArrays:
        return self.materialize_with_positions()[0]

    def row_mask(self) -> np.ndarray:
        """bool over the full rows: the rows of this share's blocks (their row keys read once,
        no other column)."""
        mask = np.zeros(self.full.n, bool)
        for d, i, g, _ in self.blocks:
            df = self.store.read_row_group(d, i, g, columns=[])
            mask[self.day_offset[d] + df[self.row_key].to_numpy(np.int64)] = True
        return mask


# ------------------------------------------------------------------------------ negative sampling

def label_bits(rows: EncodedArrays | StreamedRows) -> np.ndarray:
    """One byte per row, bit i = ``ACTIONS[i]`` (0 = a row with no action)."""
    if isinstance(rows, StreamedRows):
        return rows.labels_bits
    assert rows.labels is not None, "rows read without labels"
    y = rows.labels.numpy().astype(np.uint8)
    return (y << np.arange(y.shape[1], dtype=np.uint8)).sum(1, dtype=np.uint8)


class NegativeSampled:
    """Training rows whose rows with no action (all 7 labels 0) are down-sampled per pass.

    Each pass keeps every row with at least one action and a fresh seeded draw of exactly
    ``round(rate * negatives)`` of the others (so every pass has ``len(self)`` rows and the
    trainer's step count stays exact); across passes the net sees different negatives.  The
    rows stay where they are (in memory, or in the feature store for streamed rows, where the
    dropped rows are never encoded).  The output bias starts from the label means of the kept
    population.  Ranking inside a user is what uAUC reads; the probabilities of a net trained so
    are inflated for every action alike, and the blend fits its own weights on them (or on
    their per-user ranks).
    """

    def __init__(self, rows: EncodedArrays | StreamedRows, rate: float, within: np.ndarray | None = None):
        """``within`` (bool over the rows of ``label_bits(rows)``): only those rows are sampled
        from, the others never kept (one DDP rank's blocks of the full streamed rows)."""
        if not 0.0 < float(rate) <= 1.0:
            raise ValueError(f"negative sampling rate must be in (0, 1], got {rate!r}")
        self.rows, self.rate = rows, float(rate)
        bits = label_bits(rows)
        if within is not None:
            bits = np.where(within, bits, 0).astype(bits.dtype)
        self.any_action = bits != 0
        self.negatives = np.flatnonzero(~self.any_action if within is None else ~self.any_action & within)
        self.n_negatives_kept = int(round(self.rate * len(self.negatives)))
        self.n = int(self.any_action.sum()) + self.n_negatives_kept
        counts = [int(((bits >> i) & 1).sum()) for i in range(len(ACTIONS))]
        self._label_means = [c / max(1, self.n) for c in counts]

    # the trainer asks these of its training rows
    @property
    def labels(self):
        return getattr(self.rows, "labels", None)

    @property
    def packed(self):
        return getattr(self.rows, "packed", None)

    def __len__(self) -> int:
        return self.n

    def label_means(self) -> list[float]:
        return list(self._label_means)

    def aux_means(self) -> list[float] | None:
        return self.rows.aux_means()

    def keep(self, generator: torch.Generator) -> np.ndarray:
        """This pass's rows: bool [N], every row with an action and a seeded draw of the others."""
        mask = self.any_action.copy()
        n = len(self.negatives)       # int32 draws: half the transient memory (58M at the final round)
        pick = torch.randperm(n, generator=generator, dtype=torch.int32 if n < 2**31 else torch.int64)
        mask[self.negatives[pick[:self.n_negatives_kept].numpy()]] = True
        return mask

    def epoch_batches(self, batch_size: int, generator: torch.Generator) -> Iterator[dict[str, Tensor]]:
        return self.rows.epoch_batches(batch_size, generator, keep=self.keep(generator))
