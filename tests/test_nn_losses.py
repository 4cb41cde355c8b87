"""Loss balancing: exact values and learned uncertainty weights."""
from __future__ import annotations

import math

import pytest
import torch

from wbdc.nn.losses import FixedWeights, UncertaintyWeighting, build_balancer, task_bce
from wbdc.schema import ACTIONS


def test_task_bce_is_the_mean_bce_per_task():
    logits = torch.tensor([[0.0, 2.0], [1.0, -1.0]])
    y = torch.tensor([[1.0, 0.0], [0.0, 0.0]])
    want = [(math.log(2) + math.log(1 + math.e)) / 2,
            (math.log(1 + math.exp(2)) + math.log(1 + math.exp(-1))) / 2]
    torch.testing.assert_close(task_bce(logits, y), torch.tensor(want))


def test_equal_weights_sum_the_task_losses():
    losses = torch.arange(1.0, 8.0)
    assert float(build_balancer({"balancing": "equal"})(losses)) == pytest.approx(28.0)


def test_competition_weights_are_4_3_2_1_1_1_1_rescaled_to_mean_one():
    b = build_balancer({"balancing": "competition"})
    losses = torch.ones(7)
    # weights 4,3,2,1,1,1,1 (sum 13) rescaled by 7/13
    assert b.task_weights() == pytest.approx([w * 7 / 13 for w in (4, 3, 2, 1, 1, 1, 1)])
    assert float(b(losses)) == pytest.approx(7.0)
    e = torch.zeros(7)
    e[0] = 1.0
    assert float(b(e)) == pytest.approx(28 / 13)


def test_fixed_weights_need_every_action():
    w = {a: 1.0 for a in ACTIONS[:-1]}
    with pytest.raises(ValueError, match="lacks follow"):
        build_balancer({"balancing": "fixed", "weights": w})
    w["follow"] = 3.0
    b = build_balancer({"balancing": "fixed", "weights": w})
    assert b.task_weights()[-1] == pytest.approx(3 * 7 / 9)
    with pytest.raises(ValueError, match="non-negative"):
        FixedWeights([1.0, -1.0])
    with pytest.raises(ValueError, match="balancing='bogus'"):
        build_balancer({"balancing": "bogus"})


def test_uncertainty_weighting_formula():
    u = UncertaintyWeighting(3)
    with torch.no_grad():
        u.log_var.copy_(torch.tensor([0.0, 1.0, -2.0]))
    losses = torch.tensor([0.5, 0.2, 0.1])
    want = sum(math.exp(-s) * l + 0.5 * s for s, l in zip([0.0, 1.0, -2.0], [0.5, 0.2, 0.1]))
    assert float(u(losses).detach()) == pytest.approx(want, rel=1e-6)
    assert u.task_weights() == pytest.approx([1.0, math.exp(-1.0), math.exp(2.0)], rel=1e-6)


def test_uncertainty_log_variance_is_learned_without_a_clamp():
    """For a fixed task loss L the optimum is s = log(2L); gradient descent must get there,
    including far outside [-1, 1] (a clamp there would freeze the weights)."""
    u = UncertaintyWeighting(2)
    losses = torch.tensor([0.01, 2.0])
    opt = torch.optim.Adam(u.parameters(), lr=0.05)
    for _ in range(2000):
        opt.zero_grad()
        u(losses).backward()
        opt.step()
    torch.testing.assert_close(u.log_var.detach(), torch.log(2 * losses), atol=1e-2, rtol=0)
    assert float(u.log_var.detach()[0]) < -3.5
