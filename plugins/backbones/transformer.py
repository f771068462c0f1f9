"""`transformer`: GPT-NeoX layers from Hugging Face `transformers` (seed 000's tiny configs).

Seed 000: hidden 128, heads = n_layers, FFN 128, rotary_pct 0.25, parallel
residual, no dropout. Attention is causal (SDPA with is_causal); rotary
positions restart at 0 for every call, so segments get their own positions.
"""

from __future__ import annotations

from typing import Literal

import torch
import torch.nn.functional as F
from pydantic import Field, model_validator
from torch import Tensor, nn
from transformers import GPTNeoXConfig
from transformers.models.gpt_neox.modeling_gpt_neox import (
    GPTNeoXLayer,
    GPTNeoXRotaryEmbedding,
    rotate_half,
)

from ponderlab.core.config import BackboneConfig
from ponderlab.core.early_exit import gather_active, rows_mask
from ponderlab.core.hookspecs import hookimpl
from ponderlab.core.interfaces import Backbone, Block, BlockContext


class TransformerConfig(BackboneConfig):
    name: Literal["transformer"] = "transformer"
    n_heads: int | None = Field(None, ge=1, description="Attention heads (default: n_layers, as seed 000).")
    ffn_size: int | None = Field(None, ge=1, description="MLP width (default: d_model).")
    rotary_pct: float = Field(0.25, gt=0, le=1)
    parallel_residual: bool = True
    dropout: float = Field(0.0, ge=0, lt=1)
    max_positions: int = Field(4096, ge=1)

    @model_validator(mode="after")
    def _heads_divide_width(self):
        heads = self.n_heads or self.n_layers
        if self.d_model % heads:
            raise ValueError(f"d_model {self.d_model} is not divisible by n_heads {heads}")
        return self


def neox_config(config: TransformerConfig, vocab_size: int) -> GPTNeoXConfig:
    """The Hugging Face config for one of our transformer layers."""
    hf = GPTNeoXConfig(
        vocab_size=vocab_size,
        hidden_size=config.d_model,
        num_hidden_layers=config.n_layers,
        num_attention_heads=config.n_heads or config.n_layers,
        intermediate_size=config.ffn_size or config.d_model,
        rotary_pct=config.rotary_pct,
        use_parallel_residual=config.parallel_residual,
        hidden_dropout=config.dropout,
        attention_dropout=config.dropout,
        max_position_embeddings=config.max_positions,
    )
    hf._attn_implementation = "sdpa"
    return hf


