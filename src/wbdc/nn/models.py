"""Shared-Bottom, OMoE, MMoE, CGC and PLE: a few lines of wiring each over ``wbdc.nn.modules``.

A *core* maps the input vector ``[B, input_dim]`` to one logit per task ``[B, T]``;
``MultiTaskNet`` puts an input layer in front of a core.  ``build_model`` builds either from the
``nn`` config section.
"""
from __future__ import annotations

import math
from dataclasses import dataclass
from typing import Sequence

import torch
from torch import Tensor, nn

from .archs import ARCHS
from .modules import CGCLevel, ExpertBank, GateBank, TowerBank


class SharedBottom(nn.Module):
    """One shared MLP, one tower per task."""

    def __init__(self, input_dim: int, n_tasks: int, bottom_dims: Sequence[int],
                 tower_dims: Sequence[int] = (), dropout: float = 0.0):
        super().__init__()
        self.bottom = ExpertBank(1, input_dim, bottom_dims, dropout)
        self.towers = TowerBank(n_tasks, self.bottom.output_dim, tower_dims, dropout)

    def input_linears(self) -> list[nn.Module]:
        """The layers that read the input vector (``MultiTaskNet`` tells them which columns
        need an input gradient)."""
        return [self.bottom.layers[0]]

    def forward(self, x: Tensor) -> Tensor:
        return self.towers(self.bottom(x).squeeze(1))


class OMoE(nn.Module):
    """One-gate mixture of experts (the MMoE paper's baseline): ``n_experts`` experts mixed by
    one softmax gate shared by every task, one tower per task."""

    def __init__(self, input_dim: int, n_tasks: int, n_experts: int, expert_dims: Sequence[int],
                 tower_dims: Sequence[int] = (), dropout: float = 0.0):
        super().__init__()
        self.experts = ExpertBank(n_experts, input_dim, expert_dims, dropout)
        self.gate = GateBank(1, input_dim, n_experts)
        self.towers = TowerBank(n_tasks, self.experts.output_dim, tower_dims, dropout)

    def input_linears(self) -> list[nn.Module]:
        return [self.experts.layers[0], self.gate.linear]

    def forward(self, x: Tensor) -> Tensor:
        mixed = torch.bmm(self.gate(x), self.experts(x)).squeeze(1)     # [B, 1, E] x [B, E, h]
        return self.towers(mixed)


class CGC(nn.Module):
    """Customized gate control: one level of task-specific plus shared experts (PLE, 1 level)."""

    def __init__(self, input_dim: int, n_tasks: int, n_specific: int, n_shared: int,
                 expert_dims: Sequence[int], tower_dims: Sequence[int] = (), dropout: float = 0.0):
        super().__init__()
        self.level = CGCLevel(n_tasks, n_specific, n_shared, input_dim, expert_dims, last=True,
                              dropout=dropout)
        self.towers = TowerBank(n_tasks, self.level.output_dim, tower_dims, dropout)

    @property
    def levels(self) -> list[CGCLevel]:
        return [self.level]

    def input_linears(self) -> list[nn.Module]:
        return self.level.input_linears()

    def forward(self, x: Tensor) -> Tensor:
        task_out, _ = self.level(x, x)
        return self.towers(task_out)


class MMoE(CGC):
    """``n_experts`` experts shared by all tasks, one softmax gate per task: a CGC level with no
    task-specific experts."""

    def __init__(self, input_dim: int, n_tasks: int, n_experts: int, expert_dims: Sequence[int],
                 tower_dims: Sequence[int] = (), dropout: float = 0.0):
        super().__init__(input_dim, n_tasks, 0, n_experts, expert_dims, tower_dims, dropout)


class PLE(nn.Module):
    """Progressive layered extraction: ``n_levels`` CGC levels stacked, towers on the last."""

    def __init__(self, input_dim: int, n_tasks: int, n_levels: int, n_specific: int, n_shared: int,
                 expert_dims: Sequence[int], tower_dims: Sequence[int] = (), dropout: float = 0.0):
        super().__init__()
        if n_levels < 1:
            raise ValueError("PLE needs at least one level")
        levels = []
        dim = input_dim
        for i in range(n_levels):
            level = CGCLevel(n_tasks, n_specific, n_shared, dim, expert_dims,
                             last=(i == n_levels - 1), dropout=dropout)
            levels.append(level)
            dim = level.output_dim
        self.levels = nn.ModuleList(levels)
        self.towers = TowerBank(n_tasks, dim, tower_dims, dropout)

    def input_linears(self) -> list[nn.Module]:
        return self.levels[0].input_linears()

    def forward(self, x: Tensor) -> Tensor:
        task_in, shared_in = x, x
        for level in self.levels:
            task_in, shared_in = level(task_in, shared_in)
        return self.towers(task_in)


