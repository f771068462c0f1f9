"""Attention computed for some tokens only, shared by `transformer`'s GPT-NeoX block
(routing, early exit) and the `hf` rows adapters (`hf_rows`): the rotary embedding, the
positions of the chosen tokens packed per sequence, and causal attention of their packed
queries over the keys and values of every token they read.
"""

from __future__ import annotations

import torch
import torch.nn.functional as F
from torch import Tensor


def rotate_half(x: Tensor) -> Tensor:
    """(..., d) -> (..., d): the halves swapped, the second negated ([-x2, x1]), as the
    rotary embedding of GPT-NeoX and Llama pairs channel i with channel i + d/2."""
    half = x.shape[-1] // 2
    return torch.cat([-x[..., half:], x[..., :half]], dim=-1)


def rotary(x: Tensor, cos: Tensor, sin: Tensor) -> Tensor:
    """Rotary embedding on the first cos.shape[-1] channels of x (..., dh), the rest kept
    (GPT-NeoX's partial rotary; Llama and Qwen2 rotate every channel)."""
    span = cos.shape[-1]
    turned, kept = x[..., :span], x[..., span:]
    return torch.cat([turned * cos + rotate_half(turned) * sin, kept], dim=-1)


def routed_positions(routed: Tensor) -> tuple[Tensor, Tensor]:
    """routed (B, L) bool -> positions (B, C) long, valid (B, C) bool, C the most routed
    tokens in one sequence (at least 1): each row lists its routed tokens' positions in
    ascending order, then (valid False) unrouted positions as padding."""
    counts = routed.sum(1)  # (B,)
    packed = max(1, int(counts.max()))  # C (a host read: it sets the shapes)
    order = torch.argsort((~routed).to(torch.int8), dim=1, stable=True)[:, :packed]  # (B, C)
    valid = torch.arange(packed, device=routed.device) < counts.unsqueeze(1)  # (B, C)
    return order, valid


def attend_rows(query: Tensor, key: Tensor, value: Tensor, active: Tensor, *, scaling: float, dropout: float,
                window: int | None = None) -> Tensor:
    """Causal attention of the active tokens' queries over the keys and values they read.

    query (K, H, dh) of the tokens marked in active (B, L), row-major (rotary applied);
    key, value (B, Hkv, L', dh) of the first L' <= L positions, every key an active token
    reads (Hkv divides H: grouped heads) -> (K, H*dh). Queries are packed per sequence
    (Kq = the most active tokens in one sequence) with an explicit causal mask at their
    positions (and a sliding window of `window` keys where given).
    """
    batch, kv_heads, length, size = key.shape
    heads = query.shape[1]
    if heads != kv_heads:  # each key/value head serves heads // kv_heads consecutive query heads
        key = key.repeat_interleave(heads // kv_heads, dim=1)  # (B, H, L', dh)
        value = value.repeat_interleave(heads // kv_heads, dim=1)
    positions, valid = routed_positions(active)  # (B, Kq) each
    packed = positions.shape[1]
    valid = valid.reshape(-1)  # (B*Kq,)
    slots = query.new_zeros(batch * packed, heads, size)  # the projection's dtype (autocast)
    slots[valid] = query  # rows are row-major, as the valid slots
    slots = slots.view(batch, packed, heads, size).transpose(1, 2)  # (B, H, Kq, dh)
    keys_at = torch.arange(length, device=active.device)  # (L',)
    allowed = keys_at <= positions.unsqueeze(-1)  # (B, Kq, L'); a padding slot sits at a position < L'
    if window is not None:
        allowed = allowed & (keys_at > positions.unsqueeze(-1) - window)
    mixed = F.scaled_dot_product_attention(slots, key.to(slots.dtype), value.to(slots.dtype),
                                           attn_mask=allowed.unsqueeze(1), dropout_p=dropout, scale=scaling)
    return mixed.transpose(1, 2).reshape(batch * packed, heads * size)[valid]  # (K, H*dh)
