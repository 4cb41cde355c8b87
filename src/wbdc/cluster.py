"""The Dask cluster a stage runs on (``cluster.address``; ``run_all.sh --cluster``).

``null``: no cluster, everything in the stage's own process (the default, unchanged).
``local:N``: the stage starts a ``dask.distributed.LocalCluster`` of N single-threaded worker
processes on this machine, each limited to ``data.memory_gb / N`` (Dask pauses a worker at 80%
of its limit and restarts it at 95%), and closes it when the stage ends.
``tcp://HOST:PORT``: the stage connects to a running scheduler; the user started it and the
workers (``dask worker tcp://HOST:PORT --nthreads 1 --memory-limit ...``), each able to import
this repository (``PYTHONPATH=<repo>/src``: the scheduler too, it unpickles the task graphs), and
the workers to read and write the artifact root at the same path. :func:`check_cluster_code`
refuses, on connecting, a scheduler or worker without this code or on other versions.

What runs where (README, "Running on a Dask cluster"): features build their user buckets as
one task per bucket and word2vec as one task; LightGBM trains with ``lightgbm.dask``; the nets
train with torch DistributedDataParallel, one rank per worker.  The stage's own process is the
client: it plans, collects and writes the manifests.
"""
from __future__ import annotations

import contextlib
import logging
import pathlib
import re
from dataclasses import dataclass
from typing import Iterator

from .io import InputError

LOCAL_MAX_WORKERS = 64


class ClusterError(InputError):
    """A bad ``cluster.address`` or a scheduler that cannot be reached."""


@dataclass(frozen=True)
class Address:
    kind: str            # "local" | "tcp"
    workers: int = 0     # local: number of worker processes
    url: str = ""        # tcp: the scheduler's address

    def __str__(self) -> str:
        return f"local:{self.workers}" if self.kind == "local" else self.url


def parse_address(value) -> Address | None:
    """``cluster.address`` -> :class:`Address` (None for no cluster); a bad value is one line."""
    if value in (None, "", "none", "null"):
        return None
    text = str(value).strip()
    m = re.fullmatch(r"local:(\d+)", text)
    if m:
        n = int(m.group(1))
        if not 1 <= n <= LOCAL_MAX_WORKERS:
            raise ClusterError(f"cluster.address={text}: local:N needs 1 <= N <= {LOCAL_MAX_WORKERS}")
        return Address("local", workers=n)
    if re.fullmatch(r"(tcp|tls)://[A-Za-z0-9_.\-\[\]:]+:\d+", text):
        return Address("tcp", url=text)
    raise ClusterError(f"cluster.address={text}: expected local:N (e.g. local:2) or tcp://HOST:PORT "
                       "(a running Dask scheduler, e.g. tcp://10.0.0.5:8786)")


def is_distributed(cfg: dict) -> bool:
    return parse_address(cfg.get("cluster", {}).get("address")) is not None


def worker_memory_bytes(cfg: dict, n_workers: int) -> int:
    from .budget import memory_budget_gb
    return int(memory_budget_gb(cfg) / max(1, n_workers) * 2**30)


@contextlib.contextmanager
def client_for(cfg: dict, log=None) -> Iterator[object | None]:
    """A ``distributed.Client`` for the configured cluster (None without one), closed on exit;
    a ``local:N`` cluster is started here and shut down on exit."""
    addr = parse_address(cfg.get("cluster", {}).get("address"))
    if addr is None:
        yield None
        return
    from distributed import Client, LocalCluster

    if addr.kind == "local":
        cluster = LocalCluster(n_workers=addr.workers, threads_per_worker=1, processes=True,
                               memory_limit=worker_memory_bytes(cfg, addr.workers),
                               dashboard_address=":0", silence_logs=logging.ERROR)
        try:
            with Client(cluster) as client:
                if log:
                    log(f"started a LocalCluster of {addr.workers} worker(s), "
                        f"{worker_memory_bytes(cfg, addr.workers) / 2**30:.1f} GB each")
                yield client
        finally:
            cluster.close()
        return
    try:
        client = Client(addr.url, timeout="30s")
    except OSError as e:
        raise ClusterError(f"cluster.address={addr.url}: cannot reach the Dask scheduler ({e})") from None
    try:
        n = len(client.scheduler_info().get("workers", {}))
        if n == 0:
            client.wait_for_workers(1, timeout=60)
        check_cluster_code(client, addr.url)
        if log:
            log(f"connected to {addr.url} ({len(worker_addresses(client))} worker(s))")
        yield client
    finally:
        client.close()


