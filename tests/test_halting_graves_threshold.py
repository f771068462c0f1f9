"""Graves ACT and threshold ACT (seed 002): hand-computed cases, per-token references, gradients."""

from __future__ import annotations

import pytest
import torch
from torch.func import functional_call

from ponderlab.core.errors import SpecError
from ponderlab.core.halting import HaltingMLP, logit
from ponderlab.plugins.halting.graves import GravesACT, GravesConfig
from ponderlab.plugins.halting.reference import (
    ScriptedHop,
    cumulative_act_token,
    script_linear,
    script_mlp,
)
from ponderlab.plugins.halting.threshold import ThresholdACT, ThresholdConfig

D64 = torch.float64


# Three tokens, threshold 0.9 (epsilon 0.1), cap 3. Halting probabilities per hop:
#   A: 0.5, 0.45      -> 0.5 < 0.9, 0.95 >= 0.9: N = 2, R = 1 - 0.5 = 0.5, p = [0.5, 0.5, 0]
#   B: 0.95           -> N = 1, R = 1, p = [1, 0, 0]
#   C: 0.1, 0.2, 0.3  -> cumulative 0.1, 0.3, 0.6 never reaches 0.9: capped at N = 3,
#                        R = 1 - 0.3 = 0.7 at the last hop, p = [0.1, 0.2, 0.7]
H = [[0.5, 0.45, 0.5], [0.95, 0.5, 0.5], [0.1, 0.2, 0.3]]
WEIGHTS = [[0.5, 0.5, 0.0], [1.0, 0.0, 0.0], [0.1, 0.2, 0.7]]
HOPS = [2.0, 1.0, 3.0]
REMAINDER = [0.5, 1.0, 0.7]
COST = [2.5, 2.0, 3.7]  # N + R


def scripted_hop(requires_grad: bool = False) -> ScriptedHop:
    controls = torch.tensor([[[logit(h) for h in row] for row in H]], dtype=D64, requires_grad=requires_grad)
    return ScriptedHop(controls)


def graves_site(cap: int = 3, epsilon: float = 0.1, **options) -> GravesACT:
    config = GravesConfig(max_hops=cap, epsilon=epsilon, **options)
    return GravesACT(config, d_model=cap + 2, n_layers=1).double()


def threshold_site(n_layers: int = 3, threshold: float = 0.9, **options) -> ThresholdACT:
    config = ThresholdConfig(threshold=threshold, **options)
    return ThresholdACT(config, d_model=n_layers + 2, n_layers=n_layers).double()


def scripted_sites():
    graves = graves_site()
    script_linear(graves.units[0].linear, control_index=3)
    threshold = threshold_site()
    for unit in threshold.units:
        script_mlp(unit.hidden, unit.out, control_index=3)
    return {"graves": graves, "threshold": threshold}


@pytest.mark.parametrize("name", ["graves", "threshold"])
def test_hand_computed_three_tokens(name):
    site = scripted_sites()[name]
    hop = scripted_hop()
    out = site(hop.initial_state(), hop)
    torch.testing.assert_close(out.output[0, :, :3], torch.tensor(WEIGHTS, dtype=D64))
    torch.testing.assert_close(out.hops[0], torch.tensor(HOPS, dtype=D64))
    torch.testing.assert_close(out.remainder[0], torch.tensor(REMAINDER, dtype=D64))
    torch.testing.assert_close(out.ponder_cost[0], torch.tensor(COST, dtype=D64))
    # Output is the weighted SUM: the constant channel carries the weight total, 1 for every token.
    torch.testing.assert_close(out.output[0, :, 4], torch.ones(3, dtype=D64))
    # Halted tokens are passed as inactive; the loop stops after the capped token's third hop.
    assert hop.calls[0] is None
    assert hop.calls[1].tolist() == [[True, False, True]]
    assert hop.calls[2].tolist() == [[False, False, True]]
    assert len(hop.calls) == 3


@pytest.mark.parametrize("name", ["graves", "threshold"])
def test_ponder_cost_gradient_flows_through_remainder_only(name):
    site = scripted_sites()[name]
    hop = scripted_hop(requires_grad=True)
    out = site(hop.initial_state(), hop)
    assert not out.hops.requires_grad
    (grad,) = torch.autograd.grad(out.ponder_cost.sum(), hop.controls)
    # dR/dlogit_m = -h_m (1 - h_m) for the hops before the halting one, 0 otherwise.
    expected = [[-0.25, 0.0, 0.0], [0.0, 0.0, 0.0], [-0.09, -0.16, 0.0]]
    torch.testing.assert_close(grad[0], torch.tensor(expected, dtype=D64))


