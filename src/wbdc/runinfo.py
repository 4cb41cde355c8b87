"""Stage bookkeeping: wall time, peak memory and the one-line summary every stage ends with."""
from __future__ import annotations

import resource
import sys
import time
from pathlib import Path

from .io import write_json


def peak_rss_mb() -> float:
    """Peak resident memory of this process and its finished children, in MB (the children's
    figure is the largest single child's, e.g. a LocalCluster worker's)."""
    own = resource.getrusage(resource.RUSAGE_SELF).ru_maxrss
    kids = resource.getrusage(resource.RUSAGE_CHILDREN).ru_maxrss
    return max(own, kids) / 1024.0  # ru_maxrss is KiB on Linux


def own_peak_rss_mb() -> float:
    """Peak resident memory of this process alone, in MB (Linux carries the parent's peak into
    a child across fork and exec: a stage started by a large process reports at least that)."""
    return resource.getrusage(resource.RUSAGE_SELF).ru_maxrss / 1024.0


class StageRun:
    """Context manager: times a stage and writes ``run_info.json`` into ``out_dir`` on success.

    >>> with StageRun("prepare", out_dir) as run:
    ...     run.info["rows"] = 123
    """

    def __init__(self, stage: str, out_dir: str | Path | None = None):
        self.stage = stage
        self.out_dir = Path(out_dir) if out_dir is not None else None
        self.info: dict = {}

    def __enter__(self) -> "StageRun":
        self.t0 = time.perf_counter()
        return self

    def __exit__(self, exc_type, exc, tb) -> bool:
        seconds = time.perf_counter() - self.t0
        peak = peak_rss_mb()
        if exc_type is None:
            record = {"stage": self.stage, "seconds": round(seconds, 3),
                      "peak_rss_mb": round(peak, 1), "own_peak_rss_mb": round(own_peak_rss_mb(), 1),
                      **self.info}
            if self.out_dir is not None:
                write_json(record, self.out_dir / f"run_info_{self.stage}.json")
            print(f"[{self.stage}] done in {seconds:.1f} s, peak memory {peak:.0f} MB",
                  file=sys.stderr, flush=True)
        return False
