"""Benchmark of the out-of-core `features` stage: the same prepared data built under several
memory budgets side by side, one fresh process each.

Makes the synthetic world and the prepared caches under --root if they are missing (outside the
timing), then for each budget in --budgets runs ``src/stages/features.py --force --set
data.memory_gb=B`` into its own artifact root (sharing the prepared data) and prints per run:
user buckets, wall and CPU seconds, peak RSS of the stage's process tree, the step times, and the
ratios to the first run; then checks that every run wrote the same values (every column of every
day, compared in row-key order, column by column so a day never has to fit in memory) and times
an incremental rerun that builds nothing.

Targets (issue 13): `final` with data.memory_gb=8 within 120 min and 8 GB; `full` with
data.memory_gb=2 within 2.6 GB and the same values as an unconstrained build.

    nice .venv/bin/python benchmarks/bench_features.py --preset full --budgets auto,2
    nice .venv/bin/python benchmarks/bench_features.py --preset final --budgets 8
"""
from __future__ import annotations

import argparse
import hashlib
import json
import os
import resource
import subprocess
import sys
import time
from pathlib import Path

import numpy as np
import pyarrow.parquet as pq

REPO = Path(__file__).resolve().parents[1]
sys.path.insert(0, str(REPO / "src"))
PY = sys.executable
TARGETS = {"final": ("8", 120 * 60, 8 * 1024), "full": ("2", None, 2.6 * 1024)}


def ensure_prepared(root: Path, preset: str, seed: int) -> None:
    from wbdc.paths import Paths

    paths = Paths.at(root)
    if (paths.prepared / "meta.json").exists():
        return
    for stage in ("make_synthetic.py", "prepare.py"):
        t = time.perf_counter()
        subprocess.run([PY, str(REPO / "src" / "stages" / stage), "--root", str(root), "--preset", preset,
                        "--seed", str(seed)], check=True)
        print(f"({stage} ran in {time.perf_counter() - t:.0f} s, not part of the benchmark)")


def run_stage(root: Path, preset: str, seed: int, extra: list[str]) -> tuple[float, float, dict]:
    cmd = [PY, str(REPO / "src" / "stages" / "features.py"), "--root", str(root), "--preset", preset,
           "--seed", str(seed), "--no-progress", *extra]
    before = resource.getrusage(resource.RUSAGE_CHILDREN)
    t = time.perf_counter()
    subprocess.run(cmd, check=True)
    wall = time.perf_counter() - t
    after = resource.getrusage(resource.RUSAGE_CHILDREN)
    cpu = (after.ru_utime - before.ru_utime) + (after.ru_stime - before.ru_stime)
    return wall, cpu, json.loads((root / "features" / "run_info_features.json").read_text())


def column_digests(features: Path) -> dict[str, str]:
    """Per (day, column): sha256 of the column's values in row-key order, read part by part."""
    manifest = json.loads((features / "manifest.json").read_text())
    out = {}
    for d, entry in manifest["day_tables"].items():
        parts = entry["parts"]
        rows = [pq.read_table(features / p["file"], columns=["row"], partitioning=None).column("row").to_numpy() for p in parts]
        order = np.argsort(np.concatenate(rows), kind="stable")
        names = [c for c in pq.read_schema(features / parts[0]["file"]).names if c != "row"]
        for c in names:
            vals = np.concatenate([pq.read_table(features / p["file"], columns=[c], partitioning=None).column(c).to_numpy()
                                   for p in parts])[order]
            out[f"{d}/{c}"] = hashlib.sha256(np.ascontiguousarray(vals).tobytes()).hexdigest()
        ucols = None
        for p in parts:
            if p.get("users"):
                t = pq.read_table(features / p["users"], partitioning=None)
                ucols = ucols or {c: [] for c in t.column_names}
                for c in t.column_names:
                    ucols[c].append(t.column(c).to_numpy())
        for c, v in (ucols or {}).items():
            out[f"{d}/users/{c}"] = hashlib.sha256(np.ascontiguousarray(np.concatenate(v)).tobytes()).hexdigest()
    for name, e in manifest["pretrained"].items():
        for key in ("ids_file", "file"):
            out[f"pretrained/{name}/{key}"] = hashlib.sha256((features / e[key]).read_bytes()).hexdigest()
    return out


