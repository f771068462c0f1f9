"""`retnet`: Retentive Network layers (multi-scale retention + FFN).

Paper: Sun, Dong, Huang, Ma, Xia, Xue, Wang, Wei, "Retentive Network: A Successor to
Transformer for Large Language Models", arXiv 2307.08621 (2023).

Retention for one head with decay gamma, rotary phases Theta_n = e^{i n theta} on q and k:
  parallel   Retention(X) = (Q K^T * D) V,   D_nm = gamma^(n-m) if n >= m else 0
  recurrent  S_n = gamma S_{n-1} + k_n^T v_n,   o_n = q_n S_n
  chunkwise  inside a chunk of C tokens the parallel form; across chunks the state
             R_c = sum_{c'<c} gamma^((c-1-c') C) sum_m gamma^(C-1-m) k_m^T v_m,
             added as gamma^(t+1) q_t R_c.
Multi-scale retention (the mixer): head h has gamma_h = 1 - 2^(-5-h); the heads' outputs
go through GroupNorm (one group per head, per position), then
MSR(X) = (swish(X W_G) * Y) W_O. Fast form: the chunkwise form (`chunk_size` tokens; with
L <= chunk_size it is exactly the parallel form); reference: the recurrent form.

Defaults (the paper's): keys scaled by d_k^-1/2, value and gate width value_factor = 2 times
d_model, rotary angles theta_j = 10000^(-2j/d_k). n_heads defaults to the largest of 4, 2, 1
that divides d_model (seed 003 uses 8 heads at d_model 32: set n_heads: 8). The paper's
extra row normalisations of QK^T*D are left out: GroupNorm per head and position already
removes any per-row scale. Stack: pre-norm residual with a GELU FFN (4x, seed 003).

`variant: seq_icl` is seq_icl's `MultiScaleRetention` (parallel form): biases on the q, k,
v, g and output projections; rotary angles theta_j = 10000^(-linspace(0, 1, d_k/2)_j) on
interleaved pairs (x_2j, x_2j+1); both of the paper's row normalisations (D's rows divided
by sqrt(sum_m D_nm), then QK^T*D's rows by max(|row sum|, 1), detached); a LayerNorm
without affine per head (GroupNorm with affine=False). It needs an even d_k.
"""

from __future__ import annotations

from typing import Literal

import torch
from pydantic import Field, model_validator
from torch import Tensor, nn
from torch.nn import functional as F

from ponderlab.core.hookspecs import hookimpl

from .linear_recurrence import compute_dtype, full_precision
from .mixer_stack import MixerBackbone, MixerStackConfig, SequenceMixer
from .row_attention import rotary


