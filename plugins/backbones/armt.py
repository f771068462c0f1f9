"""`armt`: Associative Recurrent Memory Transformer (Rodkin et al. 2024, arXiv 2407.04841).

Any causal LM (the `hf` path) with, per layer l, an associative memory carried
across segments, split into H heads (h = 1..H, seed 000's copy; the paper has H = 1):
a matrix A_lh (d_key/H x D/H) and a normaliser z_lh (d_key/H), d_key = 2 * nu * d_mem.
Each segment gets `memory_size` learned memory tokens appended at its END (the
write positions). With x~ = [relu(x), relu(-x)] and the DPFP map
    phi(x) = concat_{j=1..nu} x~ * roll(x~, j)   (L2-normalised in variant seed000),
applied per head to the head's slice of W_q h or W_k m:

  read (before every hop of layer l, from the second segment on):
      q = phi(W_q h),  h <- h + (q A) / (q . z + eps)            (per head, heads joined)
  write (once per segment, after layer l's ponder loop, from its combined output m
  at the memory positions):
      k = phi(W_k m), v = W_v m (W_v starts at zero), beta = sigmoid(W_b m) (one per head),
      first segment:  v_old = 0, gamma = 1;
      later:          v_old = (k A) / (k . z + eps),
                      gamma = clip(1 - (k . z + eps) / (|k|^2 + delta), 0, 1) (no grad),
      A <- A + sum_j beta_j k_j^T (v_j - v_old_j),   z <- z + sum_j gamma_j k_j.

Variants (`variant`), each with its reference's formulas and initialisation as defaults:
  paper    RodkinIvan/associative-recurrent-memory-transformer (framework_accel):
           phi not normalised, delta = eps (1e-5);
  seed000  seed 000's copy (RodkinIvan/t5-experiments, branch ACT): phi L2-normalised,
           delta = 0, `memory_heads` heads.
Both: W_q, W_k, W_b with PyTorch's default Linear init, W_v zero, memory tokens
randn * std(token embeddings).

Writing once, after the hop loop, means no hop of a segment can read memory that
was written from that same segment (which would leak later tokens and targets).
Segment recurrence lives in `ponderlab.core.segments`; `bptt_depth` truncates
backpropagation through memory to the last k segments.

Defaults: variant seed000, memory_size 16, d_mem 32, nu 3, eps 1e-5, memory_heads 1,
segment_size None (one segment; set it per task).
"""

from __future__ import annotations

from typing import Literal

import torch
import torch.nn.functional as F
from pydantic import Field, model_validator
from torch import Tensor, nn

from ponderlab.core.hookspecs import hookimpl

from .memory_transformer import MemoryTransformerBackbone, MemoryTransformerConfig

#: One layer's memory: (A (B, H, d_key/H, D/H), z (B, H, d_key/H)), or None before the first write.
LayerMemory = tuple[Tensor, Tensor] | None

#: Per variant: phi L2-normalised, delta added to |k|^2 in gamma's denominator (eps or 0).
VARIANTS = {"paper": (False, True), "seed000": (True, False)}


class ARMTConfig(MemoryTransformerConfig):
    name: Literal["armt"] = "armt"
    variant: Literal["paper", "seed000"] = Field(
        "seed000", description="paper: the paper's code (phi unnormalised, |k|^2 + eps); seed000: seed 000's copy."
    )
    memory_size: int = Field(16, ge=1, description="Memory tokens appended to every segment (write positions).")
    d_mem: int = Field(32, ge=1, description="Width of the key/query projections before DPFP.")
    dpfp_nu: int = Field(3, ge=1, description="DPFP order nu: d_key = 2 * nu * d_mem.")
    eps: float = Field(1e-5, gt=0, description="Added to the normaliser q . z in reads, v_old and gamma.")
    memory_heads: int = Field(1, ge=1, description="Associative memory heads H (seed 000's n_heads).")

    @model_validator(mode="after")
    def _heads_divide_memory(self):
        if self.d_mem % self.memory_heads:
            raise ValueError(f"d_mem {self.d_mem} is not divisible by memory_heads {self.memory_heads}")
        return self


def dpfp(x: Tensor, nu: int, normalize: bool = True) -> Tensor:
    """Deterministic parameter-free projection: (..., d) -> (..., 2 * nu * d), optionally L2-normalised."""
    x = torch.cat([F.relu(x), F.relu(-x)], dim=-1)  # (..., 2d)
    features = torch.cat([x * torch.roll(x, shifts=j, dims=-1) for j in range(1, nu + 1)], dim=-1)
    return F.normalize(features, dim=-1) if normalize else features


