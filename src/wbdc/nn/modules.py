"""Building blocks of the multi-task nets: batched experts, gates, towers and the CGC level.

Every block states its ``output_dim``.  Experts, gates and towers come in *banks*: ``n``
independent members whose weights are stacked as ``[n, in, out]`` and evaluated in one matmul
(shared input ``[B, in]``) or one batched matmul (per-member input ``[B, n, in]``), never in a
Python loop over members.
"""
from __future__ import annotations

import math
from typing import Sequence

import torch
from torch import Tensor, nn


class BatchedLinear(nn.Module):
    """``n`` independent affine maps ``in -> out`` with weights stacked as ``[n, in, out]``.

    Input ``[B, in]`` is fed to every member (one GEMM against the weights laid side by side);
    input ``[B, n, in]`` feeds member ``i`` with ``x[:, i]`` (one batched GEMM).  Output is
    ``[B, n, out]`` either way.
    """

    def __init__(self, n: int, in_dim: int, out_dim: int):
        super().__init__()
        self.n, self.in_dim, self.out_dim = n, in_dim, out_dim
        #: on a layer reading the net's input vector: only its first ``grad_cols`` columns (the
        #: embeddings) need an input gradient, the rest are constants (dense features, frozen
        #: vectors); None = every column (``MultiTaskNet`` sets it from the input layer)
        self.grad_cols: int | None = None
        self.weight = nn.Parameter(torch.empty(n, in_dim, out_dim))
        self.bias = nn.Parameter(torch.empty(n, out_dim))
        self.reset_parameters()

    def reset_parameters(self) -> None:
        # same law as nn.Linear's default: U(-1/sqrt(in), 1/sqrt(in)) for weights and biases
        bound = 1.0 / math.sqrt(self.in_dim) if self.in_dim > 0 else 0.0
        nn.init.uniform_(self.weight, -bound, bound)
        nn.init.uniform_(self.bias, -bound, bound)

    def forward(self, x: Tensor) -> Tensor:
        # the bias goes into the product (addmm / baddbmm): under bf16 autocast the output stays
        # bf16 (a separate ``+ bias`` in fp32 would promote every activation back to fp32)
        if x.dim() == 2:
            w = self.weight.permute(1, 0, 2).reshape(self.in_dim, self.n * self.out_dim)
            k = self.grad_cols
            if k is None or not x.requires_grad or k >= self.in_dim:
                y = torch.addmm(self.bias.reshape(-1), x, w)
            else:
                # two products summed: the backward pass then computes the input gradient of
                # the first k columns only (a third of the widest product's input gradient)
                y = torch.addmm(self.bias.reshape(-1), x[:, k:].detach(), w[k:])
                if k > 0:
                    y = torch.addmm(y, x[:, :k], w[:k])
            return y.view(x.shape[0], self.n, self.out_dim)
        if x.dim() == 3:
            if x.shape[1] != self.n:
                raise ValueError(f"BatchedLinear: expected {self.n} members, got input {tuple(x.shape)}")
            return torch.baddbmm(self.bias.unsqueeze(1), x.transpose(0, 1), self.weight).transpose(0, 1)
        raise ValueError(f"BatchedLinear: input must be [B, in] or [B, n, in], got {tuple(x.shape)}")

    def members(self, x: Tensor) -> Tensor:
        """Member-major: ``[n, B, in] -> [n, B, out]`` (member ``i`` reads ``x[i]``), one batched
        product whose operands are contiguous per member, forward and backward."""
        if x.dim() != 3 or x.shape[0] != self.n:
            raise ValueError(f"BatchedLinear.members: expected [{self.n}, B, {self.in_dim}], got {tuple(x.shape)}")
        return torch.baddbmm(self.bias.unsqueeze(1), x, self.weight)

    def extra_repr(self) -> str:
        return f"n={self.n}, in_dim={self.in_dim}, out_dim={self.out_dim}"


