"""Benchmark: each heavy stage on one process vs on a Dask LocalCluster, side by side in one run.

For each mode (one process, then ``cluster.address=local:W``) the stages run as fresh child
processes into their own artifact root (sharing the prepared data): ``features`` (--force), then
``lgb`` and the nets (``--mode offline``).  Per stage and mode the table gives wall and CPU
seconds (the stage's whole process tree: the client and, on the cluster, its workers), the
client's peak RSS, the workers' peak RSS (each worker and their sum, as reported by the stage),
the day-14 weighted uAUC (honest, cross-fitted) and the ratios cluster / one process.

On a machine with fewer cores than workers the cluster is there for correctness, not speed:
the workers share the same cores, and the client, scheduler and transfers cost on top.  For W
machines the benchmark projects the features stage from its measured parts: the client's serial
steps (staging, shared tables, scan, word2vec's fit) plus the one-process pass over the buckets
divided by W (a cluster cuts at least W buckets) -- a projection, not a measurement.

    nice .venv/bin/python benchmarks/bench_cluster.py --preset small
    nice .venv/bin/python benchmarks/bench_cluster.py --preset full --stages features,lgb
"""
from __future__ import annotations

import argparse
import json
import os
import resource
import subprocess
import sys
import time
from pathlib import Path

REPO = Path(__file__).resolve().parents[1]
sys.path.insert(0, str(REPO / "benchmarks"))
from bench_features import ensure_prepared  # noqa: E402

PY = sys.executable
STAGES = {   # stage -> (script, extra arguments, artifact folder, run_info name)
    "features": ("features.py", ["--force"], "features", "features"),
    "lgb": ("train_lgb.py", ["--mode", "offline"], "models/lgb", "train_lgb"),
    "sb": ("train_nn.py", ["--arch", "sb", "--mode", "offline"], "models/sb", "train_nn"),
    "mmoe": ("train_nn.py", ["--arch", "mmoe", "--mode", "offline"], "models/mmoe", "train_nn"),
    "ple": ("train_nn.py", ["--arch", "ple", "--mode", "offline"], "models/ple", "train_nn"),
}


def run_stage(root: Path, stage: str, preset: str, seed: int, extra: list[str]) -> dict:
    script, args, folder, info_name = STAGES[stage]
    cmd = [PY, str(REPO / "src" / "stages" / script), "--root", str(root), "--preset", preset,
           "--seed", str(seed), "--no-progress", *args, *extra]
    before = resource.getrusage(resource.RUSAGE_CHILDREN)
    t = time.perf_counter()
    subprocess.run(cmd, check=True, env={**os.environ, "PYTHONPATH": str(REPO / "src")})
    wall = time.perf_counter() - t
    after = resource.getrusage(resource.RUSAGE_CHILDREN)
    cpu = (after.ru_utime - before.ru_utime) + (after.ru_stime - before.ru_stime)
    out = root / folder
    infos = sorted(out.glob(f"run_info_{info_name}*.json"), key=lambda p: p.stat().st_mtime)
    info = json.loads(infos[-1].read_text()) if infos else {}
    scores = json.loads((out / "scores.json").read_text()) if (out / "scores.json").exists() else {}
    off = scores.get("offline", {})
    workers = info.get("worker_peaks_mb") or {}
    # a stage's peak_rss_mb is the larger of its own and its largest finished child's, and a
    # LocalCluster's workers are the client's children: on a cluster the client's own figure
    peak = info.get("own_peak_rss_mb", info.get("peak_rss_mb")) if workers else info.get("peak_rss_mb")
    return {"wall": wall, "cpu": cpu, "peak": peak, "workers": workers,
            "uauc": off.get("weighted") if isinstance(off, dict) else None, "info": info}


def fmt(v, spec: str, none: str = "-") -> str:
    return none if v is None else format(v, spec)


