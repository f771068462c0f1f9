"""Fast forms of diagonal linear recurrences, shared by the seq_icl backbones.

* `linear_scan(gates, inputs)`: `h_t = gates_t * h_{t-1} + inputs_t` (elementwise, real or
  complex, `h_{-1} = 0`) for every t at once, by a Hillis-Steele associative scan:
  ceil(log2 L) vectorised steps instead of L sequential ones (GILR, LRU).
* `log_space_linear_scan`: the same with inputs given as `exp(log_input) * value` and the
  states kept as (log-scale, scaled value), for exponentially large inputs (RWKV).
* `causal_fft_conv(u, kernel)`: `y_t = sum_{j<=t} kernel_j u_{t-j}` through an FFT of size
  2L, the fast form of a time-invariant SSM (S4D, H3).
* `DiagonalSSM`: the S4D diagonal state space model (Gu et al. 2022, arXiv 2206.11893):
  S4D-Lin or S4D-Inv init, zero-order-hold or bilinear discretisation; `kernel(L)` for the
  convolution form, `recurrence(u)` for the obviously-correct step loop.

Recurrences run in float32 (float64 when the input is float64), whatever autocast says:
complex bfloat16 does not exist and FFTs in half precision lose the long-range terms.
"""

from __future__ import annotations

import math

import torch
from torch import Tensor, nn


def compute_dtype(tensor: Tensor) -> torch.dtype:
    """float64 for float64 inputs, float32 for everything else."""
    return torch.float64 if tensor.dtype == torch.float64 else torch.float32


def full_precision(tensor: Tensor) -> torch.autocast:
    """Context that turns autocast off on `tensor`'s device (recurrences, FFTs, complex math)."""
    return torch.autocast(device_type=tensor.device.type, enabled=False)


# --------------------------------------------------------------------------- scans


def linear_scan(gates: Tensor, inputs: Tensor) -> Tensor:
    """All states of `h_t = gates_t * h_{t-1} + inputs_t` along dim 1, `h_{-1} = 0`.

    gates, inputs: (B, L, ...) broadcastable to each other, real or complex. Step k combines
    every element with the one 2^k positions earlier through the associative operator
    (a1, b1) then (a2, b2) = (a1 a2, a2 b1 + b2). Gates without a time axis (fewer dims than
    inputs, or size 1 at dim 1) are time-invariant: step k then only needs gates^(2^k).
    """
    length = inputs.shape[1]
    time_invariant = gates.dim() < inputs.dim() or gates.shape[1] == 1
    if not time_invariant:
        gates, inputs = torch.broadcast_tensors(gates, inputs)
    offset = 1
    while offset < length:
        # Positions < offset already hold their full prefix; the others absorb the
        # segment ending `offset` positions earlier.
        gate = gates if time_invariant else gates[:, offset:]  # constant gates: gate^offset
        inputs = torch.cat([inputs[:, :offset], inputs[:, offset:] + gate * inputs[:, :-offset]], 1)
        if time_invariant:
            gates = gates * gates
        else:
            gates = torch.cat([gates[:, :offset], gates[:, offset:] * gates[:, :-offset]], 1)
        offset *= 2
    return inputs


def linear_scan_reference(gates: Tensor, inputs: Tensor) -> Tensor:
    """The same recurrence as `linear_scan`, one time step after the other."""
    gates, inputs = torch.broadcast_tensors(gates, inputs)
    state = torch.zeros_like(inputs[:, 0])
    states = []
    for gate, value in zip(gates.unbind(1), inputs.unbind(1), strict=True):
        state = gate * state + value
        states.append(state)
    return torch.stack(states, dim=1)


