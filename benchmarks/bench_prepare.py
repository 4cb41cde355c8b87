"""Benchmark the `prepare` stage: wall time and peak memory per file at a preset's scale.

Generates the synthetic world for --preset (default full) under --root if it is not there yet,
then runs each reader of wbdc.prepare in a fresh child process so every step's peak memory is
its own, and finally the whole stage. Prints a table.

  .venv/bin/python benchmarks/bench_prepare.py --preset full
"""
from __future__ import annotations

import argparse
import json
import subprocess
import sys
import tempfile
import time
from pathlib import Path

REPO = Path(__file__).resolve().parents[1]
sys.path.insert(0, str(REPO / "src"))

from wbdc.paths import Paths  # noqa: E402

STEP = r"""
import json, resource, sys, time, warnings
sys.path.insert(0, {src!r})
warnings.simplefilter("ignore")
from pathlib import Path
from wbdc import prepare as P
raw = Path({raw!r}); step = {step!r}
t = time.perf_counter()
if step == "user_action.csv": P.read_user_action(raw / step)
elif step == "feed_info.csv": P.read_feed_info(raw / step)
elif step == "feed_embeddings.csv": P.read_feed_embeddings(raw / step)
elif step == "whole stage": P.prepare(raw, Path({out!r}))
secs = time.perf_counter() - t
print(json.dumps({{"seconds": secs, "peak_mb": resource.getrusage(resource.RUSAGE_SELF).ru_maxrss / 1024}}))
"""


def main() -> None:
    ap = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    ap.add_argument("--preset", default="full", choices=["tiny", "small", "full"])
    ap.add_argument("--seed", type=int, default=2021)
    ap.add_argument("--root", default=str(REPO), help="artifact root holding data/synthetic (default: repo)")
    args = ap.parse_args()
    paths = Paths.at(args.root)
    raw = paths.synthetic_raw(args.preset, args.seed)
    if not raw.exists():
        subprocess.run([sys.executable, str(REPO / "src/stages/make_synthetic.py"), "--preset", args.preset,
                        "--seed", str(args.seed), "--root", args.root], check=True)
    sizes = {f.name: f.stat().st_size / 2**20 for f in raw.glob("*.csv")}
    rows = []
    with tempfile.TemporaryDirectory() as tmp:
        for step in ("user_action.csv", "feed_info.csv", "feed_embeddings.csv", "whole stage"):
            code = STEP.format(src=str(REPO / "src"), raw=str(raw), step=step, out=str(Path(tmp) / "prepared"))
            r = subprocess.run([sys.executable, "-c", code], capture_output=True, text=True, check=True)
            rows.append((step, json.loads(r.stdout.strip().splitlines()[-1])))
    print(f"\nprepare benchmark, preset={args.preset} ({raw})")
    print(f"{'step':<22}{'input MB':>10}{'seconds':>10}{'peak MB':>10}")
    for step, m in rows:
        size = sizes.get(step, sum(sizes.values()))
        print(f"{step:<22}{size:>10.0f}{m['seconds']:>10.1f}{m['peak_mb']:>10.0f}")


if __name__ == "__main__":
    main()
