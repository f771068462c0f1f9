"""`transformer`: GPT-NeoX layers from Hugging Face `transformers` (seed 000's tiny configs).

Seed 000: hidden 128, heads = n_layers, FFN 128, rotary_pct 0.25, parallel
residual, no dropout. Attention is causal (SDPA with is_causal); rotary
positions restart at 0 for every call, so segments get their own positions.
"""

from __future__ import annotations

from typing import TYPE_CHECKING, Literal

import torch
import torch.nn.functional as F
from pydantic import Field, model_validator
from torch import Tensor, nn

from ponderlab.core.config import BackboneConfig
from ponderlab.core.early_exit import gather_active, rows_mask
from ponderlab.core.hookspecs import hookimpl
from ponderlab.core.interfaces import Backbone, Block, BlockContext

from .mixer_stack import gpt_init
from .row_attention import attend_rows, rotary, routed_positions

if TYPE_CHECKING:  # transformers is imported where a model is built: listing plugins stays quick
    from transformers import GPTNeoXConfig


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
    from transformers import GPTNeoXConfig

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
    in CALM), and only up to the last running position (later ones are read by nobody).
    Queries, attention, the output projection and the MLP run for the rows.
    """

    def __init__(self, hf_config: GPTNeoXConfig, layer_index: int):
        from transformers.models.gpt_neox.modeling_gpt_neox import (
            GPTNeoXLayer,
            GPTNeoXRotaryEmbedding,
        )

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
        """The layer's new states (K, D) for the running tokens: rows (K,) mark them, states
        (K, D) holds their current states, hidden (B, L, D) every token's."""
        if rows.numel() == 0:
            return states  # (0, D)
        _, cos_sin = self.rotary_tables(hidden)
        active = rows_mask(rows, hidden.shape[:2])  # (B, L)
        mixed = self.running_attention(hidden, active, rows, cos_sin)  # (K, D)
        attn = self.layer.post_attention_dropout(self.layer.attention.dense(mixed))  # (K, D)
        return self.residual_update(states, attn)

    #: how `forward_routed` computes: "gathered" (the routed tokens only, the default) or
    #: "masked" (every token, attention masked; the dense path it must equal)
    routed_execution: Literal["gathered", "masked"] = "gathered"

    def forward_routed(self, hidden: Tensor, routed: Tensor, context: BlockContext) -> Tensor:
        """The layer with token mixing restricted for routing (`ponderlab.core.halting.routing`).

        mixing "routed": each routed token (B, L) attends causally to the routed tokens
        only. "shared_kv": keys and values are those of every token at the site's first
        hop (hop 0 stores them in `context.kv_cache[layer]`), causal over every token.
        Gathered (default): each sequence's routed tokens are packed in their original
        order as (B, C, D), C the most routed in one sequence, and only they are computed
        (queries, attention among them or over the shared keys, output projection, MLP);
        unrouted rows come back unchanged: (B, L, D). "masked": `forward_routed_masked`.
        """
        if self.routed_execution == "masked":
            return self.forward_routed_masked(hidden, routed, context)
        width = hidden.shape[-1]
        positions, valid = routed_positions(routed)  # (B, C) each
        index = positions.unsqueeze(-1).expand(-1, -1, width)  # (B, C, D)
        gathered = hidden.gather(1, index)  # (B, C, D), original order
        _, (cos, sin) = self.rotary_tables(hidden)  # (1, L, r)
        cos_at, sin_at = cos[0][positions], sin[0][positions]  # (B, C, r)
        normed = self.layer.input_layernorm(gathered)
        if context.mixing == "shared_kv":
            if context.hop == 0:  # keys and values (B, H, L, dh) of every token
                key_value = self.project(self.layer.input_layernorm(hidden), cos, sin, slice(1, 3))
                context.kv_cache[context.layer] = tuple(key_value)
            key, value = context.kv_cache[context.layer]
            (query,) = self.project(normed, cos_at, sin_at, slice(0, 1))  # (B, H, C, dh)
            keys_at = torch.arange(hidden.shape[1], device=hidden.device)  # (L,)
            allowed = keys_at <= positions.unsqueeze(-1)  # (B, C, L)
            updated = self.attend(query, key, value, gathered, attn_mask=allowed.unsqueeze(1))
        else:
            query, key, value = self.project(normed, cos_at, sin_at)  # (B, H, C, dh) each
            # routed tokens come first in each row, in order: causal over C is causal by
            # position among them (padding slots sit after them and are read by nobody)
            updated = self.attend(query, key, value, gathered, is_causal=True)  # (B, C, D)
        updated = torch.where(valid.unsqueeze(-1), updated, gathered)  # padding slots: unchanged
        return hidden.scatter(1, index, updated)  # (B, L, D)

    def forward_routed_masked(self, hidden: Tensor, routed: Tensor, context: BlockContext) -> Tensor:
        """`forward_routed` computed for every token with an attention mask: (B, L, D).

        Each token attends causally to the routed tokens and itself (so unrouted rows, which
        the core discards, stay finite). The dense reference the gathered path must equal.
        """
        _, (cos, sin) = self.rotary_tables(hidden)
        normed = self.layer.input_layernorm(hidden)
        query, key, value = self.project(normed, cos, sin)  # (B, H, L, dh) each
        length = hidden.shape[1]
        allowed = torch.ones(length, length, dtype=torch.bool, device=hidden.device).tril()  # (L, L)
        if context.mixing == "shared_kv":
            if context.hop == 0:
                context.kv_cache[context.layer] = (key, value)
            key, value = context.kv_cache[context.layer]
        else:
            itself = torch.eye(length, dtype=torch.bool, device=hidden.device)
            allowed = allowed & (routed.unsqueeze(1) | itself)  # (B, L, L)
        return self.attend(query, key, value, hidden, attn_mask=allowed.unsqueeze(-3))  # (B, L, D)

    @property
    def attention_dropout(self) -> float:
        """The attention dropout probability: the layer's in training, 0 in evaluation."""
        return self.layer.attention.attention_dropout if self.training else 0.0

    def attend(
        self, query: Tensor, key: Tensor, value: Tensor, residual: Tensor, **mask: Tensor | bool
    ) -> Tensor:
        """The layer's output (B, C, D) for queries (B, H, C, dh) over keys and values
        (B, H, L, dh) (`mask`: SDPA's `attn_mask` or `is_causal`); residual (B, C, D) is
        the queries' input."""
        attention = self.layer.attention
        mixed = F.scaled_dot_product_attention(
            query, key, value, dropout_p=self.attention_dropout, scale=attention.scaling, **mask
        )  # (B, H, C, dh)
        attn = attention.dense(mixed.transpose(1, 2).flatten(2))  # (B, C, D)
        return self.residual_update(residual, self.layer.post_attention_dropout(attn))

    def residual_update(self, residual: Tensor, attn: Tensor) -> Tensor:
        """The layer's output from its input `residual` and attention output `attn` (..., D)."""
        layer = self.layer
        if layer.use_parallel_residual:
            return residual + attn + layer.post_mlp_dropout(layer.mlp(layer.post_attention_layernorm(residual)))
        attn = attn + residual
        return layer.post_mlp_dropout(layer.mlp(layer.post_attention_layernorm(attn))) + attn

    def project(
        self, normed: Tensor, cos: Tensor, sin: Tensor, part: slice = slice(0, 3)
    ) -> list[Tensor]:
        """Queries, keys and values of normed (B, C, D), or their `part` (0: query, 1: key,
        2: value), queries and keys rotated at tables cos, sin (B or 1, C, r): (B, H, C, dh)
        each. Only the heads' rows `part` of the fused QKV projection are computed."""
        projection = self.layer.attention.query_key_value
        size = self.layer.attention.head_size
        width = normed.shape[-1]
        heads = width // size
        weight = projection.weight.view(heads, 3, size, width)[:, part]
        bias = None if projection.bias is None else projection.bias.view(heads, 3, size)[:, part].reshape(-1)
        out = F.linear(normed, weight.reshape(-1, width), bias)  # (B, C, H * parts * dh)
        # (parts, B, H, C, dh)
        projected = out.view(*normed.shape[:-1], heads, -1, size).permute(3, 0, 2, 1, 4)
        cos, sin = cos.unsqueeze(1), sin.unsqueeze(1)
        return [rotary(x, cos, sin) if i < 2 else x for i, x in enumerate(projected, part.start)]

    def running_attention(self, hidden: Tensor, active: Tensor, rows: Tensor, cos_sin: tuple[Tensor, Tensor]) -> Tensor:
        """Causal attention for the running tokens' queries over the keys and values they read.

        hidden (B, L, D), active (B, L), rows (K,) -> (K, D) attention output before the
        output projection. Keys and values (from the fused QKV weights) are computed only
        for positions up to the last running one in the batch (later halted tokens are read
        by nobody); queries only for the K running tokens (`row_attention.attend_rows`).
        """
        attention = self.layer.attention
        norm = self.layer.input_layernorm
        length = int(active.any(0).nonzero()[-1]) + 1  # the keys any running token reads
        cos, sin = cos_sin[0][:, :length], cos_sin[1][:, :length]  # (1, L', r)
        # (B, H, L', dh) each
        key, value = self.project(norm(hidden[:, :length]), cos, sin, slice(1, 3))
        at = (rows % hidden.shape[1]).unsqueeze(1)  # (K, 1) positions of the rows, all < L'
        # the running tokens as K sequences of one token each: (K, H, 1, dh) -> (K, H, dh)
        normed = norm(gather_active(hidden, rows)).unsqueeze(1)  # (K, 1, D)
        query = self.project(normed, cos[0, at], sin[0, at], slice(0, 1))[0].squeeze(2)
        return attend_rows(query, key, value, active, scaling=attention.scaling,
                           dropout=self.attention_dropout)  # (K, D)


class TransformerBackbone(Backbone):
    config_class = TransformerConfig

    def __init__(self, config: TransformerConfig, *, vocab_size: int):
        super().__init__(config, vocab_size=vocab_size)
        hf = neox_config(config, vocab_size)
        self.embedding = nn.Embedding(vocab_size, config.d_model)
        self.blocks = nn.ModuleList(self.make_blocks(hf))
        self.norm = nn.LayerNorm(config.d_model)
        # normal(0, 0.02) linear/embedding weights, zero biases (GPT-NeoX names no layer
        # out_proj, so nothing is rescaled)
        gpt_init(self.embedding, 0.02, config.n_layers)
        gpt_init(self.blocks, 0.02, config.n_layers)

    def make_blocks(self, hf_config: GPTNeoXConfig) -> list[NeoXBlock]:
        """The `n_layers` distinct layers (built after the embedding, before the final norm)."""
        return [NeoXBlock(hf_config, i) for i in range(self.config.n_layers)]


@hookimpl
def ponderlab_register_backbones(register):
    register(TransformerBackbone)
