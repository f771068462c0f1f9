"""Hand-computed cases for the halting toolkit (core/halting/), written against mutmut's survivors
(docs/testing.md)."""

from __future__ import annotations

import math
from typing import Literal

import pytest
import torch

from ponderlab.core.errors import SpecError
from ponderlab.core.halting import (
    ACTConfig,
    HaltingMLP,
    HaltingUnit,
    accumulate,
    accumulation_dtype,
    cumulative_halting_loop,
    depth_cap_error,
    fixed_hops_output,
    interpolation_weights,
    logit,
    require_scope,
)
from ponderlab.core.halting.routing import RoutingStrategy, site_mixing


class MyACT(ACTConfig):
    name: Literal["my_act_kills"] = "my_act_kills"


# ---------------------------------------------------------------- units


def test_logit_is_the_inverse_of_sigmoid():
    assert logit(0.8) == pytest.approx(math.log(4.0))
    assert logit(0.2) == pytest.approx(-math.log(4.0))
    assert torch.sigmoid(torch.tensor(logit(0.9), dtype=torch.float64)).item() == pytest.approx(0.9)


@pytest.mark.parametrize(("dtype", "expected"), [
    (torch.float64, torch.float64), (torch.float32, torch.float32),
    (torch.bfloat16, torch.float32), (torch.float16, torch.float32),
])
def test_accumulation_dtype(dtype, expected):
    assert accumulation_dtype(torch.zeros(1, dtype=dtype)) is expected


def test_halting_unit_on_a_permuted_state_equals_the_contiguous_computation():
    unit = HaltingUnit(3, bias_init=0.25)
    with torch.no_grad():
        unit.linear.weight.copy_(torch.tensor([[1.0, -2.0, 0.5]]))
    buffer = torch.arange(24.0).view(4, 2, 3) / 10  # (L, B, D), as an LSTM writes it
    state = buffer.transpose(0, 1)  # (B, L, D) view, not contiguous
    expected = torch.sigmoid(state[..., 0] - 2 * state[..., 1] + 0.5 * state[..., 2] + 0.25)
    torch.testing.assert_close(unit(state), expected, rtol=0, atol=1e-6)
    torch.testing.assert_close(unit(state.contiguous()), expected, rtol=0, atol=1e-6)


def test_halting_unit_starts_at_sigmoid_of_its_bias_and_follows_its_weights():
    unit = HaltingUnit(3, bias_init=logit(0.75))
    assert unit.linear.weight.abs().sum().item() == 0.0
    state = torch.randn(2, 4, 3)
    assert torch.allclose(unit(state), torch.full((2, 4), 0.75))
    with torch.no_grad():
        unit.linear.weight.copy_(torch.tensor([[1.0, 0.0, 0.0]]))
        unit.linear.bias.zero_()
    assert torch.allclose(unit(state), torch.sigmoid(state[..., 0]))
    assert unit.to(torch.float64)(state.to(torch.float64)).dtype == torch.float64
    assert unit.to(torch.bfloat16)(state.to(torch.bfloat16)).dtype == torch.float32


@pytest.mark.parametrize(("d_model", "hidden", "width"), [(6, None, 3), (5, None, 2), (1, None, 1), (6, 4, 4)])
def test_halting_mlp_width(d_model, hidden, width):
    mlp = HaltingMLP(d_model, bias_init=0.0, hidden=hidden)
    assert mlp.hidden.in_features == d_model and mlp.hidden.out_features == width
    assert mlp.out.in_features == width and mlp.out.out_features == 1


def test_halting_mlp_starts_at_sigmoid_of_its_bias_and_evaluates_only_active_tokens():
    torch.manual_seed(0)
    mlp = HaltingMLP(4, bias_init=logit(0.25))
    state = torch.randn(2, 3, 4, dtype=torch.float64)
    mlp = mlp.to(torch.float64)
    assert mlp.out.weight.abs().sum().item() == 0.0
    assert torch.allclose(mlp(state), torch.full((2, 3), 0.25, dtype=torch.float64))
    torch.nn.init.normal_(mlp.out.weight)
    full = mlp(state)
    expected = torch.sigmoid(mlp.out(torch.relu(mlp.hidden(state))).squeeze(-1))
    assert torch.allclose(full, expected)
    active = torch.tensor([[True, False, True], [False, False, True]])
    partial = mlp(state, active)
    assert partial.dtype == torch.float64 and partial.shape == (2, 3)
    assert torch.equal(partial[~active], torch.zeros(3, dtype=torch.float64))
    assert torch.allclose(partial[active], full[active])
    low = mlp.to(torch.bfloat16)  # bf16 states: h in float32 on both paths
    assert low(state.to(torch.bfloat16)).dtype == torch.float32
    assert low(state.to(torch.bfloat16), active).dtype == torch.float32


