"""Stage `blend`: per-action blend of the models' predictions by validated day-14 uAUC.

Reads models/<name>/pred_offline.parquet and pred_offline_sel_{a,b}.parquet (day-14 rows; the
latter as chosen on each user half) and pred_online.parquet (test rows) of every model folder
(or --models), the day-14 labels (data/prepared/actions.parquet) and the test rows
(data/prepared/test.parquet).  blend.scope=equal (the default) takes the plain mean of the
models (but blend.equal_exclude, the popularity baseline) and fits no weights; shared and action
search non-negative weights summing to 1 that maximise the day-14 uAUC: one vector for all
actions on the weighted uAUC (shared) or one per action (action).  Each blends either
probabilities or per-user percentile ranks (blend.methods), whichever scores better held out.

Honest scores (scores.json "models" and "blend"): the day-14 users are split in the seeded
halves every model shares (data.seed); what is chosen on one half is scored on the other, both
ways, and the two out-of-half uAUCs are averaged.  A model's choice is its iteration / epoch;
the blend's are its input and weights, fitted on one half over the models' predictions chosen
on that half.  The online weights are refitted on all users with the input of the better
cross-fitted score; their day-14 score and the models' scores at the iteration / epoch chosen
on all users are in-sample ("insample").  When the data is synthetic the true day-14
probabilities are scored too (oracle).

Writes ensemble/: pred_offline.parquet, pred_offline_sel_{a,b}.parquet, pred_online.parquet,
blend_weights.json, scores.json (layout in src/wbdc/report.py), report.md with PNG plots,
config.json, run_info_blend.json.  Settings: configs/blend.yaml (--set blend.KEY=VALUE).
"""
from __future__ import annotations

import argparse
import sys
import warnings
from pathlib import Path

sys.path.insert(0, str(Path(__file__).resolve().parents[1]))

import pandas as pd  # noqa: E402

from wbdc.blend import (OFFLINE_FILES, PRED_FILES, BlendSettings, align_truth,  # noqa: E402
                        find_models, fit_blend, load_day_labels, open_predictions)
from wbdc.cli import run_main  # noqa: E402
from wbdc.config import add_common_args, resolve  # noqa: E402
from wbdc.io import InputError, read_json, require, write_json, write_parquet  # noqa: E402
from wbdc.metrics import (HALF_PRED_FILES, HALVES, UAUCWarning, crossfit_scores,  # noqa: E402
                          group_by_user, split_halves, weighted_uauc)
from wbdc.paths import Paths  # noqa: E402
from wbdc.report import empty_scores, render_report, rounded  # noqa: E402
from wbdc.runinfo import StageRun  # noqa: E402
from wbdc.schema import ACTIONS, LAST_TRAIN_DAY  # noqa: E402

PREPARE_HINT = "run the prepare stage first (src/stages/prepare.py)"


