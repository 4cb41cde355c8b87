"""Stage `popularity`: the popularity baseline, the floor every model must beat.

Per feed, the smoothed historical rate of each action over the longest window, read from the
feature tables (no training, seconds).  It is always trained and blended, whatever
``run_all.sh --models`` says, so every model subset blends at least against it.

Reads features/ (FeatureStore) and the day-14 labels; writes models/popularity/
(pred_offline.parquet, pred_offline_sel_{a,b}.parquet -- the same predictions, nothing is
chosen on day 14 --, pred_online.parquet unless --mode offline, scores.json, config.json,
run_info_train_popularity.json).  Settings: configs/popularity.yaml.
"""
from __future__ import annotations

import argparse
import sys
from pathlib import Path

sys.path.insert(0, str(Path(__file__).resolve().parents[1]))

from wbdc.cli import run_main  # noqa: E402
from wbdc.config import add_common_args, resolve  # noqa: E402
from wbdc.paths import Paths  # noqa: E402
from wbdc.runinfo import StageRun  # noqa: E402


def main(argv: list[str] | None = None) -> int:
    p = argparse.ArgumentParser(allow_abbrev=False, description=__doc__,
                                formatter_class=argparse.RawDescriptionHelpFormatter)
    p.add_argument("--mode", choices=("offline", "online", "all"), default="all",
                   help="offline: day-14 predictions and scores only; online/all: also the test rows")
    add_common_args(p)
    args = p.parse_args(argv)
    cfg = resolve(args)
    paths = Paths.at(args.root)

    from wbdc.baselines import run_popularity
    from wbdc.features.store import FeatureStore

    out = paths.model("popularity")
    with StageRun("train_popularity", out) as run:
        scores = run_popularity(FeatureStore(paths), out, cfg["popularity"]["template"], config=cfg,
                                online=args.mode != "offline", seed=int(cfg["data"]["seed"]))
        run.info["weighted_uauc"] = scores.get("weighted")
    print(f"[popularity] day-14 weighted uAUC {scores['weighted']:.6f}", file=sys.stderr)
    return 0


if __name__ == "__main__":
    run_main(main)
