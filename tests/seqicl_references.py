"""Slow references for the seq_icl backbones' two variants, written from the formulas.

Every sum is a plain loop over time (and over the state where it is short); nothing here
calls the layers' scans, FFTs or chunked forms. Each function reads the parameters the
test has set on a mixer and returns its output for x (B, L, D), in float64.
"""

from __future__ import annotations

import math

import torch
from torch.nn import functional as F

F64 = torch.float64


def set_weights(module: torch.nn.Module, seed: int, scale: float = 0.5) -> None:
    """Random weights N(0, scale^2), with SSM step sizes in [0.01, 0.3] and poles' real parts
    in [0.3, 0.8], so that kernels neither vanish nor blow up over a short sequence."""
    generator = torch.Generator().manual_seed(seed)
    with torch.no_grad():
        for name, param in module.named_parameters():
            value = torch.randn(param.shape, generator=generator, dtype=F64) * scale
            if name.endswith("log_dt"):
                value = torch.log(0.01 + 0.29 * torch.rand(param.shape, generator=generator, dtype=F64))
            elif name.endswith("log_neg_a_real"):
                value = torch.log(0.3 + 0.5 * torch.rand(param.shape, generator=generator, dtype=F64))
            param.copy_(value)


def causal_sum(kernel: torch.Tensor, u: torch.Tensor) -> torch.Tensor:
    """y[..., t] = sum_{j<=t} kernel[..., j] u[..., t-j], by loops: kernel (C, L), u (..., C, L)."""
    length = u.shape[-1]
    columns = []
    for t in range(length):
        total = torch.zeros_like(u[..., 0])
        for j in range(min(t + 1, kernel.shape[-1])):
            total = total + kernel[..., j] * u[..., t - j]
        columns.append(total)
    return torch.stack(columns, dim=-1)


def diagonal_ssm(ssm, u: torch.Tensor, *, bilinear: bool) -> torch.Tensor:
    """S4D per channel from its parameters: K_l = 2 Re(sum_n C_n B_n dB_n dA_n^l), + D u.

    Zero-order hold: dA = exp(dt A), dB = (exp(dt A) - 1)/A; bilinear: dA = (1 + dt A/2) /
    (1 - dt A/2), dB = dt/(1 - dt A/2). u (..., H, L).
    """
    half = ssm.shape[1]
    a = torch.complex(-torch.exp(ssm.log_neg_a_real), ssm.a_imag).view(-1, half)  # (H or 1, N/2)
    a = a.expand(ssm.shape[0], half)
    dt = torch.exp(ssm.log_dt).unsqueeze(-1)  # (H, 1)
    c = torch.complex(ssm.c[..., 0], ssm.c[..., 1])
    if ssm.b is not None:
        c = c * torch.complex(ssm.b[..., 0], ssm.b[..., 1])
    if bilinear:
        d_a, d_b = (1 + dt * a / 2) / (1 - dt * a / 2), dt / (1 - dt * a / 2)
    else:
        d_a, d_b = torch.exp(dt * a), (torch.exp(dt * a) - 1) / a
    length = u.shape[-1]
    kernel = torch.stack([2 * (c * d_b * d_a**step).sum(-1).real for step in range(length)], -1)
    return causal_sum(kernel, u) + ssm.d.unsqueeze(-1) * u


def s4d(mixer, x: torch.Tensor, *, seq_icl: bool) -> torch.Tensor:
    """seq_icl: Linear(GELU(SSM(u))); paper: GLU(Linear(GELU(SSM(u))))."""
    y = F.gelu(diagonal_ssm(mixer.ssm, x.transpose(1, 2), bilinear=False).transpose(1, 2))
    out = y @ mixer.out_proj.weight.T + mixer.out_proj.bias
    if seq_icl:
        return out
    value, gate = out.chunk(2, dim=-1)
    return value * torch.sigmoid(gate)


