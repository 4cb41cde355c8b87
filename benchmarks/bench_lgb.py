"""Benchmark the `train_lgb` stage: wall time, peak memory and day-14 weighted uAUC of
LightGBM vs the popularity baseline vs the oracle (the synthetic world's true probabilities).

  nice .venv/bin/python benchmarks/bench_lgb.py --preset full --root /tmp/wbdc_full [--build]

--root is an artifact root; with --build the missing upstream stages (make_synthetic, prepare,
features) are run there first (each skips work that is up to date). The stage itself runs as a
subprocess (so its peak memory is its own) with --mode all, unless --mode says otherwise.
The oracle needs the synthetic truth (data/prepared/meta.json's truth_dir).
"""
from __future__ import annotations

import argparse
import json
import os
import subprocess
import sys
import time
from pathlib import Path

REPO = Path(__file__).resolve().parents[1]
sys.path.insert(0, str(REPO / "src"))

import numpy as np  # noqa: E402
import pandas as pd  # noqa: E402

from wbdc.metrics import weighted_uauc  # noqa: E402
from wbdc.paths import Paths  # noqa: E402
from wbdc.schema import ACTIONS  # noqa: E402

TIME_LIMIT_S = 25 * 60


def run(script: str, root: Path, common: list[str], *extra: str) -> float:
    cmd = [sys.executable, str(REPO / "src" / "stages" / script), "--root", str(root), *common, *extra]
    print("$", " ".join(cmd), file=sys.stderr, flush=True)
    t0 = time.perf_counter()
    subprocess.run(cmd, check=True)
    return time.perf_counter() - t0


def oracle_scores(paths: Paths) -> dict | None:
    meta = json.loads((paths.prepared / "meta.json").read_text())
    truth_dir = meta.get("truth_dir")
    if not truth_dir or not (Path(truth_dir) / "day14_prob.csv").exists():
        return None
    truth = pd.read_csv(Path(truth_dir) / "day14_prob.csv")
    acts = pd.read_parquet(paths.prepared / "actions.parquet", columns=["userid", "feedid", "date_", *ACTIONS])
    day14 = acts[acts["date_"] == 14].reset_index(drop=True)
    if not (np.array_equal(truth["userid"], day14["userid"]) and np.array_equal(truth["feedid"], day14["feedid"])):
        truth = day14[["userid", "feedid"]].merge(truth, on=["userid", "feedid"], how="left", validate="1:1")
    return weighted_uauc(day14[list(ACTIONS)], truth[list(ACTIONS)], day14["userid"].to_numpy())


def main() -> int:
    p = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    p.add_argument("--preset", default="full", choices=["tiny", "small", "full"])
    p.add_argument("--seed", type=int, default=None)
    p.add_argument("--root", required=True, help="artifact root (features built there, or --build)")
    p.add_argument("--build", action="store_true", help="run make_synthetic, prepare and features first")
    p.add_argument("--mode", default="all", choices=["offline", "online", "all"])
    p.add_argument("--set", action="append", default=[], help="passed to train_lgb as --set")
    p.add_argument("--skip-train", action="store_true", help="only score existing artifacts")
    args = p.parse_args()
    root = Path(args.root).resolve()
    common = ["--preset", args.preset] + (["--seed", str(args.seed)] if args.seed is not None else [])
    paths = Paths.at(root)
    steps: dict[str, float] = {}
    if args.build:
        for script in ("make_synthetic.py", "prepare.py", "features.py"):
            steps[script] = run(script, root, common)
    if not args.skip_train:
        extra = ["--mode", args.mode, *sum((["--set", s] for s in args.set), [])]
        steps["train_lgb.py"] = run("train_lgb.py", root, common, *extra)

    out = paths.model("lgb")
    info = json.loads((out / "run_info_train_lgb.json").read_text())
    scores = json.loads((out / "scores.json").read_text())
    oracle = oracle_scores(paths)

    print(f"\n# bench_lgb  preset={args.preset}  root={root}  cpus={os.cpu_count()}")
    for k, v in steps.items():
        print(f"{k:<20} {v:8.1f} s (wall, incl. interpreter start)")
    print(f"train_lgb stage      {info['seconds']:8.1f} s   peak {info['peak_rss_mb']:.0f} MB   "
          f"steps {info.get('seconds_by_step')}")
    total = sum(info.get("seconds_by_step", {}).get(k, 0.0) for k in ("load", "offline", "online"))
    print(f"load+offline+online  {total:8.1f} s   limit {TIME_LIMIT_S} s   "
          f"{'OK' if total <= TIME_LIMIT_S else 'OVER'}   ratio {total / TIME_LIMIT_S:.2f}")
    print(f"training rows loaded {info.get('loaded_train_rows')}, features {info.get('features')}")
    print()
    cols = ["lgb", "popularity", "oracle", "best_it", "online"]
    print(f"{'action':<13}" + "".join(f"{c:>11}" for c in cols))
    off, pop = scores.get("offline", {}), scores.get("popularity", {})
    for a in [*ACTIONS, "weighted"]:
        vals = [off.get(a), pop.get(a), (oracle or {}).get(a),
                scores.get("best_iteration", {}).get(a), scores.get("online_rounds", {}).get(a)]
        cells = [f"{v:11.5f}" if isinstance(v, float) else f"{v if v is not None else '-':>11}" for v in vals]
        print(f"{a:<13}" + "".join(cells))
    if oracle and off.get("weighted") is not None:
        gap = oracle["weighted"] - pop["weighted"]
        got = off["weighted"] - pop["weighted"]
        print(f"\nlgb closes {got / gap:.1%} of the popularity->oracle gap "
              f"({got:+.5f} of {gap:+.5f} weighted uAUC)")
    return 0


if __name__ == "__main__":
    sys.exit(main())
