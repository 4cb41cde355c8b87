"""The one memory budget, ``data.memory_gb``, and the check the in-memory stages make before they
start.

``data.memory_gb: auto`` is half the machine's RAM.  prepare streams (its peak does not grow with
the input); features cuts its rows into user buckets sized from the budget (``choose_buckets``);
the nets hold their encoded rows in memory when they fit and stream them from the feature store
in shuffle buffers when not (``wbdc.nn.pipeline.plan_rows``).  LightGBM holds one action's sampled
rows and day 14 binned, so its peak grows with the number of rows and the negative sampling
rate; what its estimate leaves of the budget may hold every action's rows binned at once
(``lgb.bin_once: auto``, ``wbdc.lgb.bins_once``).  Before any work, it estimates its peak from the prepared row count (a fixed part plus a
per-row cost fitted to measured runs at the `full` and `final` presets, README "LightGBM from
the store") and stops with a one-line error giving the figure it needs when that is over the
budget, instead of running out of memory an hour in.
"""
from __future__ import annotations

import math

from .io import InputError

#: LightGBM (``wbdc.lgb``) holds at its peak the binned rows of one action's training sample
#: (the largest: ``max(lgb.neg_rate)`` of the training days' negatives, and their positives) and
#: of day 14 (the validation set), one decoded piece of feature rows, and what does not grow with
#: the rows (the interpreter, libraries, the labels one byte per row).  The estimate is a fixed
#: part plus a cost per binned row (rows counted from the prepared row count, days of equal
#: size): the line through two measured runs of the stage, one action (read_comment, rate 0.2),
#: offline and online (README "LightGBM from the store"): `full` (7,344,328 action rows; 1.89M
#: binned rows by this count) 2,468 MB and `final` (73,120,760 action rows; 18.8M binned rows)
#: 7,525 MB, i.e. about 1.9 GB plus 314 bytes per binned row (the `full` run predates the
#: boosters' compaction, so the fixed part errs high).  The decoded blocks kept in memory on top
#: (``cache_bytes`` in the stage) are sized from what this estimate leaves of the budget.
LGB_FULL_MB, LGB_FULL_ROWS = 2_468.0, 7_344_328
LGB_FINAL_MB, LGB_FINAL_ROWS = 7_525.0, 73_120_760
LGB_FIT_DAYS, LGB_FIT_RATE = 14, 0.2
#: the feature columns of both measured runs: a binned row holds about one byte per feature, so
#: with more columns (e.g. ``features.*.feed_columns``) the cost per row is scaled up in
#: proportion (never down: fewer columns keep the measured cost)
LGB_FIT_FEATURES = 192


def lgb_binned_rows(n_actions: int, n_days: int, max_rate: float,
                    max_train_rows: int | None = None) -> float:
    """Rows LightGBM holds binned at its peak: day 14 and ``max_rate`` of the other days (the
    positives are in the fitted per-row cost), the latter at most ``lgb.max_train_rows`` (the
    offline cap; the online refit adds day 14's share at the same rate)."""
    per_day = n_actions / max(1, n_days)
    sample = float(max_rate) * max(0, n_days - 1) * per_day
    if max_train_rows is not None and n_days > 1:
        sample = min(sample, float(max_train_rows) * n_days / (n_days - 1))
    return per_day + sample


def _lgb_fit() -> tuple[float, float]:
    """(fixed MB, MB per binned row) through the two measured runs."""
    x0 = lgb_binned_rows(LGB_FULL_ROWS, LGB_FIT_DAYS, LGB_FIT_RATE)
    x1 = lgb_binned_rows(LGB_FINAL_ROWS, LGB_FIT_DAYS, LGB_FIT_RATE)
    slope = (LGB_FINAL_MB - LGB_FULL_MB) / (x1 - x0)
    return LGB_FULL_MB - slope * x0, slope


def lgb_row_mb(n_features: int | None = None) -> float:
    """MB per binned row: the fitted cost, scaled up for more feature columns than measured."""
    return _lgb_fit()[1] * max(1.0, (n_features or LGB_FIT_FEATURES) / LGB_FIT_FEATURES)


def lgb_estimate_gb(n_actions: int, n_days: int, max_rate: float,
                    max_train_rows: int | None = None, n_features: int | None = None) -> float:
    fixed = _lgb_fit()[0]
    return (fixed + lgb_row_mb(n_features) * lgb_binned_rows(n_actions, n_days, max_rate, max_train_rows)) / 1024


class BudgetError(InputError):
    """A stage's estimated peak memory is over ``data.memory_gb``."""


def total_ram_gb() -> float:
    import psutil
    return psutil.virtual_memory().total / 2**30


def memory_budget_gb(cfg: dict) -> float:
    """``data.memory_gb`` in GB, ``auto`` resolved to half the machine's RAM."""
    value = cfg["data"]["memory_gb"]
    if value == "auto":
        return total_ram_gb() / 2
    value = float(value)
    if value <= 0:
        raise BudgetError(f"data.memory_gb: expected a positive number of GB or 'auto', got {value:g}")
    return value


