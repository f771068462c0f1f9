"""`armt`: Associative Recurrent Memory Transformer (Rodkin et al. 2024, arXiv 2407.04841).

GPT-NeoX layers with, per layer l, an associative memory carried across
segments: a matrix A_l (d_key x D) and a normaliser z_l (d_key), d_key =
2 * nu * d_mem. Each segment gets `memory_size` learned memory tokens appended at
its END (the write positions). With phi the DPFP feature map (nu = 3),
    x~ = [relu(x), relu(-x)],  phi(x) = normalize(concat_{j=1..nu} x~ * roll(x~, j)):

  read (before every hop of layer l, from the second segment on):
      q = phi(W_q h),  h <- h + (q A) / (q . z + eps)
  write (once per segment, after layer l's ponder loop, from its combined output m
  at the memory positions):
      k = phi(W_k m), v = W_v m (W_v starts at zero), beta = sigmoid(W_b m),
      v_old = (k A) / (k . z + eps),  gamma = clip(1 - (k . z) / |k|^2, 0, 1) (no grad),
      A <- A + sum_j beta_j k_j^T (v_j - v_old_j),   z <- z + sum_j gamma_j k_j.

Writing once, after the hop loop, means no hop of a segment can read memory that
was written from that same segment (which would leak later tokens and targets).
Segment recurrence lives in `ponderlab.core.segments`; `bptt_depth` truncates
backpropagation through memory to the last k segments.

Defaults (seed 000): memory_size 16, d_mem 32, nu 3, eps 1e-5, segment_size None
(one segment; set it per task), GPT-NeoX layers as in `transformer`.
"""

from __future__ import annotations

from typing import Literal

import torch
import torch.nn.functional as F
from pydantic import Field
from torch import Tensor, nn

from ponderlab.core.hookspecs import hookimpl

from .memory_transformer import MemoryTransformerBackbone, MemoryTransformerConfig

#: One layer's memory: (A (B, d_key, D), z (B, d_key)), or None before the first write.
LayerMemory = tuple[Tensor, Tensor] | None


class ARMTConfig(MemoryTransformerConfig):
    name: Literal["armt"] = "armt"
    memory_size: int = Field(16, ge=1, description="Memory tokens appended to every segment (write positions).")
    d_mem: int = Field(32, ge=1, description="Width of the key/query projections before DPFP.")
    dpfp_nu: int = Field(3, ge=1, description="DPFP order nu: d_key = 2 * nu * d_mem.")
    eps: float = Field(1e-5, gt=0, description="Added to the normaliser q . z in reads and v_old.")


def dpfp(x: Tensor, nu: int) -> Tensor:
    """Deterministic parameter-free projection: (..., d) -> (..., 2 * nu * d), L2-normalised."""
    x = torch.cat([F.relu(x), F.relu(-x)], dim=-1)  # (..., 2d)
    features = torch.cat([x * torch.roll(x, shifts=j, dims=-1) for j in range(1, nu + 1)], dim=-1)
    return F.normalize(features, dim=-1)


