"""Print the run's summary table (stage times, peak memory, day-14 and online scores) and add it
to ensemble/report.md. Called at the end of run_all.sh; safe to run any time."""
from __future__ import annotations

import argparse
import sys
from pathlib import Path

sys.path.insert(0, str(Path(__file__).resolve().parents[1]))

from wbdc.cli import run_main  # noqa: E402
from wbdc.config import add_common_args, resolve  # noqa: E402
from wbdc.pipeline import stage_folder  # noqa: E402
from wbdc.paths import Paths  # noqa: E402
from wbdc.summary import write_summary  # noqa: E402


def main() -> int:
    p = argparse.ArgumentParser(allow_abbrev=False, description=__doc__)
    add_common_args(p)
    p.add_argument("--total-seconds", type=float, default=None, help="wall time of the whole run")
    p.add_argument("--stages", default=None,
                   help="comma-separated stages of this run (default: every run info under the root)")
    args = p.parse_args()
    folders = None
    if args.stages:
        cfg = resolve(args)
        folders = {stage_folder(s, cfg, args.root) for s in args.stages.split(",") if s}
    print(write_summary(Paths.at(args.root), args.total_seconds, folders))
    return 0


if __name__ == "__main__":
    run_main(main)
