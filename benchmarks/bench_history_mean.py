"""Benchmark of ``history_mean`` (the user's mean word2vec / PCA vector before day d, behind the
``*_sim`` columns of the w2v and pca families) at one user bucket of the final round's size:
summing only the bucket's users (``DailyTable.window_sum_of``) against summing every user of the
world and cutting (the code before 2026-12-07), side by side, same values checked.

One bucket-day of the default features at `final` (200,000 users in 8 buckets: 25,000 users,
690,000 rows of day 14, histories of days 1-13) asks for: word2vec feed (32 dims) and author (16)
means of its users, the PCA (32) mean of the engaged feeds per row, and per action (7, for both
word2vec and PCA) the mean over the feeds the user did it on.  Synthetic tables of those shapes
(per-action tables: user-days with a positive at the given share).

    nice .venv/bin/python benchmarks/bench_history_mean.py [--users 200000 --buckets 8 --repeat 3]
"""
from __future__ import annotations

import argparse
import sys
import time
from pathlib import Path

import numpy as np

sys.path.insert(0, str(Path(__file__).resolve().parents[1] / "src"))
from wbdc.features.history import DailyTable, history_mean  # noqa: E402

#: share of a user's days with at least one positive, per action (the seven actions' rough rates)
ACTION_DAY_SHARE = (0.45, 0.5, 0.2, 0.15, 0.1, 0.05, 0.03)


def sum_every_key(table: DailyTable, ids: np.ndarray, lo: int, hi: int):
    """The former ``history_mean``: every key of the world summed, then cut to ``ids``."""
    cnt = table.window_sum("count", lo, hi)
    total = table.window_sum("vec", lo, hi)
    mean = total / np.maximum(cnt, 1)[:, None]
    return mean[ids], cnt[ids]


def table(rng, users: np.ndarray, n_keys: int, days: int, share: float, dim: int) -> DailyTable:
    keys, day = [], []
    for d in range(1, days + 1):
        u = users[rng.random(len(users)) < share]
        keys.append(u)
        day.append(np.full(len(u), d, np.int16))
    k = np.concatenate(keys)
    return DailyTable(n_keys, np.concatenate(day), k.astype(np.int64),
                      {"count": rng.integers(1, 30, len(k)), "vec": rng.normal(size=(len(k), dim))})


def main() -> int:
    p = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    p.add_argument("--users", type=int, default=200_000)
    p.add_argument("--buckets", type=int, default=8)
    p.add_argument("--rows", type=int, default=5_500_000, help="rows of the target day (all buckets)")
    p.add_argument("--repeat", type=int, default=3)
    p.add_argument("--seed", type=int, default=0)
    a = p.parse_args()
    rng = np.random.default_rng(a.seed)
    users = np.sort(rng.choice(a.users, a.users // a.buckets, replace=False))
    uid = rng.choice(users, a.rows // a.buckets)
    calls = [("w2v feed (users)", table(rng, users, a.users, 13, 0.9, 32), users),
             ("w2v author (users)", table(rng, users, a.users, 13, 0.9, 16), users),
             ("pca engaged (per row)", table(rng, users, a.users, 13, 0.6, 32), uid)]
    for i, share in enumerate(ACTION_DAY_SHARE):
        for fam, dim in (("w2v", 32), ("pca", 32)):
            calls.append((f"{fam} action {i} (users)", table(rng, users, a.users, 13, share, dim), users))
    rows = []
    for name, t, ids in calls:
        h = t.before(14)
        best = {}
        for fn_name, fn in (("every key", sum_every_key), ("keys asked", history_mean)):
            times = []
            for _ in range(a.repeat):
                t0 = time.perf_counter()
                out = fn(h, ids, 1, 13)
                times.append(time.perf_counter() - t0)
            best[fn_name] = (min(times), out)
        same = all(np.array_equal(x, y) for x, y in zip(best["every key"][1], best["keys asked"][1]))
        rows.append((name, len(t.day), best["every key"][0], best["keys asked"][0], same))
    print(f"one bucket-day: {len(users):,} users of {a.users:,}, {len(uid):,} rows; best of {a.repeat}")
    print(f"{'call':<24} {'table rows':>10} {'every key s':>12} {'keys asked s':>13} {'ratio':>6} same")
    for name, n, old, new, same in rows:
        print(f"{name:<24} {n:>10,} {old:>12.3f} {new:>13.3f} {old / new:>6.1f} {same}")
    old, new = sum(r[2] for r in rows), sum(r[3] for r in rows)
    print(f"{'all ' + str(len(rows)) + ' calls':<24} {'':>10} {old:>12.3f} {new:>13.3f} {old / new:>6.1f} "
          f"{all(r[4] for r in rows)}")
    return 0 if all(r[4] for r in rows) else 1


if __name__ == "__main__":
    sys.exit(main())
