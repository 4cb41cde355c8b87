"""Benchmark the synthetic world generator: wall time and peak memory per step and in all, per
preset, each preset generated in a fresh process (so each peak is its own).

    nice -n 10 .venv/bin/python benchmarks/bench_synthetic.py --presets tiny small full \
        --out /work/scratch/bench_synthetic

The worlds are written under --out/<preset>_seed<seed>/ and deleted afterwards unless --keep
(`final` writes about 4.8 GB).  Prints one table row per preset: users, feeds, action rows, test
rows, seconds, peak MB; and each step's seconds and cumulative peak.
"""
from __future__ import annotations

import argparse
import json
import shutil
import subprocess
import sys
import time
from pathlib import Path

REPO = Path(__file__).resolve().parents[1]
sys.path.insert(0, str(REPO / "src"))


def one(preset: str, seed: int, out: Path, null: bool) -> dict:
    from wbdc.runinfo import peak_rss_mb
    from wbdc.synthetic import generate_world
    t = time.perf_counter()
    s = generate_world(preset, seed, out, progress=True, null=null)
    return {"preset": preset, "seed": seed, "null": null,
            "seconds": round(time.perf_counter() - t, 1), "peak_rss_mb": round(peak_rss_mb()),
            "users": s["sizes"]["users"], "feeds": s["sizes"]["feeds"],
            "action_rows": s["sizes"]["user_action_rows"], "test_rows": s["sizes"]["test_rows"],
            "bytes": sum(p.stat().st_size for p in out.rglob("*") if p.is_file()),
            "steps": s["steps"]}


def main() -> int:
    p = argparse.ArgumentParser(description=__doc__,
                                formatter_class=argparse.RawDescriptionHelpFormatter)
    p.add_argument("--presets", nargs="+", default=["tiny", "small"])
    p.add_argument("--seed", type=int, default=2021)
    p.add_argument("--null", action="store_true", help="the null world")
    p.add_argument("--out", type=Path, required=True, help="scratch folder for the worlds")
    p.add_argument("--keep", action="store_true", help="keep the generated worlds")
    p.add_argument("--one", help=argparse.SUPPRESS)
    args = p.parse_args()
    if args.one:
        world = args.out / f"{args.one}_seed{args.seed}{'_null' if args.null else ''}"
        print(json.dumps(one(args.one, args.seed, world, args.null)))
        return 0
    rows = []
    for preset in args.presets:
        cmd = [sys.executable, __file__, "--one", preset, "--seed", str(args.seed),
               "--out", str(args.out)] + (["--null"] if args.null else [])
        r = subprocess.run(cmd, stdout=subprocess.PIPE, text=True, check=True)
        rec = json.loads(r.stdout.strip().splitlines()[-1])
        rows.append(rec)
        if not args.keep:
            shutil.rmtree(args.out / f"{preset}_seed{args.seed}{'_null' if args.null else ''}")
        for st in rec["steps"]:
            print(f"  {preset:6s} {st['step']:45s} {st['seconds']:8.1f} s  peak {st['peak_rss_mb']:8.0f} MB")
    print("| preset | users | feeds | action rows | test rows | seconds | peak MB | files GB |")
    print("|---|---:|---:|---:|---:|---:|---:|---:|")
    for r in rows:
        print(f"| {r['preset']} | {r['users']:,} | {r['feeds']:,} | {r['action_rows']:,} | "
              f"{r['test_rows']:,} | {r['seconds']:.1f} | {r['peak_rss_mb']:,} | "
              f"{r['bytes'] / 1e9:.2f} |")
    return 0


if __name__ == "__main__":
    sys.exit(main())
