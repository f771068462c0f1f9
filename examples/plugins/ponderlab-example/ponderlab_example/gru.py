"""`gru`: stacked GRU layers (Cho et al. 2014, arXiv 1406.1078) as a ponderlab backbone.

Each layer is pre-norm and residual, h + GRU(LayerNorm(h)), over the whole
sequence; a hop re-runs the layer from a zero hidden state on the previous
hop's output. A GRU reads left to right, so the layer is causal.

Defaults: d_model 64, n_layers 2, dropout 0.
"""

from __future__ import annotations

from typing import Literal

from pydantic import Field
from torch import Tensor, nn

from ponderlab.core.config import BackboneConfig
from ponderlab.core.hookspecs import hookimpl
from ponderlab.core.interfaces import Backbone, Block, BlockContext


class GRUConfig(BackboneConfig):
    name: Literal["gru"] = "gru"
    d_model: int = Field(64, ge=1, description="Hidden width = embedding width.")
    n_layers: int = Field(2, ge=1, description="Number of distinct GRU layers.")
    dropout: float = Field(0.0, ge=0, lt=1, description="Dropout on each layer's update.")


class GRUBlock(Block):
    """h + dropout(GRU(LayerNorm(h))): (B, L, D) -> (B, L, D)."""

    def __init__(self, d_model: int, dropout: float):
        super().__init__()
        self.norm = nn.LayerNorm(d_model)
        self.gru = nn.GRU(d_model, d_model, batch_first=True)
        self.dropout = nn.Dropout(dropout)

    def forward(self, hidden: Tensor, context: BlockContext) -> Tensor:
        update, _ = self.gru(self.norm(hidden))  # (B, L, D)
        return hidden + self.dropout(update)


class GRUBackbone(Backbone):
    config_class = GRUConfig

    def __init__(self, config: GRUConfig, *, vocab_size: int):
        super().__init__(config, vocab_size=vocab_size)
        self.embedding = nn.Embedding(vocab_size, config.d_model)
        self.blocks = nn.ModuleList(GRUBlock(config.d_model, config.dropout) for _ in range(config.n_layers))
        self.norm = nn.LayerNorm(config.d_model)


@hookimpl
def ponderlab_register_backbones(register):
    register(GRUBackbone)