def test_a_routing_strategy_mixes_routed_tokens_and_a_halting_strategy_all():
    routing = RoutingStrategy.__new__(RoutingStrategy)  # the default, without a config
    assert routing.token_mixing() == "routed"
    assert site_mixing(routing) == "routed"
    assert site_mixing(torch.nn.Linear(1, 1)) == "all"  # no token_mixing: a halting site


# ---------------------------------------------------------------- outputs


def test_accumulate_adds_weight_times_state_in_place():
    output = torch.ones(1, 2, 2, dtype=torch.float64)
    state = torch.tensor([[[1.0, 2.0], [3.0, 4.0]]])
    result = accumulate(output, torch.tensor([[0.5, 2.0]], dtype=torch.float64), state)
    assert result is output
    assert output.tolist() == [[[1.5, 2.0], [7.0, 9.0]]]


def test_fixed_hops_output_from_an_int_and_from_a_tensor():
    state = torch.randn(2, 3, 4)
    fixed = fixed_hops_output(state, 3)
    assert fixed.output is state
    assert fixed.hops.tolist() == [[3.0] * 3] * 2 and fixed.hops.dtype == torch.float32
    assert fixed.ponder_cost.tolist() == [[0.0] * 3] * 2
    assert fixed.remainder.tolist() == [[0.0] * 3] * 2
    assert fixed.remainder is not fixed.ponder_cost
    wide = fixed_hops_output(state.double(), 2)  # float64 states: float64 hop counts and costs
    assert wide.hops.dtype == wide.ponder_cost.dtype == wide.remainder.dtype == torch.float64
    per_token = fixed_hops_output(state.double(), torch.tensor([[1, 2, 3], [4, 5, 6]]))
    assert per_token.hops.dtype == torch.float64
    assert per_token.hops.tolist() == [[1.0, 2.0, 3.0], [4.0, 5.0, 6.0]]
    assert per_token.ponder_cost.dtype == torch.float64


def test_interpolation_weights_by_hand():
    weights = [torch.tensor([0.2]), torch.tensor([0.5]), torch.tensor([0.4])]
    effective = interpolation_weights(weights)
    # e_3 = 0.4, e_2 = 0.5 * 0.6, e_1 = 0.2 * 0.5 * 0.6
    assert [e.item() for e in effective] == pytest.approx([0.06, 0.3, 0.4])
    assert [e.item() for e in interpolation_weights([torch.tensor([0.7])])] == pytest.approx([0.7])


# ---------------------------------------------------------------- config


def test_act_config_dump_drops_the_cap_only_in_depth_scope():
    assert "max_hops" not in MyACT(scope="depth").model_dump()
    assert MyACT(scope="layer", max_hops=3).model_dump()["max_hops"] == 3
    assert MyACT(scope="model").model_dump()["max_hops"] == 4
    with pytest.raises(ValueError):
        MyACT(scope="layer", max_hops=0)


def test_require_scope_names_the_strategy_the_scope_and_what_is_supported():
    require_scope("mine", "layer", frozenset({"layer", "depth"}))  # supported: no error
    with pytest.raises(SpecError) as raised:
        require_scope("mine", "model", frozenset({"layer", "depth"}), hint="; try depth")
    assert str(raised.value) == (
        "halting.scope: halting 'mine' does not support scope 'model' (supported: depth, layer); try depth")
    assert raised.value.path == "halting.scope"
    with pytest.raises(SpecError) as raised:
        require_scope("mine", "depth", frozenset({"model"}))  # no hint: nothing after the list
    assert str(raised.value) == "halting.scope: halting 'mine' does not support scope 'depth' (supported: model)"


def test_depth_cap_error_message_and_path():
    error = depth_cap_error("mine", "min_hops", 5, 3)
    assert isinstance(error, SpecError)
    assert str(error) == (
        "halting.min_hops: min_hops 5 exceeds the 3 layer(s) available to halting 'mine' in depth scope")
    assert error.path == "halting.min_hops"


# ---------------------------------------------------------------- the cumulative loop


