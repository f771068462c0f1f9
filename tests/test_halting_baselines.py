"""The baselines: none, constant (fixed depth k) and random halting at a chosen mean."""

from __future__ import annotations

import math

import pytest
import torch

from ponderlab.core.errors import SpecError
from ponderlab.plugins.halting.constant import ConstantConfig, ConstantDepth
from ponderlab.plugins.halting.none import NoHalting, NoHaltingConfig
from ponderlab.plugins.halting.random_halting import (
    RandomHalting,
    RandomHaltingConfig,
    capped_geometric_mean,
    sample_hops,
    solve_geometric_q,
)
from ponderlab.plugins.halting.reference import ScriptedHop


def counting_hop(state, n, active):
    """Adds 1 to channel 0 of every active token: channel 0 counts the hops a token took."""
    new = state.clone()
    new[..., 0] += 1
    return new if active is None else torch.where(active.unsqueeze(-1), new, state)


def test_none_and_constant_hop_counts():
    state = torch.zeros(2, 3, 4)
    none = NoHalting(NoHaltingConfig(), d_model=4, n_layers=3)
    assert none(state, counting_hop).output[..., 0].eq(1).all()
    depth = NoHalting(NoHaltingConfig(scope="depth"), d_model=4, n_layers=3)
    out = depth(state, counting_hop)
    assert out.output[..., 0].eq(3).all() and out.hops.eq(3).all()
    constant = ConstantDepth(ConstantConfig(hops=3), d_model=4, n_layers=2)
    out = constant(state, counting_hop)
    assert out.output[..., 0].eq(3).all() and out.hops.eq(3).all() and out.ponder_cost.eq(0).all()


def test_constant_in_depth_scope_exits_after_k_layers():
    hop = ScriptedHop(torch.zeros(1, 2, 4))
    constant = ConstantDepth(ConstantConfig(scope="depth", hops=2), d_model=6, n_layers=4)
    out = constant(hop.initial_state(), hop)
    assert len(hop.calls) == 2 and out.hops.eq(2).all()
    assert out.output[..., 1].eq(1).all()  # the state after layer 2
    with pytest.raises(SpecError, match="halting.hops"):
        ConstantDepth(ConstantConfig(scope="depth", hops=5), d_model=6, n_layers=4)


def test_two_point_hops_have_the_requested_mean():
    torch.manual_seed(0)
    hops = sample_hops(torch.Size([50, 200]), mean=2.3, cap=4, distribution="two_point", device="cpu")
    assert set(hops.unique().tolist()) == {2, 3}
    assert hops.double().mean().item() == pytest.approx(2.3, abs=0.02)
    ones = sample_hops(torch.Size([4, 5]), mean=3.0, cap=4, distribution="two_point", device="cpu")
    assert ones.eq(3).all()


def test_geometric_hops_have_the_requested_mean():
    q = solve_geometric_q(2.0, cap=5)
    assert capped_geometric_mean(q, 5) == pytest.approx(2.0, abs=1e-9)
    # hand check of the capped mean: cap 2, q 0.5 -> P(1) = 0.5, P(2) = 0.5 -> mean 1.5
    assert capped_geometric_mean(0.5, 2) == pytest.approx(1.5)
    torch.manual_seed(1)
    hops = sample_hops(torch.Size([100, 200]), mean=2.0, cap=5, distribution="geometric", device="cpu")
    assert hops.min().item() == 1 and hops.max().item() == 5
    assert hops.double().mean().item() == pytest.approx(2.0, abs=0.03)
    # P(N = 1) = q for a geometric draw
    assert (hops == 1).double().mean().item() == pytest.approx(q, abs=0.02)
    assert solve_geometric_q(5.0, cap=5) == 0.0 and math.isclose(solve_geometric_q(1.0, cap=5), 1.0, abs_tol=1e-9)


@pytest.mark.parametrize("distribution", ["two_point", "geometric"])
def test_random_tokens_take_exactly_their_hops(distribution):
    torch.manual_seed(2)
    strategy = RandomHalting(RandomHaltingConfig(mean_hops=2.5, max_hops=4, distribution=distribution),
                             d_model=3, n_layers=1)
    out = strategy(torch.zeros(4, 8, 3), counting_hop)
    torch.testing.assert_close(out.output[..., 0], out.hops.float())
    assert out.hops.min() >= 1 and out.hops.max() <= 4
    assert out.ponder_cost.eq(0).all() and out.remainder.eq(0).all()


def test_random_options_are_validated():
    with pytest.raises(ValueError, match="exceeds max_hops"):
        RandomHaltingConfig(mean_hops=5, max_hops=4)
    with pytest.raises(ValueError):
        RandomHaltingConfig(mean_hops=0.5)
    with pytest.raises(ValueError, match="max_hops does not apply"):
        RandomHaltingConfig(scope="depth", max_hops=3)
    with pytest.raises(SpecError, match="halting.mean_hops"):
        RandomHalting(RandomHaltingConfig(scope="depth", mean_hops=3.5), d_model=3, n_layers=3)
    depth = RandomHalting(RandomHaltingConfig(scope="depth", mean_hops=1.5), d_model=3, n_layers=3)
    assert depth.max_hops() == 3
