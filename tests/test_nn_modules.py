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
    # member-major: [n, B, in] -> [n, B, out], member i reads x[i]
    torch.testing.assert_close(lin.members(x3.transpose(0, 1).contiguous()), ref3.transpose(0, 1))
    with pytest.raises(ValueError, match="members"):
        lin.members(x3)


def _member_mlp(layers, e, h, last_relu=True):
    for k, layer in enumerate(layers):
        h = h @ layer.weight[e] + layer.bias[e]
        if last_relu or k < len(layers) - 1:
            h = torch.relu(h)
    return h


def test_banks_equal_a_loop_over_members_for_shared_and_per_member_inputs():
    bank = ExpertBank(4, 10, [8, 6, 5])
    x2, x3 = torch.randn(7, 10), torch.randn(7, 4, 10)
    torch.testing.assert_close(bank(x2), torch.stack([_member_mlp(bank.layers, e, x2) for e in range(4)], 1))
    torch.testing.assert_close(bank(x3), torch.stack([_member_mlp(bank.layers, e, x3[:, e]) for e in range(4)], 1))
    torch.testing.assert_close(bank.members(x3.transpose(0, 1).contiguous()), bank(x3).transpose(0, 1))
    towers = TowerBank(T, 6, [5, 4])
    layers = [*towers.hidden, towers.out]
    y2, y3 = torch.randn(7, 6), torch.randn(7, T, 6)
    torch.testing.assert_close(towers(y2), torch.stack(
        [_member_mlp(layers, t, y2, last_relu=False).squeeze(-1) for t in range(T)], 1))
    torch.testing.assert_close(towers(y3), torch.stack(
        [_member_mlp(layers, t, y3[:, t], last_relu=False).squeeze(-1) for t in range(T)], 1))


def test_bf16_autocast_keeps_the_banks_activations_in_bf16():
    """The bias is added inside the product: a separate fp32 ``+ bias`` would promote every
    hidden activation back to fp32 under autocast (twice the bytes for each ReLU and copy)."""
    bank, towers = ExpertBank(4, 10, [8, 6]), TowerBank(T, 6, [5])
    with torch.autocast("cpu", dtype=torch.bfloat16):
        h = bank(torch.randn(3, 10))
        assert h.dtype == torch.bfloat16
        assert bank.layers[0](torch.randn(3, 10)).dtype == torch.bfloat16
        assert towers(h[:, :1].expand(3, T, 6)).dtype == torch.bfloat16


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


@pytest.mark.parametrize("make", [
    lambda: SharedBottom(12, T, [16, 8], [4]),
    lambda: MMoE(12, T, 3, [16, 8], [4]),
    lambda: PLE(12, T, 2, 1, 2, [10, 6], [4]),
])
def test_input_gradient_of_the_constant_columns_is_skipped_and_nothing_else_changes(make):
    """``grad_cols`` on the layers reading the input: the same outputs and parameter gradients,
    the learned columns' input gradient unchanged, the constant columns' never computed."""
    torch.manual_seed(3)
    full = make()
    split = make()
    split.load_state_dict(full.state_dict())
    layers = split.input_linears()
    assert layers and all(isinstance(m, BatchedLinear) for m in layers)
    for m in layers:
        m.grad_cols = 5
    learned = torch.randn(9, 5, requires_grad=True)
    const = torch.randn(9, 7)
    grads = []
    for core in (full, split):
        x = torch.cat([learned, const], 1)
        out = core(x)
        (out * torch.arange(1, T + 1)).sum().backward()
        grads.append((out.detach(), learned.grad.clone(), {n: p.grad.clone() for n, p in core.named_parameters()}))
        learned.grad = None
    torch.testing.assert_close(grads[0][0], grads[1][0])
    torch.testing.assert_close(grads[0][1], grads[1][1])
    for name, g in grads[0][2].items():
        torch.testing.assert_close(g, grads[1][2][name], msg=name)
    # the split really leaves the constant columns out of the graph
    x = torch.cat([learned, const.requires_grad_()], 1)
    split(x).sum().backward()
    assert const.grad is None or torch.count_nonzero(const.grad) == 0


@pytest.mark.parametrize("trainable", [False, True])
def test_input_layer_puts_the_learned_columns_first(trainable):
    from wbdc.nn.inputs import BagField, InputLayer, PretrainedTable
    bags = [BagField("tags", torch.tensor([[0, 0], [1, 2], [3, 0]]), 4, key_slot=0)]
    tables = [PretrainedTable("vec", torch.randn(3, 4), key_slot=0)]
    layer = InputLayer([5, 6], 3, n_dense=2, bags=bags, pretrained=tables, bag_dim=2,
                       pretrained_trainable=trainable)
    batch = {"cat": torch.tensor([[1, 2], [3, 4]]), "keys": torch.tensor([[1], [2]]),
             "dense": torch.randn(2, 2)}
    x = layer(batch)
    k = layer.grad_cols
    assert x.shape[1] == layer.output_dim == 2 * 3 + 2 + 4 + 2
    assert k == 2 * 3 + 2 + (4 if trainable else 0)
    params = [p for p in layer.parameters() if p.requires_grad]
    after = torch.autograd.grad(x[:, k:].sum(), params, allow_unused=True, retain_graph=True)
    assert all(g is None or torch.count_nonzero(g) == 0 for g in after)
    before = torch.autograd.grad(x[:, :k].sum(), params, allow_unused=True)
    assert all(g is not None and torch.count_nonzero(g) > 0 for g in before)


