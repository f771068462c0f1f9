"""`gilr`: gated impulse linear recurrence layers (GILR).

Paper: Martin, Cundy, "Parallelizing Linear Recurrent Neural Nets Over Sequence Length",
ICLR 2018, arXiv 1709.04057.

Mixer, on the normalised input x_t:
  g_t = sigmoid(W_g x_t + b_g)                      forget gate
  i_t = tanh(W_z x_t + b_z)                          impulse
  h_t = g_t * h_{t-1} + (1 - g_t) * i_t              the GILR recurrence (h_{-1} = 0)
  y_t = W_o LN(h_t * silu(W_u x_t))                  output gate, norm and projection
The recurrence is linear in h with input-dependent diagonal gates, so all h_t come from
one parallel scan (`linear_recurrence.linear_scan`, the paper's point); the reference runs
it step by step. The output gating, LayerNorm and projection follow seed 003's GILR layer.

Defaults: state width = d_model (one gate per channel), biases start at 0 (g = 1/2);
stack (seed 003): 2 pre-norm layers with a 4x MLP.

`variant: seq_icl` is seq_icl's `GILRLayer` (fused forget gate): the impulse is linear,
h_t = g_t h_{t-1} + (1 - g_t) v_t with no tanh; the input projection splits as (v, o, f)
in that order; Dropout(0.2) acts on h * silu(o) before the LayerNorm.
"""

from __future__ import annotations

from typing import Literal

import torch
from pydantic import Field
from torch import Tensor, nn
from torch.nn import functional as F

from ponderlab.core.hookspecs import hookimpl

from .linear_recurrence import compute_dtype, full_precision, linear_scan, linear_scan_reference
from .mixer_stack import MixerBackbone, MixerStackConfig, SequenceMixer


class GILRConfig(MixerStackConfig):
    name: Literal["gilr"] = "gilr"
    mixer_dropout: float = Field(
        0.2, ge=0, lt=1, description="seq_icl variant only: dropout on h * silu(o) (seq_icl: 0.2)."
    )


class GILRMixer(SequenceMixer):
    """Gated impulse linear recurrence with output gate: (B, L, D) -> (B, L, D)."""

    def __init__(self, d_model: int, seq_icl: bool = False, dropout: float = 0.0):
        super().__init__()
        self.seq_icl = seq_icl
        self.in_proj = nn.Linear(d_model, 3 * d_model)
        self.dropout = nn.Dropout(dropout if seq_icl else 0.0)
        self.norm = nn.LayerNorm(d_model)
        self.out_proj = nn.Linear(d_model, d_model)

    def mix_tokens(self, x: Tensor, *, reference: bool) -> Tensor:  # (B, L, D) -> (B, L, D)
        if self.seq_icl:  # seq_icl's order (v, o, f) and its linear impulse
            impulse, out_gate, gate = self.in_proj(x).chunk(3, dim=-1)  # (B, L, D) each
        else:
            impulse, gate, out_gate = self.in_proj(x).chunk(3, dim=-1)
        dtype = compute_dtype(x)
        with full_precision(x):
            gate = torch.sigmoid(gate.to(dtype))
            impulse = impulse.to(dtype)
            inputs = (1 - gate) * (impulse if self.seq_icl else torch.tanh(impulse))
            scan = linear_scan_reference if reference else linear_scan
            hidden = scan(gate, inputs).to(x.dtype)  # (B, L, D)
        return hidden * F.silu(out_gate)

    def project(self, mixed: Tensor, x: Tensor) -> Tensor:  # (..., D) -> (..., D)
        return self.out_proj(self.norm(self.dropout(mixed)))


class GILRBackbone(MixerBackbone):
    config_class = GILRConfig
    config: GILRConfig

    def make_mixer(self, layer: int) -> nn.Module:
        c = self.config
        return GILRMixer(c.d_model, seq_icl=self.seq_icl, dropout=c.mixer_dropout)


@hookimpl
def ponderlab_register_backbones(register):
    register(GILRBackbone)