def h3(mixer, x: torch.Tensor, *, seq_icl: bool) -> torch.Tensor:
    """q * DiagSSM(ShiftSSM(k) v^T) per head, then the output linear.

    Shift kernel: C (paper) or K_j = sum_m B_m C_{m+j} (seq_icl); diagonal SSM: zero-order
    hold (paper) or bilinear with a learned B (seq_icl); output channels (h, d) (paper) or
    (d, h) (seq_icl).
    """
    batch, length, width = x.shape
    size = mixer.head_dim
    heads = width // size
    q, k, v = (x @ mixer.in_proj.weight.T + mixer.in_proj.bias).chunk(3, dim=-1)
    taps = mixer.shift.taps
    if seq_icl:
        b, n = mixer.shift.b, taps.shape[-1]
        shift = torch.stack(
            [sum(b[:, m] * taps[:, m + j] for m in range(n - j)) for j in range(n)], dim=-1
        )
    else:
        shift = taps
    k = causal_sum(shift, k.transpose(1, 2)) + mixer.shift.d.unsqueeze(-1) * k.transpose(1, 2)
    k = k.reshape(batch, heads, size, length)  # (B, H, d1, L)
    v = v.transpose(1, 2).reshape(batch, heads, size, length)  # (B, H, d2, L)
    kv = (k.unsqueeze(3) * v.unsqueeze(2)).permute(0, 2, 3, 1, 4)  # (B, d1, d2, H, L)
    y = diagonal_ssm(mixer.diag, kv, bilinear=seq_icl)  # (B, d1, d2, H, L)
    q = q.reshape(batch, length, heads, size)  # (B, L, H, d1)
    out = torch.zeros(batch, length, heads, size, dtype=x.dtype)
    for i in range(size):
        out = out + q[..., i : i + 1] * y[:, i].permute(0, 3, 2, 1)  # (B, L, H, d2)
    if seq_icl:
        out = out.transpose(2, 3)
    out = out.reshape(batch, length, width)
    return out @ mixer.out_proj.weight.T + mixer.out_proj.bias


def gilr(mixer, x: torch.Tensor, *, seq_icl: bool) -> torch.Tensor:
    """h_t = g_t h_{t-1} + (1 - g_t) i_t with i = v (seq_icl) or tanh(z) (paper), then
    W_o LN(h * silu(o)). Projection order: (v, o, f) in seq_icl, (z, f, o) in the paper's."""
    projected = x @ mixer.in_proj.weight.T + mixer.in_proj.bias
    if seq_icl:
        impulse, out_gate, gate = projected.chunk(3, dim=-1)
    else:
        impulse, gate, out_gate = projected.chunk(3, dim=-1)
        impulse = torch.tanh(impulse)
    gate = torch.sigmoid(gate)
    state = torch.zeros_like(x[:, 0])
    states = []
    for t in range(x.shape[1]):
        state = gate[:, t] * state + (1 - gate[:, t]) * impulse[:, t]
        states.append(state)
    mixed = torch.stack(states, dim=1) * F.silu(out_gate)
    normed = F.layer_norm(mixed, mixed.shape[-1:], mixer.norm.weight, mixer.norm.bias)
    return normed @ mixer.out_proj.weight.T + mixer.out_proj.bias


def lru_decay(mixer) -> torch.Tensor:
    """lambda = exp(-exp(nu_log)) e^{i exp(theta_log)}: (N,) complex."""
    magnitude = torch.exp(-torch.exp(mixer.nu_log))
    angle = torch.exp(mixer.theta_log)
    return torch.complex(magnitude * torch.cos(angle), magnitude * torch.sin(angle))


