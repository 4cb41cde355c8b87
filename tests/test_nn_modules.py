"""Modules and architectures on random tensors: shapes, gates, batching vs plain references."""
from __future__ import annotations

import pytest
import torch
import torch.nn.functional as F

from wbdc.nn.models import CGC, MMoE, PLE, SharedBottom, build_core, gate_levels
from wbdc.nn.modules import BatchedLinear, CGCLevel, ExpertBank, GateBank, TowerBank

T = 7


@pytest.fixture(autouse=True)
def _seed():
    torch.manual_seed(0)


def test_batched_linear_equals_a_loop_of_linear_maps():
    lin = BatchedLinear(3, 5, 4)
    x2 = torch.randn(6, 5)
    x3 = torch.randn(6, 3, 5)
    ref2 = torch.stack([x2 @ lin.weight[i] + lin.bias[i] for i in range(3)], 1)
    ref3 = torch.stack([x3[:, i] @ lin.weight[i] + lin.bias[i] for i in range(3)], 1)
    torch.testing.assert_close(lin(x2), ref2)
    torch.testing.assert_close(lin(x3), ref3)
    with pytest.raises(ValueError, match="expected 3 members"):
        lin(torch.randn(6, 2, 5))


def test_bank_output_dims_are_declared():
    bank = ExpertBank(4, 10, [8, 6])
    assert bank.output_dim == 6 and bank(torch.randn(3, 10)).shape == (3, 4, 6)
    towers = TowerBank(T, 6, [5])
    assert towers(torch.randn(3, T, 6)).shape == (3, T)
    assert towers(torch.randn(3, 6)).shape == (3, T)
    gate = GateBank(T, 10, 4)
    assert gate.output_dim == 4 and gate(torch.randn(3, 10)).shape == (3, T, 4)


@pytest.mark.parametrize("core", [
    SharedBottom(12, T, [16, 8], [4]),
    MMoE(12, T, 3, [16, 8], [4]),
    PLE(12, T, 2, 1, 2, [10, 6], [4]),
    PLE(12, T, 3, 2, 1, [10, 6], []),
    CGC(12, T, 1, 2, [10, 6], [4]),
])
def test_every_architecture_gives_one_logit_per_task(core):
    logits = core(torch.randn(5, 12))
    assert logits.shape == (5, T)
    assert torch.isfinite(logits).all()


def test_gate_weights_sum_to_one_on_every_level():
    x = torch.randn(9, 12)
    for core in (MMoE(12, T, 3, [8]), PLE(12, T, 3, 1, 2, [8, 6])):
        levels = gate_levels(core)
        for lv in levels:
            lv.keep_gates = True
        core(x)
        for lv in levels:
            assert lv.last_gates.shape == (9, T, lv.n_specific + lv.n_shared)
            torch.testing.assert_close(lv.last_gates.sum(-1), torch.ones(9, T))
            assert (lv.last_gates >= 0).all()
            if not lv.last:
                torch.testing.assert_close(lv.last_shared_gate.sum(-1), torch.ones(9))
    assert len(gate_levels(SharedBottom(12, T, [8]))) == 0


def test_mmoe_equals_a_plain_per_expert_reference():
    core = MMoE(12, T, 3, [8, 6], [5])
    x = torch.randn(11, 12)
    lv, tw = core.level, core.towers

    def expert(e, h):
        for layer in lv.experts.layers:
            h = torch.relu(F.linear(h, layer.weight[e].T, layer.bias[e]))
        return h

    experts = torch.stack([expert(e, x) for e in range(3)], 1)           # [B, 3, 6]
    logits = []
    for t in range(T):
        gw = lv.task_gates.linear
        g = torch.softmax(x @ gw.weight[t] + gw.bias[t], -1)            # [B, 3]
        h = (g.unsqueeze(-1) * experts).sum(1)
        h = torch.relu(h @ tw.hidden[0].weight[t] + tw.hidden[0].bias[t])
        logits.append((h @ tw.out.weight[t] + tw.out.bias[t]).squeeze(-1))
    torch.testing.assert_close(core(x), torch.stack(logits, 1))


def test_cgc_level_mixes_own_and_shared_experts_only():
    lv = CGCLevel(n_tasks=3, n_specific=2, n_shared=1, input_dim=4, expert_dims=[5], last=False)
    assert lv.n_experts == 7
    assert lv.task_selection.tolist() == [[0, 1, 6], [2, 3, 6], [4, 5, 6]]
    assert lv.expert_group.tolist() == [0, 0, 1, 1, 2, 2, 3]
    x = torch.randn(4, 4)
    task_out, shared_out = lv(x, x)
    assert task_out.shape == (4, 3, 5) and shared_out.shape == (4, 5)
    # task 1's output depends on experts 2, 3 and 6 only: zeroing expert 0 leaves it unchanged
    with torch.no_grad():
        lv.experts.layers[0].weight[0].zero_()
        lv.experts.layers[0].bias[0].fill_(3.0)
    task_out2, shared_out2 = lv(x, x)
    torch.testing.assert_close(task_out2[:, 1:], task_out[:, 1:])
    assert not torch.allclose(task_out2[:, 0], task_out[:, 0])
    assert not torch.allclose(shared_out2, shared_out)
    last = CGCLevel(3, 2, 1, 4, [5], last=True)
    assert last(x, x)[1] is None and last.shared_gate is None


def test_second_level_routes_each_task_input_to_its_own_experts():
    lv = CGCLevel(n_tasks=2, n_specific=1, n_shared=1, input_dim=3, expert_dims=[4], last=True)
    task_in, shared_in = torch.randn(5, 2, 3), torch.randn(5, 3)
    out, _ = lv(task_in, shared_in)
    w, b = lv.experts.layers[0].weight, lv.experts.layers[0].bias
    e0 = torch.relu(task_in[:, 0] @ w[0] + b[0])
    e2 = torch.relu(shared_in @ w[2] + b[2])
    g0 = lv.task_gates(task_in)[:, 0]
    torch.testing.assert_close(out[:, 0], g0[:, :1] * e0 + g0[:, 1:] * e2)


def test_ple_with_one_level_equals_cgc():
    cgc = CGC(12, T, 2, 3, [10, 6], [4])
    ple = PLE(12, T, 1, 2, 3, [10, 6], [4])
    state = {k.replace("level.", "levels.0.", 1): v for k, v in cgc.state_dict().items()}
    ple.load_state_dict(state)
    x = torch.randn(8, 12)
    torch.testing.assert_close(ple(x), cgc(x), rtol=0, atol=0)


def test_build_core_reads_the_arch_section():
    core = build_core("ple", 12, T, {"n_levels": 2, "n_specific": 1, "n_shared": 2,
                                     "expert_dims": [8], "tower_dims": [4]})
    assert isinstance(core, PLE) and len(core.levels) == 2
    assert not core.levels[0].last and core.levels[1].last
    with pytest.raises(ValueError, match="unknown arch 'xx'"):
        build_core("xx", 12, T, {})


def test_gradients_reach_every_expert_and_gate():
    core = PLE(12, T, 2, 1, 2, [8, 6], [4])
    core(torch.randn(64, 12)).sum().backward()
    for name, p in core.named_parameters():
        assert p.grad is not None and p.grad.abs().sum() > 0, name
