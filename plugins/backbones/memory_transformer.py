"""What the GPT-NeoX memory backbones (RMT, ARMT) share: segment options and their setup."""

from __future__ import annotations

from pydantic import Field

from .transformer import TransformerBackbone, TransformerConfig


class MemoryTransformerConfig(TransformerConfig):
    """GPT-NeoX options plus segment recurrence; subclasses set `name`."""

    memory_size: int = Field(16, ge=1, description="Memory tokens per segment.")
    segment_size: int | None = Field(None, ge=1, description="Tokens per segment (None: one segment).")
    bptt_depth: int | None = Field(
        None, ge=1, description="Backpropagate through memory over the last k segments only (None: all)."
    )


class MemoryTransformerBackbone(TransformerBackbone):
    """A GPT-NeoX stack run segment by segment (core/segments.py) with recurrent memory."""

    uses_segments = True

    def __init__(self, config: MemoryTransformerConfig, *, vocab_size: int):
        super().__init__(config, vocab_size=vocab_size)  # embedding, GPT-NeoX blocks, norm, init
        self.segment_size = config.segment_size
        self.bptt_depth = config.bptt_depth
        self.memory_size = config.memory_size