def check_lgb(cfg: dict, n_actions: int, n_days: int, n_features: int | None = None) -> float:
    """Raise :class:`BudgetError` when LightGBM's estimated peak for ``n_actions`` labelled rows
    over ``n_days`` days (at the largest ``lgb.neg_rate``, the sample capped by
    ``lgb.max_train_rows``, ``n_features`` columns) is over the budget; return the estimate (GB)
    otherwise."""
    rates = cfg["lgb"]["neg_rate"]
    max_rate = max(float(v) for v in rates.values()) if rates else 1.0
    cap = cfg["lgb"].get("max_train_rows")
    need = lgb_estimate_gb(n_actions, n_days, max_rate, cap, n_features)
    budget = memory_budget_gb(cfg)
    if need > budget:
        raise BudgetError(
            f"train_lgb: needs about {need:.1f} GB for {n_actions:,} labelled rows at "
            f"lgb.neg_rate up to {max_rate:g} "
            f"({lgb_binned_rows(n_actions, n_days, max_rate, cap) / 1e6:.1f}M rows binned at once, "
            f"about {lgb_row_mb(n_features) * 2**20:.0f} bytes each, measured), over the memory budget of {budget:.1f} GB "
            f"(data.memory_gb); lower lgb.neg_rate or lgb.max_train_rows, or raise "
            f"data.memory_gb if the machine has the RAM")
    return need


def check_lgb_prepared(cfg: dict, prepared_dir, n_features: int | None = None) -> float | None:
    """:func:`check_lgb` with the row and day counts of ``data/prepared/meta.json`` (nothing to
    check, None, when it is missing: the stage then names what to run first)."""
    from pathlib import Path

    from .prepare import load_meta
    if not (Path(prepared_dir) / "meta.json").exists():
        return None
    meta = load_meta(prepared_dir)
    return check_lgb(cfg, int(meta["n_actions"]), len(meta.get("days") or range(LGB_FIT_DAYS)), n_features)


#: The bucketed features build (wbdc.features.build): its peak is in pass B, which holds one
#: user bucket's rows with their history tables and one day's part beside what every bucket
#: shares (the per-feed / author / singer / tag day tables, the static feed table, the pretrained
#: vectors, the interpreter), which grows a little with the data: about FEATURES_FIXED_MB plus
#: FEATURES_TOTAL_ROW_BYTES per exposure row in all plus FEATURES_ROW_BYTES per exposure row of
#: the bucket.  Fitted to four measured builds (README "Out-of-core features"): `full` (7.76M
#: rows) in 1 and 4 buckets, 4,976 and 2,332 MB; `final` (77.4M rows) in 7 and 5 buckets, 7,569
#: and at least 9,687 MB.  The per-action interest similarities and the feed's vector columns
#: (``features.*.action_sims``, ``features.*.feed_columns``, on by default since) raised the
#: `full` one-bucket peak from 5,228 to 5,920 MB, measured side by side on the same code: about
#: 90 more bytes per bucket row, added to the fitted 480 (not refitted at `final`).
FEATURES_FIXED_MB = 1300.0
FEATURES_TOTAL_ROW_BYTES = 16.0
FEATURES_ROW_BYTES = 570.0
MAX_BUCKETS = 256


def choose_buckets(cfg: dict, prepared_dir, workers: int = 1) -> int:
    """``features.buckets``, or for ``auto`` the fewest user buckets whose estimated peak fits
    ``data.memory_gb`` (a :class:`BudgetError` when even the fixed part does not).

    ``workers`` > 1 (a Dask cluster): every worker holds the shared tables and builds one bucket
    at a time within ``data.memory_gb / workers``, and there are at least as many buckets as
    workers."""
    from pathlib import Path

    from .prepare import load_meta
    value = cfg["features"].get("buckets", "auto")
    if value != "auto":
        if int(value) < 1:
            raise BudgetError(f"features.buckets: expected a positive number or 'auto', got {value}")
        return int(value)
    workers = max(1, int(workers))
    budget_mb = memory_budget_gb(cfg) * 1024 / workers
    meta = load_meta(Path(prepared_dir))
    rows = int(meta["n_actions"]) + int(meta["n_test"])
    fixed = FEATURES_FIXED_MB + rows * FEATURES_TOTAL_ROW_BYTES / 2**20
    avail = budget_mb - fixed
    need = rows * FEATURES_ROW_BYTES / 2**20
    n = max(workers, math.ceil(need / avail)) if avail > 0 else MAX_BUCKETS + 1
    if n > MAX_BUCKETS:
        raise BudgetError(
            f"features: needs about {(fixed + need / MAX_BUCKETS) / 1024:.1f} GB even in "
            f"{MAX_BUCKETS} user buckets, over the memory budget of {budget_mb / 1024:.1f} GB "
            + ("(data.memory_gb)" if workers == 1 else f"per worker (data.memory_gb / {workers} workers)"))
    return n
