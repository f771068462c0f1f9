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

`variant: seq_icl` is seq_icl's `H3` layer as its configs build it (mode diag, measure
diag-lin): the diagonal SSM uses bilinear discretisation, dA = (1 + dt A/2)/(1 - dt A/2),
dB = dt/(1 - dt A/2), with B a parameter of its own (init 1); the shift SSM has a learned
B too (init e_1, its kernel the correlation sum_m B_m C_{m+j}) and taps from
U(-1/sqrt(N), 1/sqrt(N)) (Conv1d's init); with head_dim > 1 the output channels come out
head-minor, as seq_icl's rearrange leaves them; the output linear keeps the unscaled
init_std (seq_icl names it `output_linear`); the SSMs' A, dt and B train at lr
min(1e-3, lr) with no weight decay (`optimizer_groups`).
"""

from __future__ import annotations

import math
from typing import Literal

import torch
from pydantic import Field, model_validator
from torch import Tensor, nn

from ponderlab.core.hookspecs import hookimpl

from .linear_recurrence import DiagonalSSM, causal_fft_conv, compute_dtype, full_precision
from .mixer_stack import MixerBackbone, SequenceMixer
from .s4d import DiagonalSSMConfig


class H3Config(DiagonalSSMConfig):
    name: Literal["h3"] = "h3"
    shift_size: int = Field(64, ge=1, description="State size of the shift SSM = filter taps.")
    head_dim: int = Field(1, ge=1, description="Head size d: kv is a d x d state per head.")
    # d_state, dt_min, dt_max (DiagonalSSMConfig): the diagonal SSM's

    @model_validator(mode="after")
    def _check(self):
        if self.d_model % self.head_dim:
            raise ValueError(f"d_model {self.d_model} is not divisible by head_dim {self.head_dim}")
        return self


class ShiftSSM(nn.Module):
    """y_t = sum_{j < N} K_j k_{t-j} + D k_t per channel: (..., C, L) -> (..., C, L).

    K = C (B = e_1, the paper's), or with `learn_b` (seq_icl's) K_j = sum_m B_m C_{m+j}.
    """

    def __init__(self, channels: int, size: int, learn_b: bool = False):
        super().__init__()
        if learn_b:  # seq_icl: Conv1d-style uniform taps, B a parameter starting at e_1
            taps = (torch.rand(channels, size) * 2 - 1) / math.sqrt(size)
            self.b = nn.Parameter(torch.eye(size)[0].repeat(channels, 1))  # (C, N)
        else:
            taps = torch.randn(channels, size) / math.sqrt(size)
            self.b = None
        self.taps = nn.Parameter(taps)  # (C, N)
        self.d = nn.Parameter(torch.randn(channels))  # (C,)

    def ssm_parameters(self) -> list[nn.Parameter]:
        return [self.b] if self.b is not None else []

    def kernel(self, dtype: torch.dtype) -> Tensor:
        """K (C, N): the taps, or their correlation with a learned B."""
        taps = self.taps.to(dtype)
        if self.b is None:
            return taps
        b, size = self.b.to(dtype), taps.shape[-1]
        return torch.stack([(b[:, : size - j] * taps[:, j:]).sum(-1) for j in range(size)], -1)

    def forward(self, k: Tensor) -> Tensor:
        dtype = compute_dtype(k)
        with full_precision(k):
            k = k.to(dtype)
            return causal_fft_conv(k, self.kernel(dtype)) + self.d.to(dtype).unsqueeze(-1) * k

    def recurrence(self, k: Tensor) -> Tensor:
        """Shift register x_t = shift(x_{t-1}) + B k_t (B = e_1: the last N inputs), y = C x_t."""
        dtype = compute_dtype(k)
        taps, d = self.taps.to(dtype), self.d.to(dtype)
        b = torch.eye(taps.shape[-1], dtype=dtype)[0] if self.b is None else self.b.to(dtype)
        register = k.new_zeros(*k.shape[:-1], taps.shape[-1], dtype=dtype)  # (..., C, N)
        outputs = []
        for k_t in k.to(dtype).unbind(-1):  # (..., C); elementwise only: no autocast effect
            shifted = torch.cat([torch.zeros_like(register[..., :1]), register[..., :-1]], dim=-1)
            register = shifted + b * k_t.unsqueeze(-1)
            outputs.append((register * taps).sum(-1) + d * k_t)
        return torch.stack(outputs, dim=-1)


class H3Mixer(SequenceMixer):
    """q * DiagSSM(ShiftSSM(k) v^T) per head, then an output projection."""

    def __init__(self, config: H3Config):
        super().__init__()
        d_model, self.head_dim = config.d_model, config.head_dim
        self.heads = d_model // config.head_dim
        seq_icl = self.head_minor = self.plain_output_init = config.variant == "seq_icl"
        self.in_proj = nn.Linear(d_model, 3 * d_model)
        self.shift = ShiftSSM(d_model, config.shift_size, learn_b=seq_icl)
        options = {"learn_b": True, "disc": "bilinear"} if seq_icl else {}
        self.diag = DiagonalSSM(self.heads, config.d_state, config.dt_min, config.dt_max, **options)
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
        if self.head_minor:  # seq_icl's channel order: (d2, H)
            out = out.transpose(2, 3)
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
