"""Early exit for wrapped Hugging Face layers: a decoder layer on the running tokens only.

One small adapter per layout calls the layer's own submodules, in the order the
layer's `forward` calls them, for the K running tokens (the `forward_rows` protocol,
`ponderlab.core.early_exit`). Halted tokens cost only the input norm and their key
and value projections: running tokens still attend to them (keys and values from
their frozen states, as in CALM). Queries, attention, the output projection, the
post-attention norm and the MLP run for the running rows.

Layouts (`ROWS_LAYOUTS`, by `config.model_type`): GPT-2 (ln_1, attn.c_attn/c_proj,
ln_2, mlp), GPT-NeoX (input_layernorm, attention.query_key_value/dense,
post_attention_layernorm, mlp, use_parallel_residual), Llama and Qwen2
(input_layernorm, self_attn.q/k/v/o_proj with grouped keys and values, rotary,
post_attention_layernorm, mlp; Qwen2's sliding-window layers too). Any other model
gets no adapter: its blocks compute every token and the core keeps halted tokens'
states, which is correct but saves nothing.

A fused query/key/value projection (GPT-2, GPT-NeoX) is split by weight slices
when it is the plain module; a wrapped one (LoRA) is called on every token and its
query rows picked, so adapters stay exact.
"""

from __future__ import annotations

from typing import TYPE_CHECKING

import torch
import torch.nn.functional as F
from torch import Tensor, nn

from ponderlab.core.early_exit import rows_mask

from .row_attention import attend_rows, rotary

if TYPE_CHECKING:  # transformers is imported where a model is built: listing plugins stays quick
    from transformers import PretrainedConfig

#: (cos, sin) rotary tables of positions 0..L-1: (1, L, r) each
RotaryTables = tuple[Tensor, Tensor]


def project_split(projection: nn.Module, normed: Tensor, rows: Tensor, query: Tensor | slice,
                  key_value: Tensor | slice) -> tuple[Tensor, Tensor]:
    """A fused projection's query channels for the rows and key/value channels for every token.

    normed (B, L, D), rows (K,), query / key_value: output channels (indices (Cq,) / (Ckv,),
    or slices: weight views, no copy) -> queries (K, Cq), keys and values (B, L, Ckv).
    """
    flat = normed.reshape(-1, normed.shape[-1])  # (B*L, D)
    bias = projection.bias
    if type(projection) is nn.Linear:  # weight (C, D)
        weight = projection.weight
        return (F.linear(flat.index_select(0, rows), weight[query], None if bias is None else bias[query]),
                F.linear(normed, weight[key_value], None if bias is None else bias[key_value]))
    from transformers.pytorch_utils import Conv1D  # GPT-2; Linear layers returned above

    if type(projection) is Conv1D:  # weight (D, C), bias (C,): x @ W + b
        weight = projection.weight
        return (torch.addmm(bias[query], flat.index_select(0, rows), weight[:, query]),
                torch.addmm(bias[key_value], flat, weight[:, key_value]).view(*normed.shape[:2], -1))
    every = projection(normed)  # (B, L, C): a wrapped projection (e.g. LoRA), computed for every token
    return every.reshape(-1, every.shape[-1]).index_select(0, rows)[:, query], every[..., key_value]


def rotate_rows(query: Tensor, key: Tensor, rows: Tensor, tables: RotaryTables) -> tuple[Tensor, Tensor]:
    """Rotary positions on the rows' queries (K, H, dh) and every token's keys (B, Hkv, L, dh)."""
    cos, sin = tables  # (1, L, r)
    at = rows % key.shape[2]  # (K,) positions of the rows
    query = rotary(query, cos[0, at].unsqueeze(1), sin[0, at].unsqueeze(1))
    return query, rotary(key, cos.unsqueeze(1), sin.unsqueeze(1))


def heads_first(x: Tensor, size: int) -> Tensor:  # (B, L, Hkv*dh) -> (B, Hkv, L, dh)
    return x.view(*x.shape[:2], -1, size).transpose(1, 2)


