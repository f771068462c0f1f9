"""`h3`: Hungry Hungry Hippos layers (H3).

Paper: Fu, Dao, Saab, Thomas, Rudra, Re, "Hungry Hungry Hippos: Towards Language Modeling
with State Space Models", ICLR 2023, arXiv 2212.14052.

Mixer, on the normalised input u (width D, H = D / head_dim heads of size d):
  q, k, v = u W_q, u W_k, u W_v
  k~  = ShiftSSM(k): per channel, a learned causal filter over the last `shift_size` tokens
        (the SSM whose A is the shift matrix, B = e_1: its kernel is C itself) plus D k
  kv  = k~ v^T per head (d x d; with d = 1 simply k~ * v)
  y   = DiagSSM(kv): one S4D diagonal SSM per head, shared by the d x d entries
  out = W_o (q . y): per head, q (1 x d) times the d x d state.
Multiplicative q/k/v gating around the two SSMs is what lets H3 compare tokens (recall).
Fast form: both SSMs as FFT convolutions; reference: a shift register and the diagonal
SSM's step loop.

Defaults (the paper's): d_state 64 for the diagonal SSM (S4D-Lin init, see `s4d`),
shift SSM of size 64, head_dim 1. Shift taps start at N(0, 1/shift_size), D ~ N(0, 1).
Stack (seed 003): 2 pre-norm layers with a 4x MLP.
"""

from __future__ import annotations

import math
from typing import Literal

import torch
from pydantic import Field, model_validator
from torch import Tensor, nn

from ponderlab.core.hookspecs import hookimpl

from .linear_recurrence import DiagonalSSM, causal_fft_conv, compute_dtype, full_precision
from .mixer_stack import MixerBackbone, MixerStackConfig, SequenceMixer


class H3Config(MixerStackConfig):
    name: Literal["h3"] = "h3"
    d_state: int = Field(64, ge=2, description="Real state size of the diagonal SSM (even).")
    shift_size: int = Field(64, ge=1, description="State size of the shift SSM = filter taps.")
    head_dim: int = Field(1, ge=1, description="Head size d: kv is a d x d state per head.")
    dt_min: float = Field(1e-3, gt=0)
    dt_max: float = Field(1e-1, gt=0)

    @model_validator(mode="after")
    def _check(self):
        if self.d_state % 2:
            raise ValueError(f"d_state must be even (complex conjugate pairs), got {self.d_state}")
        if self.d_model % self.head_dim:
            raise ValueError(f"d_model {self.d_model} is not divisible by head_dim {self.head_dim}")
        if self.dt_min > self.dt_max:
            raise ValueError(f"dt_min {self.dt_min} is larger than dt_max {self.dt_max}")
        return self


class ShiftSSM(nn.Module):
    """y_t = sum_{j < N} C_j k_{t-j} + D k_t per channel: (..., C, L) -> (..., C, L)."""

    def __init__(self, channels: int, size: int):
        super().__init__()
        self.taps = nn.Parameter(torch.randn(channels, size) / math.sqrt(size))  # (C, N)
        self.d = nn.Parameter(torch.randn(channels))  # (C,)

    def forward(self, k: Tensor) -> Tensor:
        dtype = compute_dtype(k)
        with full_precision(k):
            k = k.to(dtype)
            return causal_fft_conv(k, self.taps.to(dtype)) + self.d.to(dtype).unsqueeze(-1) * k

    def recurrence(self, k: Tensor) -> Tensor:
        """Shift register: the state holds the last N inputs, newest first."""
        dtype = compute_dtype(k)
        taps, d = self.taps.to(dtype), self.d.to(dtype)
        register = k.new_zeros(*k.shape[:-1], taps.shape[-1], dtype=dtype)  # (..., C, N)
        outputs = []
        for k_t in k.to(dtype).unbind(-1):  # (..., C); elementwise only: no autocast effect
            register = torch.cat([k_t.unsqueeze(-1), register[..., :-1]], dim=-1)
            outputs.append((register * taps).sum(-1) + d * k_t)
        return torch.stack(outputs, dim=-1)


class H3Mixer(SequenceMixer):
    """q * DiagSSM(ShiftSSM(k) v^T) per head, then an output projection."""

    def __init__(self, config: H3Config):
        super().__init__()
        d_model, self.head_dim = config.d_model, config.head_dim
        self.heads = d_model // config.head_dim
        self.in_proj = nn.Linear(d_model, 3 * d_model)
        self.shift = ShiftSSM(d_model, config.shift_size)
        self.diag = DiagonalSSM(self.heads, config.d_state, config.dt_min, config.dt_max)
        self.out_proj = nn.Linear(d_model, d_model)

    def mix_tokens(self, x: Tensor, *, reference: bool) -> Tensor:  # (B, L, D) -> (B, L, D)
        batch, length, _ = x.shape
        heads, size = self.heads, self.head_dim
        q, k, v = self.in_proj(x).chunk(3, dim=-1)  # (B, L, D) each
        k = self.shift.recurrence(k.transpose(1, 2)) if reference else self.shift(k.transpose(1, 2))
        k = k.view(batch, heads, size, length)  # (B, H, d1, L)
        v = v.transpose(1, 2).reshape(batch, heads, size, length).to(k.dtype)  # (B, H, d2, L)
        kv = k.unsqueeze(3) * v.unsqueeze(2)  # (B, H, d1, d2, L)
        kv = kv.permute(0, 2, 3, 1, 4)  # (B, d1, d2, H, L): the diagonal SSM runs over H
        y = self.diag.recurrence(kv) if reference else self.diag(kv)  # (B, d1, d2, H, L)
        with full_precision(y):
            q = q.view(batch, length, heads, size).to(y.dtype)  # (B, L, H, d1)
            out = torch.einsum("blhi,bijhl->blhj", q, y)  # (B, L, H, d2)
        return out.reshape(batch, length, heads * size).to(x.dtype)

    def project(self, mixed: Tensor, x: Tensor) -> Tensor:  # (..., D) -> (..., D)
        return self.out_proj(mixed)


class H3Backbone(MixerBackbone):
    config_class = H3Config
    config: H3Config

    def make_mixer(self, layer: int) -> nn.Module:
        return H3Mixer(self.config)


@hookimpl
def ponderlab_register_backbones(register):
    register(H3Backbone)
