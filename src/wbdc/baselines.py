"""The popularity baseline: each row scored by its feed's smoothed historical rate of the action.

The rates come straight from the feature tables (the features stage's window statistics of
the ``feedid`` key: ``(sum + a * p) / (count + a)`` over the days before the target day, the
prior ``p`` for feeds never seen), so the baseline uses exactly the history a model sees and no
label of the target day.  Within one user it ranks feeds by how often everyone else did the
action on them: the yardstick that shows how much a model adds by personalising.
"""
from __future__ import annotations

import re
from pathlib import Path
from typing import Mapping, Sequence

import numpy as np
import pandas as pd

from .io import write_json, write_parquet
from .metrics import HALF_PRED_FILES, crossfit_scores, split_halves, weighted_uauc
from .schema import ACTIONS, LAST_TRAIN_DAY, TEST_DAY

#: key names the features stage may give the feedid window statistics
FEED_KEYS = ("feed", "feedid")


def _window_rank(window: str) -> float:
    return float("inf") if window == "all" else float(window[1:])


def popularity_columns(dense: Sequence[str], template: str | None = None,
                       actions: Sequence[str] = ACTIONS) -> dict[str, str]:
    """The rate column of each action.

    With ``template`` (e.g. ``"feed_all_rate_{action}"``) the names are formatted from it;
    otherwise found among ``dense`` as ``<feed key>_<window>_rate_<action>`` over the longest
    window (``all`` beats any ``w<n>``).
    """
    dense_set = set(dense)
    out: dict[str, str] = {}
    for a in actions:
        if template is not None:
            col = template.format(action=a)
            if col not in dense_set:
                raise KeyError(f"popularity column {col!r} (popularity.template) is not a "
                               "dense feature column")
            out[a] = col
            continue
        pat = re.compile(rf"^(?:{'|'.join(FEED_KEYS)})_(all|w\d+)_rate_{re.escape(a)}$")
        found = [(m.group(1), c) for c in dense if (m := pat.match(c))]
        if not found:
            raise KeyError(f"no per-feed rate column for {a!r} among the dense features "
                           f"(expected e.g. feed_all_rate_{a}); set popularity.template")
        out[a] = max(found, key=lambda wc: _window_rank(wc[0]))[1]
    return out


def popularity_predictions(fs, day: int, columns: Mapping[str, str]) -> pd.DataFrame:
    """userid, feedid and one float32 column per action for the rows of ``day``, in order."""
    df = fs.load_day(day, columns=list(dict.fromkeys(columns.values())))
    out = df[["userid", "feedid"]].reset_index(drop=True)
    for a, col in columns.items():
        out[a] = np.clip(df[col].to_numpy(np.float32), 0.0, 1.0)
    return out


def run_popularity(fs, out_dir: Path, template: str | None = None, config: dict | None = None,
                   online: bool = True, seed: int = 2021) -> dict[str, float]:
    """Score day 14, predict day 15 (with ``online``) and write models/popularity/
    (pred_offline.parquet, pred_offline_sel_{a,b}.parquet, pred_online.parquet, scores.json,
    config.json); returns the day-14 scores.  Without ``online`` a stale pred_online.parquet is
    removed.

    Nothing is chosen on day 14, so the predictions "selected" on either user half are the
    predictions themselves; the reported score is still the mean of the two halves' uAUCs
    (``seed``: data.seed, the halves every model shares), comparable with the other models'.
    """
    out_dir = Path(out_dir)
    columns = popularity_columns(fs.columns("dense"), template)
    offline = popularity_predictions(fs, LAST_TRAIN_DAY, columns)
    labels = fs.load_labels(LAST_TRAIN_DAY)
    halves = split_halves(seed, offline["userid"].to_numpy())
    scores = crossfit_scores(labels, offline, offline, halves)
    all_users = weighted_uauc(labels, offline, groups=halves.groups)
    write_parquet(offline, out_dir / "pred_offline.parquet")
    for f in HALF_PRED_FILES.values():
        write_parquet(offline, out_dir / f)
    if online and TEST_DAY in fs.days:
        write_parquet(popularity_predictions(fs, TEST_DAY, columns), out_dir / "pred_online.parquet")
    elif not online:
        (out_dir / "pred_online.parquet").unlink(missing_ok=True)
    write_json({"offline": scores, "offline_insample": all_users, "columns": columns},
               out_dir / "scores.json")
    if config is not None:
        write_json(config, out_dir / "config.json")
    return scores
