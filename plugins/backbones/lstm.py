"""`lstm`: stacked single-layer LSTMs (seed 000: 4 layers, hidden 128).

Embedding width equals hidden width, so any layer can be re-applied to its own
output: with ACT around a layer, the whole LSTM layer re-runs over the full
sequence each hop (input = previous hop's output, fresh zero initial state).
"""

from __future__ import annotations

from typing import Literal

import torch
from pydantic import Field
from torch import Tensor, nn

from ponderlab.core.config import BackboneConfig
from ponderlab.core.hookspecs import hookimpl
from ponderlab.core.interfaces import Backbone, Block, BlockContext


class LSTMConfig(BackboneConfig):
    name: Literal["lstm"] = "lstm"
    d_model: int = Field(128, ge=1, description="Hidden width = embedding width.")
    n_layers: int = Field(4, ge=1)
    residual: bool = Field(False, description="Add the layer input to its output.")
    dropout: float = Field(0.0, ge=0, lt=1)


class LSTMBlock(Block):
    """One LSTM layer over the whole sequence: (B, L, D) -> (B, L, D)."""

    def __init__(self, d_model: int, residual: bool, dropout: float):
        super().__init__()
        self.lstm = nn.LSTM(d_model, d_model, batch_first=True)
        self.dropout = nn.Dropout(dropout)
        self.residual = residual

    def forward(self, hidden: Tensor, context: BlockContext) -> Tensor:
        output = self.dropout(run_lstm(self.lstm, hidden))  # (B, L, D)
        return hidden + output if self.residual else output


def run_lstm(lstm: nn.LSTM, x: Tensor) -> Tensor:
    """The LSTM's outputs over the whole sequence from a zero state: (B, L, D) -> (B, L, H)."""
    if x.device.type == "cpu" and torch.is_autocast_enabled("cpu"):
        # oneDNN has no bf16 LSTM on CPUs without native bf16: run this layer in float32.
        with torch.autocast("cpu", enabled=False):
            return lstm(x.float())[0]
    return lstm(x)[0]


class LSTMBackbone(Backbone):
    config_class = LSTMConfig

    def __init__(self, config: LSTMConfig, *, vocab_size: int):
        super().__init__(config, vocab_size=vocab_size)
        self.embedding = nn.Embedding(vocab_size, config.d_model)
        self.blocks = nn.ModuleList(
            LSTMBlock(config.d_model, config.residual, config.dropout) for _ in range(config.n_layers)
        )
        self.norm = nn.LayerNorm(config.d_model)


@hookimpl
def ponderlab_register_backbones(register):
    register(LSTMBackbone)
