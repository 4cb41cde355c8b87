"""Stage `lgb`: one LightGBM binary model per action.

offline  train on days [first..13] (negatives down-sampled per action), early-stop on the
         action's day-14 uAUC; write day-14 predictions, scores, gain importance, models.
         "offline" in scores.json is cross-fitted: each user half picks its own best iteration,
         scored on the other half, both ways, averaged ("offline_insample": chosen and scored
         on all day-14 users); pred_offline_sel_{a,b}.parquet hold the per-half choices.
online   refit on days [first..14] for each action's best iteration scaled to the bigger
         training set (or --rounds), predict the test rows (day 15).  lgb.online_predict:
         refit (default), offline (no refit: the offline trees predict the test rows) or both
         (the mean of the two).
all      both (default).

Reads features/ (FeatureStore) and data/prepared/actions.parquet (labels); writes models/lgb/
(model_{offline,online}_<action>.txt, pred_offline.parquet, pred_offline_sel_{a,b}.parquet,
pred_online.parquet, scores.json,
importance.csv, eval_history.csv, config.json, run_info_train_lgb.json).
Settings: configs/lgb.yaml (override with --set lgb.KEY=VALUE, e.g. --set lgb.params.num_leaves=31).

On a Dask cluster (--set cluster.address=local:2 or a tcp:// scheduler; run_all.sh --cluster) every
action trains with lightgbm.dask on chunks read by the workers (one per store part),
lgb.dask_eval_every rounds at a time, each step scored on day 14, until the uAUC stops improving
(lightgbm.dask has no early stopping); each user half picks its step on its own users as above
(src/wbdc/lgb_dask.py).
The same files are written; scores.json adds "distributed".
"""
from __future__ import annotations

import argparse
import os
import sys
import time
from dataclasses import replace
from pathlib import Path
from types import SimpleNamespace

# OpenMP threads that spin-wait between LightGBM's parallel regions (and numba's, during the
# uAUC feval) starve each other on a shared 2-core machine: measured on tiny, 60 rounds took
# 24 s with the default policy vs 1.3 s passive. Must be set before lightgbm/numba load.
os.environ.setdefault("OMP_WAIT_POLICY", "PASSIVE")

sys.path.insert(0, str(Path(__file__).resolve().parents[1]))

from wbdc.budget import check_lgb_prepared, memory_budget_gb  # noqa: E402
from wbdc.cluster import client_for, worker_addresses, worker_peaks_mb  # noqa: E402
from wbdc.cli import run_main  # noqa: E402
from wbdc.config import add_common_args, resolve  # noqa: E402
from wbdc.features.store import FeatureStore  # noqa: E402
from wbdc.io import read_json, write_json  # noqa: E402
from wbdc.lgb import (LgbSettings, OnlineResult, average_offline, average_online,  # noqa: E402
                      capped_note, feature_spec, fit_offline, fit_online, load_boosters,
                      load_fit_data, parse_actions, predict_test_offline, remove_models,
                      save_boosters, write_offline, write_online)
from wbdc.metrics import mean_predictions  # noqa: E402
from wbdc.paths import Paths  # noqa: E402
from wbdc.runinfo import StageRun  # noqa: E402

# what scores.json says of the sample a fit read (the offline trees' rates calibrate their predictions)
FIT_INFO = ("features", "categorical", "train_days", "neg_rate", "max_train_rows", "calibrated")

ROUNDS_NOTE = {
    "rows": "online_rounds = round(best_iteration * online_train_rows / offline_train_rows) "
            "per action (rows after down-sampling)",
    "days": "online_rounds = round(best_iteration * online_days / offline_days)",
    "offline": "no refit (lgb.online_predict offline): the offline trees at their best "
               "iterations predict the test rows",
}


