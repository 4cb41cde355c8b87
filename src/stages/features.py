"""Stage `features`: leak-free per-day feature tables for days 2..15 from data/prepared/.

Out of core: the rows are cut into user buckets (ranges of user ids, features.buckets; auto =
the fewest whose estimated peak fits data.memory_gb) and for every target day d it writes
features/day=DD/part-BB.parquet (bucket BB's exposures of day d with their row key),
users/day=DD/part-BB.parquet (per-user history vectors), side tables for feeds and authors,
pretrained tables (feed_pca, feed_w2v, author_w2v) and features/manifest.json, which the model
stages read through wbdc.features.store.FeatureStore.  Only labels of days < d enter day d; the
values do not depend on the number of buckets.  Days whose inputs and config are unchanged are
skipped (per-day fingerprints in the manifest); an interrupted build resumes at its first
unfinished bucket.

Examples:
  .venv/bin/python src/stages/features.py                       # repo artifact root
  .venv/bin/python src/stages/features.py --root /tmp/run --set features.pca.dim=16
  .venv/bin/python src/stages/features.py --days 13 14 15 --force
  .venv/bin/python src/stages/features.py --set data.memory_gb=2     # more, smaller buckets
"""
from __future__ import annotations

import argparse
import sys
from pathlib import Path

sys.path.insert(0, str(Path(__file__).resolve().parents[1]))

from wbdc.budget import choose_buckets  # noqa: E402
from wbdc.cli import run_main  # noqa: E402
from wbdc.cluster import client_for, worker_addresses  # noqa: E402
from wbdc.config import add_common_args, resolve  # noqa: E402
from wbdc.features import build  # noqa: E402
from wbdc.io import require, write_json  # noqa: E402
from wbdc.paths import Paths  # noqa: E402
from wbdc.runinfo import StageRun  # noqa: E402


def main() -> int:
    p = argparse.ArgumentParser(allow_abbrev=False, description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    add_common_args(p)
    p.add_argument("--days", type=int, nargs="+", default=None,
                   help="target days to build (default: features.days, i.e. 2..15)")
    p.add_argument("--force", action="store_true", help="rebuild every day even when up to date")
    p.add_argument("--no-progress", action="store_true", help="no tqdm progress bar")
    args = p.parse_args()
    cfg = resolve(args)
    if args.days:
        cfg["features"]["days"] = args.days
    paths = Paths.at(args.root)
    require(paths.prepared / "meta.json", "run the prepare stage (src/stages/prepare.py)")
    choose_buckets(cfg, paths.prepared)               # before any work: fits data.memory_gb?
    out = paths.features
    with StageRun("features", out) as run, client_for(cfg, log=build._log) as client:
        # on a cluster each worker builds one bucket at a time within data.memory_gb / workers
        workers = len(worker_addresses(client)) if client is not None else 1
        n_buckets = choose_buckets(cfg, paths.prepared, workers=workers)
        summary = build.run(paths, cfg, progress=not args.no_progress, force=args.force, n_buckets=n_buckets,
                            client=client)
        write_json(cfg, out / "config.json")
        run.info.update(summary)
    t = summary["timings"]
    steps = ", ".join(f"{k[:-2]} {v:.1f}s" for k, v in t.items() if k.endswith("_s"))
    print(f"[features] built days {summary['built'] or 'none'}; {steps}", file=sys.stderr)
    if summary.get("peaks_mb"):
        peaks = ", ".join(f"{k} {v:,.0f}" for k, v in summary["peaks_mb"].items())
        print(f"[features] peak RSS (MB) reached by the end of each step: {peaks}", file=sys.stderr)
    if summary.get("worker_peaks_mb"):
        w = summary["worker_peaks_mb"]
        print(f"[features] Dask workers' peak RSS (MB): {', '.join(f'{v:,.0f}' for v in w.values())} "
              f"(sum {sum(w.values()):,.0f})", file=sys.stderr)
    return 0


if __name__ == "__main__":
    run_main(main)
