"""The fused CPU kernel of the cumulative ACT loop (plugins/halting/fused.py) against
the eager loop, the per-token reference and the hand-computed three-token case."""

from __future__ import annotations

import os
import warnings

import pytest
import test_halting_graves_threshold as eager_tests
import torch
from test_halting_graves_threshold import positionwise_hop, scripted_hop, scripted_sites

from ponderlab.core.model import PonderModel
from ponderlab.core.speculation import hop_policy
from ponderlab.plugins.backbones.lstm import LSTMBackbone, LSTMConfig
from ponderlab.plugins.halting import fused
from ponderlab.plugins.halting.common import HaltingMLP, HaltingUnit, cumulative_halting_loop
from ponderlab.plugins.halting.fused import (
    build_kernel,
    fused_bookkeeping,
    fused_cumulative_halting_loop,
    fused_loop_applies,
    load_kernel,
)
from ponderlab.plugins.halting.graves import GravesACT, GravesConfig

D64 = torch.float64

pytestmark = pytest.mark.skipif(fused.find_compiler() is None, reason="needs a C compiler")


@pytest.fixture(autouse=True)
def kernel_enabled(monkeypatch):
    """Every test starts with the kernel allowed (whatever the environment says)."""
    monkeypatch.delenv("PONDERLAB_FUSED_ACT", raising=False)
    assert load_kernel() is not None


def lstm_hop(width: int, dtype: torch.dtype, seed: int):
    """An LSTM re-applied each hop: its batch-first output is a permuted view, as in the backbone.
    Halted tokens keep their state. Records the `active` argument of every call."""
    torch.manual_seed(seed)
    lstm = torch.nn.LSTM(width, width, batch_first=True).to(dtype)
    calls: list[torch.Tensor | None] = []

    def hop(state, step, active):
        calls.append(None if active is None else active.clone())
        new, _ = lstm(state)  # (B, L, D), strides of an (L, B, D) buffer
        return new if active is None else torch.where(active.unsqueeze(-1), new, state)

    return hop, calls


def linear_unit(width: int, bias: float, dtype: torch.dtype, seed: int) -> HaltingUnit:
    torch.manual_seed(seed)
    unit = HaltingUnit(width, bias)
    torch.nn.init.normal_(unit.linear.weight, std=0.7)
    return unit.to(dtype)


def both_loops(state, unit, *, n_hops, threshold, mask=None, seed=0, grad=False):
    """(fused result, its hop calls), (eager result, its hop calls) on the same hops."""
    results = []
    for run_fused in (True, False):
        hop, calls = lstm_hop(state.shape[-1], state.dtype, seed)
        with torch.set_grad_enabled(grad):
            if run_fused:
                out = fused_cumulative_halting_loop(state, hop, n_hops=n_hops, threshold=threshold,
                                                    unit_for_step=lambda step: unit, mask=mask)
            else:
                out = cumulative_halting_loop(state, hop, n_hops=n_hops, threshold=threshold, mask=mask,
                                              halting_probability=lambda step, s, active: unit(s, active))
        results.append((out, calls))
    return results


@pytest.fixture
def kernel_calls(monkeypatch) -> dict[str, int]:
    """Counts the forward kernel's hops and the backward nodes the fused loop creates."""
    counts = {"hops": 0, "backward nodes": 0}
    forward_hop, bookkeeping = fused.forward_hop, fused.FusedBookkeeping

    def counting_hop(*args, **kwargs):
        counts["hops"] += 1
        return forward_hop(*args, **kwargs)

    class CountingBookkeeping(bookkeeping):
        @staticmethod
        def forward(ctx, result, *inputs):
            counts["backward nodes"] += 1
            return bookkeeping.forward(ctx, result, *inputs)

    monkeypatch.setattr(fused, "forward_hop", counting_hop)
    monkeypatch.setattr(fused, "FusedBookkeeping", CountingBookkeeping)
    return counts