def main() -> int:
    p = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    p.add_argument("--preset", default="full", choices=["tiny", "small", "full", "final"])
    p.add_argument("--seed", type=int, default=2021)
    p.add_argument("--root", default=None, help="artifact root holding data/ (default /tmp/wbdc_bench_<preset>)")
    p.add_argument("--budgets", default="auto,2",
                   help="comma list of data.memory_gb values, one run each (default: auto,2)")
    p.add_argument("--set", action="append", default=[], help="config override passed to every run")
    p.add_argument("--no-compare", action="store_true", help="skip the value comparison")
    args = p.parse_args()
    root = Path(args.root or f"/tmp/wbdc_bench_{args.preset}").resolve()
    ensure_prepared(root, args.preset, args.seed)
    extra = [x for s in args.set for x in ("--set", s)]
    meta = json.loads((root / "data" / "prepared" / "meta.json").read_text())
    results = []
    for budget in args.budgets.split(","):
        run_root = root / "bench_features" / f"memory_gb={budget}"
        (run_root).mkdir(parents=True, exist_ok=True)
        if not (run_root / "data").exists():
            os.symlink(root / "data", run_root / "data", target_is_directory=True)
        wall, cpu, info = run_stage(run_root, args.preset, args.seed,
                                    ["--force", "--set", f"data.memory_gb={budget}", *extra])
        results.append((budget, run_root, wall, cpu, info))

    print(f"\nfeatures stage, preset {args.preset}: {meta['n_actions']:,} action rows + {meta['n_test']:,} "
          f"test rows, {results[0][4]['n_columns']} columns, {len(results[0][4]['built'])} days")
    rows = int(meta["n_actions"]) + int(meta["n_test"])
    head = (f"{'memory_gb':>10}{'buckets':>9}{'wall s':>10}{'CPU s':>10}{'peak MB':>10}{'disk MB':>9}"
            f"{'rows/s':>10}{'wall x':>8}{'peak x':>8}")
    print(head)
    print("-" * len(head))
    w0, p0 = results[0][2], results[0][4]["peak_rss_mb"]
    for budget, run_root, wall, cpu, info in results:
        disk = sum(f.stat().st_size for f in (run_root / "features").rglob("*") if f.is_file()) / 2**20
        print(f"{budget:>10}{info['buckets']:>9}{wall:>10.1f}{cpu:>10.1f}{info['peak_rss_mb']:>10,.0f}{disk:>9,.0f}"
              f"{rows / wall:>10,.0f}{wall / w0:>8.2f}{info['peak_rss_mb'] / p0:>8.2f}")
    for kind, pick in (("step", lambda k: not k.startswith("family_")), ("family", lambda k: k.startswith("family_"))):
        keys = [k for k in results[0][4]["timings"] if k.endswith("_s") and k != "total_s" and pick(k)]
        if not keys:
            continue
        print(f"\n{kind + ' seconds':<12} " + " ".join(f"{k[:-2].replace('family_', ''):>10}" for k in keys))
        for budget, _, _, _, info in results:
            print(f"{budget:>12} " + " ".join(f"{info['timings'].get(k, 0):>10.1f}" for k in keys))
    print("(family seconds: each family's hooks over all passes; word2vec's include its training)")

    if len(results) > 1 and not args.no_compare:
        ref = column_digests(results[0][1] / "features")
        for budget, run_root, *_ in results[1:]:
            other = column_digests(run_root / "features")
            diff = sorted(k for k in ref if other.get(k) != ref[k]) + sorted(set(other) - set(ref))
            print(f"values memory_gb={budget} vs memory_gb={results[0][0]}: "
                  + ("identical" if not diff else f"{len(diff)} columns differ, e.g. {diff[:3]}")
                  + f" ({len(ref)} day columns and tables compared)")
    wall2, _, info2 = run_stage(results[-1][1], args.preset, args.seed,
                                ["--set", f"data.memory_gb={results[-1][0]}", *extra])
    print(f"incremental rerun (nothing to build): {wall2:.1f} s wall, built {info2['built']}")
    if args.preset in TARGETS:
        budget, max_wall, max_peak = TARGETS[args.preset]
        for b, _, wall, _, info in results:
            if b == budget:
                ok = info["peak_rss_mb"] <= max_peak and (max_wall is None or wall <= max_wall)
                ratios = f"peak / target {info['peak_rss_mb'] / max_peak:.2f}" + (
                    f", wall / target {wall / max_wall:.2f}" if max_wall else "")
                lim = f"<= {max_peak:,.0f} MB" + (f", <= {max_wall} s" if max_wall else "")
                print(f"target at {args.preset}, memory_gb={b} ({lim}): {'met' if ok else 'NOT met'} ({ratios})")
    return 0


if __name__ == "__main__":
    sys.exit(main())
