"""What the memory backbones (RMT, ARMT) share: segment options over the `hf` path.

Both run any Hugging Face causal LM (`model: <hub id or path>`) or, without
`model`, a GPT-NeoX built from the `transformer` options, through the same
`HFBackbone`: memory is added at the embedding level around each segment, as the
references wrap a Hugging Face model.

Positions: every segment, memory tokens included, is one call of the model in the
references, so a model with learned positions (GPT-2) adds positions 0..Lw-1 to
the wrapped segment (`wrap_segment`), and rotary models restart at 0 per segment.
"""

from __future__ import annotations

import torch
from pydantic import Field
from torch import Tensor, nn

from .hf import HFBackbone, HFConfig


class MemoryTransformerConfig(HFConfig):
    """`hf` options plus segment recurrence; subclasses set `name`."""

    memory_size: int = Field(16, ge=1, description="Memory tokens per segment.")
    segment_size: int | None = Field(None, ge=1, description="Tokens per segment (None: one segment).")
    bptt_depth: int | None = Field(
        None, ge=1, description="Backpropagate through memory over the last k segments only (None: all)."
    )


class MemoryTransformerBackbone(HFBackbone):
    """A Hugging Face stack run segment by segment (core/segments.py) with recurrent memory."""

    uses_segments = True

    def __init__(self, config: MemoryTransformerConfig, *, vocab_size: int):
        super().__init__(config, vocab_size=vocab_size)  # embedding, wrapped layers, final norm
        self.segment_size = config.segment_size
        self.bptt_depth = config.bptt_depth
        self.memory_size = config.memory_size

    def embed(self, input_ids: Tensor) -> Tensor:  # (B, L) -> (B, L, D)
        return self.token_embeddings(input_ids)  # positions are added per wrapped segment

    def memory_parameter(self, rows: int) -> nn.Parameter:
        """Learned memory tokens (rows, D) as the references draw them: randn * std(embeddings)."""
        weight = self.embedding.weight.detach()
        return nn.Parameter(torch.randn(rows, weight.shape[1], dtype=weight.dtype) * weight.float().std())
