"""Hash stamps that let ``run_all.sh`` skip stages whose outputs are up to date.

A stage's stamp is a digest of (its code, its config sections, the data choice, its extra
arguments, and the stamps of the stages it reads from).  The stamp file is removed before a
stage starts and written only after it succeeds, so a stage killed midway is never trusted:
the next run redoes it.  Because upstream stamps are part of the digest, a change anywhere
propagates downstream, and a change to one model's config reruns only that model, the blend and
the submission.
"""
from __future__ import annotations

import hashlib
import json
from dataclasses import dataclass
from pathlib import Path

from .config import REPO_ROOT
from .io import atomic_path, obj_digest, quick_digest

SRC = REPO_ROOT / "src"
COMMON_CODE = ("wbdc/__init__.py", "wbdc/config.py", "wbdc/io.py", "wbdc/paths.py",
               "wbdc/schema.py", "wbdc/runinfo.py", "wbdc/cli.py")


@dataclass(frozen=True)
class StageSpec:
    name: str
    script: str
    code: tuple[str, ...]          # files or folders under src/
    config_sections: tuple[str, ...]
    upstream: tuple[str, ...]


NET_ARCHS = ("sb", "mmoe", "ple")


def stage_specs(models: list[str]) -> dict[str, StageSpec]:
    """The pipeline's stages for the chosen models, in run order."""
    specs = [
        StageSpec("make_synthetic", "make_synthetic.py", ("wbdc/synthetic.py",), ("data",), ()),
        StageSpec("prepare", "prepare.py", ("wbdc/prepare.py",), ("data",), ("make_synthetic",)),
        StageSpec("features", "features.py", ("wbdc/features",), ("data", "features"), ("prepare",)),
    ]
    if "lgb" in models:
        specs.append(StageSpec("lgb", "train_lgb.py", ("wbdc/lgb.py", "wbdc/baselines.py", "wbdc/metrics.py"),
                               ("data", "lgb"), ("features",)))
    for arch in NET_ARCHS:
        if arch in models:
            specs.append(StageSpec(arch, "train_nn.py", ("wbdc/nn", "wbdc/metrics.py"),
                                   ("data", "nn"), ("features",)))
    model_stages = tuple(s.name for s in specs if s.name in models)
    specs.append(StageSpec("blend", "blend.py", ("wbdc/blend.py", "wbdc/report.py", "wbdc/metrics.py"),
                           ("data", "blend"), model_stages))
    specs.append(StageSpec("submit", "submit.py", ("wbdc/submission.py", "wbdc/report.py", "wbdc/metrics.py"),
                           ("data", "blend"), ("blend",)))
    return {s.name: s for s in specs}


def code_digest(paths: tuple[str, ...]) -> str:
    h = hashlib.sha256()
    files: list[Path] = []
    for rel in (*COMMON_CODE, *paths):
        p = SRC / rel
        files.extend(sorted(p.rglob("*.py")) if p.is_dir() else [p])
    for f in files:
        h.update(str(f.relative_to(SRC)).encode())
        h.update(f.read_bytes() if f.exists() else b"<missing>")
    return h.hexdigest()


class Stamps:
    def __init__(self, root: str | Path):
        self.dir = Path(root) / ".pipeline" / "stamps"

    def path(self, stage: str) -> Path:
        return self.dir / f"{stage}.json"

    def read(self, stage: str) -> str | None:
        p = self.path(stage)
        if not p.exists():
            return None
        return json.loads(p.read_text()).get("digest")

    def compute(self, spec: StageSpec, cfg: dict, extra: list[str]) -> str:
        data = dict(cfg.get("data", {}))
        if data.get("data_dir"):
            raw = Path(data["data_dir"])
            data["inputs"] = {f.name: quick_digest(f) for f in sorted(raw.glob("*.csv"))}
        upstream = {u: self.read(u) for u in spec.upstream if u != "make_synthetic" or not data.get("data_dir")}
        payload = {
            "stage": spec.name,
            "code": code_digest((f"stages/{spec.script}", *spec.code)),
            "config": {s: cfg.get(s) for s in spec.config_sections},
            "data": data,
            "extra": extra,
            "upstream": upstream,
        }
        return obj_digest(payload)

    def is_current(self, spec: StageSpec, cfg: dict, extra: list[str]) -> bool:
        if any(self.read(u) is None for u in spec.upstream
               if u != "make_synthetic" or not cfg.get("data", {}).get("data_dir")):
            return False
        return self.read(spec.name) == self.compute(spec, cfg, extra)

    def invalidate(self, stage: str) -> None:
        self.path(stage).unlink(missing_ok=True)

    def write(self, spec: StageSpec, cfg: dict, extra: list[str]) -> None:
        digest = self.compute(spec, cfg, extra)
        with atomic_path(self.path(spec.name)) as tmp:
            tmp.write_text(json.dumps({"stage": spec.name, "digest": digest}) + "\n")