def parse_funnels(specs: Sequence[str] | None, actions: Sequence[str]) -> list[tuple[int, int]]:
    """``["read_comment>comment", ...]`` -> ``[(first, then), ...]`` action indices; a bad entry is
    one ValueError line naming it."""
    out: list[tuple[int, int]] = []
    for spec in specs or ():
        first, sep, then = str(spec).partition(">")
        first, then = first.strip(), then.strip()
        if not sep or first not in actions or then not in actions or first == then:
            raise ValueError(f"nn.funnels: {spec!r} is not FIRST>THEN with two different actions of "
                             f"{', '.join(actions)}")
        if any(actions.index(then) == t for _, t in out):
            raise ValueError(f"nn.funnels: {then} is the later step of two funnels")
        out.append((actions.index(first), actions.index(then)))
    return out


def funnel_logit(first: Tensor, then_after: Tensor, then_without: Tensor) -> Tensor:
    """The logit of ``p(then) = p(first) p(then | first) + (1 - p(first)) p(then | not first)``
    from the three logits, in log space (no sigmoid rounds to 0 or 1)."""
    ls = torch.nn.functional.logsigmoid
    log_p = torch.logaddexp(ls(first) + ls(then_after), ls(-first) + ls(then_without))
    log_q = torch.logaddexp(ls(first) + ls(-then_after), ls(-first) + ls(-then_without))
    return log_p - log_q


@dataclass(frozen=True)
class TaskSpec:
    """One tower of a net: what it learns and whether it reaches the predictions."""
    name: str            # an action, "then|not first" (a funnel's second tower) or an engagement target
    kind: str            # "binary" (BCE on a logit) | "regression" (squared error)
    predicted: bool      # an output of predict() and scored on day 14 (the 7 actions only)
    role: str            # "action" | "funnel" | "aux"


def task_specs(actions: Sequence[str], funnels: Sequence[tuple[int, int]] = (),
               aux: Sequence[str] = ()) -> list[TaskSpec]:
    """The towers in core output order: the actions, one per funnel, one per auxiliary target."""
    return ([TaskSpec(a, "binary", True, "action") for a in actions]
            + [TaskSpec(f"{actions[b]}|not {actions[a]}", "binary", False, "funnel") for a, b in funnels]
            + [TaskSpec(str(t), "regression", False, "aux") for t in aux])


