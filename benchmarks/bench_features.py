"""Benchmark of the `features` stage on a synthetic preset (default: full, 7.3M action rows).

Makes the synthetic world and the prepared caches under --root if they are missing (outside
the timing), then runs ``src/stages/features.py --force`` once in a fresh process and prints
its per-step times, total wall time, peak memory, table sizes, and the time of a second,
incremental run that should build nothing.  Target at `full`: <= 15 min, <= 12 GB peak on a
2-core machine.

    nice .venv/bin/python benchmarks/bench_features.py --preset full
"""
from __future__ import annotations

import argparse
import json
import subprocess
import sys
import time
from pathlib import Path

REPO = Path(__file__).resolve().parents[1]
sys.path.insert(0, str(REPO / "src"))
PY = sys.executable


def ensure_prepared(root: Path, preset: str, seed: int) -> None:
    from wbdc.paths import Paths

    paths = Paths.at(root)
    if (paths.prepared / "meta.json").exists():
        return
    world = paths.synthetic_world(preset, seed)
    if not (world / "wechat_algo_data1" / "user_action.csv").exists():
        t = time.perf_counter()
        stage = REPO / "src" / "stages" / "make_synthetic.py"
        if stage.exists():
            cmd = [PY, str(stage), "--root", str(root), "--preset", preset, "--seed", str(seed)]
        else:  # the stage script is not there yet: call the library directly
            cmd = [PY, "-c", "import sys; from pathlib import Path; sys.path.insert(0, sys.argv[1]);"
                   "from wbdc.synthetic import generate_world;"
                   "generate_world(sys.argv[2], int(sys.argv[3]), Path(sys.argv[4]), progress=True)",
                   str(REPO / "src"), preset, str(seed), str(world)]
        subprocess.run(cmd, check=True)
        print(f"(world generated in {time.perf_counter() - t:.0f} s, not part of the benchmark)")
    t = time.perf_counter()
    subprocess.run([PY, str(REPO / "src" / "stages" / "prepare.py"), "--root", str(root),
                    "--preset", preset, "--seed", str(seed)], check=True)
    print(f"(prepare ran in {time.perf_counter() - t:.0f} s, not part of the benchmark)")


def run_stage(root: Path, preset: str, seed: int, extra: list[str]) -> tuple[float, dict]:
    cmd = [PY, str(REPO / "src" / "stages" / "features.py"), "--root", str(root), "--preset", preset,
           "--seed", str(seed), "--no-progress", *extra]
    t = time.perf_counter()
    subprocess.run(cmd, check=True)
    wall = time.perf_counter() - t
    return wall, json.loads((root / "features" / "run_info_features.json").read_text())


def main() -> int:
    p = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    p.add_argument("--preset", default="full", choices=["tiny", "small", "full"])
    p.add_argument("--seed", type=int, default=2021)
    p.add_argument("--root", default=None, help="artifact root (default /tmp/wbdc_bench_<preset>)")
    p.add_argument("--set", action="append", default=[], help="config override passed to the stage")
    args = p.parse_args()
    root = Path(args.root or f"/tmp/wbdc_bench_{args.preset}").resolve()
    ensure_prepared(root, args.preset, args.seed)
    extra = [x for s in args.set for x in ("--set", s)]
    wall, info = run_stage(root, args.preset, args.seed, ["--force", *extra])
    t = info["timings"]
    rows = sum(info["rows"].values())
    size = sum(f.stat().st_size for f in (root / "features").rglob("*") if f.is_file())
    print(f"\nfeatures stage, preset {args.preset}: {rows:,} feature rows over {len(info['built'])} days, "
          f"{info['n_columns']} columns")
    print(f"{'step':<22}{'seconds':>10}{'share':>9}")
    for k, v in t.items():
        if k.endswith("_s") and k != "total_s":
            print(f"{k[:-2]:<22}{v:>10.1f}{v / t['total_s']:>9.1%}")
    print(f"{'total (in stage)':<22}{t['total_s']:>10.1f}")
    print(f"{'wall (process)':<22}{wall:>10.1f}")
    print(f"peak memory: {info['peak_rss_mb']:,.0f} MB; features on disk: {size / 2**20:,.0f} MB")
    wall2, info2 = run_stage(root, args.preset, args.seed, extra)
    print(f"incremental rerun (nothing to build): {wall2:.1f} s wall, built {info2['built']}")
    ok = wall <= 15 * 60 and info["peak_rss_mb"] <= 12 * 1024
    print(f"target (<= 900 s, <= 12288 MB): {'met' if ok else 'NOT met'}")
    return 0


if __name__ == "__main__":
    sys.exit(main())