def parse_args() -> argparse.Namespace:
    p = argparse.ArgumentParser(allow_abbrev=False, description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    p.add_argument("--mode", choices=["offline", "online", "all"], default="all",
                   help="offline fit + day-14 scores, online refit + day-15 predictions, or both")
    p.add_argument("--actions", default=None,
                   help="comma-separated subset of actions for a quick run (default: lgb.actions, "
                        "else all 7); the weighted score then averages those actions only")
    p.add_argument("--rounds", type=int, default=None,
                   help="online rounds for every action, instead of the scaled offline best "
                        "iterations (needed for --mode online when no offline scores exist)")
    p.add_argument("--no-progress", action="store_true", help="no progress bars")
    add_common_args(p)
    return p.parse_args()


def summary(scores: dict, actions: list[str]) -> str:
    off = scores.get("offline", {})
    best, rounds = scores.get("best_iteration", {}), scores.get("online_rounds", {})
    lines = [f"{'action':<13} {'lgb uAUC':>9} {'best it':>8} {'online':>7}"]
    for a in [*actions, "weighted"]:
        fmt = lambda d: f"{d[a]:.5f}" if a in d else "-"  # noqa: E731
        lines.append(f"{a:<13} {fmt(off):>9} {best.get(a, '-'):>8} {rounds.get(a, '-'):>7}")
    return "\n".join(lines)


def note_capped(before, after, actions: list[str]) -> None:
    line = capped_note(before, after, actions)
    if line:
        print(f"[train_lgb] {line}", file=sys.stderr)


def log(msg: str) -> None:
    print(f"[train_lgb] {msg}", file=sys.stderr, flush=True)


def fit_and_write(args, settings, actions, out: Path, scores: dict, best, seconds: dict, load) -> dict:
    """``--mode``'s offline fit and/or online refit for every seed of ``lgb.seeds`` (one model
    with ``lgb.params.seed`` without it), on one machine or a cluster: their files, scores and
    step seconds.  ``load(settings)`` reads one seed's sample and returns ``(data, fit_off,
    fit_on, pred_off, info)``: ``fit_off()`` -> OfflineResult, ``fit_on(best_iteration)`` ->
    OnlineResult, ``pred_off(boosters, rounds)`` -> the test rows predicted by offline boosters
    (``lgb.online_predict`` offline or both: the offline trees, in memory after the fit or read
    from their files), ``info`` what the sample is (for scores.json).  A seed's boosters are
    written, and its data freed, before the next seed's is read; a bag's predictions are the
    seeds' mean.  ``best``: the offline best iterations of an earlier run (``--mode online``; per
    seed in a bag).  Returns the first seed's ``info``."""
    seeds = settings.fit_seeds
    bag = len(seeds) > 1
    predict = settings.online_predict
    offline, online = args.mode in ("offline", "all"), args.mode in ("online", "all")
    if offline:
        remove_models(out, "offline", actions)
    if online:
        remove_models(out, "online", actions)
    else:                                    # an earlier refit would not match this offline fit
        (out / "pred_online.parquet").unlink(missing_ok=True)
        for stale in out.glob("model_online_*.txt"):
            stale.unlink()
    offs, ons, fit_seconds, described = [], [], [], None

    def write_offline_fits() -> None:    # one model: at once (kept should the refit fail); a bag: at the end
        off, curve = average_offline(offs, seeds, settings.halves_seed, fit_seconds) if bag else (offs[0], [])
        write_offline(off, out)
        scores.update(offline=off.scores, offline_insample=off.scores_insample,
                      best_iteration=off.best_iteration, half_best_iteration=off.half_best_iteration,
                      train_rows={"offline": off.train_rows})
        if bag:
            scores.update(seeds=curve, seed_best_iteration={str(s): o.best_iteration for s, o in zip(seeds, offs)})
            log("LightGBM honest weighted uAUC by seeds averaged: "
                + ", ".join(f"{p['seeds']}: {p['average']:.4f}" for p in curve))

    for i, seed in enumerate(seeds):
        if bag:
            log(f"seed {seed} ({i + 1} of {len(seeds)} in lgb.seeds)")
        t0 = time.perf_counter()
        data, fit_off, fit_on, pred_off, info = load(settings.with_seed(seed))
        seconds["load"] = seconds.get("load", 0.0) + time.perf_counter() - t0
        if described is None:
            note_capped(settings, data.settings, actions)
            described = info
        tag = seed if bag else None
        if offline:
            t0 = time.perf_counter()
            off = fit_off()
            fit_seconds.append(time.perf_counter() - t0)
            seconds["offline"] = seconds.get("offline", 0.0) + fit_seconds[-1]
            save_boosters(off.boosters, out, "offline", off.best_iteration, tag)
            trees = (off.boosters, dict(off.best_iteration))
            off.boosters = {}
            offs.append(off)
            seed_best = off.best_iteration
            if not bag:
                write_offline_fits()
        else:
            seed_best = best.get(str(seed)) if bag and best is not None else best
            trees = None
        if online and predict != "refit":        # the offline trees over the test rows
            t0 = time.perf_counter()
            if trees is None:
                boosters = load_boosters(out, "offline", actions, tag)
                trees = (boosters, {a: b.current_iteration() for a, b in boosters.items()})
            test_off = pred_off(*trees)
            seconds["online_offline_trees"] = (seconds.get("online_offline_trees", 0.0)
                                               + time.perf_counter() - t0)
            if predict == "offline":
                ons.append(OnlineResult({}, trees[1], test_off, {}))
        trees = None
        if online and predict != "offline":
            t0 = time.perf_counter()
            on = fit_on(seed_best)
            seconds["online"] = seconds.get("online", 0.0) + time.perf_counter() - t0
            save_boosters(on.boosters, out, "online", on.rounds, tag)
            on.boosters = {}
            if predict == "both":
                on.preds = mean_predictions([on.preds, test_off])
            ons.append(on)
        if hasattr(data, "close"):
            data.close()
        del data, fit_off, fit_on, pred_off
    if offline and bag:
        write_offline_fits()
    if online:
        on = average_online(ons) if bag else ons[0]
        write_online(on, out)
        scores["online_predict"] = predict
        scores["online_rounds"] = on.rounds
        scores["online_rounds_rule"] = (ROUNDS_NOTE["offline"] if predict == "offline" else
                                        f"--rounds {args.rounds} for every action" if args.rounds
                                        else ROUNDS_NOTE[settings.round_scaling])
        if predict == "both":
            scores["online_rounds_rule"] += ("; the test rows' predictions are the mean of the "
                                             "refit's and the offline trees' (lgb.online_predict both)")
        if predict != "offline":
            scores.setdefault("train_rows", {})["online"] = on.train_rows
        else:                                # no refit: an earlier one's rows are not this run's
            scores.get("train_rows", {}).pop("online", None)
        if bag:
            scores["seed_online_rounds"] = {str(s): o.rounds for s, o in zip(seeds, ons)}
    return described


def run_on_cluster(client, args, cfg, fs, settings, actions, scores, best, out, run) -> dict:
    """The stage on a Dask cluster (wbdc.lgb_dask): the same files, lightgbm.dask models, the
    rounds chosen on a day-14 grid (lgb.dask_eval_every) instead of early stopping."""
    from wbdc.lgb_dask import cluster_data, fit_offline_dask, fit_online_dask
    seconds: dict[str, float] = {}
    workers = worker_addresses(client)

    def load(st):
        data = cluster_data(client, fs, st, args.mode)
        st = data.settings                                 # neg_rate capped by lgb.max_train_rows
        info = dict(features=len(data.spec.names), categorical=data.spec.categorical,
                    train_days=[d for d in data.parts if d < 14], neg_rate={a: st.neg_rate[a] for a in actions},
                    max_train_rows=st.max_train_rows, calibrated=st.calibrate)
        return (data, lambda: fit_offline_dask(client, data, st, actions, st.dask_eval_every,
                                               progress=not args.no_progress),
                lambda b: fit_online_dask(client, data, st, actions, best_iteration=b,
                                          fixed_rounds=args.rounds, progress=not args.no_progress),
                lambda boosters, rounds: predict_test_offline(fs, st, boosters, rounds), info)

    info = fit_and_write(args, settings, actions, out, scores, best, seconds, load)
    scores = {"actions": actions, **info, **scores,
              "distributed": {"workers": len(workers), "library": "lightgbm.dask",
                              "round_selection": f"trained {settings.dask_eval_every} rounds at a time, "
                                                 "each step scored on day 14, stopped after "
                                                 f"{settings.early_stopping_rounds} rounds without gain"}}
    write_json(scores, out / "scores.json")
    write_json(cfg, out / "config.json")
    run.info.update(mode=args.mode, actions=actions, features=info["features"],
                    cluster={"address": str(cfg["cluster"]["address"]), "workers": len(workers)},
                    worker_peaks_mb=worker_peaks_mb(client),
                    seconds_by_step={k: round(v, 2) for k, v in seconds.items()})
    if "offline" in scores:
        run.info["weighted_uauc"] = scores["offline"].get("weighted")
    return scores


def main() -> int:
    args = parse_args()
    if args.rounds is not None and args.rounds < 1:
        raise SystemExit("train_lgb: --rounds must be >= 1")
    cfg = resolve(args)
    if args.actions is not None:
        cfg["lgb"]["actions"] = args.actions
    try:
        actions = parse_actions(cfg["lgb"].get("actions"))
        settings = LgbSettings.from_config(cfg)
    except ValueError as e:
        raise SystemExit(f"train_lgb: {e}")
    cfg["lgb"]["actions"] = actions
    cfg["lgb"]["params"] = dict(settings.params)      # effective: seed and threads filled in
    paths = Paths.at(args.root)
    fs = FeatureStore(paths)
    try:
        n_features = len(feature_spec(fs, settings).names)
    except ValueError as e:
        raise SystemExit(f"train_lgb: {e}")
    # before any work: does the estimated peak fit data.memory_gb?
    need_gb = check_lgb_prepared(cfg, paths.prepared, n_features) or 0.0
    out = paths.model("lgb")
    progress = not args.no_progress

    scores: dict = {}
    best = None
    # --mode online with lgb.online_predict offline fits nothing: the offline trees predict the
    # test rows, calibrated by the rates they were fitted with (scores.json), no sample is read
    refit = not (args.mode == "online" and settings.online_predict == "offline")
    fitted: dict = {}
    if args.mode == "online" and (args.rounds is None or not refit):
        prev = out / "scores.json"
        if not prev.exists():
            raise FileNotFoundError(f"{prev}: missing; run src/stages/train_lgb.py --mode offline "
                                    "first (it records the best iterations) or pass --rounds")
        scores = read_json(prev)
        fitted = {k: scores[k] for k in FIT_INFO if k in scores}
        if not refit:
            lacking = sorted(set(FIT_INFO) - set(fitted)) or [a for a in actions
                                                             if a not in fitted["neg_rate"]]
            if lacking:
                raise FileNotFoundError(f"{prev}: the offline fit's {lacking} not recorded; run "
                                        "src/stages/train_lgb.py --mode offline first")
        elif len(settings.fit_seeds) > 1:      # a bag: each seed refits for its own best iterations
            best = scores.get("seed_best_iteration", {})
            lacking = [f"seed {s}: {a}" for s in settings.fit_seeds for a in actions
                       if a not in best.get(str(s), {})]
        else:
            best = scores.get("best_iteration", {})
            lacking = [a for a in actions if a not in best]
        if lacking:
            raise FileNotFoundError(f"{prev}: no offline best iteration for {lacking}; run "
                                    "--mode offline for them first (with the same lgb.seeds) or pass --rounds")
        scores = {k: scores[k] for k in ("offline", "offline_insample", "best_iteration",
                                         "half_best_iteration", "seeds", "seed_best_iteration",
                                         "train_rows") if k in scores}

    with StageRun("train_lgb", out) as run, \
            client_for(cfg if refit else {}, log=lambda m: print(f"[train_lgb] {m}", file=sys.stderr)) as client:
        if client is not None:
            scores = run_on_cluster(client, args, cfg, fs, settings, actions, scores, best, out, run)
            print(summary(scores, actions), file=sys.stderr)
            return 0
        seconds: dict[str, float] = {}
        # decoded feature blocks are kept when they fit a quarter of the budget and what the
        # binned rows leave of it (small data: nothing read twice); beyond, they are read from
        # the store when LightGBM needs them.  What the estimate leaves of the budget (less the
        # kept blocks) may hold every action's rows binned once (lgb.bin_once auto)
        budget = memory_budget_gb(cfg)
        cache = max(0.0, min(budget / 4, budget - need_gb)) * 2**30

        def load(st):
            data = load_fit_data(fs, st, progress=progress, cache_bytes=cache,
                                 union_bytes=max(0.0, budget - need_gb) * 2**30)
            st = data.settings                             # neg_rate capped by lgb.max_train_rows
            info = dict(features=len(data.spec.names), categorical=data.spec.categorical,
                        train_days=data.days, neg_rate={a: st.neg_rate[a] for a in actions},
                        max_train_rows=st.max_train_rows, calibrated=st.calibrate)
            loaded.append(len(data.rows))
            return (data, lambda: fit_offline(data, st, actions, progress=progress),
                    lambda b: fit_online(data, fs, st, actions, best_iteration=b,
                                         fixed_rounds=args.rounds, progress=progress),
                    # read block by block, nothing kept: the training rows (and the binned
                    # union) may still be held when the offline trees predict
                    lambda boosters, rounds: predict_test_offline(fs, st, boosters, rounds), info)

        def predict_only(st):
            st = replace(st, neg_rate={**st.neg_rate, **fitted["neg_rate"]})
            loaded.append(0)
            return (SimpleNamespace(settings=st), None, None,
                    lambda boosters, rounds: predict_test_offline(fs, st, boosters, rounds), dict(fitted))

        loaded: list[int] = []
        info = fit_and_write(args, settings, actions, out, scores, best, seconds,
                             load if refit else predict_only)
        scores = {"actions": actions, **info, **scores}
        write_json(scores, out / "scores.json")
        write_json(cfg, out / "config.json")
        run.info.update(mode=args.mode, actions=actions, features=info["features"],
                        loaded_train_rows=int(loaded[0]),
                        seconds_by_step={k: round(v, 2) for k, v in seconds.items()})
        if "offline" in scores:
            run.info["weighted_uauc"] = scores["offline"].get("weighted")
        print(summary(scores, actions), file=sys.stderr)
    return 0


if __name__ == "__main__":
    run_main(main)