class RetNetConfig(MixerStackConfig):
    name: Literal["retnet"] = "retnet"
    n_heads: int | None = Field(None, ge=1, description="Retention heads (default: 4, 2 or 1).")
    value_factor: int = Field(2, ge=1, description="Value/gate width = value_factor * d_model.")
    chunk_size: int = Field(64, ge=1, description="Tokens per chunk of the chunkwise form.")
    rotary: bool = Field(True, description="Rotate q and k by e^{i n theta} (xPos phases).")

    @model_validator(mode="after")
    def _check(self):
        if self.d_model % self.heads:
            raise ValueError(f"d_model {self.d_model} is not divisible by n_heads {self.heads}")
        if self.variant == "seq_icl" and (self.d_model // self.heads) % 2:
            size = self.d_model // self.heads
            raise ValueError(f"variant seq_icl needs an even d_model / n_heads, got {size}")
        return self

    @property
    def heads(self) -> int:
        if self.n_heads is not None:
            return self.n_heads
        return next(h for h in (4, 2, 1) if self.d_model % h == 0)


def rotate(x: Tensor) -> Tensor:
    """Rotary phases: pair (x_j, x_{j+half}) turned by angle n * theta_j at position n.

    x (B, H, L, d); with odd d the last feature is left as it is.
    """
    half, length = x.shape[-1] // 2, x.shape[-2]
    theta = 10000.0 ** (-torch.arange(half, dtype=x.dtype, device=x.device) / half)  # (half,)
    angle = torch.arange(length, dtype=x.dtype, device=x.device).unsqueeze(-1) * theta  # (L, half)
    angle = torch.cat([angle, angle], dim=-1)  # (L, 2 half): x_j and x_{j+half} turn alike
    return rotary(x, angle.cos(), angle.sin())  # GPT-NeoX's rotate-half rotary


def rotate_interleaved(x: Tensor) -> Tensor:
    """seq_icl's rotary phases: pair (x_2j, x_2j+1) turned by n * 10000^(-linspace(0, 1, d/2)_j).

    x (B, H, L, d), d even.
    """
    half, length = x.shape[-1] // 2, x.shape[-2]
    theta = 10000.0 ** -torch.linspace(0, 1, half, dtype=x.dtype, device=x.device)  # (d/2,)
    angle = torch.arange(length, dtype=x.dtype, device=x.device).unsqueeze(-1) * theta  # (L, d/2)
    cos, sin = angle.cos().repeat_interleave(2, -1), angle.sin().repeat_interleave(2, -1)  # (L, d)
    turned = torch.stack([-x[..., 1::2], x[..., ::2]], dim=-1).flatten(-2)  # (-x_2j+1, x_2j)
    return x * cos + turned * sin


def normalise_rows(y: Tensor, row_sums: Tensor, gamma: Tensor) -> Tensor:
    """seq_icl's two row normalisations of retention, applied to its outputs.

    y (B, H, L, dv) = (QK^T * D) V and row_sums (B, H, L, 1) = (QK^T * D) 1 with the plain
    decay mask D; seq_icl divides D's row n by s_n = sqrt(sum_{m<=n} gamma^(n-m)), then
    each row of QK^T*D by max(|its sum|, 1), detached.
    """
    steps = torch.arange(y.shape[-2], dtype=y.dtype, device=y.device)
    scale = torch.sqrt((1 - gamma.view(-1, 1) ** (steps + 1)) / (1 - gamma.view(-1, 1)))  # (H, L)
    scale = scale.unsqueeze(-1)  # (H, L, 1)
    return y / scale / (row_sums / scale).detach().abs().clamp_min(1)


def head_decays(heads: int, dtype: torch.dtype, device: torch.device) -> Tensor:
    """gamma_h = 1 - 2^(-5-h): (H,)."""
    return 1 - 2.0 ** (-5 - torch.arange(heads, dtype=dtype, device=device))


def retention_chunked(q: Tensor, k: Tensor, v: Tensor, gamma: Tensor, chunk_size: int) -> Tensor:
    """Chunkwise retention: q, k (B, H, L, dk), v (B, H, L, dv), gamma (H,) -> (B, H, L, dv)."""
    batch, heads, length, _ = q.shape
    size = min(chunk_size, length)
    chunks = -(-length // size)
    pad = chunks * size - length
    if pad:  # zero keys/values after the end add nothing; padded queries are dropped
        q, k, v = (F.pad(t, (0, 0, 0, pad)) for t in (q, k, v))
    q, k, v = (t.reshape(batch, heads, chunks, size, t.shape[-1]) for t in (q, k, v))
    log_gamma = torch.log(gamma).view(heads, 1, 1)  # (H, 1, 1)

    def decay(exponent: Tensor) -> Tensor:  # gamma^exponent, zero where exponent < 0
        return torch.where(exponent >= 0, torch.exp(log_gamma * exponent.clamp_min(0)), 0.0)

    pos = torch.arange(size, device=q.device, dtype=q.dtype)
    inner_mask = decay(pos.view(-1, 1) - pos.view(1, -1))  # (H, C, C): D inside a chunk
    scores = q @ k.transpose(-1, -2) * inner_mask.unsqueeze(1)  # (B, H, N, C, C)
    inner = scores @ v  # (B, H, N, C, dv)

    to_end = decay(size - 1 - pos.view(1, -1)).squeeze(1)  # (H, C): gamma^(C-1-m)
    weighted_k = k * to_end.view(1, heads, 1, size, 1)  # (B, H, N, C, dk)
    increments = weighted_k.transpose(-1, -2) @ v  # (B, H, N, dk, dv)
    index = torch.arange(chunks, device=q.device, dtype=q.dtype)
    carry = decay((index.view(-1, 1) - 1 - index.view(1, -1)) * size)  # (H, N, N), c' < c
    states = (carry @ increments.flatten(-2)).view_as(increments)  # (B, H, N, dk, dv)
    from_start = decay(pos.view(1, -1) + 1).squeeze(1)  # (H, C): gamma^(t+1)
    cross = (q @ states) * from_start.view(1, heads, 1, size, 1)  # (B, H, N, C, dv)
    out = (inner + cross).reshape(batch, heads, chunks * size, -1)
    return out[:, :, :length]


def retention_recurrent(q: Tensor, k: Tensor, v: Tensor, gamma: Tensor) -> Tensor:
    """S_n = gamma S_{n-1} + k_n^T v_n, o_n = q_n S_n, one step at a time."""
    batch, heads, _, d_k = q.shape
    state = q.new_zeros(batch, heads, d_k, v.shape[-1])  # (B, H, dk, dv)
    gamma = gamma.view(1, heads, 1, 1)
    outputs = []
    for q_n, k_n, v_n in zip(q.unbind(2), k.unbind(2), v.unbind(2), strict=True):  # (B, H, d)
        state = gamma * state + k_n.unsqueeze(-1) * v_n.unsqueeze(-2)
        outputs.append((q_n.unsqueeze(-2) @ state).squeeze(-2))
    return torch.stack(outputs, dim=2)


class MultiScaleRetention(SequenceMixer):
    """MSR(X) = (swish(X W_G) * GroupNorm_h(Retention_h(X))) W_O: (B, L, D) -> (B, L, D)."""

    def __init__(self, config: RetNetConfig):
        super().__init__()
        d_model, self.heads = config.d_model, config.heads
        value_width = config.value_factor * d_model
        self.chunk_size, self.rotary = config.chunk_size, config.rotary
        self.seq_icl = bias = config.variant == "seq_icl"  # seq_icl: biases, plain LayerNorm
        self.q_proj = nn.Linear(d_model, d_model, bias=bias)
        self.k_proj = nn.Linear(d_model, d_model, bias=bias)
        self.v_proj = nn.Linear(d_model, value_width, bias=bias)
        self.g_proj = nn.Linear(d_model, value_width, bias=bias)
        self.group_norm = nn.GroupNorm(self.heads, value_width, affine=not self.seq_icl)
        self.out_proj = nn.Linear(value_width, d_model, bias=bias)

    def _split(self, x: Tensor, dtype: torch.dtype) -> Tensor:  # (B, L, H*d) -> (B, H, L, d)
        batch, length, width = x.shape
        return x.view(batch, length, self.heads, width // self.heads).transpose(1, 2).to(dtype)

    def mix_tokens(self, x: Tensor, *, reference: bool) -> Tensor:  # (B, L, D) -> (B, L, H * dv)
        batch, length, _ = x.shape
        dtype = compute_dtype(x)
        q, k, v = (self._split(p(x), dtype) for p in (self.q_proj, self.k_proj, self.v_proj))
        with full_precision(x):
            k = k * k.shape[-1] ** -0.5
            if self.rotary:
                turn = rotate_interleaved if self.seq_icl else rotate
                q, k = turn(q), turn(k)
            gamma = head_decays(self.heads, dtype, x.device)
            if self.seq_icl:  # one more value column of ones gives the rows' sums
                v = torch.cat([v, torch.ones_like(v[..., :1])], dim=-1)  # (B, H, L, dv + 1)
            if reference:
                y = retention_recurrent(q, k, v, gamma)
            else:
                y = retention_chunked(q, k, v, gamma, self.chunk_size)  # (B, H, L, dv)
            if self.seq_icl:
                y = normalise_rows(y[..., :-1], y[..., -1:], gamma)
        y = y.transpose(1, 2).reshape(batch * length, -1).to(x.dtype)  # (B*L, H*dv)
        return self.group_norm(y).view(batch, length, -1)

    def project(self, mixed: Tensor, x: Tensor) -> Tensor:  # (..., H * dv), (..., D) -> (..., D)
        return self.out_proj(F.silu(self.g_proj(x)) * mixed)


class RetNetBackbone(MixerBackbone):
    config_class = RetNetConfig
    config: RetNetConfig

    def make_mixer(self, layer: int) -> nn.Module:
        return MultiScaleRetention(self.config)


@hookimpl
def ponderlab_register_backbones(register):
    register(RetNetBackbone)