def assert_same_calls(first: list, second: list) -> None:
    assert len(first) == len(second)
    for a, b in zip(first, second, strict=True):
        assert (a is None) == (b is None)
        if a is not None:
            assert torch.equal(a, b)


@pytest.mark.parametrize("dtype", [torch.float32, D64])
@pytest.mark.parametrize("bias", [-30.0, -1.0, 0.0, 1.0])
@pytest.mark.parametrize("padded", [False, True])
def test_fused_loop_matches_eager_loop(dtype, bias, padded):
    generator = torch.Generator().manual_seed(1)
    state = torch.randn(4, 9, 16, generator=generator, dtype=dtype)
    mask = torch.rand(4, 9, generator=generator) > 0.25 if padded else None
    unit = linear_unit(16, bias, dtype, seed=2)
    (fast, fast_calls), (slow, slow_calls) = both_loops(state, unit, n_hops=4, threshold=0.9, mask=mask)
    tolerance = {"rtol": 1e-5, "atol": 1e-6} if dtype == torch.float32 else {"rtol": 1e-12, "atol": 1e-12}
    torch.testing.assert_close(fast.output, slow.output, **tolerance)
    assert torch.equal(fast.hops, slow.hops)
    torch.testing.assert_close(fast.remainder, slow.remainder, **tolerance)
    torch.testing.assert_close(fast.ponder_cost, slow.ponder_cost, **tolerance)
    assert len(fast.hop_weights) == len(slow.hop_weights)
    for a, b in zip(fast.hop_weights, slow.hop_weights, strict=True):
        torch.testing.assert_close(a, b, **tolerance)
    torch.testing.assert_close(torch.stack(fast.hop_weights).sum(0), torch.ones(4, 9, dtype=dtype), **tolerance)
    assert_same_calls(fast_calls, slow_calls)  # the same tokens frozen at every hop, the same early stop
    # the output keeps the LSTM's permuted layout, so the next layer gets it without a copy
    assert fast.output.stride() == slow.output.stride()
    if padded:
        assert fast.hops[~mask].eq(1).all() and fast.remainder[~mask].eq(1).all()


def test_fused_loop_sees_mixed_halting_and_stops_early():
    state = torch.randn(3, 5, 8, dtype=D64, generator=torch.Generator().manual_seed(0))
    unit = linear_unit(8, -0.5, D64, seed=4)
    (fast, calls), _ = both_loops(state, unit, n_hops=6, threshold=0.8)
    assert len(set(fast.hops.flatten().tolist())) >= 2  # tokens halt at different hops
    assert len(calls) == int(fast.hops.max()) < 6  # stopped once every token had halted


def test_hand_computed_three_tokens_on_the_fused_path():
    site = scripted_sites()["graves"]
    hop = scripted_hop()
    with torch.no_grad():
        assert fused_loop_applies(hop.initial_state(), site.max_hops(), site.linear_unit(0))
        eager_tests.test_hand_computed_three_tokens("graves")  # the eager path's test, on the kernel


def test_fused_path_matches_per_token_reference():
    with torch.no_grad():
        eager_tests.test_graves_matches_per_token_reference()
        eager_tests.test_graves_depth_scope_uses_one_unit_per_layer_but_the_last()


def in_three_slices(monkeypatch, run):
    """`run()` with the kernels split into 3 parallel slices per call; returns its result and
    the number of slices of every kernel call."""
    slice_counts = []
    run_in_slices = fused.run_in_slices

    def counting(call, state):
        results = run_in_slices(call, state)
        slice_counts.append(len(results))
        return results

    monkeypatch.setattr(fused, "run_in_slices", counting)
    monkeypatch.setattr(fused, "ELEMENTS_PER_WORKER", 16)
    threads = torch.get_num_threads()
    torch.set_num_threads(3)
    try:
        return run(), slice_counts
    finally:
        torch.set_num_threads(threads)


