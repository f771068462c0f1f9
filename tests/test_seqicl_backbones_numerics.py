"""seq_icl backbones, the shared pieces and per-model numerics.

Fast forms (parallel scans, FFT convolutions, chunked retention) against step-by-step loops
and hand-computed cases, in float64: forward values and gradients.
"""

from __future__ import annotations

import cmath
import math

import pytest
import torch

from ponderlab.plugins.backbones.linear_recurrence import (
    DiagonalSSM,
    causal_fft_conv,
    linear_scan,
    linear_scan_reference,
    log_space_linear_scan,
)
from ponderlab.plugins.backbones.lru import LRUMixer
from ponderlab.plugins.backbones.retnet import head_decays, retention_chunked, retention_recurrent
from ponderlab.plugins.backbones.rwkv import wkv_parallel, wkv_recurrent

F64 = torch.float64


def _rand(*shape, seed=0, dtype=F64):
    return torch.randn(*shape, generator=torch.Generator().manual_seed(seed), dtype=dtype)


def _assert_same_grads(fast, reference, inputs, rtol=1e-9, atol=1e-11):
    upstream = _rand(*fast.shape, seed=99)
    grads_fast = torch.autograd.grad(fast, inputs, upstream, retain_graph=True, allow_unused=True)
    grads_ref = torch.autograd.grad(reference, inputs, upstream, retain_graph=True, allow_unused=True)
    for index, (g_fast, g_ref) in enumerate(zip(grads_fast, grads_ref, strict=True)):
        # An input one form never touches (the gates of a 1-step scan) has gradient zero.
        g_fast = torch.zeros_like(inputs[index]) if g_fast is None else g_fast
        g_ref = torch.zeros_like(inputs[index]) if g_ref is None else g_ref
        torch.testing.assert_close(g_fast, g_ref, rtol=rtol, atol=atol, msg=f"gradient of input {index}")


# --------------------------------------------------------------------------- linear scans


def test_linear_scan_on_a_hand_computed_case():
    # h = 0.5 h + x: 1, 0.5 + 2 = 2.5, 1.25 + 3 = 4.25, 2.125 - 1 = 1.125
    gates = torch.full((1, 4, 1), 0.5, dtype=F64)
    inputs = torch.tensor([1.0, 2.0, 3.0, -1.0], dtype=F64).view(1, 4, 1)
    expected = torch.tensor([1.0, 2.5, 4.25, 1.125], dtype=F64).view(1, 4, 1)
    torch.testing.assert_close(linear_scan(gates, inputs), expected)
    torch.testing.assert_close(linear_scan(torch.tensor([0.5], dtype=F64), inputs), expected)
    torch.testing.assert_close(linear_scan_reference(gates, inputs), expected)


@pytest.mark.parametrize("length", [1, 2, 5, 16, 37])
@pytest.mark.parametrize("kind", ["real", "complex", "time-invariant"])
def test_linear_scan_matches_the_step_loop(length, kind):
    inputs = _rand(2, length, 3, seed=1)
    if kind == "complex":
        inputs = torch.complex(inputs, _rand(2, length, 3, seed=2))
        gates = torch.polar(torch.rand(2, length, 3, dtype=F64), _rand(2, length, 3, seed=3))
    elif kind == "real":
        gates = torch.rand(2, length, 3, dtype=F64) * 1.2 - 0.1  # also negative and > 1
    else:
        gates = torch.rand(3, dtype=F64)
    gates.requires_grad_()
    inputs.requires_grad_()
    fast = linear_scan(gates, inputs)
    reference = linear_scan_reference(gates, inputs)
    torch.testing.assert_close(fast, reference, rtol=1e-10, atol=1e-12)
    if kind == "complex":
        fast, reference = torch.view_as_real(fast), torch.view_as_real(reference)
    _assert_same_grads(fast, reference, (gates, inputs))


@pytest.mark.parametrize("time_invariant", [True, False])
def test_log_space_scan_equals_the_plain_recurrence(time_invariant):
    length = 11
    log_gates = (-torch.rand(4, dtype=F64)) if time_invariant else -torch.rand(2, length, 4, dtype=F64)
    log_inputs = _rand(2, length, 4, seed=4)
    values = _rand(2, length, 4, 2, seed=5)
    for tensor in (log_gates, log_inputs, values):
        tensor.requires_grad_()
    scale, scaled = log_space_linear_scan(log_gates, log_inputs, values)
    states = torch.exp(scale).unsqueeze(-1) * scaled
    gates = torch.exp(log_gates).unsqueeze(-1)  # (4, 1) or (2, L, 4, 1)
    reference = linear_scan_reference(gates, torch.exp(log_inputs).unsqueeze(-1) * values)
    torch.testing.assert_close(states, reference, rtol=1e-10, atol=1e-12)
    _assert_same_grads(states, reference, (log_gates, log_inputs, values))


