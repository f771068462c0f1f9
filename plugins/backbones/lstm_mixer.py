"""`lstm_mixer`: one LSTM layer as the sequence mixer of seed 003's layer stack.

Seed 003 (seq_icl) published its LSTM rows (associative recall 36.2%, induction head 4.8%,
added at its commit 22be4b4) with `lm_simple`: each of the 2 blocks is
`x + LSTM(LN(x))`, then `x + MLP(LN(x))` with a 4x GELU MLP, after an embedding with dropout
0.1, and a final LayerNorm, the output head tied to the embeddings. That is this backbone
with `variant: seq_icl`, `embed_dropout: 0.1` and `tie_embeddings: true`. The `lstm` backbone is
seed 000's bare stack of LSTM layers (no norm, residual or MLP), which is not the model seq_icl
measured.

The LSTM keeps PyTorch's own init (uniform in +-1/sqrt(D)), as seq_icl's init only touches
linear and embedding weights; `variant: seq_icl` only changes the MLP's GELU to the tanh
form seq_icl uses. (seq_icl's later configs, from its commit 655c92e, drop the MLP and
re-initialise the LSTM Keras-style; the published table predates them.)

The reference runs the LSTM cell step by step from its weights:
  i, f, g, o = split(W_ih x_t + b_ih + W_hh h_{t-1} + b_hh)
  c_t = sigmoid(f) c_{t-1} + sigmoid(i) tanh(g),   h_t = sigmoid(o) tanh(c_t)
"""

from __future__ import annotations

from typing import Literal

import torch
from torch import Tensor, nn

from ponderlab.core.hookspecs import hookimpl

from .lstm import run_lstm
from .mixer_stack import MixerBackbone, MixerStackConfig, SequenceMixer


class LSTMMixerConfig(MixerStackConfig):
    name: Literal["lstm_mixer"] = "lstm_mixer"


class LSTMMixer(SequenceMixer):
    """One LSTM layer of width D from a zero state: (B, L, D) -> (B, L, D)."""

    def __init__(self, d_model: int):
        super().__init__()
        self.lstm = nn.LSTM(d_model, d_model, batch_first=True)

    def mix(self, x: Tensor, *, reference: bool) -> Tensor:
        return lstm_reference(self.lstm, x) if reference else run_lstm(self.lstm, x)


def lstm_reference(lstm: nn.LSTM, x: Tensor) -> Tensor:
    """The LSTM cell, one step at a time: x (B, L, D) -> h (B, L, H)."""
    w_ih, w_hh, b_ih, b_hh = lstm.weight_ih_l0, lstm.weight_hh_l0, lstm.bias_ih_l0, lstm.bias_hh_l0
    batch, width = x.shape[0], lstm.hidden_size
    h = x.new_zeros(batch, width)
    c = x.new_zeros(batch, width)
    outputs = []
    for x_t in x.unbind(dim=1):  # (B, D)
        i, f, g, o = (x_t @ w_ih.T + b_ih + h @ w_hh.T + b_hh).chunk(4, dim=-1)  # (B, H) each
        c = torch.sigmoid(f) * c + torch.sigmoid(i) * torch.tanh(g)
        h = torch.sigmoid(o) * torch.tanh(c)
        outputs.append(h)
    return torch.stack(outputs, dim=1)  # (B, L, H)


class LSTMMixerBackbone(MixerBackbone):
    config_class = LSTMMixerConfig
    config: LSTMMixerConfig

    def make_mixer(self, layer: int) -> nn.Module:
        return LSTMMixer(self.config.d_model)


@hookimpl
def ponderlab_register_backbones(register):
    register(LSTMMixerBackbone)