def log_space_linear_scan(
    log_gates: Tensor, log_inputs: Tensor, values: Tensor
) -> tuple[Tensor, Tensor]:
    """`h_t = exp(log_gates_t) h_{t-1} + exp(log_inputs_t) values_t` without overflow (RWKV).

    log_gates, log_inputs: (B, L, *S) (log_gates may lack the batch/time axes: then it is
    time-invariant); values: (B, L, *S, K). Returns (log_scale (B, L, *S), scaled (B, L, *S, K))
    with h_t = exp(log_scale_t) * scaled_t. The log-scales are running maxima, detached:
    any constant works, it cancels from every ratio of two states, so gradients stay exact.
    Same Hillis-Steele scheme as `linear_scan`.
    """
    length = log_inputs.shape[1]
    time_invariant = log_gates.dim() < log_inputs.dim() or log_gates.shape[1] == 1
    if not time_invariant:
        log_gates = log_gates.expand_as(log_inputs)
    scale = log_inputs.detach()
    scaled = values * torch.exp(log_inputs - scale).unsqueeze(-1)  # = values, with gradient
    offset = 1
    while offset < length:
        gate = log_gates if time_invariant else log_gates[:, offset:]
        carried = scale[:, :-offset] + gate  # log-scale of the earlier segment, decayed
        later = scale[:, offset:]
        new_scale = torch.maximum(carried, later).detach()
        combined = (
            torch.exp(carried - new_scale).unsqueeze(-1) * scaled[:, :-offset]
            + torch.exp(later - new_scale).unsqueeze(-1) * scaled[:, offset:]
        )
        scale = torch.cat([scale[:, :offset], new_scale], 1)
        scaled = torch.cat([scaled[:, :offset], combined], 1)
        if time_invariant:
            log_gates = log_gates + log_gates
        else:
            log_gates = torch.cat([log_gates[:, :offset], gate + log_gates[:, :-offset]], 1)
        offset *= 2
    return scale, scaled


def causal_fft_conv(u: Tensor, kernel: Tensor) -> Tensor:
    """y[..., t] = sum_{j=0..t} kernel[..., j] u[..., t - j]; u (..., C, L), kernel (C, L') real.

    Zero-padding both to 2L makes the circular FFT convolution a linear (causal) one.
    """
    length = u.shape[-1]
    kernel = kernel[..., :length]
    size = 2 * length
    u_f = torch.fft.rfft(u, n=size)  # (..., C, L + 1)
    k_f = torch.fft.rfft(kernel, n=size)  # (C, L + 1)
    return torch.fft.irfft(u_f * k_f, n=size)[..., :length]


# --------------------------------------------------------------------------- S4D


