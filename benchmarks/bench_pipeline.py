"""Benchmark the whole pipeline: run `bash run_all.sh` on a synthetic preset in a fresh artifact
root, then print one table of every stage's wall time and peak memory (from the stages' own
run_info_*.json), the whole run's wall time, the day-14 and online scores, and each measured
figure against its target (ratio = measured / target; <= 1 meets it).

    nice .venv/bin/python benchmarks/bench_pipeline.py --preset small
    nice .venv/bin/python benchmarks/bench_pipeline.py --preset full --root /tmp/wbdc_full

Targets (2-core machine): small whole run <= 15 min; full whole run <= 90 min and <= 16 GB;
at full also make_synthetic <= 5 min / 8 GB, features <= 15 min / 12 GB, lgb <= 25 min.
--keep reuses an existing root (stages whose stamps are current are skipped, so only a fresh
root times every stage).
"""
from __future__ import annotations

import argparse
import json
import os
import shutil
import subprocess
import sys
import tempfile
import time
from pathlib import Path

REPO = Path(__file__).resolve().parents[1]
sys.path.insert(0, str(REPO / "src"))

# (stage label, run_info stage name, seconds target, peak MB target) per preset
TARGETS = {
    "small": {"whole run": (15 * 60, None)},
    "full": {"whole run": (90 * 60, 16 * 1024), "make_synthetic": (5 * 60, 8 * 1024),
             "features": (15 * 60, 12 * 1024), "train_lgb": (25 * 60, None)},
}
ORDER = ("make_synthetic", "prepare", "features", "train_lgb", "train_nn_sb", "train_nn_mmoe",
         "train_nn_ple", "blend", "submit")


def run_infos(root: Path) -> dict[str, dict]:
    """Stage name -> its run_info (the newest when a stage ran more than once)."""
    from wbdc.report import collect_run_infos
    return {i["stage"]: i for i in collect_run_infos(root)}     # oldest first: newest wins


def ratio(value: float, target: float | None) -> str:
    return "" if target is None else f"{value / target:.2f}"


def main() -> int:
    p = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    p.add_argument("--preset", default="small", choices=["tiny", "small", "full"])
    p.add_argument("--seed", type=int, default=2021)
    p.add_argument("--root", default=None, help="artifact root (default: a temporary folder, removed after)")
    p.add_argument("--keep", action="store_true", help="do not wipe --root first")
    p.add_argument("--models", default="lgb,sb,mmoe,ple")
    p.add_argument("--json", default=None, help="also write the measurements here")
    args = p.parse_args()

    tmp = None
    if args.root is None:
        tmp = tempfile.mkdtemp(prefix=f"wbdc_bench_{args.preset}_")
        root = Path(tmp)
    else:
        root = Path(args.root).resolve()
        if root.exists() and not args.keep:
            shutil.rmtree(root)
        root.mkdir(parents=True, exist_ok=True)
    log = root / "run_all.log"
    env = {**os.environ, "WBDC_SKIP_VENV": "1", "PYTHON": sys.executable}
    cmd = ["bash", str(REPO / "run_all.sh"), "--preset", args.preset, "--seed", str(args.seed),
           "--root", str(root), "--models", args.models]
    print(f"[bench_pipeline] {' '.join(cmd)}  (log: {log})", file=sys.stderr)
    t0 = time.perf_counter()
    with open(log, "w") as fh:
        rc = subprocess.run(cmd, stdout=fh, stderr=subprocess.STDOUT, env=env).returncode
    wall = time.perf_counter() - t0
    if rc != 0:
        print(f"[bench_pipeline] run_all.sh failed ({rc}); last lines of {log}:", file=sys.stderr)
        print("\n".join(log.read_text().splitlines()[-20:]), file=sys.stderr)
        return rc

    infos = run_infos(root)
    targets = TARGETS.get(args.preset, {})
    rows = []
    for name in ORDER:
        if name in infos:
            i = infos[name]
            t_s, t_mb = targets.get(name, (None, None))
            rows.append((name, i["seconds"], i["peak_rss_mb"], ratio(i["seconds"], t_s), ratio(i["peak_rss_mb"], t_mb)))
    peak = max((i["peak_rss_mb"] for i in infos.values()), default=float("nan"))
    t_s, t_mb = targets.get("whole run", (None, None))
    rows.append(("whole run", wall, peak, ratio(wall, t_s), ratio(peak, t_mb)))

    print(f"\npipeline at preset {args.preset} (seed {args.seed}), {os.cpu_count()} cores\n")
    print(f"| stage | seconds | peak MB | time / target | memory / target |\n|---|---:|---:|---:|---:|")
    for name, s, mb, rt, rm in rows:
        print(f"| {name} | {s:.1f} | {mb:.0f} | {rt} | {rm} |")
    scores_f = root / "ensemble" / "scores.json"
    scores = json.loads(scores_f.read_text()) if scores_f.exists() else {}
    if scores:
        print("\n| model | day-14 weighted uAUC |\n|---|---:|")
        for name, s in scores.get("models", {}).items():
            print(f"| {name} | {s['weighted']:.6f} |")
        for key in ("blend", "oracle", "online"):
            if scores.get(key):
                print(f"| {key} | {scores[key]['weighted']:.6f} |")
        if (scores.get("insample") or {}).get("blend"):
            print(f"| blend in-sample | {scores['insample']['blend']['weighted']:.6f} |")
    if args.json:
        Path(args.json).write_text(json.dumps({"preset": args.preset, "stages": infos, "wall_seconds": wall,
                                               "peak_mb": peak, "scores": scores}, indent=1))
    if tmp is not None:
        shutil.rmtree(tmp, ignore_errors=True)
    return 0


if __name__ == "__main__":
    sys.exit(main())
