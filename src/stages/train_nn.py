"""Stage `train_nn`: a multi-task net (Shared-Bottom, OMoE, MMoE or PLE) over all 7 actions.

    train_nn.py --arch sb|omoe|mmoe|ple [--mode offline|online|all]

The architectures are registered in src/wbdc/nn/archs.py (class in wbdc/nn/models.py, section
nn.<arch> in configs/nn.yaml).

offline: train on the feature days <= 13, score the weighted uAUC on day 14 after every epoch,
         stop early, keep the best state; each user half keeps the predictions of its own best
         epoch (pred_offline_sel_{a,b}.parquet) and scores.json "offline" is cross-fitted from
         them ("offline_insample": the best epoch scored on the rows that chose it); writes
         pred_offline.parquet, scores.json, the gate
         diagnostics (gates.csv, gates.png for mmoe/ple) and checkpoint_offline.pt.
online:  retrain on days <= 14 for the offline best number of epochs (from scores.json, or
         nn.online.epochs) and predict the test day; writes pred_online.parquet and
         checkpoint_online.pt and adds an "online" entry to scores.json.
all:     offline then online (default).

Everything lands in models/<arch>/ under --root, with config.json and run_info_train_nn_<arch>.json.
With a Dask cluster (cluster.address, run_all.sh --cluster) the net trains with torch
DistributedDataParallel, one rank per worker (src/wbdc/nn/distributed.py; settings
nn.distributed); the same files are written, scores.json says "distributed".
Reads features/ (stage `features`) and data/prepared/actions.parquet (stage `prepare`, labels).
Settings: configs/nn.yaml (override with --set nn.<key>=<value>).
"""
from __future__ import annotations

import argparse
import gc
import sys
import time
from pathlib import Path

sys.path.insert(0, str(Path(__file__).resolve().parents[1]))

from wbdc.cli import run_main  # noqa: E402
from wbdc.config import add_common_args, resolve  # noqa: E402
from wbdc.nn.archs import ARCHS  # noqa: E402
from wbdc.io import InputError, read_json, write_json, write_parquet  # noqa: E402
from wbdc.paths import Paths  # noqa: E402
from wbdc.runinfo import StageRun  # noqa: E402



def parse_args(argv: list[str] | None = None) -> argparse.Namespace:
    p = argparse.ArgumentParser(allow_abbrev=False, description=__doc__,
                                formatter_class=argparse.RawDescriptionHelpFormatter)
    p.add_argument("--arch", choices=list(ARCHS), required=True,
                   help=", ".join(f"{a} = {s.title}" for a, s in ARCHS.items())
                   + " (nn.ple.n_levels=1: CGC); registry: src/wbdc/nn/archs.py")
    p.add_argument("--mode", choices=("offline", "online", "all"), default="all",
                   help="offline: validate on day 14; online: refit on days <= 14 and predict "
                        "the test day; all: both (default)")
    p.add_argument("--epochs", type=float, default=None,
                   help="maximum offline epochs (default: nn.train.epochs)")
    p.add_argument("--online-epochs", type=float, default=None,
                   help="online epochs (default: nn.online.epochs, else the offline best epoch)")
    p.add_argument("--no-progress", action="store_true", help="no progress bars (nn.train.progress=false)")
    add_common_args(p)
    return p.parse_args(argv)