class DiagonalSSM(nn.Module):
    """S4D: per channel h, `x_t = dA x_{t-1} + dB u_t`, `y_t = 2 Re(C x_t) + D u_t`.

    `d_state` N real dimensions = N/2 complex conjugate pairs (only one of each pair is
    stored, hence the factor 2). Default (the S4D paper's S4D-Lin): A_n = -1/2 + i pi n,
    B_n = 1 (folded into C), C ~ CN(0, 1), log dt ~ U[log dt_min, log dt_max], D ~ N(0, 1),
    zero-order hold: dA = exp(dt A), dB = (exp(dt A) - 1) / A. Options (seq_icl's layers):

    * `init="inv"`: S4D-Inv, A_n = -a_real + i N/pi (N/(2n+1) - 1);
    * `random_b`: B ~ CN(0, 1) normalised by sqrt(2 sum |B/A|^2), folded into C at init;
    * `tied`: one A for all channels (log dt and C stay per channel);
    * `learn_b`: B a parameter of its own (init 1), the effective C being C * B;
    * `disc="bilinear"`: dA = (1 + dt A/2)/(1 - dt A/2), dB = dt / (1 - dt A/2).
    """

    def __init__(
        self,
        channels: int,
        d_state: int,
        dt_min: float = 1e-3,
        dt_max: float = 1e-1,
        *,
        init: str = "lin",
        a_real: float = 0.5,
        random_b: bool = False,
        tied: bool = False,
        learn_b: bool = False,
        disc: str = "zoh",
    ):
        super().__init__()
        if d_state % 2:
            raise ValueError(f"d_state must be even (conjugate pairs), got {d_state}")
        half = d_state // 2
        self.shape = (channels, half)
        self.disc = disc
        log_dt = torch.rand(channels) * (math.log(dt_max) - math.log(dt_min)) + math.log(dt_min)
        self.log_dt = nn.Parameter(log_dt)  # (H,)
        steps = torch.arange(half).float()
        if init == "lin":
            imag = math.pi * steps
        else:  # S4D-Inv
            imag = d_state / math.pi * (d_state / (2 * steps + 1) - 1)
        copies = 1 if tied else channels
        # A is stored flat (copies * N/2,): the trainer decays only parameters with 2+ dims, and
        # S4D keeps the poles free of weight decay.
        self.log_neg_a_real = nn.Parameter(torch.full((copies * half,), math.log(a_real)))
        self.a_imag = nn.Parameter(imag.repeat(copies))
        c = torch.randn(channels, half, 2) * math.sqrt(0.5)  # (H, N/2, re|im): CN(0, 1)
        if random_b:  # seq_icl's S4D: one random B for every channel, normalised, folded into C
            b = torch.view_as_complex(torch.randn(half, 2) * math.sqrt(0.5))  # (N/2,)
            a = torch.complex(torch.full((half,), -a_real), imag)
            b = b / torch.sqrt(2 * (b / a).abs().square().sum())
            c = torch.view_as_real(torch.view_as_complex(c) * b)
        self.c = nn.Parameter(c)
        ones = torch.stack([torch.ones(self.shape), torch.zeros(self.shape)], -1)  # (H, N/2, 2)
        self.b = nn.Parameter(ones) if learn_b else None
        self.d = nn.Parameter(torch.randn(channels))  # (H,)

    def ssm_parameters(self) -> list[nn.Parameter]:
        """A, dt and (when learned) B: seq_icl trains them at lr min(1e-3, lr), no decay."""
        own = [self.log_dt, self.log_neg_a_real, self.a_imag]
        return own + ([self.b] if self.b is not None else [])

    def discretize(self, dtype: torch.dtype) -> tuple[Tensor, Tensor]:
        """(log dA, C dB) in the precision of real `dtype`: two (H, N/2) complex tensors."""
        a = torch.complex(-torch.exp(self.log_neg_a_real.to(dtype)), self.a_imag.to(dtype))
        a = a.view(-1, self.shape[1])  # (H or 1, N/2)
        dt = torch.exp(self.log_dt.to(dtype)).unsqueeze(-1)  # (H, 1)
        dt_a = dt * a  # (H, N/2)
        c = torch.view_as_complex(self.c.to(dtype).contiguous())
        if self.b is not None:
            c = c * torch.view_as_complex(self.b.to(dtype).contiguous())
        if self.disc == "bilinear":
            log_d_a = torch.log((1 + dt_a / 2) / (1 - dt_a / 2))
            return log_d_a, c * dt / (1 - dt_a / 2)
        return dt_a, c * torch.expm1(dt_a) / a

    def kernel(self, length: int, dtype: torch.dtype) -> Tensor:
        """K_l = 2 Re(sum_n C_n dB_n dA_n^l), l < length: (H, L)."""
        dt_a, c_db = self.discretize(dtype)  # dt_a: log dA (= dt A under zero-order hold)
        steps = torch.arange(length, device=dt_a.device, dtype=dtype)
        # dA^l = exp(l dt A) = exp(l Re) (cos(l Im) + i sin(l Im)), in real arithmetic
        # (complex exp is several times slower on CPU).
        magnitude = torch.exp(dt_a.real.unsqueeze(-1) * steps)  # (H, N/2, L)
        phase = dt_a.imag.unsqueeze(-1) * steps
        real = torch.einsum("hn,hnl->hl", c_db.real, magnitude * torch.cos(phase))
        imag = torch.einsum("hn,hnl->hl", c_db.imag, magnitude * torch.sin(phase))
        return 2 * (real - imag)

    def forward(self, u: Tensor) -> Tensor:
        """Convolution form: u (..., H, L) -> (..., H, L)."""
        dtype = compute_dtype(u)
        with full_precision(u):
            u = u.to(dtype)
            kernel = self.kernel(u.shape[-1], dtype)  # (H, L)
            return causal_fft_conv(u, kernel) + self.d.to(dtype).unsqueeze(-1) * u

    def recurrence(self, u: Tensor) -> Tensor:
        """Step loop over time (the reference): u (..., H, L) -> (..., H, L)."""
        dtype = compute_dtype(u)
        with full_precision(u):
            dt_a, c_db = self.discretize(dtype)
            d_a, d = torch.exp(dt_a), self.d.to(dtype)
            # Fold C dB into the state update: x'_t = dA x'_{t-1} + C dB u_t;
            # y = 2 Re(sum x') + D u.
            state = torch.zeros(*u.shape[:-1], d_a.shape[-1], dtype=d_a.dtype, device=u.device)
            outputs = []
            for u_t in u.to(dtype).unbind(-1):  # (..., H)
                state = d_a * state + c_db * u_t.unsqueeze(-1)
                outputs.append(2 * state.sum(-1).real + d * u_t)
            return torch.stack(outputs, dim=-1)
