"""The one memory budget, ``data.memory_gb``, and the check the in-memory stages make before they
start.

``data.memory_gb: auto`` is half the machine's RAM.  prepare streams (its peak does not grow with
the input); features cuts its rows into user buckets sized from the budget (``choose_buckets``);
the nets hold their encoded rows in memory when they fit and stream them from the feature store
in shuffle buffers when not (``wbdc.nn.pipeline.plan_rows``).  LightGBM still holds its sampled
rows in memory, so its peak grows linearly with the number of exposure rows.  Before any work,
it estimates its peak from the prepared row count and a per-row cost measured at the `full` preset
(README, "Pipeline time and memory") and stops with a one-line error giving the figure it needs
when that is over the budget, instead of running out of memory an hour in.
"""
from __future__ import annotations

import math

from .io import InputError

#: stage -> (peak MB, exposure rows) measured at the `full` preset (7,344,328 action rows plus
#: 423,143 test rows; README "Pipeline time and memory").  The estimate scales the peak linearly.
MEASURED_AT_FULL: dict[str, tuple[float, int]] = {
    "train_lgb": (4_994.0, 7_767_471),
}


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


def estimate_gb(stage: str, exposure_rows: int) -> float:
    peak_mb, rows = MEASURED_AT_FULL[stage]
    return peak_mb / 1024 * exposure_rows / rows


def check_budget(stage: str, cfg: dict, exposure_rows: int) -> float:
    """Raise :class:`BudgetError` when ``stage``'s estimated peak for ``exposure_rows`` rows is
    over the budget; return the estimate (GB) otherwise."""
    need = estimate_gb(stage, exposure_rows)
    budget = memory_budget_gb(cfg)
    if need > budget:
        raise BudgetError(
            f"{stage}: needs about {need:.1f} GB for {exposure_rows:,} exposure rows (measured "
            f"{MEASURED_AT_FULL[stage][0] / MEASURED_AT_FULL[stage][1] * 2**20:.0f} bytes per row), "
            f"over the memory budget of {budget:.1f} GB (data.memory_gb); this stage holds its "
            f"rows in memory: raise data.memory_gb if the machine has the RAM")
    return need


def check_prepared(stage: str, cfg: dict, prepared_dir) -> float | None:
    """:func:`check_budget` with the row counts of ``data/prepared/meta.json`` (nothing to check,
    None, when it is missing: the stage then names what to run first)."""
    from pathlib import Path

    from .prepare import load_meta
    if not (Path(prepared_dir) / "meta.json").exists():
        return None
    meta = load_meta(prepared_dir)
    return check_budget(stage, cfg, int(meta["n_actions"]) + int(meta["n_test"]))


#: The bucketed features build (wbdc.features.build): its peak is in pass B, which holds one
#: user bucket's rows with their history tables and one day's part beside what every bucket
#: shares (the per-feed / author / singer / tag day tables, the static feed table, the pretrained
#: vectors, the interpreter), which grows a little with the data: about FEATURES_FIXED_MB plus
#: FEATURES_TOTAL_ROW_BYTES per exposure row in all plus FEATURES_ROW_BYTES per exposure row of
#: the bucket.  Fitted to four measured builds (README "Out-of-core features"): `full` (7.76M
#: rows) in 1 and 4 buckets, 4,976 and 2,332 MB; `final` (77.4M rows) in 7 and 5 buckets, 7,569
#: and at least 9,687 MB.
FEATURES_FIXED_MB = 1300.0
FEATURES_TOTAL_ROW_BYTES = 16.0
FEATURES_ROW_BYTES = 480.0
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
