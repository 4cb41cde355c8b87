"""The registry of multi-task architectures, importable without torch.

An architecture is one core class in ``wbdc.nn.models`` (with a ``from_config`` classmethod),
one config dataclass here and one section ``nn.<name>`` in ``configs/nn.yaml``; the config
schema, the model registry (``wbdc.registry``), the pipeline's stamps, ``train_nn.py --arch``
and ``run_all.sh --models`` all read this table, so nothing else lists the architectures.
"""
from __future__ import annotations

from dataclasses import dataclass


@dataclass
class SharedBottomConfig:
    bottom_dims: list[int]
    tower_dims: list[int]
    dropout: float


@dataclass
class MMoEConfig:
    n_experts: int
    expert_dims: list[int]
    tower_dims: list[int]
    dropout: float


@dataclass
class OMoEConfig:
    n_experts: int
    expert_dims: list[int]
    tower_dims: list[int]
    dropout: float


@dataclass
class PLEConfig:
    n_levels: int
    n_specific: int
    n_shared: int
    expert_dims: list[int]
    tower_dims: list[int]
    dropout: float


@dataclass(frozen=True)
class ArchSpec:
    name: str           # the --arch / --models name and the nn.<name> config section
    title: str          # for reports and plots
    core: str           # class name in wbdc.nn.models
    config: type        # the section's dataclass
    has_gates: bool     # writes gate diagnostics
    default: bool = True  # trained by a plain run_all.sh (else only when --models names it)


ARCHS: dict[str, ArchSpec] = {
    "sb": ArchSpec("sb", "Shared-Bottom", "SharedBottom", SharedBottomConfig, has_gates=False),
    "omoe": ArchSpec("omoe", "OMoE", "OMoE", OMoEConfig, has_gates=False,
                     default=False),
    "mmoe": ArchSpec("mmoe", "MMoE", "MMoE", MMoEConfig, has_gates=True),
    "ple": ArchSpec("ple", "PLE", "PLE", PLEConfig, has_gates=True),
}
