"""Hash stamps that let ``run_all.sh`` skip stages whose outputs are up to date.

A stage's stamp is a digest of (its code, the config keys it reads, the data choice, its extra
arguments, and the stamps of the stages it reads from).  The stamp file is removed before a
stage starts and written only after it succeeds, so a stage killed midway is never trusted:
the next run redoes it.  Because upstream stamps are part of the digest, a change anywhere
propagates downstream.  Each model hashes only its own keys (``wbdc.registry``: a net hashes the
shared ``nn`` keys and its own ``nn.<arch>`` section), so changing one model's configuration
reruns only that model, the blend and the submission.  ``data.memory_gb`` is left out of every
stamp: it changes how work is chunked, never the results.  ``cluster.address`` is hashed into
the model stages only as "on a cluster or not" (features are the same bytes either way).
"""
from __future__ import annotations

import hashlib
import json
from dataclasses import dataclass
from pathlib import Path

from .config import REPO_ROOT
from .io import atomic_path, obj_digest, quick_digest
from .registry import MODELS

SRC = REPO_ROOT / "src"
COMMON_CODE = ("wbdc/__init__.py", "wbdc/config.py", "wbdc/io.py", "wbdc/paths.py",
               "wbdc/schema.py", "wbdc/runinfo.py", "wbdc/cli.py")
NOT_HASHED = ("data.memory_gb", "features.buckets")   # change how work is cut, never a value


@dataclass(frozen=True)
class StageSpec:
    name: str
    script: str
    args: tuple[str, ...]          # the stage's own arguments (besides --mode)
    code: tuple[str, ...]          # files or folders under src/
    config: tuple[str, ...]        # dotted config keys hashed into the stamp
    upstream: tuple[str, ...]
    is_model: bool = False


def stage_specs(models: list[str]) -> dict[str, StageSpec]:
    """The pipeline's stages for the run's models (``registry.parse_models``), in run order."""
    specs = [
        StageSpec("make_synthetic", "make_synthetic.py", (), ("wbdc/synthetic.py",), ("data",), ()),
        StageSpec("prepare", "prepare.py", (), ("wbdc/prepare.py",), ("data",), ("make_synthetic",)),
        StageSpec("features", "features.py", (), ("wbdc/features",), ("data", "features"), ("prepare",)),
    ]
    for name in models:
        m = MODELS[name]
        specs.append(StageSpec(m.name, m.script, m.args, m.code, ("data", "cluster", *m.config),
                               ("features",), is_model=True))
    model_stages = tuple(s.name for s in specs if s.is_model)
    specs.append(StageSpec("blend", "blend.py", (), ("wbdc/blend.py", "wbdc/report.py", "wbdc/metrics.py",
                                                     "wbdc/registry.py"),
                           ("data", "blend"), model_stages))
    specs.append(StageSpec("submit", "submit.py", (), ("wbdc/submission.py", "wbdc/report.py", "wbdc/metrics.py"),
                           ("data", "blend"), ("blend",)))
    return {s.name: s for s in specs}


def code_digest(paths: tuple[str, ...], src: Path = SRC) -> str:
    h = hashlib.sha256()
    files: list[Path] = []
    for rel in (*COMMON_CODE, *paths):
        p = src / rel
        files.extend(sorted(p.rglob("*.py")) if p.is_dir() else [p])
    for f in files:
        h.update(str(f.relative_to(src)).encode())
        h.update(f.read_bytes() if f.exists() else b"<missing>")
    return h.hexdigest()


def config_value(cfg: dict, key: str):
    node = cfg
    for part in key.split("."):
        node = node.get(part) if isinstance(node, dict) else None
    return node


def _hashed_config(cfg: dict, keys: tuple[str, ...]) -> dict:
    out = {}
    for key in keys:
        value = config_value(cfg, key)
        if isinstance(value, dict):
            value = {k: v for k, v in value.items() if f"{key}.{k}" not in NOT_HASHED}
        if key == "cluster" and isinstance(value, dict):
            # models differ slightly on a cluster (lightgbm.dask, DDP), whichever cluster it is
            value = {"distributed": value.get("address") is not None}
        if key == "data" and isinstance(value, dict):
            if value.get("data_dir"):
                value["inputs"] = {str(f): quick_digest(f) for d in value["data_dir"]
                                   for f in sorted(Path(d).glob("*.csv"))}
        out[key] = value
    return out


