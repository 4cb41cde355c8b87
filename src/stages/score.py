"""Stage `score`: weighted uAUC of a submission CSV against a truth CSV, like the official scorer.

    score.py SUBMISSION [TRUTH] [--json OUT]

SUBMISSION: userid, feedid and one probability column per action.  TRUTH: userid, feedid and
the 0/1 action labels (other columns, e.g. device and p_<action>, are ignored); default: the
synthetic world's truth/test_truth.csv for --preset/--seed.  A submission with a different row
count, duplicate (userid, feedid) keys, keys missing from the truth, missing columns, NaN or
values outside [0, 1] is rejected with a one-line message.  Predictions are rounded to 6
decimals before scoring; per-action uAUC and the weighted score are printed (rounded to 6
decimals) and, with --json, written to OUT together with the inputs and the resolved config.
"""
from __future__ import annotations

import argparse
import math
import sys
import warnings
from pathlib import Path

sys.path.insert(0, str(Path(__file__).resolve().parents[1]))

from wbdc.cli import run_main  # noqa: E402
from wbdc.config import add_common_args, resolve  # noqa: E402
from wbdc.io import InputError, write_json  # noqa: E402
from wbdc.metrics import UAUCWarning  # noqa: E402
from wbdc.paths import Paths  # noqa: E402
from wbdc.runinfo import StageRun  # noqa: E402
from wbdc.schema import ACTIONS  # noqa: E402
from wbdc.scoring import score_files  # noqa: E402


def default_truth(cfg: dict, root: str) -> Path:
    data = cfg["data"]
    if data.get("data_dir"):
        if data.get("truth_dir"):
            return Path(data["truth_dir"]) / "test_truth.csv"
        raise InputError("no TRUTH given: the real test labels are not public; "
                         "pass a truth CSV (userid, feedid and the action labels) or set data.truth_dir")
    return Paths.at(root).world_of(data) / "truth" / "test_truth.csv"


def main(argv: list[str] | None = None) -> int:
    p = argparse.ArgumentParser(allow_abbrev=False, description=__doc__,
                                formatter_class=argparse.RawDescriptionHelpFormatter)
    p.add_argument("submission", help="submission CSV to score")
    p.add_argument("truth", nargs="?", default=None,
                   help="truth CSV (default: <root>/data/synthetic/<preset>_seed<seed>/truth/"
                        "test_truth.csv)")
    p.add_argument("--json", default=None, metavar="OUT",
                   help="also write the scores (and inputs, config) to this JSON file")
    p.add_argument("--actions", default=None,
                   help="comma-separated actions to score (default: score.actions, all 7; "
                        "the preliminary round scored read_comment,like,click_avatar,forward)")
    add_common_args(p)
    args = p.parse_args(argv)
    cfg = resolve(args)
    sc = cfg.setdefault("score", {})
    if args.actions:
        sc["actions"] = [a.strip() for a in args.actions.split(",") if a.strip()]
    actions = list(sc.get("actions") or ACTIONS)
    unknown = [a for a in actions if a not in ACTIONS]
    if unknown:
        raise InputError(f"--actions: unknown {', '.join(unknown)} (choose from {', '.join(ACTIONS)})")
    decimals = int(sc.get("decimals", 6))
    truth = Path(args.truth) if args.truth else default_truth(cfg, args.root)
    if not truth.is_file():
        hint = "" if args.truth else "; generate it with src/stages/make_synthetic.py"
        raise FileNotFoundError(f"{truth}: truth file not found{hint}")

    out = Path(args.json) if args.json else None
    with StageRun("score", out.parent if out else None) as run:
        with warnings.catch_warnings(record=True) as caught:
            warnings.simplefilter("always", UAUCWarning)
            scores = score_files(args.submission, truth, actions, decimals)
        for w in caught:
            print(f"warning: {w.message}", file=sys.stderr)
        width = max(len(k) for k in scores)
        for k, v in scores.items():
            print(f"{k:<{width}}  {v:.{decimals}f}")
        run.info.update({"submission": str(args.submission), "truth": str(truth),
                         "weighted": scores["weighted"]})
        if out is not None:
            write_json({"scores": {k: (None if math.isnan(v) else v) for k, v in scores.items()},
                        "submission": str(Path(args.submission).resolve()),
                        "truth": str(truth.resolve()), "config": cfg}, out)
    return 0


if __name__ == "__main__":
    run_main(main)
