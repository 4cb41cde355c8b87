"""Benchmark: wbdc.metrics.weighted_uauc vs the official evaluation.py approach vs pandas+sklearn.

All methods run in one process on the same synthetic data: 7 actions at the real preliminary
positive rates (wbdc.schema.REAL_POSITIVE_RATES), lognormal rows per user, rows shuffled (users
not contiguous), predictions rounded to 6 decimals so ties occur.

    nice .venv/bin/python benchmarks/bench_uauc.py --scale both

The fast method runs once untimed on each data set (its time is shown as "first call"), then
``--repeat`` times (best and median shown).  Scales: ``prelim`` = day 14 of the preliminary data (609,036 rows, 20,000 users), ``final`` =
day 14 of the final data (6,103,955 rows, 200,000 users).  The two slow reference methods are
timed on one action (read_comment) and multiplied by 7 (marked "x7" in the table).  Numba
compile time is excluded from the timings and reported separately (a cold compile in a
subprocess with an empty cache, and the cache load in this process).
"""
from __future__ import annotations

import argparse
import os
import subprocess
import sys
import tempfile
import time
from collections import defaultdict
from pathlib import Path

sys.path.insert(0, str(Path(__file__).resolve().parents[1] / "src"))

import numba  # noqa: E402
import numpy as np  # noqa: E402
import pandas as pd  # noqa: E402
from scipy.stats import rankdata  # noqa: E402
from sklearn.metrics import roc_auc_score  # noqa: E402

from wbdc.metrics import group_by_user, uauc, warm_up, weighted_uauc  # noqa: E402
from wbdc.schema import ACTION_WEIGHTS, ACTIONS, REAL_POSITIVE_RATES  # noqa: E402

SCALES = {"prelim": (609_036, 20_000), "final": (6_103_955, 200_000)}


# ------------------------------------------------------------------------------ data

