"""How fast LightGBM's stage reads its rows from the feature store: ``FeatureStore.gather`` (arrow
batches to the float32 matrix column by column, only the kept rows converted) against the
DataFrame path it replaced (``iter_rows`` / ``iter_part`` batches as pandas frames, every row
converted, then the kept rows picked), side by side in one run, each reader in a fresh child
process.

Two workloads, as the stage meets them: one action's training sample (days first..13, the rows
``action`` keeps at its ``lgb.neg_rate``, capped by ``lgb.max_train_rows``: a few percent of
every row group at the final round's size) read in the stage's pieces, and day 14 read whole,
part by part (the validation rows, read again for the predictions).  Printed per workload and
reader: rows, wall seconds, rows per second, the ratio DataFrame / gather, and whether both
readers gave the same matrix (sha256 of the bytes).

    nice .venv/bin/python benchmarks/bench_lgb_read.py --root ROOT --preset small
    nice .venv/bin/python benchmarks/bench_lgb_read.py --root ROOT --preset final --set data.memory_gb=8
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
import hashlib, json, sys, time
sys.path.insert(0, sys.argv[1])
import numpy as np
from wbdc.config import resolve_argv
from wbdc.features.store import FeatureStore
from wbdc.lgb import (LgbSettings, StoreRows, _label_bits, action_rows, cap_settings, feature_spec,
                      load_day_rows, load_rows, training_days)
from wbdc.paths import Paths
args = json.loads(sys.argv[2])
settings = LgbSettings.from_config(resolve_argv(args["argv"]))
fs = FeatureStore(Paths.at(args["root"]))


class DataFrames:
    # the store without gather: StoreRows falls back to the iter_rows / iter_part frames
    def __init__(self, fs):
        self._fs = fs

    def __getattr__(self, name):
        if name == "gather":
            raise AttributeError(name)
        return getattr(self._fs, name)


src = fs if args["reader"] == "gather" else DataFrames(fs)
names = feature_spec(fs, settings).names
if args["workload"] == "sample":
    days = training_days(fs, settings, 13)
    bits = _label_bits(fs, days)
    settings = cap_settings(settings, bits)
    rows = load_rows(fs, days, names, settings, bits=bits)
    a = args["action"]
    X = StoreRows(src, names, rows.X.blocks, 0.0).take(action_rows(rows.labels, rows.u, a, settings.neg_rate[a]))
else:
    day, _ = load_day_rows(fs, 14, names, settings)
    X = StoreRows(src, names, day.X.blocks, 0.0)
digest, n = hashlib.sha256(), 0
t = time.perf_counter()
for i in range(len(X.blocks)):
    M = X.read(i)
    n += len(M)
    digest.update(np.ascontiguousarray(M).tobytes())
    X.release()
print(json.dumps({"rows": n, "seconds": time.perf_counter() - t, "digest": digest.hexdigest(),
                  "features": len(names)}))
"""


def run(root: Path, argv: list[str], workload: str, reader: str, action: str) -> dict:
    payload = json.dumps({"root": str(root), "argv": argv, "workload": workload, "reader": reader,
                          "action": action})
    r = subprocess.run([sys.executable, "-c", CHILD, str(REPO / "src"), payload],
                       capture_output=True, text=True, check=False)
    if r.returncode != 0:
        raise SystemExit(r.stderr.strip().splitlines()[-1] if r.stderr.strip() else f"child failed ({reader})")
    return json.loads(r.stdout.strip().splitlines()[-1])


def main() -> int:
    p = argparse.ArgumentParser(description=__doc__.split("\n\n")[0],
                                formatter_class=argparse.RawDescriptionHelpFormatter, epilog=__doc__)
    p.add_argument("--root", required=True, type=Path, help="artifact root with a built feature store")
    p.add_argument("--preset", default=None, help="the store's preset (for the configuration)")
    p.add_argument("--action", default="read_comment", help="the action whose sample is read")
    p.add_argument("--set", dest="sets", action="append", default=[], help="config override")
    args = p.parse_args()
    argv = [*(["--preset", args.preset] if args.preset else []), *sum((["--set", s] for s in args.sets), [])]
    print(f"| workload | reader | rows | wall s | rows/s | DataFrame / gather | same matrix |")
    print("|---|---|---:|---:|---:|---:|---|")
    for workload, label in (("sample", f"{args.action}'s training sample"), ("day14", "day 14, every part")):
        res = {reader: run(args.root, argv, workload, reader, args.action) for reader in ("dataframe", "gather")}
        same = res["dataframe"]["digest"] == res["gather"]["digest"]
        ratio = res["dataframe"]["seconds"] / max(res["gather"]["seconds"], 1e-9)
        for reader in ("dataframe", "gather"):
            r = res[reader]
            print(f"| {label} | {reader} | {r['rows']:,} | {r['seconds']:.1f} | {r['rows'] / r['seconds']:,.0f} | "
                  f"{ratio:.2f} | {'yes' if same else 'NO'} |" if reader == "gather" else
                  f"| {label} | {reader} | {r['rows']:,} | {r['seconds']:.1f} | {r['rows'] / r['seconds']:,.0f} | | |")
        if not same:
            print(f"error: the readers gave different matrices for {label}", file=sys.stderr)
            return 1
    return 0


if __name__ == "__main__":
    sys.exit(main())
