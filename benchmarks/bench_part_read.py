"""How LightGBM's stage reads a whole feature part (day 14, the test rows) into its float32
matrix: a batch of rows at a time into the preallocated matrix (what ``StoreRows.read`` does) vs
the part's whole table read at once and converted (what it did before), side by side in one run,
each in a fresh child process that reads every part of the given days once.

Printed per reader: wall seconds, peak RSS of the child (with the same baseline: imports and
the store's manifest), peak minus the matrices' own size, and the ratios batched / whole; then
whether the matrices are identical.  A part is one user bucket of a day, so a store built in one
bucket (``features.buckets`` auto at small and full) shows the largest difference.

    nice .venv/bin/python benchmarks/bench_part_read.py --root ROOT --preset small
"""
from __future__ import annotations

import argparse
import json
import subprocess
import sys
import time
from pathlib import Path

REPO = Path(__file__).resolve().parents[1]

CHILD = r"""
import hashlib, json, resource, sys
sys.path.insert(0, sys.argv[1])
import numpy as np
from wbdc.config import resolve_argv
from wbdc.features.store import FeatureStore
from wbdc.lgb import Block, LgbSettings, StoreRows, day_parts, feature_spec
from wbdc.paths import Paths
args = json.loads(sys.argv[2])
settings = LgbSettings.from_config(resolve_argv(args["argv"]))
fs = FeatureStore(Paths.at(args["root"]))
names = feature_spec(fs, settings).names
digest, held = hashlib.sha256(), 0
for d in args["days"]:
    # the same listing of each part's rows for both readers (keys only, as load_day_rows does)
    blocks = [Block(d, df["row"].to_numpy().astype(np.int64), part=p) for p, df in enumerate(day_parts(fs, d, []))]
    seq = StoreRows(fs, names, blocks, cache_bytes=0.0)
    for p in range(len(blocks)):
        if args["reader"] == "whole":
            X = fs.read_part(d, p, names)[names].to_numpy(np.float32)
        else:
            X = seq.read(p)
        digest.update(np.ascontiguousarray(X).tobytes())
        held = max(held, X.nbytes)
        del X
print(json.dumps({"peak_mb": resource.getrusage(resource.RUSAGE_SELF).ru_maxrss / 1024,
                  "matrix_mb": held / 2**20, "digest": digest.hexdigest(), "features": len(names)}))
"""


def run(root: Path, argv: list[str], days: list[int], reader: str) -> dict:
    payload = json.dumps({"root": str(root), "argv": argv, "days": days, "reader": reader})
    t = time.perf_counter()
    r = subprocess.run([sys.executable, "-c", CHILD, str(REPO / "src"), payload],
                       capture_output=True, text=True, check=False)
    if r.returncode != 0:
        raise SystemExit(r.stderr.strip().splitlines()[-1] if r.stderr.strip() else f"child failed ({reader})")
    out = json.loads(r.stdout.strip().splitlines()[-1])
    out["wall_s"] = time.perf_counter() - t
    return out


def main() -> int:
    p = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    p.add_argument("--root", required=True, help="artifact root with features/ built")
    p.add_argument("--preset", default="small")
    p.add_argument("--seed", type=int, default=2021)
    p.add_argument("--days", default="14,15", help="comma list of days whose parts are read")
    args = p.parse_args()
    root = Path(args.root).resolve()
    if not (root / "features").is_dir():
        raise SystemExit(f"{root / 'features'}: missing; build the features stage first")
    argv = ["--preset", args.preset, "--seed", str(args.seed)]
    days = [int(x) for x in args.days.split(",") if x.strip()]
    res = {name: run(root, argv, days, name) for name in ("batched", "whole")}
    print(f"\nparts of days {days} ({res['batched']['features']} features), largest matrix "
          f"{res['batched']['matrix_mb']:,.0f} MB")
    head = f"{'reader':<10}{'wall s':>9}{'peak MB':>10}{'peak - matrix MB':>18}"
    print(head)
    print("-" * len(head))
    for name, r in res.items():
        print(f"{name:<10}{r['wall_s']:>9.1f}{r['peak_mb']:>10,.0f}{r['peak_mb'] - r['matrix_mb']:>18,.0f}")
    b, w = res["batched"], res["whole"]
    print(f"batched / whole: wall {b['wall_s'] / w['wall_s']:.2f}, peak {b['peak_mb'] / w['peak_mb']:.2f}")
    print(f"matrices identical: {b['digest'] == w['digest']}")
    return 0


if __name__ == "__main__":
    sys.exit(main())