class LayerRows:
    """One layout's decoder layer on rows: `update(layer, hidden, rows, states, tables)` -> (K, D).

    hidden (B, L, D) holds every token's current state, rows (K,) the flat indices of the
    running tokens, states (K, D) their states; tables the rotary (cos, sin) or None.
    The adapter keeps no module: it reads the layer it is given.
    """

    def __init__(self, window: int | None):
        self.window = window  # sliding-window size of this layer, None: full causal

    def update(self, layer: nn.Module, hidden: Tensor, rows: Tensor, states: Tensor,
               tables: RotaryTables | None) -> Tensor:
        raise NotImplementedError


class GPT2Rows(LayerRows):
    """GPT-2: s + attn(ln_1(s)), then + mlp(ln_2(.)); c_attn is one Conv1D [q | k | v]."""

    def update(self, layer, hidden, rows, states, tables):
        attention = layer.attn
        width, size = hidden.shape[-1], attention.head_dim
        query, key_value = project_split(attention.c_attn, layer.ln_1(hidden), rows, slice(0, width),
                                         slice(width, 3 * width))  # (K, D), (B, L, 2D)
        key, value = (heads_first(part, size) for part in key_value.split(width, dim=-1))  # (B, H, L, dh)
        mixed = attend_rows(query.view(len(rows), -1, size), key, value, rows_mask(rows, hidden.shape[:2]),
                            scaling=attention.scaling,
                            dropout=attention.attn_dropout.p if layer.training else 0.0)  # (K, D)
        middle = attention.resid_dropout(attention.c_proj(mixed)) + states
        return middle + layer.mlp(layer.ln_2(middle))


class NeoXRows(LayerRows):
    """GPT-NeoX: query_key_value holds [q | k | v] per head; parallel or sequential residual."""

    def update(self, layer, hidden, rows, states, tables):
        attention = layer.attention
        width, size = hidden.shape[-1], attention.head_size
        channels = torch.arange(3 * width, device=hidden.device).view(-1, 3, size)  # (H, 3, dh)
        query, key_value = project_split(attention.query_key_value, layer.input_layernorm(hidden), rows,
                                         channels[:, 0].reshape(-1), channels[:, 1:].reshape(-1))
        key, value = heads_first(key_value, 2 * size).chunk(2, dim=-1)  # (B, H, L, dh) each
        query, key = rotate_rows(query.view(len(rows), -1, size), key, rows, tables)
        mixed = attend_rows(query, key, value, rows_mask(rows, hidden.shape[:2]), scaling=attention.scaling,
                            dropout=attention.attention_dropout if layer.training else 0.0)  # (K, D)
        attended = layer.post_attention_dropout(attention.dense(mixed))  # (K, D)
        if layer.use_parallel_residual:
            return layer.post_mlp_dropout(layer.mlp(layer.post_attention_layernorm(states))) + attended + states
        middle = attended + states
        return layer.post_mlp_dropout(layer.mlp(layer.post_attention_layernorm(middle))) + middle


class LlamaRows(LayerRows):
    """Llama / Qwen2: s + o_proj(attn(input_layernorm(s))), then + mlp(post_attention_layernorm(.))."""

    def update(self, layer, hidden, rows, states, tables):
        attention = layer.self_attn
        size = attention.head_dim
        normed = layer.input_layernorm(hidden)  # (B, L, D)
        query = attention.q_proj(normed.reshape(-1, normed.shape[-1]).index_select(0, rows))  # (K, H*dh)
        key = heads_first(attention.k_proj(normed), size)  # (B, Hkv, L, dh)
        value = heads_first(attention.v_proj(normed), size)
        query, key = rotate_rows(query.view(len(rows), -1, size), key, rows, tables)
        mixed = attend_rows(query, key, value, rows_mask(rows, hidden.shape[:2]), scaling=attention.scaling,
                            window=self.window,
                            dropout=attention.attention_dropout if layer.training else 0.0)  # (K, H*dh)
        middle = states + attention.o_proj(mixed)
        return middle + layer.mlp(layer.post_attention_layernorm(middle))


#: The layouts that compute rows, by `config.model_type`.
ROWS_LAYOUTS: dict[str, type[LayerRows]] = {
    "gpt2": GPT2Rows,
    "gpt_neox": NeoXRows,
    "llama": LlamaRows,
    "qwen2": LlamaRows,
}


def rows_adapter(config: PretrainedConfig, window: int | None) -> LayerRows | None:
    """The adapter of `config`'s layout, or None (the layer then computes every token)."""
    layout = ROWS_LAYOUTS.get(config.model_type)
    return None if layout is None else layout(window)