class AssociativeMemory(nn.Module):
    """One layer's read/write projections and update rule (H heads)."""

    def __init__(self, d_model: int, d_mem: int, nu: int, eps: float, *, heads: int = 1,
                 normalize: bool = True, gamma_delta: bool = False):
        super().__init__()
        if d_mem % heads or d_model % heads:
            raise ValueError(f"d_mem {d_mem} and d_model {d_model} must be divisible by heads {heads}")
        self.nu, self.eps, self.heads = nu, eps, heads
        self.normalize = normalize
        self.gamma_delta = eps if gamma_delta else 0.0
        self.d_key = 2 * nu * d_mem
        self.query = nn.Linear(d_model, d_mem, bias=False)  # PyTorch's default init, as the references
        self.key = nn.Linear(d_model, d_mem, bias=False)
        self.value = nn.Linear(d_model, d_model, bias=False)
        self.beta = nn.Linear(d_model, heads)
        nn.init.zeros_(self.value.weight)

    def split(self, x: Tensor) -> Tensor:  # (B, T, H * e) -> (B, H, T, e)
        return x.unflatten(-1, (self.heads, -1)).transpose(1, 2)

    def features(self, projected: Tensor, dtype: torch.dtype) -> Tensor:  # (B, T, d_mem) -> (B, H, T, d_key/H)
        return dpfp(self.split(projected), self.nu, self.normalize).to(dtype)

    def retrieve(self, keys: Tensor, A: Tensor, z: Tensor) -> Tensor:
        """(B, H, T, d_key/H) features -> (B, H, T, D/H): (phi A) / (phi . z + eps)."""
        numerator = keys @ A  # (B, H, T, D/H)
        denominator = (keys @ z.unsqueeze(-1)) + self.eps  # (B, H, T, 1)
        return numerator / denominator

    def read(self, hidden: Tensor, memory: LayerMemory) -> Tensor:
        """hidden (B, T, D) -> hidden + what memory returns for its queries."""
        if memory is None:
            return hidden
        A, z = memory
        queries = self.features(self.query(hidden), A.dtype)  # (B, H, T, d_key/H)
        retrieved = self.retrieve(queries, A, z).transpose(1, 2).flatten(2)  # (B, T, D)
        return hidden + retrieved.to(hidden.dtype)

    def write(self, written: Tensor, memory: LayerMemory) -> tuple[Tensor, Tensor]:
        """written (B, M, D) outputs at the memory positions -> the new (A, z)."""
        dtype = torch.promote_types(written.dtype, torch.float32)  # memory kept in >= float32
        keys = self.features(self.key(written), dtype)  # (B, H, M, d_key/H)
        values = self.split(self.value(written)).to(dtype)  # (B, H, M, D/H)
        beta = torch.sigmoid(self.beta(written)).to(dtype).transpose(1, 2).unsqueeze(-1)  # (B, H, M, 1)
        if memory is None:  # first segment: nothing stored, every key is new
            A = keys.new_zeros(*keys.shape[:2], keys.shape[-1], values.shape[-1])
            z = keys.new_zeros(*keys.shape[:2], keys.shape[-1])
            previous = torch.zeros_like(values)
            gamma = torch.ones_like(beta)
        else:
            A, z = memory
            previous = self.retrieve(keys, A, z)  # v_old (B, H, M, D/H)
            with torch.no_grad():
                overlap = keys @ z.unsqueeze(-1)  # k . z (B, H, M, 1)
                norm = keys.pow(2).sum(-1, keepdim=True) + self.gamma_delta  # |k|^2 (+ delta)
                gamma = (1.0 - (overlap + self.eps) / norm.clamp_min(1e-12)).clamp(0.0, 1.0)
        A = A + keys.transpose(-1, -2) @ (beta * (values - previous))  # (B, H, d_key/H, D/H)
        z = z + (gamma * keys).sum(-2)  # (B, H, d_key/H)
        return A, z


class ARMTBackbone(MemoryTransformerBackbone):
    config_class = ARMTConfig

    def __init__(self, config: ARMTConfig, *, vocab_size: int):
        super().__init__(config, vocab_size=vocab_size)
        normalize, gamma_delta = VARIANTS[config.variant]
        self.memory_tokens = self.memory_parameter(config.memory_size)  # (M, D)
        self.memories = nn.ModuleList(
            AssociativeMemory(self.d_model, config.d_mem, config.dpfp_nu, config.eps, heads=config.memory_heads,
                              normalize=normalize, gamma_delta=gamma_delta)
            for _ in range(len(self.blocks))
        )

    # memory: tuple of one LayerMemory per layer
    def init_memory(self, batch_size: int, device: torch.device, dtype: torch.dtype) -> tuple:
        return (None,) * len(self.blocks)

    def wrap_segment(self, hidden: Tensor, memory: tuple) -> Tensor:
        tokens = self.memory_tokens.to(hidden.dtype).unsqueeze(0).expand(hidden.shape[0], -1, -1)
        return self.position_embeddings(torch.cat([hidden, tokens], dim=1))  # (B, Ls + M, D)

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