def test_parallel_slices_give_the_single_slice_result(monkeypatch):
    state = torch.randn(6, 7, 16, generator=torch.Generator().manual_seed(5))
    unit = linear_unit(16, -0.3, torch.float32, seed=6)
    (single, _), _ = both_loops(state, unit, n_hops=4, threshold=0.9)
    ((sliced, _), _), slice_counts = in_three_slices(
        monkeypatch, lambda: both_loops(state, unit, n_hops=4, threshold=0.9))
    assert slice_counts and all(count == 3 for count in slice_counts)
    assert torch.equal(sliced.output, single.output)
    assert torch.equal(sliced.hops, single.hops)
    assert all(torch.equal(a, b) for a, b in zip(sliced.hop_weights, single.hop_weights, strict=True))


def lstm_graves_model(scope: str, **options) -> PonderModel:
    """A 3-layer LSTM with graves in `scope`, its units set so that halting varies per token."""
    halting = {"scope": scope, "halting_bias_init": -1.0, "epsilon": 0.3, **options}
    if scope != "depth":
        halting["max_steps"] = 4
    torch.manual_seed(0)
    model = PonderModel(LSTMBackbone(LSTMConfig(d_model=16, n_layers=3), vocab_size=11), GravesACT,
                        GravesConfig(**halting), vocab_size=11)
    for site in model.sites:
        for unit in site.units:
            torch.nn.init.normal_(unit.linear.weight, std=5.0)
    return model


@pytest.mark.parametrize("scope", ["layer", "model", "depth"])
def test_lstm_model_evaluation_is_the_same_fused_or_eager(scope, kernel_calls):
    model = lstm_graves_model(scope).eval()
    ids = torch.randint(0, 11, (3, 10))
    mask = torch.ones(3, 10, dtype=torch.bool)
    mask[1, 6:] = False
    with torch.no_grad():
        fast = model(ids, mask=mask)
        hops_fused = kernel_calls["hops"]
        with fused_bookkeeping(False):
            slow = model(ids, mask=mask)
    assert hops_fused > 0 and kernel_calls["hops"] == hops_fused  # only the first pass ran the kernel
    torch.testing.assert_close(fast.logits, slow.logits, rtol=1e-5, atol=1e-5)
    assert torch.equal(fast.stats.hops, slow.stats.hops)
    assert len(set(fast.stats.hops[mask].tolist())) >= 2  # halting really varies


def test_kernel_runs_only_where_it_gives_the_eager_results():
    state = torch.randn(2, 3, 8)
    unit = HaltingUnit(8, 1.0)
    with torch.no_grad():
        assert fused_loop_applies(state, 3, unit)
        assert not fused_loop_applies(state, 1, unit)  # a single hop has no bookkeeping
        assert not fused_loop_applies(state.bfloat16(), 3, unit)
        assert not fused_loop_applies(state[0], 3, unit)  # not (B, L, D)
        assert not fused_loop_applies(state, 3, HaltingMLP(8, 1.0))  # threshold's unit
        with hop_policy("speculative"):
            assert not fused_loop_applies(state, 3, unit)
        with fused_bookkeeping(False):
            assert not fused_loop_applies(state, 3, unit)


def test_environment_switch(monkeypatch):
    with torch.no_grad():
        monkeypatch.setenv("PONDERLAB_FUSED_ACT", "0")
        assert not fused_loop_applies(torch.randn(2, 3, 8), 3, HaltingUnit(8, 1.0))
        with fused_bookkeeping(True):  # the context manager wins over the environment
            assert fused_loop_applies(torch.randn(2, 3, 8), 3, HaltingUnit(8, 1.0))


def test_build_is_cached_and_leaves_no_partial_files(tmp_path):
    compiler = fused.find_compiler()
    first = build_kernel(compiler, tmp_path)
    made = first.stat().st_mtime_ns
    second = build_kernel(compiler, tmp_path)
    assert second == first and second.stat().st_mtime_ns == made  # not rebuilt
    assert [path.name for path in tmp_path.iterdir()] == [first.name]