def _is_synthetic(cfg: dict) -> bool:
    return not cfg.get("data", {}).get("data_dir")


def _upstream(spec: StageSpec, cfg: dict) -> tuple[str, ...]:
    return tuple(u for u in spec.upstream if u != "make_synthetic" or _is_synthetic(cfg))


class Stamps:
    def __init__(self, root: str | Path, src: Path = SRC):
        self.dir = Path(root) / ".pipeline" / "stamps"
        self.src = src

    def path(self, stage: str) -> Path:
        return self.dir / f"{stage}.json"

    def read(self, stage: str) -> str | None:
        p = self.path(stage)
        if not p.exists():
            return None
        return json.loads(p.read_text()).get("digest")

    def digest(self, spec: StageSpec, cfg: dict, extra: list[str], upstream: dict) -> str:
        payload = {
            "stage": spec.name,
            "code": code_digest((f"stages/{spec.script}", *spec.code), self.src),
            "config": _hashed_config(cfg, spec.config),
            "extra": extra,
            "upstream": upstream,
        }
        return obj_digest(payload)

    def compute(self, spec: StageSpec, cfg: dict, extra: list[str]) -> str:
        return self.digest(spec, cfg, extra, {u: self.read(u) for u in _upstream(spec, cfg)})

    def is_current(self, spec: StageSpec, cfg: dict, extra: list[str]) -> bool:
        if any(self.read(u) is None for u in _upstream(spec, cfg)):
            return False
        return self.read(spec.name) == self.compute(spec, cfg, extra)

    def chain(self, specs: dict[str, StageSpec], cfg: dict, extras: dict[str, list[str]] | None = None
              ) -> dict[str, str]:
        """Every stage's digest after a clean run of ``specs`` with ``cfg``: what the stamps would
        hold.  Comparing two chains tells exactly which stages a change reruns."""
        out: dict[str, str] = {}
        for name, spec in specs.items():
            if name == "make_synthetic" and not _is_synthetic(cfg):
                continue
            ups = {u: out[u] for u in _upstream(spec, cfg) if u in out}
            out[name] = self.digest(spec, cfg, (extras or {}).get(name, []), ups)
        return out

    def invalidate(self, stage: str) -> None:
        self.path(stage).unlink(missing_ok=True)

    def write(self, spec: StageSpec, cfg: dict, extra: list[str]) -> None:
        digest = self.compute(spec, cfg, extra)
        with atomic_path(self.path(spec.name)) as tmp:
            tmp.write_text(json.dumps({"stage": spec.name, "digest": digest}) + "\n")


def has_offline_selection(root: str | Path, model: str) -> bool:
    """The model folder holds an offline run (its day-14 predictions and scores)."""
    d = Path(root) / "models" / model
    return (d / "pred_offline.parquet").is_file() and (d / "scores.json").is_file()


def plan(specs: dict[str, StageSpec], cfg: dict, root: str | Path, mode: str) -> list[tuple[str, str, list[str]]]:
    """The stages ``run_all.sh`` runs, in order: (name, script, arguments).

    With ``mode == "online"`` a model whose offline selection (best iteration / epoch, day-14
    predictions for the blend weights) is not in the root yet runs ``--mode all`` instead, so
    online mode on a fresh root does what it needs rather than failing half way.
    """
    steps: list[tuple[str, str, list[str]]] = []
    for name, spec in specs.items():
        if name == "make_synthetic" and not _is_synthetic(cfg):
            continue
        if name == "submit" and mode == "offline":
            continue
        args = list(spec.args)
        if spec.is_model or name == "blend":
            m = mode
            if spec.is_model and mode == "online" and MODELS[name].needs_offline_for_online \
                    and not has_offline_selection(root, name):
                m = "all"
            args += ["--mode", m]
        if name == "blend":
            args += ["--models", ",".join(s.name for s in specs.values() if s.is_model)]
        steps.append((name, spec.script, args))
    return steps


def stage_folder(stage: str, cfg: dict, root: str | Path) -> str:
    """Where a stage writes its run info, relative to the root (the run summary's filter)."""
    from .paths import Paths

    paths = Paths.at(root)
    if stage == "make_synthetic":
        world = paths.world_of(cfg["data"])
        return str(world.relative_to(paths.root))
    fixed = {"prepare": paths.prepared, "features": paths.features, "blend": paths.ensemble,
             "submit": paths.submissions}
    folder = fixed.get(stage, paths.model(stage))
    return str(folder.relative_to(paths.root))
