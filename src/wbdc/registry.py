"""The model registry: every model the pipeline can train and blend, in one table.

Each entry says how the model is trained (its stage script and arguments), what code and which
config keys its stamp hashes, and where it writes (``models/<name>/`` with ``pred_offline.parquet``,
``pred_offline_sel_a.parquet`` / ``pred_offline_sel_b.parquet`` (day 14 as chosen on each user
half, ``wbdc.metrics``), ``pred_online.parquet`` and ``scores.json``; docs/ARTIFACTS.md).  ``run_all.sh --models``,
``stamp.py``, the stamps in ``wbdc.pipeline``, ``train_nn.py --arch`` and the blend read it; a new
net architecture enters through ``wbdc.nn.archs`` and appears here by itself.  Importable without
torch or lightgbm.
"""
from __future__ import annotations

from dataclasses import dataclass

from .config_schema import NN_SHARED_KEYS
from .nn.archs import ARCHS


@dataclass(frozen=True)
class ModelSpec:
    name: str                     # --models name and the folder models/<name>/
    title: str
    script: str                   # stage script under src/stages/
    args: tuple[str, ...]         # its arguments besides --mode and the common flags
    code: tuple[str, ...]         # files or folders under src/ hashed into the stamp
    config: tuple[str, ...]       # dotted config keys hashed into the stamp (besides data)
    always: bool = False          # blended in every run, whatever --models says
    needs_offline_for_online: bool = True   # --mode online reuses the offline selection
    default: bool = True          # in the default --models list


POPULARITY = ModelSpec("popularity", "popularity baseline", "train_popularity.py", (),
                       ("wbdc/baselines.py", "wbdc/metrics.py"), ("popularity",), always=True,
                       needs_offline_for_online=False)
LGB = ModelSpec("lgb", "LightGBM", "train_lgb.py", (), ("wbdc/lgb.py", "wbdc/metrics.py"), ("lgb",))


def _net(arch: str) -> ModelSpec:
    return ModelSpec(arch, ARCHS[arch].title, "train_nn.py", ("--arch", arch),
                     ("wbdc/nn", "wbdc/metrics.py"),
                     (*(f"nn.{k}" for k in NN_SHARED_KEYS), f"nn.{arch}"), default=ARCHS[arch].default)


MODELS: dict[str, ModelSpec] = {
    POPULARITY.name: POPULARITY,
    LGB.name: LGB,
    **{arch: _net(arch) for arch in ARCHS},
}
DEFAULT_MODELS = tuple(n for n, m in MODELS.items() if not m.always and m.default)
OPTIONAL_MODELS = tuple(n for n, m in MODELS.items() if not m.always and not m.default)


def parse_models(spec: str | None) -> list[str]:
    """``--models`` (a comma list) to the run's models in registry order, the always-blended
    ones included.  Unknown names raise ValueError listing the valid ones."""
    names = [s.strip() for s in (spec or ",".join(DEFAULT_MODELS)).split(",") if s.strip()]
    unknown = [n for n in names if n not in MODELS]
    if unknown:
        raise ValueError(f"unknown model {unknown[0]!r} in --models (choose from "
                         f"{', '.join(DEFAULT_MODELS + OPTIONAL_MODELS)}; "
                         f"{', '.join(n for n, m in MODELS.items() if m.always)} "
                         "is always included)")
    if not names:
        raise ValueError("--models is empty")
    return [n for n, m in MODELS.items() if m.always or n in names]