def make_data(n_rows: int, n_users: int, seed: int = 2021):
    """userids (shuffled rows), labels and 6-decimal predictions for the 7 actions."""
    rng = np.random.default_rng(seed)
    # skewed exposure counts: every user has >= 1 row, the rest spread lognormally
    w = rng.lognormal(0.0, 1.0, n_users)
    sizes = 1 + rng.multinomial(n_rows - n_users, w / w.sum())
    ids = np.sort(rng.choice(n_users * 5 // 4, n_users, replace=False)).astype(np.int32)
    userids = np.repeat(ids, sizes)
    perm = rng.permutation(n_rows)
    userids = userids[perm]
    user_of_row = np.repeat(np.arange(n_users), sizes)[perm]
    labels, preds = {}, {}
    for a in ACTIONS:
        rate = REAL_POSITIVE_RATES[a]
        propensity = rng.gamma(0.5, 2.0, n_users)[user_of_row]  # mean 1: users differ
        y = (rng.random(n_rows) < np.minimum(rate * propensity, 1.0)).astype(np.int8)
        logit = np.log(rate / (1 - rate)) + 0.5 * np.log(propensity) + 1.2 * y \
            + rng.normal(0.0, 1.0, n_rows)
        preds[a] = np.round(1.0 / (1.0 + np.exp(-logit)), 6)
        labels[a] = y
    return userids, labels, preds


# ------------------------------------------------------------------------------ references

def official_uauc(labels, preds, userids) -> float:
    """The official evaluation.py approach: dict grouping per user, rank-based AUC per user."""
    user_pred = defaultdict(list)
    user_truth = defaultdict(list)
    for idx in range(len(labels)):
        uid = userids[idx]
        user_pred[uid].append(preds[idx])
        user_truth[uid].append(labels[idx])
    total, count = 0.0, 0
    for uid, truths in user_truth.items():
        if not any(t != truths[0] for t in truths):  # all 0 or all 1: skipped
            continue
        y = np.asarray(truths)
        ranks = rankdata(user_pred[uid])  # average ranks for ties
        n_pos = int(y.sum())
        n_neg = len(y) - n_pos
        total += (ranks[y == 1].sum() - n_pos * (n_pos + 1) / 2) / (n_pos * n_neg)
        count += 1
    return total / count


def pandas_uauc(labels, preds, userids) -> float:
    """pandas groupby + sklearn roc_auc_score on every user with both classes."""
    df = pd.DataFrame({"u": userids, "y": labels, "p": preds})
    stats = df.groupby("u")["y"].agg(["sum", "size"])
    valid = stats.index[(stats["sum"] > 0) & (stats["sum"] < stats["size"])]
    df = df[df["u"].isin(valid)]
    aucs = df.groupby("u").apply(lambda g: roc_auc_score(g["y"], g["p"]), include_groups=False)
    return float(aucs.mean())


# ------------------------------------------------------------------------------ timing

def best_of(fn, repeat: int):
    times, out = [], None
    for _ in range(repeat):
        t0 = time.perf_counter()
        out = fn()
        times.append(time.perf_counter() - t0)
    return min(times), float(np.median(times)), out


def cold_compile_seconds() -> float:
    """Compile every kernel from scratch in a subprocess with an empty numba cache."""
    with tempfile.TemporaryDirectory() as cache:
        env = dict(os.environ, NUMBA_CACHE_DIR=cache)
        src = str(Path(__file__).resolve().parents[1] / "src")
        out = subprocess.run(
            [sys.executable, "-c",
             f"import sys; sys.path.insert(0, {src!r}); from wbdc.metrics import warm_up; "
             "print(warm_up())"],
            env=env, check=True, capture_output=True, text=True)
    return float(out.stdout.strip().splitlines()[-1])


def run_scale(scale: str, args) -> list[tuple]:
    n_rows, n_users = SCALES[scale]
    t0 = time.perf_counter()
    userids, labels, preds = make_data(n_rows, n_users, args.seed)
    sizes = np.bincount(np.unique(userids, return_inverse=True)[1])
    print(f"\n[{scale}] {n_rows:,} rows, {len(sizes):,} users (rows/user: median "
          f"{int(np.median(sizes))}, p99 {int(np.percentile(sizes, 99))}, max {sizes.max()}), "
          f"data built in {time.perf_counter() - t0:.1f} s", flush=True)
    rows = []
    a0 = ACTIONS[0]

    # the first pass over freshly built arrays pays for first-touch page faults (large on a VM);
    # it is shown on its own row and kept out of best/median
    t_first, _, _ = best_of(lambda: weighted_uauc(labels, preds, userids), 1)
    t_all, med_all, ours = best_of(lambda: weighted_uauc(labels, preds, userids), args.repeat)
    rows.append(("wbdc.metrics.weighted_uauc (grouping included)", 7, t_all, med_all, t_all))
    rows.append(("  first call on fresh arrays (not in best/median)", 7, t_first, t_first,
                 t_first))
    t_grp, med_grp, groups = best_of(lambda: group_by_user(userids), args.repeat)
    rows.append(("  of which group_by_user", 7, t_grp, med_grp, t_grp))
    t_reuse, med_reuse, ours2 = best_of(
        lambda: weighted_uauc(labels, preds, groups=groups), args.repeat)
    assert ours2 == ours
    rows.append(("wbdc.metrics.weighted_uauc (groups= reused)", 7, t_reuse, med_reuse, t_reuse))
    t_one, med_one, ours_one = best_of(
        lambda: uauc(labels[a0], preds[a0], groups=groups), args.repeat)
    rows.append((f"wbdc.metrics.uauc, {a0} only (groups= reused)", 1, t_one, med_one, t_one))

    check = {"ours": ours[a0]}
    run_official = scale == "prelim" or not args.skip_official_final
    if run_official:
        t, _, v = best_of(lambda: official_uauc(labels[a0], preds[a0], userids), 1)
        rows.append((f"official evaluation.py approach ({a0}) x7", 1, t, t, 7 * t))
        check["official"] = v
    run_pandas = scale == "prelim" or args.pandas_final
    if run_pandas:
        t, _, v = best_of(lambda: pandas_uauc(labels[a0], preds[a0], userids), 1)
        rows.append((f"pandas groupby + sklearn per user ({a0}) x7", 1, t, t, 7 * t))
        check["pandas"] = v

    print(f"{'method':<52} {'actions':>7} {'best s':>8} {'median s':>9} {'7 actions s':>12} "
          f"{'vs ours':>8}")
    for name, n_act, best, med, seven in rows:
        ratio = "" if name.startswith("  ") else f"{seven / t_all:7.1f}x"
        print(f"{name:<52} {n_act:>7} {best:>8.3f} {med:>9.3f} {seven:>12.3f} {ratio:>8}")
    print(f"uAUC[{a0}]: " + ", ".join(f"{k} {v:.12f}" for k, v in check.items())
          + f"; max |diff| {max(abs(v - check['ours']) for v in check.values()):.2e}")
    print("per action: " + ", ".join(f"{a} {ours[a]:.4f}" for a in ACTIONS)
          + f"; weighted {ours['weighted']:.6f}")
    return rows


def main() -> int:
    p = argparse.ArgumentParser(description=__doc__.split("\n\n")[0],
                                formatter_class=argparse.RawDescriptionHelpFormatter)
    p.add_argument("--scale", choices=["prelim", "final", "both"], default="both")
    p.add_argument("--repeat", type=int, default=5,
                   help="runs of the fast method (best and median reported; default 5)")
    p.add_argument("--skip-official-final", action="store_true",
                   help="do not run the official approach at final scale (tens of seconds)")
    p.add_argument("--pandas-final", action="store_true",
                   help="also run pandas+sklearn at final scale (minutes)")
    p.add_argument("--no-cold-compile", action="store_true",
                   help="skip measuring a from-scratch numba compile in a subprocess")
    p.add_argument("--seed", type=int, default=2021)
    args = p.parse_args()

    print(f"numba {numba.__version__}, {numba.get_num_threads()} threads, "
          f"{os.cpu_count()} cpus, weights {ACTION_WEIGHTS}")
    if not args.no_cold_compile:
        print(f"numba compile from scratch (empty cache, subprocess): "
              f"{cold_compile_seconds():.2f} s")
    print(f"numba warm-up in this process (cache load): {warm_up():.2f} s  "
          "(excluded from all timings below)")
    for scale in (["prelim", "final"] if args.scale == "both" else [args.scale]):
        run_scale(scale, args)
    return 0


if __name__ == "__main__":
    sys.exit(main())
