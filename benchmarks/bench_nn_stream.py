"""The nets trained on rows streamed from the feature store vs the same net on rows held in
memory, side by side in one run (the train_nn stage, offline, each in a fresh process).

"in memory": ``nn.stream.mode=memory`` (every training and day-14 row encoded once, the fast
path).  "streamed": ``nn.stream.mode=stream`` (shuffle buffers of ``--buffer-rows`` rows read
from the store's 16,384-row blocks, the next buffer encoded in a background thread; day 14
streamed at every evaluation too).  Same seeds, same epochs.  Printed per run: wall and CPU
seconds of the stage, its peak RSS, training rows per second (the trainer's own figure,
evaluation excluded), seconds spent reading and encoding before training, the day-14 weighted
uAUC (honest: cross-fitted over the user halves; and in-sample), then the ratios streamed / in
memory.  Targets (issue 14, at `small`): uAUC within 0.003, throughput at least 90%.

    nice .venv/bin/python benchmarks/bench_nn_stream.py --preset small --arch mmoe --epochs 2
"""
from __future__ import annotations

import argparse
import json
import resource
import shutil
import subprocess
import sys
import time
from pathlib import Path

REPO = Path(__file__).resolve().parents[1]
PY = sys.executable


def ensure_features(root: Path, preset: str, seed: int) -> None:
    if (root / "features" / "manifest.json").exists():
        return
    for stage in ("make_synthetic.py", "prepare.py", "features.py"):
        t = time.perf_counter()
        subprocess.run([PY, str(REPO / "src" / "stages" / stage), "--root", str(root), "--preset", preset,
                        "--seed", str(seed)], check=True)
        print(f"({stage} ran in {time.perf_counter() - t:.0f} s, not part of the benchmark)", flush=True)


def run(root: Path, preset: str, seed: int, arch: str, epochs: float, sets: list[str]) -> dict:
    cmd = [PY, str(REPO / "src" / "stages" / "train_nn.py"), "--root", str(root), "--preset", preset,
           "--seed", str(seed), "--arch", arch, "--mode", "offline", "--epochs", str(epochs),
           "--set", "nn.train.progress=false", *[x for s in sets for x in ("--set", s)]]
    before = resource.getrusage(resource.RUSAGE_CHILDREN)
    t = time.perf_counter()
    r = subprocess.run(cmd, capture_output=True, text=True, check=False)
    wall = time.perf_counter() - t
    after = resource.getrusage(resource.RUSAGE_CHILDREN)
    if r.returncode != 0:
        raise SystemExit(r.stderr[-3000:])
    out = root / "models" / arch
    scores = json.loads((out / "scores.json").read_text())
    info = json.loads((out / f"run_info_train_nn_{arch}.json").read_text())
    plan = [ln for ln in r.stderr.splitlines() if " rows, " in ln and "bytes per row" in ln]
    return {"wall_s": wall, "cpu_s": (after.ru_utime - before.ru_utime) + (after.ru_stime - before.ru_stime),
            "peak_mb": info["peak_rss_mb"], "rows_per_s": scores["samples_per_s"],
            "data_s": scores["seconds"]["data"], "train_s": scores["seconds"]["train"],
            "honest": scores["offline"]["weighted"], "insample": scores["offline_insample"]["weighted"],
            "best_epoch": scores["best_epoch"], "plan": plan[-1].split(";")[-1].rsplit(" (", 1)[0].strip() if plan else ""}


def main() -> int:
    p = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    p.add_argument("--preset", default="small", choices=["tiny", "small", "full", "final"])
    p.add_argument("--seed", type=int, default=2021)
    p.add_argument("--root", default=None, help="artifact root (default /tmp/wbdc_bench_<preset>); "
                   "world, prepare and features are built there if missing (not timed)")
    p.add_argument("--arch", default="mmoe")
    p.add_argument("--epochs", type=float, default=2)
    p.add_argument("--buffer-rows", type=int, default=1 << 20, help="shuffle buffer of the streamed run")
    p.add_argument("--set", action="append", default=[], help="config override passed to both runs")
    args = p.parse_args()
    root = Path(args.root or f"/tmp/wbdc_bench_{args.preset}").resolve()
    ensure_features(root, args.preset, args.seed)
    res = {}
    for name, sets in (("in memory", ["nn.stream.mode=memory"]),
                       ("streamed", ["nn.stream.mode=stream", f"nn.stream.buffer_rows={args.buffer_rows}"])):
        res[name] = run(root, args.preset, args.seed, args.arch, args.epochs, [*args.set, *sets])
        shutil.copytree(root / "models" / args.arch, root / f"bench_nn_stream_{name.replace(' ', '_')}",
                        dirs_exist_ok=True)
    print(f"\n{args.arch} at {args.preset} (seed {args.seed}), {args.epochs:g} epochs; streamed: "
          f"{res['streamed']['plan']}")
    head = (f"{'rows':<11}{'wall s':>8}{'CPU s':>8}{'peak MB':>9}{'read+encode s':>15}{'train s':>9}"
            f"{'rows/s':>9}{'best ep':>8}{'uAUC honest':>13}{'in-sample':>11}")
    print(head)
    print("-" * len(head))
    for name, r in res.items():
        print(f"{name:<11}{r['wall_s']:>8.1f}{r['cpu_s']:>8.1f}{r['peak_mb']:>9,.0f}{r['data_s']:>15.1f}"
              f"{r['train_s']:>9.1f}{r['rows_per_s']:>9,.0f}{r['best_epoch']:>8g}{r['honest']:>13.5f}"
              f"{r['insample']:>11.5f}")
    s, m = res["streamed"], res["in memory"]
    print(f"streamed / in memory: throughput {s['rows_per_s'] / m['rows_per_s']:.3f} (target >= 0.90), "
          f"peak {s['peak_mb'] / m['peak_mb']:.2f}, wall {s['wall_s'] / m['wall_s']:.2f}; "
          f"uAUC difference {s['honest'] - m['honest']:+.5f} honest, {s['insample'] - m['insample']:+.5f} "
          f"in-sample (target within 0.003)")
    return 0


if __name__ == "__main__":
    sys.exit(main())
