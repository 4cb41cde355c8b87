"""The seven-column submission: validated, in test-file order, rounded, written atomically.

A file is written only after :func:`validate_submission` has passed, so a bad prediction table
(NaN, values outside [0, 1], a wrong row count, duplicate keys, rows not in the test file)
never reaches ``submissions/``; each refusal is an ``InputError`` with a one-line message.
"""
from __future__ import annotations

import shutil
import time
from pathlib import Path

import numpy as np
import pandas as pd

from .io import InputError, atomic_path, write_csv
from .schema import ACTIONS

KEYS = ("userid", "feedid")
SUBMISSION_COLUMNS = (*KEYS, *ACTIONS)


def validate_submission(sub: pd.DataFrame, test_keys: pd.DataFrame,
                        name: str = "submission") -> None:
    """Refuse (``InputError``) anything the official scorer would reject or misread."""
    missing = [c for c in SUBMISSION_COLUMNS if c not in sub.columns]
    if missing:
        raise InputError(f"{name}: missing columns {', '.join(missing)}")
    if len(sub) != len(test_keys):
        raise InputError(f"{name}: {len(sub):,} rows but the test file has {len(test_keys):,} "
                         "(one row per test row expected)")
    for k in KEYS:
        v = pd.to_numeric(sub[k], errors="coerce").to_numpy(np.float64, na_value=np.nan)
        bad = np.isnan(v) | (v != np.round(v))
        if bad.any():
            raise InputError(f"{name}: column {k} must hold integer ids "
                             f"(first bad value at row {int(np.argmax(bad)) + 1})")
    for a in ACTIONS:
        p = pd.to_numeric(sub[a], errors="coerce").to_numpy(np.float64, na_value=np.nan)
        nan = np.isnan(p)
        if nan.any():
            raise InputError(f"{name}: column {a} has {int(nan.sum()):,} NaN or non-numeric "
                             f"values (first at row {int(np.argmax(nan)) + 1})")
        bad = (p < 0) | (p > 1)
        if bad.any():
            i = int(np.argmax(bad))
            raise InputError(f"{name}: column {a} has {int(bad.sum()):,} values outside [0, 1] "
                             f"(first {p[i]:.6g} at row {i + 1})")
    keys = sub[list(KEYS)].reset_index(drop=True)
    dup = keys.duplicated(keep="first").to_numpy()
    if dup.any():
        i = int(np.argmax(dup))
        raise InputError(f"{name}: {int(dup.sum()):,} duplicate (userid, feedid) keys (first "
                         f"userid={keys.userid.iat[i]} feedid={keys.feedid.iat[i]} at row {i + 1})")
    pos = _positions_in_test(keys, test_keys)
    absent = pos < 0
    if absent.any():
        i = int(np.argmax(absent))
        raise InputError(f"{name}: {int(absent.sum()):,} (userid, feedid) keys are not in the "
                         f"test file (first userid={keys.userid.iat[i]} "
                         f"feedid={keys.feedid.iat[i]} at row {i + 1})")


def _positions_in_test(keys: pd.DataFrame, test_keys: pd.DataFrame) -> np.ndarray:
    """Row of each key in the test file (-1 if absent); positional fast path when aligned."""
    tk = test_keys[list(KEYS)].reset_index(drop=True)
    same = (len(keys) == len(tk)
            and np.array_equal(keys["userid"].to_numpy(), tk["userid"].to_numpy())
            and np.array_equal(keys["feedid"].to_numpy(), tk["feedid"].to_numpy()))
    if same:
        return np.arange(len(keys), dtype=np.int64)
    t = tk.astype(np.int64).assign(_t=np.arange(len(tk), dtype=np.int64))
    t = t.drop_duplicates(list(KEYS), keep="first")
    k = keys.astype(np.int64)
    merged = k.merge(t, on=list(KEYS), how="left", sort=False)
    return merged["_t"].fillna(-1).to_numpy(np.int64)


def build_submission(preds: pd.DataFrame, test_keys: pd.DataFrame, decimals: int = 6,
                     name: str = "predictions") -> pd.DataFrame:
    """Validated submission table: the 9 columns, test-file order, values rounded.

    ``preds`` holds userid, feedid and the 7 action columns (other columns are dropped) in
    any order; ``test_keys`` the test file's userid, feedid in file order.
    """
    validate_submission(preds, test_keys, name)
    keys = preds[list(KEYS)].reset_index(drop=True)
    pos = _positions_in_test(keys, test_keys)
    take = np.empty(len(pos), np.int64)
    take[pos] = np.arange(len(pos))          # test row r comes from preds row take[r]
    tk = test_keys[list(KEYS)].reset_index(drop=True)
    out = pd.DataFrame({"userid": tk["userid"].to_numpy(), "feedid": tk["feedid"].to_numpy()})
    for a in ACTIONS:
        p = pd.to_numeric(preds[a]).to_numpy(np.float64)[take]
        out[a] = np.round(np.clip(p, 0.0, 1.0), decimals)
    validate_submission(out, test_keys, "submission")
    return out


def write_submission(sub: pd.DataFrame, test_keys: pd.DataFrame, out_dir: str | Path,
                     timestamp: str | None = None, decimals: int = 6) -> tuple[Path, Path]:
    """Write ``submission_<timestamp>.csv`` and ``submission.csv`` (a copy) into ``out_dir``.

    ``sub`` is validated once more first; both files appear atomically or not at all.
    """
    validate_submission(sub, test_keys, "submission")
    if list(sub.columns) != list(SUBMISSION_COLUMNS):
        sub = sub[list(SUBMISSION_COLUMNS)]
    out_dir = Path(out_dir)
    stamp = timestamp or time.strftime("%Y%m%d_%H%M%S")
    stamped = out_dir / f"submission_{stamp}.csv"
    latest = out_dir / "submission.csv"
    write_csv(sub, stamped, float_format=f"%.{decimals}f")
    with atomic_path(latest) as tmp:
        shutil.copyfile(stamped, tmp)
    return stamped, latest
