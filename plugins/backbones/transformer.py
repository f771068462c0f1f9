"""`transformer`: GPT-NeoX layers from Hugging Face `transformers` (seed 000's tiny configs).

Seed 000: hidden 128, heads = n_layers, FFN 128, rotary_pct 0.25, parallel
residual, no dropout. Attention is causal (SDPA with is_causal); rotary
positions restart at 0 for every call, so segments get their own positions.
"""

from __future__ import annotations

from typing import Literal

import torch
from pydantic import Field, model_validator
from torch import Tensor, nn
from transformers import GPTNeoXConfig
from transformers.integrations.sdpa_attention import sdpa_attention_forward
from transformers.models.gpt_neox.modeling_gpt_neox import (
    GPTNeoXLayer,
    GPTNeoXRotaryEmbedding,
    apply_rotary_pos_emb,
)

from ponderlab.core.config import BackboneConfig
from ponderlab.core.hookspecs import hookimpl
from ponderlab.core.interfaces import Backbone, Block, BlockContext
from ponderlab.plugins.halting.common import active_rows, gather_active, scatter_active


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

    With every token active this is `GPTNeoXLayer.forward`. With `context.active`
    (halted tokens frozen by early exit) only token mixing runs for every token:
    layer norm, the fused QKV projection and causal attention, because running
    tokens still attend to the keys and values of halted ones (taken from their
    frozen states, as in CALM). The attention output projection and the MLP, most
    of the layer's position-wise work, run only for the running tokens, and
    halted tokens' rows come back unchanged.
    """

    supports_active_subset = True
    keeps_inactive_rows = True

    def __init__(self, hf_config: GPTNeoXConfig, layer_index: int):
        super().__init__()
        self.layer = GPTNeoXLayer(hf_config, layer_index)
        self.rotary = GPTNeoXRotaryEmbedding(hf_config)

    def forward(self, hidden: Tensor, context: BlockContext) -> Tensor:
        positions = torch.arange(hidden.shape[1], device=hidden.device).unsqueeze(0)  # (1, L)
        cos_sin = self.rotary(hidden, positions)
        if context.active is None or bool(context.active.all()):
            return self.layer(hidden, attention_mask=None, position_ids=positions, position_embeddings=cos_sin)
        return self.forward_active(hidden, context.active, cos_sin)

    def attention_context(self, normed: Tensor, cos_sin: tuple[Tensor, Tensor]) -> Tensor:
        """Causal multi-head attention before its output projection: (B, L, D) -> (B, L, D)."""
        attention = self.layer.attention
        batch, length, _ = normed.shape
        qkv = attention.query_key_value(normed).view(batch, length, -1, 3 * attention.head_size)
        query, key, value = qkv.transpose(1, 2).chunk(3, dim=-1)  # (B, H, L, dh) each
        query, key = apply_rotary_pos_emb(query, key, *cos_sin)
        context, _ = sdpa_attention_forward(
            attention, query, key, value, None,
            dropout=attention.attention_dropout if self.training else 0.0,
            scaling=attention.scaling,
        )  # (B, L, H, dh)
        return context.reshape(batch, length, -1)

    def forward_active(self, hidden: Tensor, active: Tensor, cos_sin: tuple[Tensor, Tensor]) -> Tensor:
        """The layer for the running tokens only; halted tokens keep their rows."""
        layer = self.layer
        rows = active_rows(active)  # (K,)
        context = gather_active(self.attention_context(layer.input_layernorm(hidden), cos_sin), rows)  # (K, D)
        attn = layer.post_attention_dropout(layer.attention.dense(context))  # (K, D)
        residual = gather_active(hidden, rows)  # (K, D)
        if layer.use_parallel_residual:
            mlp = layer.post_mlp_dropout(layer.mlp(layer.post_attention_layernorm(residual)))
            updated = residual + attn + mlp
        else:
            attn = attn + residual
            updated = layer.post_mlp_dropout(layer.mlp(layer.post_attention_layernorm(attn))) + attn
        return scatter_active(hidden, rows, updated)


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
