"""Atomic artifact writing, hashing and small file helpers.

Every artifact is written to a temporary name in the destination folder and renamed into
place, so a stage killed midway never leaves a file that a later run would trust.
"""
from __future__ import annotations

import contextlib
import hashlib
import json
import os
import shutil
import sys
import tempfile
from pathlib import Path
from typing import TYPE_CHECKING, Any, Iterator

if TYPE_CHECKING:        # numpy and pandas are imported where used: the stamp checks of run_all.sh
    import numpy as np   # import this module and nothing heavy
    import pandas as pd


class InputError(ValueError):
    """Bad input data: the message is one line naming file, row and column."""


def _umask() -> int:
    old = os.umask(0o022)
    os.umask(old)
    return old


# mkstemp / mkdtemp create 0600 / 0700 entries; artifacts get the usual modes (0644 / 0755 under
# the default umask) so that a submission or a feature store is readable like any other file.
FILE_MODE = 0o666 & ~_umask()
DIR_MODE = 0o777 & ~_umask()


@contextlib.contextmanager
def atomic_path(path: str | os.PathLike) -> Iterator[Path]:
    """Yield a temporary path beside ``path``; rename it to ``path`` only on success."""
    path = Path(path)
    path.parent.mkdir(parents=True, exist_ok=True)
    fd, tmp = tempfile.mkstemp(prefix=f".{path.name}.", suffix=".tmp", dir=path.parent)
    os.fchmod(fd, FILE_MODE)
    os.close(fd)
    tmp_path = Path(tmp)
    try:
        yield tmp_path
        os.replace(tmp_path, path)
    finally:
        if tmp_path.exists():
            tmp_path.unlink()


@contextlib.contextmanager
def atomic_dir(path: str | os.PathLike) -> Iterator[Path]:
    """Yield a temporary directory beside ``path``; swap it into place only on success."""
    path = Path(path)
    path.parent.mkdir(parents=True, exist_ok=True)
    tmp = Path(tempfile.mkdtemp(prefix=f".{path.name}.", suffix=".tmp", dir=path.parent))
    os.chmod(tmp, DIR_MODE)
    try:
        yield tmp
        if path.exists():
            old = path.with_name(f".{path.name}.old")
            if old.exists():
                shutil.rmtree(old)
            os.replace(path, old)
            os.replace(tmp, path)
            shutil.rmtree(old)
        else:
            os.replace(tmp, path)
    finally:
        if tmp.exists():
            shutil.rmtree(tmp)


def write_parquet(df: pd.DataFrame, path: str | os.PathLike, row_group_rows: int | None = None) -> None:
    with atomic_path(path) as tmp:
        df.to_parquet(tmp, index=False, engine="pyarrow", compression="zstd", row_group_size=row_group_rows)


def write_csv(df: pd.DataFrame, path: str | os.PathLike, **kwargs: Any) -> None:
    with atomic_path(path) as tmp:
        df.to_csv(tmp, index=False, **kwargs)


def write_npy(arr: np.ndarray, path: str | os.PathLike) -> None:
    import numpy as np
    with atomic_path(path) as tmp:
        with open(tmp, "wb") as fh:
            np.save(fh, arr)


def _json_default(o: Any) -> Any:
    np = sys.modules.get("numpy")      # a numpy value implies numpy is loaded
    if np is not None and isinstance(o, (np.integer,)):
        return int(o)
    if np is not None and isinstance(o, (np.floating,)):
        return float(o)
    if np is not None and isinstance(o, np.ndarray):
        return o.tolist()
    if isinstance(o, Path):
        return str(o)
    raise TypeError(f"not JSON serialisable: {type(o).__name__}")


def write_json(obj: Any, path: str | os.PathLike) -> None:
    with atomic_path(path) as tmp:
        tmp.write_text(json.dumps(obj, indent=2, sort_keys=False, default=_json_default) + "\n")


def read_json(path: str | os.PathLike) -> Any:
    return json.loads(Path(path).read_text())


def file_digest(path: str | os.PathLike, chunk: int = 1 << 20) -> str:
    """sha256 of a file's bytes."""
    h = hashlib.sha256()
    with open(path, "rb") as fh:
        while block := fh.read(chunk):
            h.update(block)
    return h.hexdigest()


def quick_digest(path: str | os.PathLike) -> str:
    """Cheap fingerprint of a (possibly huge) input file: size, mtime and head/tail bytes."""
    p = Path(path)
    st = p.stat()
    h = hashlib.sha256(f"{p.resolve()}|{st.st_size}|{st.st_mtime_ns}".encode())
    with open(p, "rb") as fh:
        h.update(fh.read(1 << 16))
        if st.st_size > 1 << 16:
            fh.seek(max(0, st.st_size - (1 << 16)))
            h.update(fh.read())
    return h.hexdigest()


def obj_digest(obj: Any) -> str:
    """Stable hash of a JSON-able object (configs, manifests)."""
    return hashlib.sha256(
        json.dumps(obj, sort_keys=True, default=_json_default).encode()
    ).hexdigest()


def require(path: str | os.PathLike, hint: str) -> Path:
    """Return ``path`` if it exists, else exit-worthy error telling which stage makes it."""
    p = Path(path)
    if not p.exists():
        raise FileNotFoundError(f"{p}: missing; {hint}")
    return p