class ExpertBank(nn.Module):
    """``n_experts`` MLPs (ReLU, optional dropout) evaluated together: ``-> [B, n, output_dim]``."""

    def __init__(self, n_experts: int, input_dim: int, hidden_dims: Sequence[int],
                 dropout: float = 0.0):
        super().__init__()
        if not hidden_dims:
            raise ValueError("ExpertBank needs at least one hidden layer")
        self.n_experts = n_experts
        self.input_dim = input_dim
        self.output_dim = int(hidden_dims[-1])
        dims = [input_dim, *hidden_dims]
        self.layers = nn.ModuleList(BatchedLinear(n_experts, a, b) for a, b in zip(dims, dims[1:]))
        self.dropout = nn.Dropout(dropout) if dropout > 0 else nn.Identity()

    def forward(self, x: Tensor) -> Tensor:
        """``[B, in]`` (every expert reads it) or ``[B, n, in]`` -> ``[B, n, out]`` (a view of
        the member-major result)."""
        if x.dim() == 2:
            first, *rest = self.layers
            h = self.dropout(torch.relu(first(x)))                      # [B, n, h1]: one GEMM
            if not rest:
                return h
            # one copy to member-major [n, B, h1]: the later layers' batched products then read
            # each expert's rows contiguously, forward and backward (no strided copies per layer)
            return self._member_layers(h.transpose(0, 1).contiguous(), rest).transpose(0, 1)
        return self.members(x.transpose(0, 1).contiguous()).transpose(0, 1)

    def members(self, x: Tensor) -> Tensor:
        """Member-major input ``[n, B, in]`` (expert ``i`` reads ``x[i]``) -> ``[n, B, out]``."""
        return self._member_layers(x, self.layers)

    def _member_layers(self, h: Tensor, layers) -> Tensor:
        """``layers`` applied member-major: ``[n, B, in] -> [n, B, out]``."""
        for layer in layers:
            h = self.dropout(torch.relu(layer.members(h)))
        return h


class TowerBank(nn.Module):
    """One MLP tower per task ending in a single logit, batched: ``-> [B, n_tasks]``."""

    output_dim = 1

    def __init__(self, n_tasks: int, input_dim: int, hidden_dims: Sequence[int] = (),
                 dropout: float = 0.0):
        super().__init__()
        self.n_tasks = n_tasks
        self.input_dim = input_dim
        dims = [input_dim, *hidden_dims]
        self.hidden = nn.ModuleList(BatchedLinear(n_tasks, a, b) for a, b in zip(dims, dims[1:]))
        self.out = BatchedLinear(n_tasks, dims[-1], 1)
        self.dropout = nn.Dropout(dropout) if dropout > 0 else nn.Identity()

    @torch.no_grad()
    def set_output_bias(self, rates: Sequence[float]) -> None:
        """Start every tower at its task's base rate (logit of the positive rate), so the first
        steps learn ranking instead of the intercept of a 0.04%-positive task."""
        p = torch.as_tensor(list(rates), dtype=self.out.bias.dtype).clamp(1e-6, 1 - 1e-6)
        self.set_bias(torch.log(p / (1 - p)).tolist())

    @torch.no_grad()
    def set_bias(self, values: Sequence[float]) -> None:
        """Every tower's output bias, as given (logits of binary tasks, means of regressions)."""
        self.out.bias.copy_(torch.as_tensor(list(values), dtype=self.out.bias.dtype).view(self.n_tasks, 1))

    def forward(self, x: Tensor) -> Tensor:
        """``x``: ``[B, in]`` (every tower sees it) or ``[B, n_tasks, in]``."""
        layers = list(self.hidden)
        if x.dim() == 2:
            if not layers:
                return self.out(x).squeeze(-1)
            x = self.dropout(torch.relu(layers.pop(0)(x)))               # [B, T, h]: one GEMM
        h = x.transpose(0, 1).contiguous()                               # member-major [T, B, h]
        for layer in layers:
            h = self.dropout(torch.relu(layer.members(h)))
        return self.out.members(h).squeeze(-1).t()


class GateBank(nn.Module):
    """``n_gates`` softmax gates over ``n_choices`` experts each: linear map + softmax.

    No batch-norm on the logits: gate weights must stay a pure function of the gate input.
    """

    def __init__(self, n_gates: int, input_dim: int, n_choices: int):
        super().__init__()
        self.n_gates, self.n_choices = n_gates, n_choices
        self.output_dim = n_choices
        self.linear = BatchedLinear(n_gates, input_dim, n_choices)

    def forward(self, x: Tensor) -> Tensor:
        return torch.softmax(self.linear(x), dim=-1)