def test_failed_build_warns_once_and_loops_stay_eager(tmp_path, monkeypatch):
    broken = tmp_path / "cc"
    broken.write_text("#!/bin/sh\necho 'no such compiler flag' >&2\nexit 1\n")
    broken.chmod(0o755)
    monkeypatch.setenv("CC", str(broken))
    monkeypatch.setenv("PONDERLAB_KERNEL_CACHE", str(tmp_path / "cache"))
    load_kernel.cache_clear()
    try:
        with pytest.warns(RuntimeWarning, match="no such compiler flag"):
            assert load_kernel() is None
        with warnings.catch_warnings():
            warnings.simplefilter("error")  # no second warning
            assert load_kernel() is None
        with torch.no_grad():
            assert not fused_loop_applies(torch.randn(2, 3, 8), 3, HaltingUnit(8, 1.0))
        assert os.listdir(tmp_path / "cache") == []  # the partial library was removed
    finally:
        load_kernel.cache_clear()
    monkeypatch.undo()
    assert load_kernel() is not None


def test_positionwise_hops_with_a_contiguous_state():
    """States in (B, L, D) order (a transformer's) take the other walk through memory."""
    generator = torch.Generator().manual_seed(9)
    weights = [torch.randn(8, 8, generator=generator, dtype=D64) for _ in range(4)]
    hop, _ = positionwise_hop(weights)
    state = torch.randn(3, 5, 8, generator=generator, dtype=D64)
    unit = linear_unit(8, -0.4, D64, seed=3)
    with torch.no_grad():
        fast = fused_cumulative_halting_loop(state, hop, n_hops=4, threshold=0.85, unit_for_step=lambda s: unit)
        slow = cumulative_halting_loop(state, hop, n_hops=4, threshold=0.85,
                                       halting_probability=lambda step, s, active: unit(s, active))
    assert fast.output.is_contiguous()
    torch.testing.assert_close(fast.output, slow.output, rtol=1e-12, atol=1e-12)
    assert torch.equal(fast.hops, slow.hops)


# --------------------------------------------------------------------------- training


def gradients(state, unit, *, fused_path: bool, mask=None, seed=0):
    """Gradients of a loss on the output, the ponder cost and the hop weights, with respect
    to the initial state, the LSTM hop's parameters and the unit's parameters."""
    state = state.detach().clone().requires_grad_()
    hop, _ = lstm_hop(state.shape[-1], state.dtype, seed)
    unit = copy_of(unit)
    generator = torch.Generator().manual_seed(11)
    if fused_path:
        out = fused_cumulative_halting_loop(state, hop, n_hops=4, threshold=0.9,
                                            unit_for_step=lambda step: unit, mask=mask)
    else:
        out = cumulative_halting_loop(state, hop, n_hops=4, threshold=0.9, mask=mask,
                                      halting_probability=lambda step, s, active: unit(s, active))
    loss = (out.output * torch.randn(out.output.shape, generator=generator, dtype=state.dtype)).sum()
    loss = loss + 0.3 * out.ponder_cost.sum()
    for weight in out.hop_weights:
        loss = loss + (weight * torch.randn(weight.shape, generator=generator, dtype=state.dtype)).sum()
    loss.backward()
    return out, state.grad, unit.linear.weight.grad, unit.linear.bias.grad


def copy_of(unit: HaltingUnit) -> HaltingUnit:
    clone = HaltingUnit(unit.linear.in_features, 0.0).to(unit.linear.weight.dtype)
    clone.load_state_dict(unit.state_dict())
    return clone


@pytest.mark.parametrize("bias", [-30.0, -1.0, 0.0, 1.0])
@pytest.mark.parametrize("padded", [False, True])
def test_fused_gradients_match_eager_loop(bias, padded):
    generator = torch.Generator().manual_seed(3)
    state = torch.randn(3, 7, 12, generator=generator, dtype=D64)
    mask = torch.rand(3, 7, generator=generator) > 0.25 if padded else None
    unit = linear_unit(12, bias, D64, seed=8)
    fast = gradients(state, unit, fused_path=True, mask=mask)
    slow = gradients(state, unit, fused_path=False, mask=mask)
    assert torch.equal(fast[0].hops, slow[0].hops)
    for a, b in zip(fast[1:], slow[1:], strict=True):
        torch.testing.assert_close(a, b, rtol=1e-10, atol=1e-12)
    assert fast[2].abs().sum() > 0 or bias == -30.0  # the unit really gets a gradient


