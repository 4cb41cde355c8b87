"""LightGBM streamed from the feature store vs the same fit with every block kept in memory,
side by side in one run (each in a fresh child process).

"in memory": every decoded float block is kept (the stage's choice when they fit a quarter of
data.memory_gb), so each day is read once -- the old in-memory path's footprint.  "streamed":
nothing kept (cache 0), LightGBM reads the store block by block (its bin sample, then the rows),
day 14 and the test rows part by part -- the path for data larger than memory; every action's
rows binned once and each action cut from them (``lgb.bin_once``, the stage's choice when the
binned rows fit the budget).  "each action": streamed with ``lgb.bin_once=false``, every action
reading and binning its own rows (offline, and again for the refit).  All fit the offline models
(early stopping on day 14, cross-fitted scores) and, with --online, the refit.
Printed per run: wall and CPU seconds, peak RSS of the child, training rows per second
(sum over actions of rows x rounds trained / wall), day-14 weighted uAUC (honest), and the
ratios to in memory and to each action; then whether the predictions are identical.

    nice .venv/bin/python benchmarks/bench_lgb_stream.py --root /tmp/wbdc_full --preset full
"""
from __future__ import annotations

import argparse
import json
import resource
import subprocess
import sys
import time
from pathlib import Path

REPO = Path(__file__).resolve().parents[1]
sys.path.insert(0, str(REPO / "src"))

CHILD = r"""
import json, sys, time, resource
sys.path.insert(0, sys.argv[1])
import numpy as np
from wbdc.config import resolve_argv
from wbdc.features.store import FeatureStore
from wbdc.lgb import LgbSettings, fit_offline, fit_online, load_fit_data, parse_actions
from wbdc.paths import Paths
args = json.loads(sys.argv[2])
cfg = resolve_argv(args["argv"])
settings = LgbSettings.from_config(cfg)
fs = FeatureStore(Paths.at(args["root"]))
actions = parse_actions(args["actions"])
t = time.perf_counter()
data = load_fit_data(fs, settings, progress=False, cache_bytes=args["cache"])
load_s = time.perf_counter() - t
off = fit_offline(data, settings, actions, progress=False)
work = sum(off.train_rows[a] * len(off.history[off.history["action"] == a]) for a in actions)
out = {"load_s": load_s, "weighted": off.scores["weighted"], "work_rows": int(work),
       "train_rows": int(len(data.rows))}
off.preds.to_parquet(args["out"] + "_offline.parquet")
if args["online"]:
    on = fit_online(data, fs, settings, actions, best_iteration=off.best_iteration, progress=False)
    on.preds.to_parquet(args["out"] + "_online.parquet")
out["peak_mb"] = resource.getrusage(resource.RUSAGE_SELF).ru_maxrss / 1024
print(json.dumps(out))
"""


def run_child(root: Path, argv: list[str], actions: str | None, cache: float, online: bool, out: str) -> dict:
    payload = json.dumps({"root": str(root), "argv": argv, "actions": actions, "cache": cache,
                          "online": online, "out": out})
    before = resource.getrusage(resource.RUSAGE_CHILDREN)
    t = time.perf_counter()
    r = subprocess.run([sys.executable, "-c", CHILD, str(REPO / "src"), payload], capture_output=True,
                       text=True, check=False)
    wall = time.perf_counter() - t
    after = resource.getrusage(resource.RUSAGE_CHILDREN)
    if r.returncode != 0:
        raise SystemExit(r.stderr[-3000:])
    res = json.loads(r.stdout.strip().splitlines()[-1])
    res.update(wall_s=wall, cpu_s=(after.ru_utime - before.ru_utime) + (after.ru_stime - before.ru_stime))
    return res


def main() -> int:
    p = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    p.add_argument("--root", required=True, help="artifact root with features/ built")
    p.add_argument("--preset", default="full")
    p.add_argument("--seed", type=int, default=2021)
    p.add_argument("--actions", default=None, help="comma list (default: all 7)")
    p.add_argument("--online", action="store_true", help="also refit on days 1-14 and predict day 15")
    p.add_argument("--set", action="append", default=[], help="config override (lgb.*)")
    args = p.parse_args()
    root = Path(args.root).resolve()
    argv = ["--preset", args.preset, "--seed", str(args.seed), *[x for s in args.set for x in ("--set", s)]]
    tmp = root / "bench_lgb_stream"
    tmp.mkdir(exist_ok=True)
    results = {}   # each child reports its own peak RSS (getrusage of itself)
    for name, cache, extra in (("streamed", 0.0, []), ("each action", 0.0, ["--set", "lgb.bin_once=false"]),
                               ("in memory", 1e15, [])):
        results[name] = run_child(root, argv + extra, args.actions, cache, args.online,
                                  str(tmp / name.replace(" ", "_")))
    print(f"\nLightGBM {args.preset}, actions {args.actions or 'all 7'}; training rows (union sample): "
          f"{results['streamed']['train_rows']:,}")
    head = f"{'path':<12}{'wall s':>9}{'CPU s':>9}{'peak MB':>10}{'rows/s':>12}{'day-14 uAUC':>13}"
    print(head)
    print("-" * len(head))
    for name, r in results.items():
        print(f"{name:<12}{r['wall_s']:>9.1f}{r['cpu_s']:>9.1f}{r['peak_mb']:>10,.0f}"
              f"{r['work_rows'] / r['wall_s']:>12,.0f}{r['weighted']:>13.5f}")
    s, e, m = results["streamed"], results["each action"], results["in memory"]
    print(f"streamed / in memory: wall {s['wall_s'] / m['wall_s']:.2f}, peak {s['peak_mb'] / m['peak_mb']:.2f}")
    print(f"streamed / each action: wall {s['wall_s'] / e['wall_s']:.2f}, peak {s['peak_mb'] / e['peak_mb']:.2f}")
    import pandas as pd
    same = True
    for kind in ("offline", "online") if args.online else ("offline",):
        first = pd.read_parquet(tmp / f"streamed_{kind}.parquet")
        same &= all(first.equals(pd.read_parquet(tmp / f"{n}_{kind}.parquet")) for n in ("each_action", "in_memory"))
    print(f"predictions identical: {same}")
    return 0


if __name__ == "__main__":
    sys.exit(main())