def main(argv: list[str] | None = None) -> int:
    args = parse_args(argv)
    cfg = resolve(args)
    if args.epochs is not None:
        cfg["nn"]["train"]["epochs"] = args.epochs
    if args.online_epochs is not None:
        cfg["nn"]["online"]["epochs"] = args.online_epochs
    if args.no_progress:
        cfg["nn"]["train"]["progress"] = False
    paths = Paths.at(args.root)
    out = paths.model(args.arch)
    scores_path = out / "scores.json"

    # imported late so that --help stays instant
    from wbdc.features.store import FeatureStore
    from wbdc.metrics import HALF_PRED_FILES
    from wbdc.nn.diagnostics import write_gate_diagnostics
    from wbdc.cluster import client_for, worker_peaks_mb
    from wbdc.metrics import mean_predictions
    from wbdc.nn.pipeline import (aligned, average_offline, average_online, checkpoint_files, net_seed,
                                  predict_test_day, run_offline, run_online, save_checkpoint, seed_configs)

    from wbdc.nn.models import parse_funnels
    from wbdc.schema import ACTIONS
    parse_funnels(cfg["nn"]["funnels"], list(ACTIONS))     # a bad funnel stops here, in one line
    from wbdc.nn.pipeline import neg_rate
    from wbdc.nn.trainer import TrainConfig
    TrainConfig.from_dict({**cfg["nn"]["train"], "seed": 0})   # a bad nn.train value stops here
    neg_rate(cfg["nn"]["train"])                               # and a bad nn.train.neg_rate
    store = FeatureStore(paths)
    cfgs = seed_configs(cfg)
    online_epochs = cfg["nn"]["online"].get("epochs")
    seed_epochs: dict[str, float] = {}
    if args.mode == "online" and online_epochs is None:
        if not scores_path.exists():
            raise FileNotFoundError(
                f"{scores_path}: missing; run train_nn --arch {args.arch} --mode offline first "
                "(it finds the best epoch) or pass --online-epochs")
        prev = read_json(scores_path)
        if "best_epoch" not in prev:
            raise InputError(f"{scores_path}: no best_epoch; rerun train_nn --mode offline")
        online_epochs = float(prev["best_epoch"])
        seed_epochs = {str(k): float(v) for k, v in prev.get("seed_epochs", {}).items()}

    def log(msg: str) -> None:
        print(f"[train_nn] {msg}", file=sys.stderr, flush=True)

    with StageRun(f"train_nn_{args.arch}", out) as run, client_for(cfg, log) as client:
        if client is None:
            offline = lambda c: run_offline(store, args.arch, c)  # noqa: E731
            online = lambda c, epochs: run_online(store, args.arch, c, epochs)  # noqa: E731
        else:
            from wbdc.nn.distributed import run_distributed
            offline = lambda c: run_distributed(client, paths.root, args.arch, c, "offline", log=log)  # noqa: E731
            online = lambda c, epochs: run_distributed(client, paths.root, args.arch, c, "online",  # noqa: E731
                                                       epochs, log=log)
        write_json(cfg, out / "config.json")
        run.info.update({"arch": args.arch, "mode": args.mode})
        scores = read_json(scores_path) if args.mode == "online" and scores_path.exists() else {}
        if args.mode in ("offline", "all"):
            runs = []
            for c in cfgs:
                if len(cfgs) > 1:
                    log(f"{args.arch}: seed {net_seed(c)} ({len(runs) + 1} of {len(cfgs)})")
                runs.append(offline(c))
                runs[-1].seed = net_seed(c)
            res, curve = average_offline(runs, int(cfg["data"]["seed"]))
            for stale in out.glob("checkpoint_offline_seed*.pt"):
                stale.unlink()
            write_parquet(res.preds, out / "pred_offline.parquet")
            for h, f in HALF_PRED_FILES.items():
                write_parquet(res.half_preds[h], out / f)
            for f, r in zip(checkpoint_files(out, "offline", [r.seed for r in runs]), runs):
                save_checkpoint(f, args.arch, r, cfg["nn"])
            written = write_gate_diagnostics(
                res.gates, out, f"{ARCHS[args.arch].title}: mean gate weight on day 14")
            scores = {
                "offline": res.scores,
                "offline_insample": res.scores_insample,
                "best_epoch": round(res.fit.best_epoch, 4),
                "half_best_epoch": res.half_epochs,
                "epochs_run": round(res.fit.epochs_run, 4),
                "samples_per_s": round(res.fit.samples_per_s, 1),
                "train_cpu_seconds": round(res.fit.cpu_seconds, 1),
                "precision": res.fit.precision,
                "evals_per_epoch": res.fit.evals_per_epoch,
                "arch": args.arch,
                "n_params": res.n_params,
                "n_train_rows": res.n_train,
                "seconds": res.seconds,
                "gate_files": [p.name for p in written],
                "history": res.fit.history,
            }
            if len(runs) > 1:
                seed_epochs = {str(r.seed): round(r.fit.best_epoch, 4) for r in runs}
                scores["seed_epochs"] = seed_epochs
                scores["seeds"] = curve
                log(f"{args.arch}: honest weighted uAUC by seeds averaged: "
                    + ", ".join(f"{p['seeds']}: {p['average']:.4f}" for p in curve))
            if getattr(res, "distributed", None):
                scores["distributed"] = res.distributed
                run.info["distributed"] = res.distributed
            if online_epochs is None:
                online_epochs = max(res.fit.best_epoch, 1e-9)
            run.info["offline_weighted"] = res.scores.get("weighted")
            print(f"[train_nn] {args.arch} offline weighted uAUC {res.scores['weighted']:.6f} "
                  f"cross-fitted over the user halves (in-sample {res.fit.best_score:.6f}; "
                  f"best epoch {res.fit.best_epoch:g} of {res.fit.epochs_run:g}, "
                  f"{res.fit.samples_per_s:,.0f} rows/s)", file=sys.stderr)
            # written: the offline nets, their day-14 predictions (three frames of every day-14
            # row) and selection states are not held while the online refit trains (~1.5 GB at
            # the final round's size)
            del res, runs
            gc.collect()
        if args.mode == "offline":   # online files of an earlier fit would not match this one
            for stale in ("pred_online.parquet", "checkpoint_online.pt",
                          *(p.name for p in out.glob("checkpoint_online_seed*.pt"))):
                (out / stale).unlink(missing_ok=True)
        if args.mode in ("online", "all"):
            fixed = cfg["nn"]["online"].get("epochs")
            source = cfg["nn"]["online"]["predict"]
            offline_nets = checkpoint_files(out, "offline", [net_seed(c) for c in cfgs]) if source != "refit" else []
            missing = [p.name for p in offline_nets if not p.exists()]
            if missing:     # before the refit trains
                raise FileNotFoundError(
                    f"{out}: {', '.join(missing)} missing; nn.online.predict={source} predicts the test "
                    f"day with the offline nets: run train_nn --arch {args.arch} --mode offline first "
                    "(or --set nn.online.predict=refit)")
            t0 = time.perf_counter()
            runs = []
            for c in cfgs if source != "offline" else []:
                s = str(net_seed(c))
                epochs = float(fixed if fixed is not None else seed_epochs.get(s, online_epochs))
                runs.append(online(c, epochs))
                runs[-1].seed = net_seed(c)
            written = checkpoint_files(out, "online", [r.seed for r in runs])
            for f, r in zip(written, runs):
                save_checkpoint(f, args.arch, r, cfg["nn"])
            frames = [r.preds for r in runs]
            if offline_nets:
                log(f"{args.arch}: the test day predicted by the {len(offline_nets)} offline net(s) "
                    + ("too, averaged with the refit" if runs else "(no refit)")
                    + f" (nn.online.predict={source})")
                t1 = time.perf_counter()
                frames += [predict_test_day(store, p, cfg) for p in offline_nets]
                frames[len(runs):] = [aligned(f, frames[0]) for f in frames[len(runs):]]
                offline_s = round(time.perf_counter() - t1, 2)
            preds = mean_predictions(frames)
            write_parquet(preds, out / "pred_online.parquet")
            for stale in set(out.glob("checkpoint_online*.pt")) - set(written):   # another bag's, or no refit now
                stale.unlink()
            scores["online"] = {"predict": source, "n_refits": len(runs), "n_offline_nets": len(offline_nets),
                                "n_test_rows": len(preds)}
            if runs:
                res = average_online(runs)
                scores["online"].update({"epochs": round(float(online_epochs), 4),
                                         "samples_per_s": round(res.fit.samples_per_s, 1),
                                         "n_train_rows": res.n_train, "seconds": res.seconds})
                if getattr(res, "distributed", None):
                    scores["online"]["distributed"] = res.distributed
            if offline_nets:
                scores["online"]["offline_nets_seconds"] = offline_s
            scores["online"]["total_seconds"] = round(time.perf_counter() - t0, 2)
            print(f"[train_nn] {args.arch} online: "
                  + (f"{res.n_train:,} training rows, {online_epochs:g} epochs, " if runs else "no refit, ")
                  + (f"{len(offline_nets)} offline net(s) averaged in, " if offline_nets else "")
                  + f"{len(preds):,} test rows predicted",
                  file=sys.stderr)
        write_json(scores, scores_path)
        if client is not None:           # the ranks ran in the workers: their peaks (a report)
            run.info["worker_peaks_mb"] = worker_peaks_mb(client)
    return 0


if __name__ == "__main__":
    run_main(main)
