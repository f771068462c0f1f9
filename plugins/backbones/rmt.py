"""`rmt`: Recurrent Memory Transformer (Bulatov et al. 2022, arXiv 2207.06881) over any causal LM.

The input is split into segments of `segment_size` tokens; each is processed as
`[memory ; segment ; memory]` with `memory_size` memory tokens. The front copy is
read by every token of the segment (causal attention); the outputs at the back
(write) positions, after the final norm, become the memory of the next segment.
The first segment starts from a learned memory embedding, drawn as the reference
draws it (randn * std of the token embeddings). Segment recurrence
itself lives in `ponderlab.core.segments`; this module only supplies the hooks.

`bptt_depth: k` truncates backpropagation through memory to the last k segments
(really: the memory is detached, see core/segments.py); `None` is full BPTT.

Defaults: memory_size 16 (seed 000's memory models), segment_size None (the
whole input is one segment: set it per task, e.g. copy: 2 segments of n+1),
`model: <hub id or path>` for a pretrained LM (seed 004: GPT-2), else GPT-NeoX
layers built from the `transformer` options (the `hf` path, docs/backbones.md).
"""

from __future__ import annotations

from typing import Literal

import torch
from pydantic import Field
from torch import Tensor

from ponderlab.core.hookspecs import hookimpl

from .memory_transformer import MemoryTransformerBackbone, MemoryTransformerConfig


class RMTConfig(MemoryTransformerConfig):
    name: Literal["rmt"] = "rmt"
    memory_size: int = Field(16, ge=1, description="Memory tokens M (read at the front, written at the back).")


class RMTBackbone(MemoryTransformerBackbone):
    config_class = RMTConfig

    def __init__(self, config: RMTConfig, *, vocab_size: int):
        super().__init__(config, vocab_size=vocab_size)
        self.initial_memory = self.memory_parameter(config.memory_size)  # (M, D)

    # memory: (B, M, D), the read tokens of the next segment
    def init_memory(self, batch_size: int, device: torch.device, dtype: torch.dtype) -> Tensor:
        return self.initial_memory.to(dtype).unsqueeze(0).expand(batch_size, -1, -1)

    def wrap_segment(self, hidden: Tensor, memory: Tensor) -> Tensor:
        wrapped = torch.cat([memory, hidden, memory], dim=1)  # (B, M + Ls + M, D)
        return self.position_embeddings(wrapped)

    def token_mask(self, memory: Tensor, segment_length: int, device: torch.device) -> Tensor:
        keep = torch.zeros(2 * self.memory_size + segment_length, dtype=torch.bool, device=device)
        keep[self.memory_size : self.memory_size + segment_length] = True
        return keep

    def unwrap_segment(self, hidden: Tensor, memory: Tensor, segment_length: int) -> tuple[Tensor, Tensor]:
        tokens = hidden[:, self.memory_size : self.memory_size + segment_length]  # (B, Ls, D)
        written = hidden[:, self.memory_size + segment_length :]  # (B, M, D)
        return tokens, self.norm(written)


@hookimpl
def ponderlab_register_backbones(register):
    register(RMTBackbone)