def main() -> int:
    p = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    p.add_argument("--preset", default="small", choices=["tiny", "small", "full", "final"])
    p.add_argument("--seed", type=int, default=2021)
    p.add_argument("--root", default=None, help="artifact root holding data/ (default /tmp/wbdc_bench_<preset>)")
    p.add_argument("--workers", type=int, default=2, help="LocalCluster workers (default 2)")
    p.add_argument("--stages", default="features,lgb,mmoe", help=f"comma list of {','.join(STAGES)}")
    p.add_argument("--set", action="append", default=[], help="config override passed to every run")
    args = p.parse_args()
    stages = [s for s in args.stages.split(",") if s]
    bad = [s for s in stages if s not in STAGES]
    if bad:
        p.error(f"unknown stage {bad[0]} (choose from {', '.join(STAGES)})")
    if "features" not in stages:
        stages.insert(0, "features")          # the models read the mode's own store
    root = Path(args.root or f"/tmp/wbdc_bench_{args.preset}").resolve()
    ensure_prepared(root, args.preset, args.seed)
    extra = [x for s in args.set for x in ("--set", s)]
    modes = {"one process": [], f"local:{args.workers}": ["--set", f"cluster.address=local:{args.workers}"]}
    res: dict[tuple[str, str], dict] = {}
    for mode, flag in modes.items():
        run_root = root / "bench_cluster" / mode.replace(" ", "_").replace(":", "")
        run_root.mkdir(parents=True, exist_ok=True)
        if not (run_root / "data").exists():
            os.symlink(root / "data", run_root / "data", target_is_directory=True)
        for stage in stages:
            print(f"--- {stage}, {mode}", file=sys.stderr, flush=True)
            res[(stage, mode)] = run_stage(run_root, stage, args.preset, args.seed, [*flag, *extra])

    meta = json.loads((root / "data" / "prepared" / "meta.json").read_text())
    print(f"\npreset {args.preset} (seed {args.seed}): {meta['n_actions']:,} action rows + {meta['n_test']:,} test "
          f"rows; {os.cpu_count()} cores")
    head = (f"{'stage':<9}{'mode':<13}{'wall s':>9}{'CPU s':>9}{'client MB':>11}{'workers MB':>22}"
            f"{'sum MB':>9}{'uAUC':>9}{'wall x':>8}{'uAUC diff':>10}")
    print(head)
    print("-" * len(head))
    one = "one process"
    for stage in stages:
        for mode in modes:
            r = res[(stage, mode)]
            w = list(r["workers"].values())
            total = (r["peak"] or 0) + sum(w) if w else r["peak"]
            base = res[(stage, one)]
            ratio = r["wall"] / base["wall"]
            diff = (r["uauc"] - base["uauc"]) if r["uauc"] is not None and base["uauc"] is not None else None
            print(f"{stage:<9}{mode:<13}{r['wall']:>9.1f}{r['cpu']:>9.1f}{fmt(r['peak'], ',.0f'):>11}"
                  f"{(' / '.join(f'{v:,.0f}' for v in w) or '-'):>22}{fmt(total, ',.0f'):>9}"
                  f"{fmt(r['uauc'], '.4f'):>9}{ratio:>8.2f}{fmt(diff, '+.4f'):>10}")
    print("(sum MB: the client's peak plus each worker's peak, an upper bound of the simultaneous total)")

    f = res[("features", one)]["info"]
    t = f.get("timings", {})
    if t.get("days_s") is not None and t.get("total_s"):
        serial = t["total_s"] - t["days_s"]
        print(f"\nfeatures on W machines (projected from the one-process run, not measured: {serial:.0f} s "
              f"serial on the client + the {t['days_s']:.0f} s pass over the buckets split W ways, as a "
              f"cluster cuts at least W buckets; transfers and the scatter of the shared tables not included):")
        for w in (1, 2, 4, 8, 16):
            print(f"  W={w:<3} {serial + t['days_s'] / w:>9.0f} s")
    return 0


if __name__ == "__main__":
    sys.exit(main())