def parse_args(argv=None) -> argparse.Namespace:
    p = argparse.ArgumentParser(allow_abbrev=False, description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    p.add_argument("--models", default=None,
                   help="comma-separated model folders to blend (default: blend.models, else every "
                        "models/<name>/ holding both prediction files)")
    p.add_argument("--methods", default=None,
                   help="comma-separated inputs to try per action: prob, rank, logit (default: blend.methods)")
    p.add_argument("--mode", choices=("offline", "online", "all"), default="all",
                   help="offline: fit and score on day 14 only (no online predictions needed); "
                        "online/all: also apply the weights to the test rows (default: all)")
    p.add_argument("--no-progress", action="store_true", help="no progress bars")
    add_common_args(p)
    return p.parse_args(argv)


def score(labels: pd.DataFrame, preds: pd.DataFrame, groups, caught: list) -> dict:
    with warnings.catch_warnings(record=True) as w:
        warnings.simplefilter("always", UAUCWarning)
        s = weighted_uauc(labels, preds, groups=groups)
    caught.extend(str(x.message) for x in w)
    return rounded(s)


def oracle_scores(paths: Paths, labels: pd.DataFrame, groups, caught: list) -> dict | None:
    meta = read_json(paths.prepared / "meta.json") if (paths.prepared / "meta.json").is_file() else {}
    if not meta.get("synthetic") or not meta.get("truth_dir"):
        return None
    f = Path(meta["truth_dir"]) / "day14_prob.csv"
    if not f.is_file():
        print(f"[blend] warning: {f} not found; no oracle score", file=sys.stderr)
        return None
    truth = align_truth(pd.read_csv(f, engine="pyarrow"), labels, str(f))
    return score(labels, truth, groups, caught)


def main(argv=None) -> int:
    args = parse_args(argv)
    cfg = resolve(args)
    b = cfg.setdefault("blend", {})
    if args.models:
        b["models"] = [m.strip() for m in args.models.split(",") if m.strip()]
    if args.methods:
        b["methods"] = [m.strip() for m in args.methods.split(",") if m.strip()]
    try:
        settings = BlendSettings.from_config(cfg)
    except ValueError as e:
        raise SystemExit(f"blend: {e}")
    paths = Paths.at(args.root)
    out = paths.ensemble
    progress = not args.no_progress

    actions_f = require(paths.prepared / "actions.parquet", PREPARE_HINT)
    test_f = require(paths.prepared / "test.parquet", PREPARE_HINT)
    with_online = args.mode != "offline"
    names, skipped = find_models(paths.models, b.get("models"),
                                 (*OFFLINE_FILES, "online") if with_online else OFFLINE_FILES)
    for s in skipped:
        print(f"[blend] warning: {s}", file=sys.stderr)
    if not names:
        need = " and ".join(PRED_FILES[w] for w in (*OFFLINE_FILES, *(("online",) if with_online else ())))
        raise FileNotFoundError(f"{paths.models}: no model folder with {need}; "
                                "run src/stages/train_lgb.py or train_nn.py")

    with StageRun("blend", out) as run:
        labels = load_day_labels(actions_f, LAST_TRAIN_DAY)
        if len(labels) == 0:
            raise InputError(f"{actions_f}: no rows of day {LAST_TRAIN_DAY} to blend on")
        test = pd.read_parquet(test_f, columns=["userid", "feedid"])
        what = f"day-{LAST_TRAIN_DAY} labels ({actions_f})"
        offline = open_predictions(paths.models, names, "offline", labels, what)
        half_preds = {h: open_predictions(paths.models, names, f"offline_sel_{h.lower()}", labels, what)
                      for h in HALVES}
        online = (open_predictions(paths.models, names, "online", test, f"test rows ({test_f})")
                  if with_online else None)
        print(f"[blend] {len(names)} models ({', '.join(names)}), {len(labels):,} day-14 rows, "
              f"{len(test):,} test rows", file=sys.stderr)
        halves = split_halves(settings.seed, labels["userid"].to_numpy())
        g14 = halves.groups

        caught: list[str] = []
        models = {n: rounded(crossfit_scores(labels, half_preds["A"].frame(n), half_preds["B"].frame(n),
                                             halves)) for n in names}
        insample_models = {n: score(labels, offline.frame(n), g14, caught) for n in names}
        fit = fit_blend(labels, offline, settings, groups=g14, progress=progress,
                        half_preds=half_preds, halves=halves)
        blend_online = (fit.weights.apply(online, group_by_user(test["userid"].to_numpy()))
                        if with_online else None)

        # every score (the oracle's reads a truth file that may be bad) before any file is written,
        # so a failure leaves the previous run's files as they were
        scores = empty_scores()
        scores.update(
            models=models,
            blend=rounded(crossfit_scores(labels, fit.half_preds["A"], fit.half_preds["B"], halves)),
            insample={"models": insample_models, "blend": score(labels, fit.offline, g14, caught)},
            oracle=oracle_scores(paths, labels, g14, caught),
            blend_weights={a: {m: round(w, 6) for m, w in fit.weights.actions[a].weights.items()}
                           for a in ACTIONS},
            blend_method={a: fit.weights.actions[a].method for a in ACTIONS},
        )
        write_parquet(fit.offline, out / "pred_offline.parquet")
        for h, f in HALF_PRED_FILES.items():
            write_parquet(fit.half_preds[h], out / f)
        if blend_online is not None:
            write_parquet(blend_online, out / "pred_online.parquet")
        elif (out / "pred_online.parquet").exists():
            (out / "pred_online.parquet").unlink()  # stale: fitted with other weights
        write_json({**fit.weights.to_json(), "settings": vars(settings) | {"methods": list(settings.methods)}},
                   out / "blend_weights.json")
        write_json(scores, out / "scores.json")
        write_json(cfg, out / "config.json")
        for msg in dict.fromkeys(caught):
            print(f"[blend] warning: {msg}", file=sys.stderr)
        run.info.update(models=names, weighted=scores["blend"]["weighted"],
                        weighted_insample=scores["insample"]["blend"]["weighted"])

        w = max(len(n) for n in [*names, "insample:blend", "oracle"]) + 9
        print(f"{'':<{w}}  " + " ".join(f"{a[:8]:>8}" for a in [*ACTIONS, "weighted"]), file=sys.stderr)
        rows = [*models.items(), ("blend", scores["blend"]),
                *((f"insample:{n}", v) for n, v in insample_models.items()),
                ("insample:blend", scores["insample"]["blend"])]
        if scores["oracle"]:
            rows.append(("oracle", scores["oracle"]))
        for n, s in rows:
            print(f"{n:<{w}}  " + " ".join("     n/a" if s[k] is None else f"{s[k]:8.5f}"
                                           for k in [*ACTIONS, "weighted"]), file=sys.stderr)
    report = render_report(paths)
    print(f"[blend] wrote {out} (report: {report})", file=sys.stderr)
    return 0


if __name__ == "__main__":
    run_main(main)