def test_stops_as_soon_as_every_token_halted():
    site = scripted_sites()["graves"]
    controls = torch.full((2, 3, 3), 5.0, dtype=D64)  # h = 0.993 >= 0.9 at hop 1
    hop = ScriptedHop(controls)
    out = site(hop.initial_state(), hop)
    assert len(hop.calls) == 1
    assert out.hops.eq(1).all()


def positionwise_hop(weights: list[torch.Tensor]):
    """A token-wise hop s -> tanh(W_n s + 0.1), and its per-token version for the references."""

    def token_hop(n: int, s: torch.Tensor) -> torch.Tensor:
        return torch.tanh(weights[n] @ s + 0.1)

    def hop(state, n, active):
        new = torch.tanh(state @ weights[n].T + 0.1)  # (B, L, D)
        return new if active is None else torch.where(active.unsqueeze(-1), new, state)

    return hop, token_hop


def reference_check(site, n_hops: int, threshold: float, units: list, seed: int):
    generator = torch.Generator().manual_seed(seed)
    d = site.d_model
    weights = [torch.randn(d, d, generator=generator, dtype=D64) for _ in range(n_hops)]
    state = torch.randn(3, 4, d, generator=generator, dtype=D64)
    hop, token_hop = positionwise_hop(weights)
    out = site(state, hop)

    def halt(n, s):
        return float(units[n if len(units) > 1 else 0](s.view(1, 1, -1)).item())

    for b in range(3):
        for t in range(4):
            ref = cumulative_act_token(state[b, t], token_hop, halt, n_hops=n_hops, threshold=threshold)
            torch.testing.assert_close(out.output[b, t], ref["output"])
            assert out.hops[b, t].item() == ref["hops"]
            assert out.remainder[b, t].item() == pytest.approx(ref["remainder"], abs=1e-12)
            assert out.ponder_cost[b, t].item() == pytest.approx(ref["ponder_cost"], abs=1e-12)
    return out


def test_graves_matches_per_token_reference():
    seen_hops = set()
    for seed in range(4):
        site = graves_site(cap=5, epsilon=0.2)
        torch.manual_seed(seed)
        torch.nn.init.normal_(site.units[0].linear.weight, std=1.5)
        torch.nn.init.constant_(site.units[0].linear.bias, -0.5)
        out = reference_check(site, 5, 0.8, list(site.units), seed)
        seen_hops |= set(out.hops.flatten().tolist())
    assert len(seen_hops) >= 3  # the cases really exercise different halting steps


def test_graves_depth_scope_uses_one_unit_per_layer_but_the_last():
    site = GravesACT(GravesConfig(scope="depth", epsilon=0.2), d_model=5, n_layers=4).double()
    assert len(site.units) == 3 and site.max_hops() == 4  # the last layer always halts
    torch.manual_seed(0)
    for unit in site.units:
        torch.nn.init.normal_(unit.linear.weight, std=1.5)
    reference_check(site, 4, 0.8, list(site.units), seed=7)


def test_threshold_matches_per_token_reference():
    seen_hops = set()
    for seed in range(4):
        site = threshold_site(n_layers=4, threshold=0.8, halting_bias_init=-0.7)
        torch.manual_seed(seed)
        for unit in site.units:
            torch.nn.init.normal_(unit.out.weight, std=2.0)
        out = reference_check(site, 4, 0.8, list(site.units), seed)
        seen_hops |= set(out.hops.flatten().tolist())
    assert len(seen_hops) >= 3


@pytest.mark.parametrize("name", ["graves", "threshold"])
def test_weights_sum_to_one_including_capped_tokens(name):
    site = scripted_sites()[name]
    generator = torch.Generator().manual_seed(3)
    controls = torch.randn(4, 6, 3, generator=generator, dtype=D64) * 2 - 1.5
    hop = ScriptedHop(controls)
    out = site(hop.initial_state(), hop)
    h = torch.sigmoid(controls)
    capped = (h[..., :2].sum(-1) < 0.9) & (h[..., :1].sum(-1) < 0.9)
    assert capped.any() and (~capped).any()
    assert out.hops[capped].eq(3).all()
    torch.testing.assert_close(out.output[..., :3].sum(-1), torch.ones(4, 6, dtype=D64))
    # A capped token's remainder 1 - (h_1 + h_2) sits on its last hop.
    torch.testing.assert_close(out.output[..., 2][capped], 1 - h[..., :2].sum(-1)[capped])