# What the scheduler and every worker must share with the client: this package's source, and
# the libraries whose versions change results (Dask itself checks its own packages).
CHECKED_PACKAGES = ("numpy", "pandas", "pyarrow", "lightgbm", "torch", "gensim", "scikit-learn")


def _code_probe(packages: tuple[str, ...] = CHECKED_PACKAGES):
    """On the client, the scheduler or a worker: the wbdc source digest and the library versions
    (a plain nested function: cloudpickle sends it by value, so a process that cannot import
    wbdc still runs it and says so)."""
    def probe():
        import hashlib
        import importlib.metadata
        import pathlib
        try:
            import wbdc
        except Exception as e:  # noqa: BLE001 - reported to the client in one line
            return {"error": f"cannot import wbdc ({type(e).__name__}: {e})"}
        src = pathlib.Path(wbdc.__file__).parent
        h = hashlib.sha256()
        for f in sorted(src.rglob("*.py")):
            h.update(str(f.relative_to(src)).encode() + b"\0" + f.read_bytes())
        versions = {}
        for name in packages:
            try:
                versions[name] = importlib.metadata.version(name)    # installed, not imported
            except Exception:  # noqa: BLE001
                versions[name] = None
        return {"wbdc": h.hexdigest()[:16], "path": str(src), "versions": versions}
    return probe


def _code_mismatch(who: str, mine: dict, theirs) -> str | None:
    if not isinstance(theirs, dict):
        return f"{who}: {type(theirs).__name__}: {theirs}"
    if "error" in theirs:
        return f"{who} {theirs['error']}"
    if theirs["wbdc"] != mine["wbdc"]:
        return f"{who} runs other wbdc code ({theirs['path']}) than this client ({mine['path']})"
    diff = [f"{k} {theirs['versions'].get(k)} (client {v})" for k, v in mine["versions"].items()
            if theirs["versions"].get(k) != v]
    return f"{who} has other versions: {', '.join(diff)}" if diff else None


def check_cluster_code(client, url: str) -> None:
    """Refuse, in one line, a scheduler or worker that cannot import this repository's ``wbdc`` or
    runs other code or library versions than the client: the scheduler unpickles every task graph
    (so it needs ``PYTHONPATH=<repo>/src`` as the workers do), and a worker on another checkout
    would compute other features or models without an error."""
    probe = _code_probe()
    mine = probe()
    problems = []
    try:
        theirs = client.run_on_scheduler(probe)
    except Exception as e:  # noqa: BLE001 - anything the scheduler raises is the answer
        theirs = {"error": f"cannot run the check ({type(e).__name__}: {e})"}
    problems.append(_code_mismatch("the scheduler", mine, theirs))
    try:
        per_worker = client.run(probe, on_error="return")
    except Exception as e:  # noqa: BLE001
        per_worker = {"the workers": e}
    for w, theirs in sorted(per_worker.items()):
        if isinstance(theirs, BaseException):
            theirs = {"error": f"cannot run the check ({type(theirs).__name__}: {theirs})"}
        problems.append(_code_mismatch(f"worker {w}", mine, theirs))
    problems = [p for p in problems if p]
    if problems:
        raise ClusterError(f"cluster.address={url}: {'; '.join(problems)}; start the scheduler and every "
                           f"worker with PYTHONPATH={pathlib.Path(mine['path']).parent} and this repository's "
                           "pinned requirements (README, \"Running on a Dask cluster\")")


def worker_addresses(client) -> list[str]:
    """The cluster's worker addresses, sorted (rank order of the distributed nets)."""
    return sorted(client.scheduler_info()["workers"])


def process_peak_mb() -> float:
    """This process's peak resident memory in MB (run on a worker: that worker's)."""
    import resource
    return round(resource.getrusage(resource.RUSAGE_SELF).ru_maxrss / 1024, 1)   # Linux: KiB


def worker_peaks_mb(client) -> dict[str, float]:
    """Every worker process's peak resident memory so far, by worker address (MB; empty when
    the workers cannot be asked: a report only)."""
    try:
        return dict(sorted(client.run(process_peak_mb).items()))
    except Exception:  # noqa: BLE001 - a report only, never a reason to fail a stage
        return {}
