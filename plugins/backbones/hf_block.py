"""One Hugging Face decoder layer as a ponderlab `Block`.

The block calls the layer exactly as the model's own forward does for a fresh
(cache-free) sequence: positions 0..L-1, the causal mask `transformers` builds for
the layer's attention type (full or sliding window), and the rotary position
embeddings of the shared rotary module where the model has one. Each call
restarts positions at 0, so a memory segment gets its own positions, as the RMT
and ARMT references get when they call the model on one segment.

Early exit: for the layouts of `hf_rows` (GPT-2, GPT-NeoX, Llama, Qwen2) the block is
an `HFRowsBlock`, whose `forward_rows` computes the running tokens only. For any
other layout the layer computes every token and the core restores halted tokens'
rows after the call (correct, no saving).
"""

from __future__ import annotations

from typing import TYPE_CHECKING

import torch
from torch import Tensor, nn

from ponderlab.core.interfaces import Block, BlockContext

from .hf_rows import LayerRows, RotaryTables, rows_adapter

if TYPE_CHECKING:  # transformers is imported where a model is built: listing plugins stays quick
    from transformers import PretrainedConfig


def sliding_window(config: PretrainedConfig, index: int) -> int | None:
    """The sliding-window size of layer `index` (None: full causal attention)."""
    layer_types = getattr(config, "layer_types", None)
    return config.sliding_window if layer_types and layer_types[index] == "sliding_attention" else None


class HFBlock(Block):
    """A wrapped decoder layer: (B, L, D) -> (B, L, D), causal."""

    def __init__(self, layer: nn.Module, *, index: int, config: PretrainedConfig, rotary: nn.Module | None):
        from transformers.masking_utils import create_causal_mask, create_sliding_window_causal_mask

        super().__init__()
        self.layer = layer
        self.index = index
        self.hf_config = config
        self.rotary = rotary  # shared by every block of the model (a buffer-only module)
        self.sliding = sliding_window(config, index) is not None
        self.make_mask = create_sliding_window_causal_mask if self.sliding else create_causal_mask

    def rotary_tables(self, hidden: Tensor, position_ids: Tensor) -> RotaryTables | None:
        """(cos, sin) of the shared rotary module at position_ids (1, L), or None (no rotary)."""
        return None if self.rotary is None else self.rotary(hidden, position_ids=position_ids)

    def forward(self, hidden: Tensor, context: BlockContext) -> Tensor:  # (B, L, D) -> (B, L, D)
        length = hidden.shape[1]
        position_ids = torch.arange(length, device=hidden.device).unsqueeze(0)  # (1, L)
        mask = self.make_mask(
            config=self.hf_config, inputs_embeds=hidden, attention_mask=None, cache=None, position_ids=position_ids
        )
        extra = {}
        if self.rotary is not None:
            extra["position_embeddings"] = self.rotary_tables(hidden, position_ids)  # (cos, sin)
        output = self.layer(hidden, attention_mask=mask, position_ids=position_ids, use_cache=False, **extra)
        return output[0] if isinstance(output, tuple) else output


class HFRowsBlock(HFBlock):
    """A wrapped decoder layer that can also compute the running tokens only (`forward_rows`)."""

    def __init__(self, layer: nn.Module, *, index: int, config: PretrainedConfig, rotary: nn.Module | None,
                 adapter: LayerRows):
        super().__init__(layer, index=index, config=config, rotary=rotary)
        self.adapter = adapter

    def forward_rows(self, hidden: Tensor, rows: Tensor, states: Tensor, context: BlockContext) -> Tensor:
        """New states (K, D) of the tokens at flat indices rows (K,); hidden (B, L, D) is every token's."""
        if rows.shape[0] == 0:
            return states
        position_ids = torch.arange(hidden.shape[1], device=hidden.device).unsqueeze(0)  # (1, L)
        return self.adapter.update(self.layer, hidden, rows, states, self.rotary_tables(hidden, position_ids))


def make_block(layer: nn.Module, *, index: int, config: PretrainedConfig, rotary: nn.Module | None) -> HFBlock:
    """The block for one layer: `HFRowsBlock` where its layout computes rows, else `HFBlock`."""
    adapter = rows_adapter(config, window=sliding_window(config, index))
    if adapter is None:
        return HFBlock(layer, index=index, config=config, rotary=rotary)
    return HFRowsBlock(layer, index=index, config=config, rotary=rotary, adapter=adapter)