def test_dot_interactions_are_every_pairs_inner_product_among_the_learned_columns():
    from wbdc.nn.inputs import BagField, InputLayer, PretrainedTable
    torch.manual_seed(0)
    bags = [BagField("tags", torch.tensor([[0, 0], [1, 2], [3, 0]]), 4, key_slot=0),
            BagField("kw", torch.tensor([[0, 0], [2, 0], [1, 3]]), 4, key_slot=0)]
    tables = [PretrainedTable("vec", torch.randn(3, 4), key_slot=0)]
    plain = InputLayer([5, 6, 7], 3, n_dense=2, bags=bags, pretrained=tables)
    layer = InputLayer([5, 6, 7], 3, n_dense=2, bags=bags, pretrained=tables, interactions="dot")
    layer.load_state_dict(plain.state_dict())
    batch = {"cat": torch.tensor([[1, 2, 3], [0, 5, 6]]), "keys": torch.tensor([[1], [2]]),
             "dense": torch.randn(2, 2)}
    x, ref = layer(batch), plain(batch)
    n_pairs = 5 * 4 // 2                             # 3 ids + 2 bags of the embedding width
    assert layer.output_dim == plain.output_dim + n_pairs == x.shape[1]
    assert layer.grad_cols == plain.grad_cols + n_pairs
    learned = 3 * 3 + 2 * 3
    fields = ref[:, :learned].view(2, 5, 3)
    want = torch.stack([(fields[:, i] * fields[:, j]).sum(1)
                        for i in range(5) for j in range(i + 1, 5)], 1)
    torch.testing.assert_close(x[:, learned:learned + n_pairs], want)
    torch.testing.assert_close(x[:, :learned], ref[:, :learned])      # the rest unchanged
    torch.testing.assert_close(x[:, learned + n_pairs:], ref[:, learned:])
    # bags of another width are not fields; an unknown kind is refused
    narrow = InputLayer([5, 6, 7], 3, n_dense=2, bags=bags, bag_dim=2, interactions="dot")
    assert narrow.output_dim == 3 * 3 + 2 * 2 + 3 + 2
    with pytest.raises(ValueError, match="interactions"):
        InputLayer([5, 6], 3, n_dense=2, interactions="fm")


def test_content_interaction_is_the_users_embedding_times_a_map_of_the_pretrained_vectors():
    from wbdc.nn.inputs import InputLayer, PretrainedTable
    torch.manual_seed(0)
    tables = [PretrainedTable("feed_vec", torch.randn(3, 4), key_slot=0),
              PretrainedTable("author_vec", torch.randn(4, 2), key_slot=1)]
    plain = InputLayer([5, 6], 3, n_dense=2, pretrained=tables)
    layer = InputLayer([5, 6], 3, n_dense=2, pretrained=tables, interactions="content", user_slot=1)
    layer.load_state_dict(plain.state_dict(), strict=False)
    batch = {"cat": torch.tensor([[1, 2], [3, 0]]), "keys": torch.tensor([[1, 3], [2, 0]]),
             "dense": torch.randn(2, 2)}
    x, ref = layer(batch), plain(batch)
    learned = 2 * 3
    assert layer.output_dim == plain.output_dim + 3 == x.shape[1]
    assert layer.grad_cols == plain.grad_cols + 3
    user = ref[:, 3:6]                                  # the embedding of the second id column
    vectors = torch.cat([tables[0].matrix[batch["keys"][:, 0]], tables[1].matrix[batch["keys"][:, 1]]], 1)
    torch.testing.assert_close(x[:, learned:learned + 3], user * (vectors @ layer.content.weight.T))
    torch.testing.assert_close(x[:, :learned], ref[:, :learned])      # the rest unchanged
    torch.testing.assert_close(x[:, learned + 3:], ref[:, learned:])
    # the product carries the gradient of the map; without a user column or a table it is refused
    g = torch.autograd.grad(x[:, learned:learned + 3].sum(), layer.content.weight)[0]
    assert torch.count_nonzero(g) > 0
    with pytest.raises(ValueError, match="content"):
        InputLayer([5, 6], 3, n_dense=2, interactions="content", user_slot=0)
    with pytest.raises(ValueError, match="content"):
        InputLayer([5, 6], 3, n_dense=2, pretrained=tables, interactions="content")
