"""Benchmark the `prepare` stage: the streaming reader against the one-shot pandas reader.

For each --preset (default full) the synthetic world is generated under --root if it is not
there yet; then the old reader (wbdc/prepare.py as of --old-rev, taken from git) and the current
one each prepare it in a fresh child process.  Wall time and peak RSS of the child's process
tree (psutil, sampled every 20 ms) are printed side by side with the ratio new / old, and the
two caches are compared (parquet tables equal, npy files byte-identical).

  nice .venv/bin/python benchmarks/bench_prepare.py --preset full --root /tmp/benchroot
"""
from __future__ import annotations

import argparse
import hashlib
import subprocess
import sys
import tempfile
import time
from pathlib import Path

import psutil

REPO = Path(__file__).resolve().parents[1]
sys.path.insert(0, str(REPO / "src"))

from wbdc.paths import Paths  # noqa: E402

OLD_REV = "190022d"  # last commit with the one-shot reader

CHILD = r"""
import importlib.util, sys, warnings
sys.path.insert(0, {src!r})
warnings.simplefilter("ignore")
import wbdc
from pathlib import Path
module = {module!r}
if module:
    spec = importlib.util.spec_from_file_location("wbdc._prepare_old", module)
    P = importlib.util.module_from_spec(spec)
    sys.modules[spec.name] = P
    spec.loader.exec_module(P)
else:
    from wbdc import prepare as P
P.prepare(Path({raw!r}), Path({out!r}))
"""


def measure(code: str) -> tuple[float, float]:
    """(seconds, peak MB of the process tree) of ``python -c code``."""
    t0 = time.perf_counter()
    proc = psutil.Popen([sys.executable, "-c", code], stderr=subprocess.PIPE)
    peak = 0
    while proc.poll() is None:
        try:
            procs = [proc, *proc.children(recursive=True)]
            peak = max(peak, sum(p.memory_info().rss for p in procs if p.is_running()))
        except psutil.Error:
            pass
        time.sleep(0.02)
    secs = time.perf_counter() - t0
    err = proc.stderr.read().decode()
    if proc.returncode != 0:
        raise SystemExit(f"bench_prepare: child failed ({proc.returncode}): {err.strip().splitlines()[-1:]}")
    return secs, peak / 2**20


def same_caches(a: Path, b: Path) -> bool:
    import pyarrow.parquet as pq
    for f in ("actions.parquet", "test.parquet", "feeds.parquet"):
        if not pq.read_table(a / f).equals(pq.read_table(b / f)):
            return False
    digest = lambda p: hashlib.sha256(p.read_bytes()).hexdigest()  # noqa: E731
    return all(digest(a / f) == digest(b / f) for f in ("feed_embeddings.npy", "feed_embedding_ids.npy"))


def main() -> int:
    ap = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    ap.add_argument("--preset", default="full", help="comma list of presets (tiny, small, full)")
    ap.add_argument("--seed", type=int, default=2021)
    ap.add_argument("--root", default=str(REPO), help="artifact root holding data/synthetic (default: repo)")
    ap.add_argument("--old-rev", default=OLD_REV, help=f"git revision of the old reader (default {OLD_REV})")
    args = ap.parse_args()
    paths = Paths.at(args.root)
    rows = []
    with tempfile.TemporaryDirectory() as tmp:
        old_src = Path(tmp) / "prepare_old.py"
        old_src.write_text(subprocess.run(["git", "-C", str(REPO), "show", f"{args.old_rev}:src/wbdc/prepare.py"],
                                          capture_output=True, text=True, check=True).stdout)
        for preset in [p.strip() for p in args.preset.split(",") if p.strip()]:
            raw = paths.synthetic_raw(preset, args.seed)
            if not raw.exists():
                subprocess.run([sys.executable, str(REPO / "src/stages/make_synthetic.py"), "--preset", preset,
                                "--seed", str(args.seed), "--root", args.root, "--quiet"], check=True)
            mb = sum(f.stat().st_size for f in raw.glob("*.csv")) / 2**20
            res = {}
            for name, module in (("old", str(old_src)), ("new", "")):
                out = Path(tmp) / f"{preset}_{name}"
                code = CHILD.format(src=str(REPO / "src"), module=module, raw=str(raw), out=str(out))
                res[name] = measure(code)
            same = same_caches(Path(tmp) / f"{preset}_old", Path(tmp) / f"{preset}_new")
            rows.append((preset, mb, res, same))
    print(f"\nprepare benchmark (old = {args.old_rev}, new = working tree), seed {args.seed}")
    print(f"| preset | CSV MB | old s | new s | new/old time | old peak MB | new peak MB | new/old memory | same caches |")
    print("|---|---:|---:|---:|---:|---:|---:|---:|---|")
    for preset, mb, res, same in rows:
        (to, mo), (tn, mn) = res["old"], res["new"]
        print(f"| {preset} | {mb:,.0f} | {to:.1f} | {tn:.1f} | {tn / to:.2f} | {mo:,.0f} | {mn:,.0f} | "
              f"{mn / mo:.2f} | {'yes' if same else 'NO'} |")
    return 0 if all(r[3] for r in rows) else 1


if __name__ == "__main__":
    sys.exit(main())
