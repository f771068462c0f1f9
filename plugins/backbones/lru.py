"""`lru`: Linear Recurrent Unit layers (LRU).

Paper: Orvieto, Smith, Gu, Fernando, Gulcehre, Pascanu, De, "Resurrecting Recurrent Neural
Networks for Long Sequences", ICML 2023, arXiv 2303.06349.

Mixer, on the normalised input u_t (width D, complex state of size N):
  lambda = exp(-exp(nu_log) + i exp(theta_log))        exponential parameterisation, |lambda| < 1
  x_t = lambda * x_{t-1} + exp(gamma_log) * (B u_t)    diagonal complex recurrence
  y_t = Re(C x_t) + D * u_t
  out = GLU(W_o GELU(y_t))                             the paper's GELU + GLU after the LRU
gamma_log starts at log sqrt(1 - |lambda|^2) (the paper's normalisation, trainable), so the
state does not blow up when |lambda| is close to 1. Fast form: a complex parallel scan
(`linear_recurrence.linear_scan`); reference: the step loop.

Defaults: "ring" init, |lambda| uniform on the ring r_min^2 <= |lambda|^2 <= r_max^2 with
r_min 0.9, r_max 0.999 and phase in [0, max_phase = 2 pi] (the paper's long-range setting,
also seed 003's); real and imaginary parts of B ~ N(0, 1/(2D)) and of C ~ N(0, 1/N) (the
paper's Glorot-style choice), D ~ N(0, 1); N = d_model unless `d_state` is set. Stack (seed 003): 2 pre-norm layers with a 4x MLP.

`variant: seq_icl` is seq_icl's `LRULayer`: the same recurrence and ring init (N = d_model),
but [v_re; v_im; o] = W_in u (one Linear(D, 4D) with bias, no separate complex B),
x_t = lambda x_{t-1} + gamma (v_re + i v_im), and
out = W_o LN(Dropout(0.2)([Re x; Im x] * silu(o))) with W_o: Linear(2D, D); no C, no D skip,
no GELU or GLU.

`scan_gradient: seq_icl_kernel` (seq_icl variant only) trains with the gradient seq_icl's Triton
scan computes there. Its backward reads the gradients of Re x and Im x as contiguous (B, L, N)
arrays, but autograd hands it the two halves of the gradient of [Re x; Im x], which are strided
views: it reads the flat gradient buffer of shape (B, L, 2N) from offsets 0 and N instead. The
forward pass is unchanged. Only for reproducing seq_icl's LRU numbers
(examples/seq_icl/seqicl_kernel_check.py compares it with seq_icl's kernel).
"""

from __future__ import annotations

import math
from typing import Literal

import torch
from pydantic import Field, model_validator
from torch import Tensor, nn
from torch.nn import functional as F

from ponderlab.core.hookspecs import hookimpl

from .linear_recurrence import compute_dtype, full_precision, linear_scan, linear_scan_reference
from .mixer_stack import MixerBackbone, MixerStackConfig, SequenceMixer


class LRUConfig(MixerStackConfig):
    name: Literal["lru"] = "lru"
    d_state: int | None = Field(None, ge=1, description="Complex state size N (default d_model).")
    r_min: float = Field(0.9, ge=0, lt=1, description="Smallest initial |lambda|.")
    r_max: float = Field(0.999, gt=0, lt=1, description="Largest initial |lambda|.")
    max_phase: float = Field(2 * math.pi, gt=0, description="Initial arg(lambda) ~ U[0, max_phase].")
    mixer_dropout: float = Field(
        0.2, ge=0, lt=1, description="seq_icl variant only: dropout before its LayerNorm."
    )
    scan_gradient: Literal["exact", "seq_icl_kernel"] = Field(
        "exact",
        description="seq_icl variant only: the exact gradient of the scan, or the one seq_icl's Triton "
        "kernel computes from the gradient buffer it misreads (module docstring).",
    )

    @model_validator(mode="after")
    def _check(self):
        if self.r_min > self.r_max:
            raise ValueError(f"r_min {self.r_min} is larger than r_max {self.r_max}")
        if self.variant == "seq_icl" and self.d_state not in (None, self.d_model):
            raise ValueError(f"variant seq_icl has d_state = d_model; got d_state {self.d_state}")
        if self.variant != "seq_icl" and self.scan_gradient != "exact":
            raise ValueError(f"scan_gradient {self.scan_gradient} needs variant seq_icl; got variant {self.variant}")
        return self


class RingRecurrence(SequenceMixer):
    """The mixers' recurrence x_t = lambda x_{t-1} + gamma v_t over N complex channels, with
    the ring init of lambda (nu_log, theta_log) and gamma_log = log sqrt(1 - |lambda|^2):
    three (N,) parameters."""

    def __init__(self, size: int, r_min: float, r_max: float, max_phase: float):
        super().__init__()
        radius_sq = torch.rand(size) * (r_max**2 - r_min**2) + r_min**2  # |lambda|^2
        self.nu_log = nn.Parameter(torch.log(-0.5 * torch.log(radius_sq)))
        self.theta_log = nn.Parameter(torch.log(max_phase * torch.rand(size).clamp_min(1e-4)))
        self.gamma_log = nn.Parameter(0.5 * torch.log(1 - radius_sq))

    def decay(self, dtype: torch.dtype) -> Tensor:
        """lambda: (N,) complex."""
        return torch.exp(
            torch.complex(-torch.exp(self.nu_log.to(dtype)), torch.exp(self.theta_log.to(dtype)))
        )

    def states(self, inputs: Tensor, reference: bool) -> Tensor:
        """All states x_t (B, L, N) complex for inputs v_t (B, L, N) complex, by the parallel
        scan or (`reference`) the step loop."""
        dtype = inputs.real.dtype
        scan = linear_scan_reference if reference else linear_scan
        return scan(self.decay(dtype), torch.exp(self.gamma_log.to(dtype)) * inputs)