def gradcheck_inputs(site, seed: int):
    generator = torch.Generator().manual_seed(seed)
    d = site.d_model
    weights = [torch.randn(d, d, generator=generator, dtype=D64) * 0.7 for _ in range(site.max_hops())]
    state = torch.randn(1, 3, d, generator=generator, dtype=D64, requires_grad=True)
    return positionwise_hop(weights)[0], state


@pytest.mark.parametrize("name", ["graves", "threshold"])
def test_gradcheck_float64(name):
    threshold = 0.8
    generator = torch.Generator().manual_seed(1)
    if name == "graves":
        site = graves_site(cap=4, epsilon=1 - threshold)
        torch.nn.init.normal_(site.units[0].linear.weight, std=1.0, generator=generator)
    else:
        site = threshold_site(n_layers=4, threshold=threshold, halting_bias_init=-0.5)
        for unit in site.units:
            torch.nn.init.normal_(unit.out.weight, std=1.0, generator=generator)
    hop, state = gradcheck_inputs(site, seed=5)
    names = [n for n, p in site.named_parameters() if n.endswith("bias") or n.endswith("weight")]
    params = tuple(dict(site.named_parameters())[n].detach().clone().requires_grad_() for n in names)

    # Halting decisions are piecewise constant: keep every cumulative sum away from the threshold.
    with torch.no_grad():
        sums = []
        s = state.detach()
        total = torch.zeros(1, 3, dtype=D64)
        for n in range(site.max_hops() - 1):  # the last hop halts every token without an h
            s = hop(s, n, None)
            total = total + site.halting_probability(n, s, None)
            sums.append(total)
        margin = (torch.stack(sums) - threshold).abs().min().item()
    assert margin > 1e-3

    def run(x, *values):
        out = functional_call(site, dict(zip(names, values, strict=True)), (x, hop))
        return out.output, out.ponder_cost, *out.hop_weights

    assert torch.autograd.gradcheck(run, (state, *params), eps=1e-6, atol=1e-6)


def test_threshold_halting_unit_is_a_small_mlp():
    site = ThresholdACT(ThresholdConfig(), d_model=64, n_layers=2)
    per_unit = sum(p.numel() for p in site.units[0].parameters())
    assert 0.9 < per_unit / (64 * 64 / 2) < 1.1


def test_halting_mlp_evaluates_only_active_tokens():
    unit = HaltingMLP(6, bias_init=0.3).double()
    torch.nn.init.normal_(unit.out.weight)
    state = torch.randn(2, 5, 6, dtype=D64)
    active = torch.tensor([[True, False, True, False, False], [False, True, True, True, False]])
    full = unit(state)
    subset = unit(state, active)
    torch.testing.assert_close(subset[active], full[active])
    assert subset[~active].eq(0).all()


def test_threshold_default_bias_runs_every_layer_at_init():
    site = threshold_site(n_layers=4, threshold=0.99)
    hop = ScriptedHop(torch.zeros(1, 2, 4, dtype=D64))
    out = site(hop.initial_state(), hop)
    assert out.hops.eq(4).all()
    # h = 1/5 on every layer; the last layer takes the remainder 1 - 3/5.
    torch.testing.assert_close(out.output[0, 0, :4], torch.tensor([0.2, 0.2, 0.2, 0.4], dtype=D64))


def test_threshold_is_depth_only():
    with pytest.raises(SpecError, match="halting.scope"):
        ThresholdACT(ThresholdConfig(scope="layer"), d_model=4, n_layers=2)
    assert ThresholdConfig().scope == "depth"


def test_graves_rejects_max_hops_in_depth_scope():
    with pytest.raises(ValueError, match="max_hops does not apply in depth scope"):
        GravesConfig(scope="depth", max_hops=3)
    with pytest.raises(ValueError):
        GravesConfig(epsilon=0.0)
    with pytest.raises(ValueError):
        ThresholdConfig(threshold=1.5)