def test_log_space_scan_stays_finite_where_exp_overflows():
    log_inputs = torch.tensor([[500.0, 0.0, 800.0]]).unsqueeze(-1)  # float32: e^500 = inf
    values = torch.ones(1, 3, 1, 1)
    scale, scaled = log_space_linear_scan(torch.tensor([-1.0]), log_inputs, values)
    assert torch.isfinite(scale).all() and torch.isfinite(scaled).all()
    # state_1 = e^499 + 1 -> log 499 (+ e^-499); state_2 = e^498 + e^-1 + e^800 -> log 800.
    total = scale + torch.log(scaled.squeeze(-1))
    torch.testing.assert_close(total.squeeze(), torch.tensor([500.0, 499.0, 800.0]))


# --------------------------------------------------------------------------- convolutions


def test_causal_fft_conv_on_a_hand_computed_case():
    u = torch.tensor([[1.0, 2.0, 3.0]], dtype=F64)  # (C=1, L=3)
    kernel = torch.tensor([[1.0, 0.5]], dtype=F64)  # y_t = u_t + 0.5 u_{t-1}
    torch.testing.assert_close(causal_fft_conv(u, kernel), torch.tensor([[1.0, 2.5, 4.0]], dtype=F64))


@pytest.mark.parametrize("kernel_length", [3, 9, 20])
def test_causal_fft_conv_matches_the_direct_sum(kernel_length):
    u, kernel = _rand(2, 4, 9, seed=6), _rand(4, kernel_length, seed=7)
    expected = torch.zeros_like(u)
    for t in range(9):
        for j in range(min(t + 1, kernel_length)):
            expected[..., t] += kernel[:, j] * u[..., t - j]
    torch.testing.assert_close(causal_fft_conv(u, kernel), expected, rtol=1e-10, atol=1e-12)


# --------------------------------------------------------------------------- S4D kernel


def test_s4d_lin_initialisation():
    ssm = DiagonalSSM(3, 8, dt_min=0.01, dt_max=0.05)
    a = torch.complex(-torch.exp(ssm.log_neg_a_real), ssm.a_imag).view(3, 4)
    torch.testing.assert_close(a.real, torch.full((3, 4), -0.5))
    torch.testing.assert_close(a.imag, math.pi * torch.arange(4.0).repeat(3, 1))
    dt = torch.exp(ssm.log_dt)
    assert bool(((dt >= 0.01 - 1e-7) & (dt <= 0.05 + 1e-7)).all())


def test_s4d_kernel_on_a_hand_computed_case():
    # One channel, one complex pair: K_l = 2 Re(C (e^{dt A} - 1)/A e^{l dt A}).
    ssm = DiagonalSSM(1, 2).double()
    with torch.no_grad():
        ssm.log_dt.fill_(math.log(0.1))
        ssm.log_neg_a_real.fill_(math.log(0.5))
        ssm.a_imag.fill_(1.0)
        ssm.c.copy_(torch.tensor([[[0.3, -0.7]]]))
    a, c = complex(-0.5, 1.0), complex(0.3, -0.7)
    d_a = cmath.exp(0.1 * a)
    expected = [2 * (c * (d_a - 1) / a * d_a**step).real for step in range(5)]
    torch.testing.assert_close(ssm.kernel(5, F64)[0], torch.tensor(expected, dtype=F64))


def test_s4d_convolution_is_the_impulse_response_of_the_recurrence():
    ssm = DiagonalSSM(3, 8).double()
    u = _rand(2, 3, 17, seed=8, dtype=F64).requires_grad_()
    fast, reference = ssm(u), ssm.recurrence(u)
    torch.testing.assert_close(fast, reference, rtol=1e-10, atol=1e-12)
    _assert_same_grads(fast, reference, (u, *ssm.parameters()))
    impulse = torch.zeros(1, 3, 6, dtype=F64)
    impulse[..., 0] = 1.0
    response = ssm.recurrence(impulse)[0] - ssm.d.detach().double().unsqueeze(-1) * impulse[0]
    torch.testing.assert_close(response, ssm.kernel(6, F64).detach(), rtol=1e-10, atol=1e-12)


# --------------------------------------------------------------------------- RWKV


