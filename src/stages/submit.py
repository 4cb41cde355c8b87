"""Stage `submit`: write the seven-column submission CSV from the blend (or one model).

Writes submissions/submission_<timestamp>.csv and submissions/submission.csv: userid, feedid,
read_comment, like, click_avatar, forward, favorite, comment, follow; one row per test row in
test-file order, probabilities rounded to 6 decimals.  Source: ensemble/pred_online.parquet
(default) or models/<name>/pred_online.parquet with --model NAME.  A table with NaN, values
outside [0, 1], a wrong row count, duplicate (userid, feedid) keys or rows not in the test file
is refused with a one-line message and nothing is written.

When the data is synthetic the submission is scored against the world's sampled test-day labels
(truth/test_truth.csv), as the leaderboard would score it; the score (and each model's own
online score) is printed, stored in ensemble/scores.json ("online", "models_online") and the
report ensemble/report.md is regenerated.  Settings: configs/blend.yaml, section submit.
"""
from __future__ import annotations

import argparse
import sys
import warnings
from pathlib import Path

sys.path.insert(0, str(Path(__file__).resolve().parents[1]))

import pandas as pd  # noqa: E402

from wbdc.blend import find_models  # noqa: E402
from wbdc.cli import run_main  # noqa: E402
from wbdc.config import add_common_args, resolve  # noqa: E402
from wbdc.io import InputError, read_json, require, write_json  # noqa: E402
from wbdc.metrics import UAUCWarning  # noqa: E402
from wbdc.paths import Paths  # noqa: E402
from wbdc.report import empty_scores, render_report, rounded  # noqa: E402
from wbdc.runinfo import StageRun  # noqa: E402
from wbdc.schema import ACTIONS  # noqa: E402
from wbdc.scoring import score_submission  # noqa: E402
from wbdc.submission import build_submission, write_submission  # noqa: E402

ENSEMBLE = "ensemble"


def parse_args(argv=None) -> argparse.Namespace:
    p = argparse.ArgumentParser(allow_abbrev=False, description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    p.add_argument("--model", default=None,
                   help="write this model's test predictions (models/NAME/pred_online.parquet) "
                        "instead of the blend's (default: blend.submit.source = ensemble)")
    p.add_argument("--timestamp", default=None,
                   help="suffix of the timestamped copy (default: now, YYYYmmdd_HHMMSS)")
    add_common_args(p)
    return p.parse_args(argv)


def source_file(paths: Paths, source: str) -> Path:
    if source == ENSEMBLE:
        return require(paths.ensemble / "pred_online.parquet",
                       "run the blend stage first (src/stages/blend.py) or pass --model NAME")
    return require(paths.model(source) / "pred_online.parquet",
                   f"run the stage that trains model {source!r} first "
                   "(src/stages/train_lgb.py or src/stages/train_nn.py)")


def online_scores(sub: pd.DataFrame, truth: pd.DataFrame, name: str, decimals: int) -> dict:
    with warnings.catch_warnings():
        warnings.simplefilter("ignore", UAUCWarning)
        return rounded(score_submission(sub, truth, ACTIONS, decimals, submission_name=name,
                                        truth_name="test_truth.csv"), decimals)


def main(argv=None) -> int:
    args = parse_args(argv)
    cfg = resolve(args)
    sub_cfg = cfg.setdefault("blend", {}).setdefault("submit", {})
    if args.model:
        sub_cfg["source"] = args.model
    source = str(sub_cfg.get("source") or ENSEMBLE)
    decimals = int(sub_cfg.get("decimals", 6))
    paths = Paths.at(args.root)
    out = paths.submissions

    test_f = require(paths.prepared / "test.parquet", "run the prepare stage first (src/stages/prepare.py)")
    pred_f = source_file(paths, source)

    with StageRun("submit", out) as run:
        test = pd.read_parquet(test_f, columns=["userid", "feedid"])
        preds = pd.read_parquet(pred_f)
        sub = build_submission(preds, test, decimals, name=str(pred_f))
        stamped, latest = write_submission(sub, test, out, args.timestamp, decimals)
        write_json(cfg, out / "config.json")
        print(f"[submit] {len(sub):,} rows from {pred_f} -> {stamped} and {latest}", file=sys.stderr)
        run.info.update(source=source, rows=len(sub), file=str(stamped))

        meta_f = paths.prepared / "meta.json"
        meta = read_json(meta_f) if meta_f.is_file() else {}
        scores_f = paths.ensemble / "scores.json"
        scores = {**empty_scores(), **(read_json(scores_f) if scores_f.is_file() else {})}
        scores.update(online=None, online_source=source, models_online=None)
        truth_f = Path(meta["truth_dir"]) / "test_truth.csv" if meta.get("truth_dir") else None
        if meta.get("synthetic") and truth_f is not None and truth_f.is_file():
            truth = pd.read_csv(truth_f, engine="pyarrow")
            scores["online"] = online_scores(sub, truth, str(latest), decimals)
            names, _ = find_models(paths.models)
            models_online = {}
            for n in names:
                f = paths.model(n) / "pred_online.parquet"
                try:
                    m = build_submission(pd.read_parquet(f), test, decimals, name=str(f))
                except InputError as e:
                    print(f"[submit] warning: no online score for {n}: {e}", file=sys.stderr)
                    continue
                models_online[n] = online_scores(m, truth, n, decimals)
            scores["models_online"] = models_online
            on = scores["online"]
            print("[submit] online (synthetic test-day labels): "
                  + ", ".join(f"{k} {v:.6f}" for k, v in on.items() if v is not None), file=sys.stderr)
            print(f"online weighted uAUC {on['weighted']}")
            run.info["online_weighted"] = on["weighted"]
        elif meta.get("synthetic"):
            print(f"[submit] warning: {truth_f} not found; no online score", file=sys.stderr)
        else:
            print("[submit] real data: no online score (the test labels are not public)", file=sys.stderr)
        write_json(scores, scores_f)
    render_report(paths)
    print(f"[submit] report: {paths.ensemble / 'report.md'}", file=sys.stderr)
    return 0


if __name__ == "__main__":
    run_main(main)