def constant_h(values):
    """halting_probability giving each token of a (1, L) batch a fixed h at every hop."""
    h = torch.tensor([values])

    def probability(n, states, active):
        return h.to(states.dtype).expand(states.shape[:-1])
    return probability


def add_one(state, n, active):
    return state + 1.0


def test_cumulative_loop_by_hand():
    state = torch.zeros(1, 3, 1)
    out = cumulative_halting_loop(state, add_one, n_hops=4, threshold=0.9,
                                  halting_probability=constant_h([0.25, 0.5, 0.125]))
    # token 0: sums 0.25, 0.5, 0.75, then the cap: p = (0.25, 0.25, 0.25, 0.25), N = 4, R = 0.25
    # token 1: sums 0.5, 1.0 >= 0.9 halts at hop 2: p = (0.5, 0.5), N = 2, R = 0.5
    # token 2: sums 0.125, 0.25, 0.375, cap: p = (0.125, 0.125, 0.125, 0.625), N = 4, R = 0.625
    assert out.hops.tolist() == [[4.0, 2.0, 4.0]]
    assert out.remainder.tolist() == [[0.25, 0.5, 0.625]]
    assert out.ponder_cost.tolist() == [[4.25, 2.5, 4.625]]
    # s_n = n for every token (halted tokens keep stepping in this toy hop; their weight is 0)
    assert out.output[0, :, 0].tolist() == [
        0.25 * (1 + 2 + 3 + 4), 0.5 * 1 + 0.5 * 2, 0.125 * (1 + 2 + 3) + 0.625 * 4]
    assert [w[0].tolist() for w in out.hop_weights] == [
        [0.25, 0.5, 0.125], [0.25, 0.5, 0.125], [0.25, 0.0, 0.125], [0.25, 0.0, 0.625]]


def test_cumulative_loop_tells_the_halting_probability_which_tokens_still_run():
    seen = []
    base = constant_h([0.25, 0.5, 0.125])

    def probability(n, states, active):
        seen.append(None if active is None else active.tolist())
        return base(n, states, active)
    cumulative_halting_loop(torch.zeros(1, 3, 1), add_one, n_hops=4, threshold=0.9,
                            halting_probability=probability)
    # None while every token runs; token 1 halts at hop 2, so hop 3 runs tokens 0 and 2 only
    assert seen == [None, None, [[True, False, True]]]


def test_cumulative_loop_padding_halts_after_one_hop_with_weight_one():
    state = torch.full((1, 2, 1), 10.0)
    mask = torch.tensor([[True, False]])
    out = cumulative_halting_loop(state, add_one, n_hops=3, threshold=0.9,
                                  halting_probability=constant_h([0.5, 0.5]), mask=mask)
    assert out.hops.tolist() == [[2.0, 1.0]]
    assert out.remainder.tolist() == [[0.5, 1.0]]
    assert out.output[0, :, 0].tolist() == [0.5 * 11 + 0.5 * 12, 11.0]


def test_cumulative_loop_single_hop_and_every_token_halting_early():
    state = torch.zeros(1, 2, 1)
    one = cumulative_halting_loop(state, add_one, n_hops=1, threshold=0.9,
                                  halting_probability=constant_h([0.5, 0.5]))
    assert one.hops.tolist() == [[1.0, 1.0]] and one.remainder.tolist() == [[1.0, 1.0]]
    assert one.output[0, :, 0].tolist() == [1.0, 1.0]
    calls = []

    def counted(state, n, active):
        calls.append(n)
        return state + 1.0
    early = cumulative_halting_loop(state, counted, n_hops=5, threshold=0.5,
                                    halting_probability=constant_h([0.75, 0.5]))
    assert early.hops.tolist() == [[1.0, 1.0]] and early.remainder.tolist() == [[1.0, 1.0]]
    assert calls == [0]  # every token halted at hop 1: no further hop runs
    assert early.output.dtype == state.dtype


def test_cumulative_loop_accumulates_bf16_states_in_float32_and_returns_bf16():
    state = torch.zeros(1, 2, 1, dtype=torch.bfloat16)
    out = cumulative_halting_loop(state, add_one, n_hops=3, threshold=0.9,
                                  halting_probability=constant_h([0.25, 0.5]))
    assert out.output.dtype == torch.bfloat16
    assert out.hops.dtype == out.remainder.dtype == torch.float32
    assert out.output[0, :, 0].tolist() == [0.25 * 1 + 0.25 * 2 + 0.5 * 3, 0.5 * 1 + 0.5 * 2]