def test_wkv_on_a_hand_computed_case():
    w, u = torch.tensor([0.5], dtype=F64), torch.tensor([0.2], dtype=F64)
    k = torch.tensor([[[1.0], [-0.5], [0.3]]], dtype=F64)
    v = torch.tensor([[[2.0], [1.0], [-3.0]]], dtype=F64)
    e = math.exp
    expected = [
        2.0,  # only the current token, with its bonus
        (e(1.0) * 2.0 + e(0.2 - 0.5) * 1.0) / (e(1.0) + e(0.2 - 0.5)),
        (e(-0.5 + 1.0) * 2.0 + e(-0.5) * 1.0 + e(0.5) * -3.0) / (e(0.5) + e(-0.5) + e(0.5)),
    ]
    expected = torch.tensor(expected, dtype=F64).view(1, 3, 1)
    torch.testing.assert_close(wkv_parallel(w, u, k, v), expected)
    torch.testing.assert_close(wkv_recurrent(w, u, k, v), expected)


@pytest.mark.parametrize("scale", [1.0, 40.0])
def test_wkv_parallel_matches_the_recurrence(scale):
    w = torch.exp(_rand(5, seed=10)).requires_grad_()
    u = _rand(5, seed=11).requires_grad_()
    k = (scale * _rand(2, 13, 5, seed=12)).requires_grad_()
    v = _rand(2, 13, 5, seed=13).requires_grad_()
    fast, reference = wkv_parallel(w, u, k, v), wkv_recurrent(w, u, k, v)
    torch.testing.assert_close(fast, reference, rtol=1e-9, atol=1e-11)
    _assert_same_grads(fast, reference, (w, u, k, v), rtol=1e-8, atol=1e-10)


def test_wkv_survives_keys_that_overflow_exp_in_float32():
    w, u = torch.ones(3), torch.zeros(3)
    k = 150.0 * _rand(1, 9, 3, seed=14, dtype=torch.float32)  # e^150 = inf in float32
    v = _rand(1, 9, 3, seed=15, dtype=torch.float32)
    fast = wkv_parallel(w, u, k, v)
    reference = wkv_recurrent(w.double(), u.double(), k.double(), v.double())
    assert torch.isfinite(fast).all()
    torch.testing.assert_close(fast.double(), reference, rtol=1e-4, atol=1e-5)


# --------------------------------------------------------------------------- RetNet


def retention_matrix_form(q, k, v, gamma):
    """The paper's parallel form, written out: (Q K^T * D) V with D_nm = gamma^(n-m), n >= m."""
    length = q.shape[2]
    n = torch.arange(length, dtype=q.dtype)
    exponent = n.view(-1, 1) - n.view(1, -1)
    decay = gamma.view(-1, 1, 1) ** exponent.clamp_min(0) * (exponent >= 0)  # (H, L, L)
    return (q @ k.transpose(-1, -2) * decay) @ v


def test_retention_decays_follow_the_paper():
    torch.testing.assert_close(
        head_decays(4, F64, torch.device("cpu")),
        torch.tensor([1 - 1 / 32, 1 - 1 / 64, 1 - 1 / 128, 1 - 1 / 256], dtype=F64),
    )


@pytest.mark.parametrize("chunk_size", [1, 3, 5, 7, 64])
def test_chunkwise_retention_matches_parallel_and_recurrent_forms(chunk_size):
    q, k, v = (_rand(2, 3, 7, d, seed=20 + d).requires_grad_() for d in (4, 4, 6))
    gamma = torch.tensor([0.9, 0.5, 0.99], dtype=F64)
    chunked = retention_chunked(q, k, v, gamma, chunk_size)
    parallel = retention_matrix_form(q, k, v, gamma)
    recurrent = retention_recurrent(q, k, v, gamma)
    torch.testing.assert_close(chunked, parallel, rtol=1e-10, atol=1e-12)
    torch.testing.assert_close(recurrent, parallel, rtol=1e-10, atol=1e-12)
    _assert_same_grads(chunked, recurrent, (q, k, v))


# --------------------------------------------------------------------------- LRU


def test_lru_ring_initialisation_and_normalisation():
    mixer = LRUMixer(8, 200, r_min=0.4, r_max=0.8, max_phase=math.pi / 2).requires_grad_(False)
    lam = mixer.decay(torch.float32)
    radius, phase = lam.abs(), torch.exp(mixer.theta_log)
    assert bool(((radius >= 0.4 - 1e-6) & (radius <= 0.8 + 1e-6)).all())
    assert bool(((phase > 0) & (phase <= math.pi / 2 + 1e-6)).all())
    torch.testing.assert_close(torch.exp(mixer.gamma_log), torch.sqrt(1 - radius**2))
    # |lambda|^2 is uniform on [r_min^2, r_max^2]: its mean is near the middle.
    assert abs(float((radius**2).mean()) - (0.16 + 0.64) / 2) < 0.05