class AssociativeMemory(nn.Module):
    """One layer's read/write projections and update rule."""

    def __init__(self, d_model: int, d_mem: int, nu: int, eps: float):
        super().__init__()
        self.nu = nu
        self.eps = eps
        self.d_key = 2 * nu * d_mem
        self.query = nn.Linear(d_model, d_mem, bias=False)
        self.key = nn.Linear(d_model, d_mem, bias=False)
        self.value = nn.Linear(d_model, d_model, bias=False)
        self.beta = nn.Linear(d_model, 1)
        nn.init.normal_(self.query.weight, std=0.02)
        nn.init.normal_(self.key.weight, std=0.02)
        nn.init.zeros_(self.value.weight)
        nn.init.zeros_(self.beta.weight)
        nn.init.zeros_(self.beta.bias)

    def retrieve(self, keys: Tensor, A: Tensor, z: Tensor) -> Tensor:
        """(B, T, d_key) features -> (B, T, D): (phi A) / (phi . z + eps)."""
        numerator = torch.bmm(keys, A)  # (B, T, D)
        denominator = torch.bmm(keys, z.unsqueeze(-1)) + self.eps  # (B, T, 1)
        return numerator / denominator

    def read(self, hidden: Tensor, memory: LayerMemory) -> Tensor:
        """hidden (B, T, D) -> hidden + what memory returns for its queries."""
        if memory is None:
            return hidden
        A, z = memory
        queries = dpfp(self.query(hidden), self.nu).to(A.dtype)  # (B, T, d_key)
        return hidden + self.retrieve(queries, A, z).to(hidden.dtype)

    def write(self, written: Tensor, memory: LayerMemory) -> tuple[Tensor, Tensor]:
        """written (B, M, D) outputs at the memory positions -> the new (A, z)."""
        dtype = torch.promote_types(written.dtype, torch.float32)  # memory kept in >= float32
        keys = dpfp(self.key(written), self.nu).to(dtype)  # (B, M, d_key)
        values = self.value(written).to(dtype)  # (B, M, D)
        beta = torch.sigmoid(self.beta(written)).to(dtype)  # (B, M, 1)
        if memory is None:
            A = keys.new_zeros(keys.shape[0], self.d_key, written.shape[-1])
            z = keys.new_zeros(keys.shape[0], self.d_key)
        else:
            A, z = memory
        previous = self.retrieve(keys, A, z)  # v_old (B, M, D)
        with torch.no_grad():
            overlap = torch.bmm(keys, z.unsqueeze(-1)).squeeze(-1)  # k . z (B, M)
            gamma = (1.0 - overlap / keys.pow(2).sum(-1).clamp_min(1e-12)).clamp(0.0, 1.0)
        A = A + torch.bmm(keys.transpose(1, 2), beta * (values - previous))  # (B, d_key, D)
        z = z + (gamma.unsqueeze(-1) * keys).sum(1)  # (B, d_key)
        return A, z


class ARMTBackbone(MemoryTransformerBackbone):
    config_class = ARMTConfig

    def __init__(self, config: ARMTConfig, *, vocab_size: int):
        super().__init__(config, vocab_size=vocab_size)
        self.memory_tokens = nn.Parameter(torch.empty(config.memory_size, config.d_model))
        self.memories = nn.ModuleList(
            AssociativeMemory(config.d_model, config.d_mem, config.dpfp_nu, config.eps)
            for _ in range(config.n_layers)
        )
        nn.init.normal_(self.memory_tokens, std=0.02)

    # memory: tuple of one LayerMemory per layer
    def init_memory(self, batch_size: int, device: torch.device, dtype: torch.dtype) -> tuple:
        return (None,) * len(self.blocks)

    def wrap_segment(self, hidden: Tensor, memory: tuple) -> Tensor:
        tokens = self.memory_tokens.to(hidden.dtype).unsqueeze(0).expand(hidden.shape[0], -1, -1)
        return torch.cat([hidden, tokens], dim=1)  # (B, Ls + M, D)

    def token_mask(self, memory: tuple, segment_length: int, device: torch.device) -> Tensor:
        keep = torch.zeros(segment_length + self.memory_size, dtype=torch.bool, device=device)
        keep[:segment_length] = True
        return keep

    def unwrap_segment(self, hidden: Tensor, memory: tuple, segment_length: int) -> tuple[Tensor, tuple]:
        return hidden[:, :segment_length], memory

    def read_memory(self, layer: int, hidden: Tensor, memory: tuple | None) -> Tensor:
        if memory is None:  # outside segment recurrence
            return hidden
        return self.memories[layer].read(hidden, memory[layer])

    def write_memory(self, layer: int, hidden: Tensor, memory: tuple | None) -> tuple | None:
        if memory is None:
            return None
        updated = self.memories[layer].write(hidden[:, -self.memory_size :], memory[layer])
        return memory[:layer] + (updated,) + memory[layer + 1 :]


@hookimpl
def ponderlab_register_backbones(register):
    register(ARMTBackbone)