class MultiTaskNet(nn.Module):
    """Input layer + core + task heads: ``forward(batch) -> logits [B, T]`` of the actions.

    The core has one tower per ``TaskSpec`` (``self.tasks``). With funnels (``nn.funnels``,
    ESMM's entire-space idea), for ``first > then`` the task ``then``'s own tower learns
    ``p(then | first)``, the funnel tower ``p(then | not first)``, and the net returns the logit
    of their mixture by ``p(first)`` (``funnel_logit``) -- a probability of ``then`` over every
    exposure, trained on every exposure, whatever share of ``then`` happens without ``first``.
    Auxiliary regression towers (``nn.aux``) are returned only with ``with_aux`` (training).
    ``named(batch)`` keys every tower's output by its task name.
    """

    def __init__(self, inputs: nn.Module, core: nn.Module, actions: Sequence[str],
                 funnels: Sequence[tuple[int, int]] = (), aux: Sequence[str] = ()):
        super().__init__()
        self.inputs = inputs
        self.core = core
        self.actions = list(actions)
        self.funnels = [(int(a), int(b)) for a, b in funnels]
        self.tasks = task_specs(self.actions, self.funnels, aux)
        self.n_tasks = len(self.actions)
        self.aux = [t.name for t in self.tasks if t.role == "aux"]
        self.n_aux = len(self.aux)
        # the input vector's constant columns (dense features, frozen vectors) need no gradient
        grad_cols = getattr(inputs, "grad_cols", None)
        if grad_cols is not None and hasattr(core, "input_linears"):
            for layer in core.input_linears():
                layer.grad_cols = int(grad_cols)

    def set_output_bias(self, rates: Sequence[float], aux_means: Sequence[float] | None = None) -> None:
        """Start every binary tower at its task's base rate (a funnel tower at its later
        action's) and every regression tower at its target's mean (0 when not given)."""
        rates = dict(zip(self.actions, rates))
        means = dict(zip(self.aux, aux_means if aux_means is not None else [0.0] * self.n_aux))
        logit = lambda p: math.log(min(max(p, 1e-6), 1 - 1e-6) / (1 - min(max(p, 1e-6), 1 - 1e-6)))  # noqa: E731
        start = []
        for t in self.tasks:
            if t.role == "action":
                start.append(logit(rates[t.name]))
            elif t.role == "funnel":
                start.append(logit(rates[t.name.split("|")[0]]))
            else:
                start.append(float(means[t.name]))
        self.core.towers.set_bias(start)

    def forward(self, batch: dict[str, Tensor], with_aux: bool = False):
        """Logits of the actions ``[B, T]``; with ``with_aux`` also the auxiliary regression
        outputs ``[B, A]`` (trained, never predicted)."""
        out = self.core(self.inputs(batch))
        logits = self._action_logits(out)
        if with_aux:
            return logits, out[:, out.shape[1] - self.n_aux:].float()
        return logits

    def named(self, batch: dict[str, Tensor]) -> dict[str, Tensor]:
        """Every tower's raw output keyed by task name, plus each action's final logit."""
        out = self.core(self.inputs(batch))
        named = {t.name: out[:, i] for i, t in enumerate(self.tasks)}
        named.update({f"logit/{a}": c for a, c in zip(self.actions, self._action_logits(out).unbind(1))})
        return named

    def _action_logits(self, out: Tensor) -> Tensor:
        T = self.n_tasks
        if not self.funnels:
            return out[:, :T]
        logits = out.float()          # the log-space mixture in fp32 under bf16 autocast
        cols = list(logits[:, :T].unbind(1))
        for f, (a, b) in enumerate(self.funnels):
            cols[b] = funnel_logit(logits[:, a], logits[:, b], logits[:, T + f])
        return torch.stack(cols, dim=1)

    def task_names(self, actions: Sequence[str] | None = None) -> list[str]:
        """The towers' names in core output order (``self.tasks``)."""
        return [t.name for t in self.tasks]


def build_core(arch: str, input_dim: int, n_tasks: int, cfg: dict) -> nn.Module:
    """The registered core of ``arch`` (``wbdc.nn.archs``); ``cfg`` is its config section
    (``nn.<arch>``), whose keys are the core's keyword arguments."""
    if arch not in ARCHS:
        raise ValueError(f"unknown arch {arch!r}; expected one of {', '.join(ARCHS)}")
    core = globals()[ARCHS[arch].core]
    return core(input_dim, n_tasks, **cfg)


def build_model(arch: str, inputs: nn.Module, actions: Sequence[str] | int, cfg: dict,
                funnels: Sequence[tuple[int, int]] = (), aux: Sequence[str] = ()) -> MultiTaskNet:
    """``actions``: the action names (or their number: ``task_0``...)."""
    if isinstance(actions, int):
        actions = [f"task_{i}" for i in range(actions)]
    tasks = task_specs(list(actions), funnels, aux)
    core = build_core(arch, inputs.output_dim, len(tasks), cfg)
    return MultiTaskNet(inputs, core, actions, funnels, aux)


def gate_levels(model: nn.Module) -> list[CGCLevel]:
    """The CGC levels of a model in forward order (empty for Shared-Bottom)."""
    return [m for m in model.modules() if isinstance(m, CGCLevel)]


def count_parameters(model: nn.Module) -> int:
    return int(sum(p.numel() for p in model.parameters()))


__all__ = ["ARCHS", "SharedBottom", "OMoE", "MMoE", "CGC", "PLE", "MultiTaskNet", "build_core",
           "build_model", "parse_funnels", "funnel_logit", "TaskSpec", "task_specs", "gate_levels", "count_parameters"]
