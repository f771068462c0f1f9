"""`universal_transformer`: one shared GPT-NeoX layer applied recurrently over depth.

Universal Transformer (Dehghani et al. 2018, arXiv 1807.03819): the same layer
(attention + transition) is applied hop after hop, with a per-hop depth signal
added to the state before each application; the halting strategy decides the
number of hops per token (`ut`, `graves`, `pondernet`, `constant`, ...; with
`none` it is a one-layer transformer). Hop n of a ponder loop passes
`context.hop = n`, which selects the depth signal.

Defaults: one shared layer (`n_layers` > 1 stacks that many distinct shared
layers), GPT-NeoX layer as in `transformer` (heads = n_layers, FFN = d_model,
rotary_pct 0.25, parallel residual), sinusoidal depth signal
(`depth_embedding: learned` gives a trained table of `max_depth` rows).
"""

from __future__ import annotations

import math
from typing import TYPE_CHECKING, Literal

import torch
from pydantic import Field
from torch import Tensor, nn

from ponderlab.core.hookspecs import hookimpl
from ponderlab.core.interfaces import BlockContext

from .transformer import NeoXBlock, TransformerBackbone, TransformerConfig

if TYPE_CHECKING:  # transformers is imported where a model is built: listing plugins stays quick
    from transformers import GPTNeoXConfig


class UniversalTransformerConfig(TransformerConfig):
    name: Literal["universal_transformer"] = "universal_transformer"
    depth_embedding: Literal["sinusoidal", "learned"] = Field(
        "sinusoidal", description="Per-hop signal added before each application of the shared layer."
    )
    max_depth: int = Field(64, ge=1, description="Rows of the learned depth table (hops beyond it are an error).")


def sinusoidal_signal(n: int, width: int, device: torch.device, dtype: torch.dtype) -> Tensor:
    """The transformer timing signal at position `n` over `width` channels: (width,)."""
    half = width // 2
    scale = math.log(10000.0) / max(half - 1, 1)
    frequencies = torch.exp(-scale * torch.arange(half, device=device, dtype=torch.float32))
    angles = n * frequencies  # (half,)
    signal = torch.cat([torch.sin(angles), torch.cos(angles)])
    if width % 2:
        signal = torch.cat([signal, signal.new_zeros(1)])
    return signal.to(dtype)


class DepthSignal(nn.Module):
    """Hop index -> (D,) signal, sinusoidal or learned."""

    def __init__(self, kind: str, d_model: int, max_depth: int):
        super().__init__()
        self.d_model = d_model
        self.max_depth = max_depth
        self.table = nn.Embedding(max_depth, d_model) if kind == "learned" else None

    def forward(self, n: int, like: Tensor) -> Tensor:  # -> (D,)
        if self.table is None:
            return sinusoidal_signal(n, self.d_model, like.device, like.dtype)
        if n >= self.max_depth:
            raise ValueError(
                f"universal_transformer: hop {n} exceeds backbone.max_depth={self.max_depth}; raise it"
            )
        return self.table.weight[n].to(like.dtype)


class UTBlock(NeoXBlock):
    """The shared layer: adds the depth signal of `context.hop`, then the GPT-NeoX layer."""

    def __init__(self, hf_config: GPTNeoXConfig, layer_index: int, depth: DepthSignal):
        super().__init__(hf_config, layer_index)
        self.depth = depth

    def forward(self, hidden: Tensor, context: BlockContext) -> Tensor:
        hidden = hidden + self.depth(context.hop, hidden)  # (B, L, D) + (D,)
        return super().forward(hidden, context)

    def forward_rows(self, hidden: Tensor, rows: Tensor, states: Tensor, context: BlockContext) -> Tensor:
        signal = self.depth(context.hop, hidden)  # (D,): every token's input gets it, as in forward
        return super().forward_rows(hidden + signal, rows, states + signal, context)  # (K, D)

    def forward_routed(self, hidden: Tensor, routed: Tensor, context: BlockContext) -> Tensor:
        hidden = hidden + self.depth(context.hop, hidden)  # as in forward
        return super().forward_routed(hidden, routed, context)  # (B, L, D)


class UniversalTransformerBackbone(TransformerBackbone):
    """`transformer`'s stack whose layers are `UTBlock`s sharing one depth signal."""

    config_class = UniversalTransformerConfig

    def make_blocks(self, hf_config: GPTNeoXConfig) -> list[NeoXBlock]:
        config = self.config
        self.depth = DepthSignal(config.depth_embedding, config.d_model, config.max_depth)
        return [UTBlock(hf_config, i, self.depth) for i in range(config.n_layers)]


@hookimpl
def ponderlab_register_backbones(register):
    register(UniversalTransformerBackbone)