def test_gradcheck_float64_on_the_fused_path():
    site = scripted_sites()["graves"]
    assert fused_loop_applies(torch.zeros(1, 3, site.d_model, dtype=D64), site.max_hops(), site.linear_unit(0))
    eager_tests.test_gradcheck_float64("graves")  # autograd is on: the backward kernel runs


def test_backward_in_parallel_slices_gives_the_single_slice_gradients(monkeypatch):
    state = torch.randn(6, 7, 16, dtype=D64, generator=torch.Generator().manual_seed(5))
    unit = linear_unit(16, -0.3, D64, seed=6)
    single = gradients(state, unit, fused_path=True)
    sliced, slice_counts = in_three_slices(monkeypatch, lambda: gradients(state, unit, fused_path=True))
    assert len(slice_counts) >= 2 and all(count == 3 for count in slice_counts)  # forward hops and backward
    for a, b in zip(sliced[1:], single[1:], strict=True):
        torch.testing.assert_close(a, b, rtol=1e-12, atol=1e-12)


@pytest.mark.parametrize("scope", ["layer", "depth"])
def test_lstm_model_train_step_gradients_are_the_same_fused_or_eager(scope, kernel_calls):
    model = lstm_graves_model(scope, time_penalty=0.01).double()
    ids = torch.randint(0, 11, (3, 10))
    grads = []
    for enabled in (True, False):
        model.zero_grad(set_to_none=True)
        with fused_bookkeeping(enabled):
            out = model(ids, labels=ids)
        out.loss.backward()
        grads.append({name: parameter.grad.clone() for name, parameter in model.named_parameters()})
    assert kernel_calls["backward nodes"] == len(model.sites)  # one per site, fused pass only
    assert grads[0].keys() == grads[1].keys()
    for name in grads[0]:
        torch.testing.assert_close(grads[0][name], grads[1][name], rtol=1e-9, atol=1e-11, msg=name)
    unit_grads = [grads[0][name] for name in grads[0] if ".units." in name]
    assert unit_grads and any(grad.abs().sum() > 0 for grad in unit_grads)


def test_backward_uses_the_parameters_the_forward_used():
    """Under `functional_call` the unit's parameters are swapped for the forward only; the
    backward must use those, not the module's own (here they differ)."""
    site = eager_tests.graves_site(cap=4, epsilon=0.2)
    generator = torch.Generator().manual_seed(2)
    weights = [torch.randn(5, 5, generator=generator, dtype=D64) * 0.7 for _ in range(4)]
    hop, _ = positionwise_hop(weights)
    state = torch.randn(2, 3, 5, generator=generator, dtype=D64, requires_grad=True)
    swapped = {"units.0.linear.weight": torch.randn(1, 5, generator=generator, dtype=D64, requires_grad=True),
               "units.0.linear.bias": torch.tensor([-0.3], dtype=D64, requires_grad=True)}
    results = []
    for enabled in (True, False):
        with fused_bookkeeping(enabled):
            out = torch.func.functional_call(site, swapped, (state, hop))
        loss = (out.output * torch.arange(5, dtype=D64)).sum() + out.ponder_cost.sum()
        results.append((out.hops, torch.autograd.grad(loss, (state, *swapped.values()))))
    assert torch.equal(results[0][0], results[1][0]) and len(set(results[0][0].flatten().tolist())) >= 2
    for a, b in zip(results[0][1], results[1][1], strict=True):
        torch.testing.assert_close(a, b, rtol=1e-10, atol=1e-12)