class CGCLevel(nn.Module):
    """One customized-gate-control level (PLE's extraction level; MMoE when ``n_specific=0``).

    Experts: ``n_specific`` per task, then ``n_shared`` shared ones, all in one ExpertBank.  Task
    ``k``'s gate mixes its own experts and the shared ones; on every level but the last a shared
    gate mixes all experts into the shared output for the next level.

    ``forward(task_inputs, shared_input) -> (task_outputs [B, T, h], shared_output [B, h] | None)``
    where ``task_inputs`` is ``[B, T, in]`` or ``[B, in]`` (the same input for every task).
    Set ``keep_gates = True`` to keep the last batch's task gates in ``last_gates`` ``[B, T, S]``.
    """

    def __init__(self, n_tasks: int, n_specific: int, n_shared: int, input_dim: int,
                 expert_dims: Sequence[int], last: bool, dropout: float = 0.0):
        super().__init__()
        if n_shared + n_specific < 1:
            raise ValueError("CGCLevel needs at least one expert")
        self.n_tasks, self.n_specific, self.n_shared = n_tasks, n_specific, n_shared
        self.last = last
        self.input_dim = input_dim
        n_experts = n_tasks * n_specific + n_shared
        self.n_experts = n_experts
        self.experts = ExpertBank(n_experts, input_dim, expert_dims, dropout)
        self.output_dim = self.experts.output_dim
        n_sel = n_specific + n_shared
        # expert e reads input group e // n_specific (its task) or group T (shared input)
        group = [e // n_specific for e in range(n_tasks * n_specific)] + [n_tasks] * n_shared
        self.register_buffer("expert_group", torch.tensor(group, dtype=torch.long), persistent=False)
        shared_ids = list(range(n_tasks * n_specific, n_experts))
        sel = [list(range(k * n_specific, (k + 1) * n_specific)) + shared_ids for k in range(n_tasks)]
        self.register_buffer("task_selection", torch.tensor(sel, dtype=torch.long), persistent=False)
        self.task_gates = GateBank(n_tasks, input_dim, n_sel)
        self.shared_gate = None if last else GateBank(1, input_dim, n_experts)
        self.keep_gates = False
        self.last_gates: Tensor | None = None
        self.last_shared_gate: Tensor | None = None

    def input_linears(self) -> list[BatchedLinear]:
        """The layers that read this level's 2-D input (the first level's: the net's input)."""
        return [self.experts.layers[0], self.task_gates.linear,
                *([self.shared_gate.linear] if self.shared_gate is not None else [])]

    def expert_names(self) -> list[str]:
        """Column names of one task's gate: its own experts first, then the shared ones."""
        return ([f"task_expert_{j}" for j in range(self.n_specific)]
                + [f"shared_expert_{j}" for j in range(self.n_shared)])

    def forward(self, task_inputs: Tensor, shared_input: Tensor) -> tuple[Tensor, Tensor | None]:
        B = shared_input.shape[0]
        if task_inputs.dim() == 2 and task_inputs is shared_input:
            expert_out = self.experts(shared_input)                      # every expert, one GEMM
        else:
            per_task = task_inputs if task_inputs.dim() == 3 else \
                task_inputs.unsqueeze(1).expand(B, self.n_tasks, task_inputs.shape[-1])
            groups = torch.cat([per_task, shared_input.unsqueeze(1)], dim=1)   # [B, T+1, in]
            expert_out = self.experts(groups.index_select(1, self.expert_group))
        gates = self.task_gates(task_inputs)                                 # [B, T, S]
        # scatter each task's gate into a dense [B, T, E] mixing matrix -> one bmm for all tasks
        sel = self.task_selection.unsqueeze(0).expand(B, -1, -1)
        mix = gates.new_zeros(B, self.n_tasks, self.n_experts).scatter(2, sel, gates)
        task_out = torch.bmm(mix, expert_out)                               # [B, T, h]
        shared_out = None
        if self.shared_gate is not None:
            g = self.shared_gate(shared_input)                               # [B, 1, E]
            shared_out = torch.bmm(g, expert_out).squeeze(1)
            if self.keep_gates:
                self.last_shared_gate = g.detach().squeeze(1)
        if self.keep_gates:
            self.last_gates = gates.detach()
        return task_out, shared_out