def lru(mixer, x: torch.Tensor, *, seq_icl: bool) -> torch.Tensor:
    """seq_icl: x_t = lambda x_{t-1} + gamma (v_re + i v_im), out = W_o LN([Re x; Im x] * silu(o));
    paper: x_t = lambda x_{t-1} + gamma B u_t, y = Re(C x_t) + D u_t, out = GLU(W_o GELU(y))."""
    lam, gamma = lru_decay(mixer), torch.exp(mixer.gamma_log)
    if seq_icl:
        width = x.shape[-1]
        projected = x @ mixer.in_proj.weight.T + mixer.in_proj.bias
        v_re, v_im, out_gate = projected[..., :width], projected[..., width : 2 * width], projected[..., 2 * width :]
        inputs = gamma * torch.complex(v_re, v_im)
    else:
        inputs = gamma * torch.complex(x @ mixer.in_real.T, x @ mixer.in_imag.T)
    state = torch.zeros_like(inputs[:, 0])
    states = []
    for t in range(x.shape[1]):
        state = lam * state + inputs[:, t]
        states.append(state)
    states = torch.stack(states, dim=1)  # (B, L, N)
    if seq_icl:
        mixed = torch.cat([states.real, states.imag], dim=-1) * F.silu(out_gate)
        normed = F.layer_norm(mixed, mixed.shape[-1:], mixer.norm.weight, mixer.norm.bias)
        return normed @ mixer.out_proj.weight.T + mixer.out_proj.bias
    y = states.real @ mixer.out_real.T - states.imag @ mixer.out_imag.T + mixer.skip * x
    out = F.gelu(y) @ mixer.out_proj.weight.T + mixer.out_proj.bias
    value, gate = out.chunk(2, dim=-1)
    return value * torch.sigmoid(gate)


def rotary(x: torch.Tensor, *, seq_icl: bool) -> torch.Tensor:
    """Turn feature pairs of x (B, H, L, d) by angle n * theta_j at position n.

    seq_icl: pairs (2j, 2j+1), theta_j = 10000^(-j/(d/2 - 1)) (a linspace from 0 to 1);
    paper: pairs (j, j + d/2), theta_j = 10000^(-2j/d).
    """
    half = x.shape[-1] // 2
    out = x.clone()
    for j in range(half):
        if seq_icl:
            theta = 10000.0 ** (-(j / (half - 1) if half > 1 else 0.0))
            first, second = 2 * j, 2 * j + 1
        else:
            theta = 10000.0 ** (-2 * j / (2 * half))
            first, second = j, j + half
        for n in range(x.shape[2]):
            cos, sin = math.cos(n * theta), math.sin(n * theta)
            out[:, :, n, first] = x[:, :, n, first] * cos - x[:, :, n, second] * sin
            out[:, :, n, second] = x[:, :, n, first] * sin + x[:, :, n, second] * cos
    return out


def retnet(mixer, x: torch.Tensor, *, seq_icl: bool) -> torch.Tensor:
    """Parallel retention (QK^T * D) V per head, gamma_h = 1 - 2^(-5-h); seq_icl divides D's
    rows by sqrt(row sum) and QK^T*D's rows by max(|row sum|, 1) (detached); GroupNorm per
    head and position, swish gate, output linear."""
    batch, length, _ = x.shape
    heads = mixer.heads

    def linear(layer, inputs):
        out = inputs @ layer.weight.T
        return out + layer.bias if layer.bias is not None else out

    def split(t):  # (B, L, H*d) -> (B, H, L, d)
        return t.view(batch, length, heads, -1).transpose(1, 2)

    q, k, v = (split(linear(p, x)) for p in (mixer.q_proj, mixer.k_proj, mixer.v_proj))
    k = k * k.shape[-1] ** -0.5
    q, k = rotary(q, seq_icl=seq_icl), rotary(k, seq_icl=seq_icl)
    outputs = []
    for h in range(heads):
        gamma = 1 - 2.0 ** (-5 - h)
        mask = torch.zeros(length, length, dtype=x.dtype)
        for n in range(length):
            for m in range(n + 1):
                mask[n, m] = gamma ** (n - m)
        if seq_icl:
            mask = mask / mask.sum(-1, keepdim=True).sqrt()
        scores = q[:, h] @ k[:, h].transpose(-1, -2) * mask  # (B, L, L)
        if seq_icl:
            scores = scores / scores.detach().sum(-1, keepdim=True).abs().clamp(min=1)
        outputs.append(scores @ v[:, h])  # (B, L, dv)
    y = torch.stack(outputs, dim=2)  # (B, L, H, dv)
    norm = mixer.group_norm
    y = (y - y.mean(-1, keepdim=True)) / torch.sqrt(y.var(-1, unbiased=False, keepdim=True) + norm.eps)
    y = y.reshape(batch, length, -1)
    if norm.weight is not None:
        y = y * norm.weight + norm.bias
    return linear(mixer.out_proj, F.silu(linear(mixer.g_proj, x)) * y)