class NeoXBlock(Block):
    """A GPT-NeoX layer with its rotary embedding: (B, L, D) -> (B, L, D), causal.

    `forward` is `GPTNeoXLayer.forward`. `forward_rows` computes the running tokens
    only: halted tokens cost only layer norm and their key/value projection, because
    running tokens still attend to them (keys and values from their frozen states, as
    in CALM). Queries, attention, the output projection and the MLP run for the rows.
    """

    def __init__(self, hf_config: GPTNeoXConfig, layer_index: int):
        super().__init__()
        self.layer = GPTNeoXLayer(hf_config, layer_index)
        self.rotary = GPTNeoXRotaryEmbedding(hf_config)

    def rotary_tables(self, hidden: Tensor) -> tuple[Tensor, tuple[Tensor, Tensor]]:
        """Positions (1, L) and the rotary (cos, sin) tables for them."""
        positions = torch.arange(hidden.shape[1], device=hidden.device).unsqueeze(0)  # (1, L)
        return positions, self.rotary(hidden, positions)

    def forward(self, hidden: Tensor, context: BlockContext) -> Tensor:
        positions, cos_sin = self.rotary_tables(hidden)
        return self.layer(hidden, attention_mask=None, position_ids=positions, position_embeddings=cos_sin)

    def forward_rows(self, hidden: Tensor, rows: Tensor, states: Tensor, context: BlockContext) -> Tensor:
        _, cos_sin = self.rotary_tables(hidden)
        return self.update_rows(hidden, rows_mask(rows, hidden.shape[:2]), rows, states, cos_sin)

    def forward_routed(self, hidden: Tensor, routed: Tensor, context: BlockContext) -> Tensor:
        """The layer with token mixing restricted for routing (`ponderlab.core.halting.routing`).

        mixing "routed": each token attends causally to the routed tokens (B, L) only (and to
        itself, so unrouted rows, which the core discards, stay finite). "shared_kv": keys
        and values are those of the site's first hop (hop 0 stores them in
        `context.kv_cache[layer]`), causal over every token. Computed densely: (B, L, D).
        """
        layer = self.layer
        _, (cos, sin) = self.rotary_tables(hidden)
        query, key, value = self.project_qkv(layer.input_layernorm(hidden), cos, sin)  # (B, H, L, dh)
        length = hidden.shape[1]
        allowed = torch.ones(length, length, dtype=torch.bool, device=hidden.device).tril()  # (L, L)
        if context.mixing == "shared_kv":
            if context.hop == 0:
                context.kv_cache[context.layer] = (key, value)
            key, value = context.kv_cache[context.layer]
        else:
            itself = torch.eye(length, dtype=torch.bool, device=hidden.device)
            allowed = allowed & (routed.unsqueeze(1) | itself)  # (B, L, L)
        attention = layer.attention
        mixed = F.scaled_dot_product_attention(
            query, key, value, attn_mask=allowed.unsqueeze(-3),
            dropout_p=attention.attention_dropout if self.training else 0.0, scale=attention.scaling,
        )  # (B, H, L, dh)
        attn = layer.post_attention_dropout(attention.dense(mixed.transpose(1, 2).flatten(2)))  # (B, L, D)
        if layer.use_parallel_residual:
            return hidden + attn + layer.post_mlp_dropout(layer.mlp(layer.post_attention_layernorm(hidden)))
        attn = attn + hidden
        return layer.post_mlp_dropout(layer.mlp(layer.post_attention_layernorm(attn))) + attn

    def project_qkv(self, normed: Tensor, cos: Tensor, sin: Tensor) -> tuple[Tensor, Tensor, Tensor]:
        """Rotated queries and keys, and values, of every token: (B, H, L, dh) each."""
        attention = self.layer.attention
        batch, length, width = normed.shape
        size = attention.head_size
        fused = attention.query_key_value(normed).view(batch, length, width // size, 3, size)
        query, key, value = fused.permute(3, 0, 2, 1, 4)  # (B, H, L, dh) each
        cos, sin = cos.unsqueeze(1), sin.unsqueeze(1)
        return rotary(query, cos, sin), rotary(key, cos, sin), value

    def running_attention(self, normed: Tensor, active: Tensor, rows: Tensor, cos_sin: tuple[Tensor, Tensor]) -> Tensor:
        """Causal attention for the running tokens' queries over every token's keys and values.

        normed (B, L, D), active (B, L), rows (K,) -> (K, D) attention output before the
        output projection. Keys and values come from the fused QKV weights for every
        token; queries only for the K running ones, packed per sequence (Kq = the most
        running tokens in one sequence) with an explicit causal mask at their positions.
        """
        attention = self.layer.attention
        batch, length, width = normed.shape
        size = attention.head_size
        heads = width // size
        weight = attention.query_key_value.weight.view(heads, 3, size, width)  # per head: q, k, v
        bias = attention.query_key_value.bias
        bias = None if bias is None else bias.view(heads, 3, size)

        def project(part: slice, x: Tensor) -> Tensor:
            return F.linear(x, weight[:, part].reshape(-1, width), None if bias is None else bias[:, part].reshape(-1))

        key, value = project(slice(1, 3), normed).view(batch, length, heads, 2, size).permute(3, 0, 2, 1, 4)
        cos, sin = cos_sin  # (1, L, r)
        key = rotary(key, cos.unsqueeze(1), sin.unsqueeze(1))  # (B, H, L, dh)

        counts = active.sum(1)  # (B,)
        packed = int(counts.max())  # Kq
        positions = torch.argsort((~active).to(torch.int8), dim=1, stable=True)[:, :packed]  # (B, Kq)
        valid = torch.arange(packed, device=active.device) < counts.unsqueeze(1)  # (B, Kq)
        running_query = project(slice(0, 1), gather_active(normed, rows))  # (K, H*dh), row-major = rows order
        query = running_query.new_zeros(batch * packed, heads * size)  # the projection's dtype (autocast)
        query[valid.reshape(-1)] = running_query
        query = query.view(batch, packed, heads, size).transpose(1, 2)  # (B, H, Kq, dh)
        query = rotary(query, cos[0][positions].unsqueeze(1), sin[0][positions].unsqueeze(1))
        allowed = torch.arange(length, device=active.device) <= positions.unsqueeze(-1)  # (B, Kq, L)
        context = F.scaled_dot_product_attention(
            query, key, value, attn_mask=allowed.unsqueeze(1),
            dropout_p=attention.attention_dropout if self.training else 0.0, scale=attention.scaling,
        )  # (B, H, Kq, dh)
        return context.transpose(1, 2).reshape(batch * packed, width)[valid.reshape(-1)]  # (K, D)

    def update_rows(
        self, hidden: Tensor, active: Tensor, rows: Tensor, residual: Tensor, cos_sin: tuple[Tensor, Tensor]
    ) -> Tensor:
        """The layer's new states (K, D) for the running tokens: active (B, L) and rows (K,)
        mark them, residual (K, D) holds their current states, hidden (B, L, D) every token's."""
        layer = self.layer
        context = self.running_attention(layer.input_layernorm(hidden), active, rows, cos_sin)  # (K, D)
        attn = layer.post_attention_dropout(layer.attention.dense(context))  # (K, D)
        if layer.use_parallel_residual:
            mlp = layer.post_mlp_dropout(layer.mlp(layer.post_attention_layernorm(residual)))
            updated = residual + attn + mlp
        else:
            attn = attn + residual
            updated = layer.post_mlp_dropout(layer.mlp(layer.post_attention_layernorm(attn))) + attn
        return updated


def rotary(x: Tensor, cos: Tensor, sin: Tensor) -> Tensor:
    """GPT-NeoX partial rotary embedding on the first cos.shape[-1] channels of x (..., dh)."""
    span = cos.shape[-1]
    turned, kept = x[..., :span], x[..., span:]
    return torch.cat([turned * cos + rotate_half(turned) * sin, kept], dim=-1)


def init_weights(module: nn.Module, std: float = 0.02) -> None:
    """GPT-style init: normal(0, std) linear/embedding weights, zero biases."""
    for sub in module.modules():
        if isinstance(sub, (nn.Linear, nn.Embedding)):
            nn.init.normal_(sub.weight, std=std)
            if getattr(sub, "bias", None) is not None:
                nn.init.zeros_(sub.bias)


class TransformerBackbone(Backbone):
    config_class = TransformerConfig

    def __init__(self, config: TransformerConfig, *, vocab_size: int):
        super().__init__(config, vocab_size=vocab_size)
        hf = neox_config(config, vocab_size)
        self.embedding = nn.Embedding(vocab_size, config.d_model)
        self.blocks = nn.ModuleList(NeoXBlock(hf, i) for i in range(config.n_layers))
        self.norm = nn.LayerNorm(config.d_model)
        init_weights(self.embedding)
        init_weights(self.blocks)


@hookimpl
def ponderlab_register_backbones(register):
    register(TransformerBackbone)