class LRUMixer(RingRecurrence):
    """Linear recurrent unit + GELU + GLU: (B, L, D) -> (B, L, D)."""

    def __init__(self, d_model: int, d_state: int, r_min: float, r_max: float, max_phase: float):
        super().__init__(d_state, r_min, r_max, max_phase)
        self.in_real = nn.Parameter(torch.randn(d_state, d_model) / math.sqrt(2 * d_model))
        self.in_imag = nn.Parameter(torch.randn(d_state, d_model) / math.sqrt(2 * d_model))
        self.out_real = nn.Parameter(torch.randn(d_model, d_state) / math.sqrt(d_state))
        self.out_imag = nn.Parameter(torch.randn(d_model, d_state) / math.sqrt(d_state))
        self.skip = nn.Parameter(torch.randn(d_model))
        self.out_proj = nn.Linear(d_model, 2 * d_model)

    def mix_tokens(self, x: Tensor, *, reference: bool) -> Tensor:  # (B, L, D) -> (B, L, D)
        """GELU(y), y_t = Re(C x_t) + D u_t with x_t = lambda x_{t-1} + gamma B u_t."""
        dtype = compute_dtype(x)
        with full_precision(x):
            u = x.to(dtype)
            # B u_t: (B, L, N) complex
            inputs = torch.complex(u @ self.in_real.to(dtype).T, u @ self.in_imag.to(dtype).T)
            state = self.states(inputs, reference)  # (B, L, N) complex
            y = state.real @ self.out_real.to(dtype).T - state.imag @ self.out_imag.to(dtype).T
            y = y + self.skip.to(dtype) * u  # (B, L, D)
        return F.gelu(y.to(x.dtype))

    def project(self, mixed: Tensor, x: Tensor) -> Tensor:  # (..., D) -> (..., D)
        return F.glu(self.out_proj(mixed), dim=-1)


class SeqIclKernelGradient(torch.autograd.Function):
    """Identity on the states [Re x; Im x] (B, L, 2N); backward hands on the output gradient as
    seq_icl's Triton scan reads it: its real half from the flat gradient buffer at offset 0, its
    imaginary half at offset N, each as a contiguous (B, L, N) array."""

    @staticmethod
    def forward(ctx, states: Tensor) -> Tensor:  # (B, L, 2N) -> (B, L, 2N)
        return states.clone()

    @staticmethod
    def backward(ctx, grad: Tensor) -> Tensor:  # (B, L, 2N) -> (B, L, 2N)
        batch, length, width = grad.shape
        half, size = width // 2, batch * length * width // 2
        flat = grad.contiguous().reshape(-1)  # (B * L * 2N,)
        real = flat[:size].view(batch, length, half)  # (B, L, N)
        imag = flat[half:half + size].view(batch, length, half)  # (B, L, N)
        return torch.cat([real, imag], dim=-1)


class SeqIclLRUMixer(RingRecurrence):
    """seq_icl's LRULayer: W_o LN(drop([Re x; Im x] * silu(o))): (B, L, D) -> (B, L, D)."""

    def __init__(self, d_model: int, r_min: float, r_max: float, max_phase: float, dropout: float,
                 kernel_gradient: bool = False):
        super().__init__(d_model, r_min, r_max, max_phase)
        self.kernel_gradient = kernel_gradient
        self.in_proj = nn.Linear(d_model, 4 * d_model)
        self.dropout = nn.Dropout(dropout)
        self.norm = nn.LayerNorm(2 * d_model)
        self.out_proj = nn.Linear(2 * d_model, d_model)

    def mix_tokens(self, x: Tensor, *, reference: bool) -> Tensor:  # (B, L, D) -> (B, L, 2D)
        width = x.shape[-1]
        v_real, v_imag, out_gate = self.in_proj(x).split([width, width, 2 * width], -1)
        dtype = compute_dtype(x)
        with full_precision(x):
            inputs = torch.complex(v_real.to(dtype), v_imag.to(dtype))  # (B, L, D)
            state = self.states(inputs, reference)  # (B, L, D) complex
            states = torch.cat([state.real, state.imag], dim=-1).to(x.dtype)  # (B, L, 2D)
        if self.kernel_gradient:
            states = SeqIclKernelGradient.apply(states)
        return states * F.silu(out_gate)

    def project(self, mixed: Tensor, x: Tensor) -> Tensor:  # (..., 2D) -> (..., D)
        return self.out_proj(self.norm(self.dropout(mixed)))


class LRUBackbone(MixerBackbone):
    config_class = LRUConfig
    config: LRUConfig

    def make_mixer(self, layer: int) -> nn.Module:
        c = self.config
        if self.seq_icl:
            return SeqIclLRUMixer(c.d_model, c.r_min, c.r_max, c.max_phase, c.mixer_dropout,
                                  kernel_gradient=c.scan_gradient == "seq_icl_kernel")
        return LRUMixer(c.d_model, c.d_state or c.d_model, c.r_min, c.r_max, c.max_phase)


@hookimpl
def ponderlab_register_backbones(register):
    register(LRUBackbone)
