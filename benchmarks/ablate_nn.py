#!/usr/bin/env python
"""Ablation of the nets' options: honest day-14 weighted uAUC per variant and seed.

    benchmarks/ablate_nn.py --root ROOT --arch mmoe --seeds 1,2 \\
        --variant base= --variant history=nn.features.history_len=32

``ROOT`` holds a built feature store (``bash run_all.sh --preset small --models lgb`` or the
features stage).  Each (variant, seed) runs ``src/stages/train_nn.py --mode offline`` in a fresh
process, in its own root under ``ROOT/ablation/`` (``data/`` and ``features/`` linked, so the
store is shared and never rebuilt).  A variant is ``name=SECTION.KEY=VALUE[,SECTION.KEY=VALUE]``
(empty after ``name=``: the configuration as it is).  The score of a run is scores.json
``offline``: cross-fitted over the two user halves (the epoch chosen on one half, scored on the
other), so no number here was selected on the rows it reports.

Prints one table: per variant the mean weighted uAUC over the seeds, the seed-to-seed spread
(max - min), the gain over the first variant, the mean per action and the mean training
seconds.  Runs that finished are reused (``--force`` retrains).
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

from wbdc.schema import ACTIONS  # noqa: E402


def parse_variant(text: str) -> tuple[str, list[str]]:
    name, sep, sets = text.partition("=")
    if not sep or not name:
        raise SystemExit(f"--variant {text!r}: expected NAME=SECTION.KEY=VALUE[,...] or NAME=")
    out, cur, depth = [], "", 0          # commas inside [...] belong to a list value
    for ch in sets:
        depth += (ch == "[") - (ch == "]")
        if ch == "," and depth == 0:
            out.append(cur)
            cur = ""
        else:
            cur += ch
    return name, [s for s in [*out, cur] if s]


def run_one(root: Path, arch: str, name: str, sets: list[str], seed: int, force: bool,
            extra: list[str]) -> dict:
    run_root = root / "ablation" / f"{name}-s{seed}"
    run_root.mkdir(parents=True, exist_ok=True)
    for sub in ("data", "features"):
        link = run_root / sub
        if not link.exists():
            link.symlink_to((root / sub).resolve())
    scores = run_root / "models" / arch / "scores.json"
    if scores.exists() and not force:
        return json.loads(scores.read_text())
    cmd = [sys.executable, str(REPO / "src/stages/train_nn.py"), "--arch", arch, "--mode", "offline",
           "--root", str(run_root), "--set", f"nn.seed={seed}", "--set", "nn.train.progress=false",
           *extra]
    for s in sets:
        cmd += ["--set", s]
    t0 = time.perf_counter()
    print(f"[ablate] {name} seed {seed}: {' '.join(sets) or '(as configured)'}", file=sys.stderr, flush=True)
    proc = subprocess.run(cmd, cwd=REPO, stdout=subprocess.DEVNULL, stderr=subprocess.PIPE, text=True)
    if proc.returncode != 0:
        tail = proc.stderr.strip().splitlines()[-3:]
        raise SystemExit(f"[ablate] {name} seed {seed} failed (rc {proc.returncode}): {' | '.join(tail)}")
    print(f"[ablate] {name} seed {seed}: {time.perf_counter() - t0:.0f} s", file=sys.stderr, flush=True)
    return json.loads(scores.read_text())


def main(argv=None) -> int:
    ap = argparse.ArgumentParser(description=__doc__.split("\n\n")[0],
                                 formatter_class=argparse.RawDescriptionHelpFormatter, epilog=__doc__)
    ap.add_argument("--root", type=Path, required=True, help="a root with data/ and features/ built")
    ap.add_argument("--arch", default="mmoe", help="the net to ablate (default mmoe)")
    ap.add_argument("--seeds", default="1,2", help="nn.seed values, comma separated (default 1,2)")
    ap.add_argument("--variant", action="append", required=True,
                    help="NAME=SECTION.KEY=VALUE[,...]; the first variant is the reference")
    ap.add_argument("--set", action="append", default=[], dest="common",
                    help="SECTION.KEY=VALUE applied to every run (e.g. nn.threads=1)")
    ap.add_argument("--force", action="store_true", help="retrain runs that already finished")
    args = ap.parse_args(argv)
    if not (args.root / "features" / "manifest.json").exists():
        raise SystemExit(f"{args.root}/features/manifest.json: missing; build the features first")
    seeds = [int(s) for s in args.seeds.split(",") if s]
    variants = [parse_variant(v) for v in args.variant]
    extra = [x for s in args.common for x in ("--set", s)]
    results = {name: [run_one(args.root, args.arch, name, sets, seed, args.force, extra) for seed in seeds]
               for name, sets in variants}

    def mean(xs):
        return sum(xs) / len(xs)

    ref = mean([r["offline"]["weighted"] for r in results[variants[0][0]]])
    head = ["variant", "weighted", "spread", "gain", *ACTIONS, "train s", "best epoch"]
    print(f"{args.arch}, seeds {','.join(map(str, seeds))}, honest day-14 (cross-fitted halves), "
          f"root {args.root}")
    print("| " + " | ".join(head) + " |")
    print("|---|" + "---:|" * (len(head) - 1))
    for name, _ in variants:
        runs = results[name]
        w = [r["offline"]["weighted"] for r in runs]
        row = [name, f"{mean(w):.4f}", f"{max(w) - min(w):.4f}", f"{mean(w) - ref:+.4f}",
               *[f"{mean([r['offline'][a] for r in runs]):.4f}" for a in ACTIONS],
               f"{mean([r['seconds']['train'] for r in runs]):.0f}",
               "/".join(f"{r['best_epoch']:g}" for r in runs)]
        print("| " + " | ".join(row) + " |")
    return 0


if __name__ == "__main__":
    raise SystemExit(main())
