"""Score a submission against a truth table the way the official scorer does.

Checks first (each failure is an ``InputError`` with a one-line message naming the table):
required columns present, the same row count as the truth, numeric columns, no NaN, predictions
inside [0, 1], no duplicate (userid, feedid) key, every key found in the truth.  Then the two
tables are merged on (userid, feedid), predictions are rounded to 6 decimals and the weighted
uAUC is computed; per-action values and the weighted score are rounded to 6 decimals.

Row numbers in messages count data rows from 1 (row N is line N+1 of a CSV with a header).
"""
from __future__ import annotations

from pathlib import Path
from typing import Sequence

import numpy as np
import pandas as pd

from .io import InputError
from .metrics import weighted_uauc
from .schema import ACTIONS

KEYS = ("userid", "feedid")


def read_table(path: str | Path, what: str) -> pd.DataFrame:
    """Read a submission or truth CSV; unreadable files become one-line InputErrors."""
    path = Path(path)
    if not path.is_file():
        raise FileNotFoundError(f"{path}: {what} file not found")
    try:
        return pd.read_csv(path, engine="pyarrow")
    except Exception as e:  # pyarrow raises several types; all mean "not a valid CSV"
        first = str(e).strip().splitlines()[0] if str(e).strip() else type(e).__name__
        raise InputError(f"{path}: cannot parse {what} CSV: {first}") from None


def _numeric(df: pd.DataFrame, col: str, name: str) -> np.ndarray:
    values = pd.to_numeric(df[col], errors="coerce")
    bad = values.isna() & df[col].notna()
    if bad.any():
        i = int(np.argmax(bad.to_numpy()))
        raise InputError(f"{name}: column {col} is not numeric "
                         f"(first bad value {df[col].iloc[i]!r} at row {i + 1})")
    out = values.to_numpy(dtype=np.float64, na_value=np.nan)
    nan = np.isnan(out)
    if nan.any():
        raise InputError(f"{name}: column {col} has {int(nan.sum())} NaN values "
                         f"(first at row {int(np.argmax(nan)) + 1})")
    return out


def _keys(df: pd.DataFrame, name: str) -> pd.DataFrame:
    out = {}
    for k in KEYS:
        v = _numeric(df, k, name)
        frac = v != np.round(v)
        if frac.any():
            i = int(np.argmax(frac))
            raise InputError(f"{name}: column {k} must hold integer ids "
                             f"(found {v[i]} at row {i + 1})")
        out[k] = v.astype(np.int64)
    keys = pd.DataFrame(out)
    dup = keys.duplicated(keep="first").to_numpy()
    if dup.any():
        i = int(np.argmax(dup))
        raise InputError(f"{name}: {int(dup.sum())} duplicate (userid, feedid) keys "
                         f"(first userid={keys.userid.iat[i]} feedid={keys.feedid.iat[i]} "
                         f"at row {i + 1})")
    return keys


def _require_columns(df: pd.DataFrame, cols: Sequence[str], name: str) -> None:
    missing = [c for c in cols if c not in df.columns]
    if missing:
        raise InputError(f"{name}: missing columns: {', '.join(missing)} "
                         f"(has: {', '.join(map(str, df.columns))})")


def score_submission(submission: pd.DataFrame, truth: pd.DataFrame,
                     actions: Sequence[str] = ACTIONS, decimals: int = 6,
                     submission_name: str = "submission", truth_name: str = "truth"
                     ) -> dict[str, float]:
    """Validate ``submission`` against ``truth`` and return ``{action: uAUC, "weighted": x}``.

    ``truth`` holds userid, feedid and 0/1 label columns named after the actions (other
    columns are ignored); ``submission`` holds userid, feedid and one probability column per
    action, in any row order.  Values are rounded to ``decimals``.
    """
    unknown = [a for a in actions if a not in ACTIONS]
    if unknown or not actions:
        raise ValueError(f"actions must be a non-empty subset of {list(ACTIONS)}, got {actions}")
    cols = [*KEYS, *actions]
    _require_columns(truth, cols, truth_name)
    _require_columns(submission, cols, submission_name)
    if len(submission) != len(truth):
        raise InputError(f"{submission_name}: {len(submission):,} rows but {truth_name} has "
                         f"{len(truth):,} (one row per test row expected)")

    truth_keys = _keys(truth, truth_name)
    labels = {}
    for a in actions:
        y = _numeric(truth, a, truth_name)
        bad = (y != 0) & (y != 1)
        if bad.any():
            i = int(np.argmax(bad))
            raise InputError(f"{truth_name}: column {a} must hold 0/1 labels "
                             f"(found {y[i]} at row {i + 1})")
        labels[a] = y.astype(np.int8)

    sub_keys = _keys(submission, submission_name)
    preds = {}
    for a in actions:
        p = _numeric(submission, a, submission_name)
        bad = ~((p >= 0) & (p <= 1))  # also catches +-inf
        if bad.any():
            i = int(np.argmax(bad))
            raise InputError(f"{submission_name}: column {a} has {int(bad.sum())} values "
                             f"outside [0, 1] (first {p[i]} at row {i + 1})")
        preds[a] = p

    # position of each truth row inside the submission (inner merge on the keys)
    t = truth_keys.assign(_t=np.arange(len(truth_keys)))
    s = sub_keys.assign(_s=np.arange(len(sub_keys)))
    merged = t.merge(s, on=list(KEYS), how="left", sort=False)
    missing = merged["_s"].isna().to_numpy()
    if missing.any():
        # the key sets differ; report the first submission key the truth does not have
        extra = s.merge(t, on=list(KEYS), how="left", sort=False)["_t"].isna().to_numpy()
        i = int(np.argmax(extra))
        raise InputError(f"{submission_name}: {int(extra.sum())} (userid, feedid) keys are not "
                         f"in {truth_name} (first userid={sub_keys.userid.iat[i]} "
                         f"feedid={sub_keys.feedid.iat[i]} at row {i + 1})")
    take = merged["_s"].to_numpy(dtype=np.int64)  # truth row order is kept by a left merge
    aligned = {a: np.round(preds[a][take], decimals) for a in actions}

    scores = weighted_uauc(labels, aligned, truth_keys["userid"].to_numpy())
    return {k: (round(v, decimals) if not np.isnan(v) else float("nan"))
            for k, v in scores.items()}


def score_files(submission_path: str | Path, truth_path: str | Path,
                actions: Sequence[str] = ACTIONS, decimals: int = 6) -> dict[str, float]:
    """:func:`score_submission` on two CSV files (messages name the files)."""
    sub = read_table(submission_path, "submission")
    truth = read_table(truth_path, "truth")
    return score_submission(sub, truth, actions, decimals,
                            submission_name=str(submission_path), truth_name=str(truth_path))
