"""One Hugging Face decoder layer as a ponderlab `Block`.

The block calls the layer exactly as the model's own forward does for a fresh
(cache-free) sequence: positions 0..L-1, the causal mask `transformers` builds for
the layer's attention type (full or sliding window), and the rotary position
embeddings of the shared rotary module where the model has one. Each call
restarts positions at 0, so a memory segment gets its own positions, as the RMT
and ARMT references get when they call the model on one segment.

Halted tokens are handled by the core (their rows are restored after the call);
the layer itself computes every token.
"""

from __future__ import annotations

import torch
from torch import Tensor, nn
from transformers import PretrainedConfig
from transformers.masking_utils import create_causal_mask, create_sliding_window_causal_mask

from ponderlab.core.interfaces import Block, BlockContext


class HFBlock(Block):
    """A wrapped decoder layer: (B, L, D) -> (B, L, D), causal."""

    def __init__(self, layer: nn.Module, *, index: int, config: PretrainedConfig, rotary: nn.Module | None):
        super().__init__()
        self.layer = layer
        self.index = index
        self.hf_config = config
        self.rotary = rotary  # shared by every block of the model (a buffer-only module)
        layer_types = getattr(config, "layer_types", None)
        self.sliding = bool(layer_types) and layer_types[index] == "sliding_attention"

    def forward(self, hidden: Tensor, context: BlockContext) -> Tensor:  # (B, L, D) -> (B, L, D)
        length = hidden.shape[1]
        position_ids = torch.arange(length, device=hidden.device).unsqueeze(0)  # (1, L)
        make_mask = create_sliding_window_causal_mask if self.sliding else create_causal_mask
        mask = make_mask(
            config=self.hf_config, inputs_embeds=hidden, attention_mask=None, cache=None, position_ids=position_ids
        )
        extra = {}
        if self.rotary is not None:
            extra["position_embeddings"] = self.rotary(hidden, position_ids=position_ids)  # (cos, sin)
        output = self.layer(hidden, attention_mask=mask, position_ids=position_ids, use_cache=False, **extra)
        return output[0] if isinstance(output, tuple) else output
