"""GPT-NeoX `forward_routed`: attention among routed tokens and shared first-hop keys/values,
against a per-token attention loop; the model's routing hook."""

from __future__ import annotations

import math

import pytest
import torch

from ponderlab.core.interfaces import BlockContext
from ponderlab.plugins.backbones.transformer import TransformerBackbone, TransformerConfig, rotary
from ponderlab.plugins.backbones.universal_transformer import (
    UniversalTransformerBackbone,
    UniversalTransformerConfig,
)


def block(parallel: bool = True, seed: int = 0):
    torch.manual_seed(seed)
    config = TransformerConfig(d_model=8, n_layers=2, n_heads=2, parallel_residual=parallel)
    backbone = TransformerBackbone(config, vocab_size=5).double().eval()
    return backbone.blocks[1]


def per_token_layer(neox, hidden, keys_from, allowed) -> torch.Tensor:
    """The layer one token at a time: token t attends to tokens s with allowed(t, s), keys and
    values computed from keys_from (L, D); hidden (L, D) one sequence."""
    layer = neox.layer
    length, width = hidden.shape
    heads = width // layer.attention.head_size
    size = width // heads
    _, (cos, sin) = neox.rotary_tables(hidden.unsqueeze(0))
    outputs = []
    for t in range(length):
        x = hidden[t]
        q_all = layer.attention.query_key_value(layer.input_layernorm(hidden)).view(length, heads, 3, size)
        kv_all = layer.attention.query_key_value(layer.input_layernorm(keys_from)).view(length, heads, 3, size)
        mixed = []
        for h in range(heads):
            q = rotary(q_all[t, h, 0], cos[0, t], sin[0, t])
            scores, values = [], []
            for s in range(length):
                if allowed(t, s):
                    k = rotary(kv_all[s, h, 1], cos[0, s], sin[0, s])
                    scores.append(float(q @ k) / math.sqrt(size))
                    values.append(kv_all[s, h, 2])
            top = max(scores)
            weights = [math.exp(v - top) for v in scores]
            mixed.append(sum(w * v for w, v in zip(weights, values, strict=True)) / sum(weights))
        attn = layer.attention.dense(torch.cat(mixed))
        if layer.use_parallel_residual:
            outputs.append(x + attn + layer.mlp(layer.post_attention_layernorm(x)))
        else:
            mid = x + attn
            outputs.append(mid + layer.mlp(layer.post_attention_layernorm(mid)))
    return torch.stack(outputs)


@pytest.mark.parametrize("parallel", [True, False])
def test_routed_attention_matches_a_per_token_loop(parallel):
    neox = block(parallel)
    hidden = torch.randn(2, 5, 8, dtype=torch.float64)
    routed = torch.tensor([[True, False, True, True, False], [False, True, False, False, True]])
    with torch.no_grad():
        out = neox.forward_routed(hidden, routed, BlockContext(mixing="routed"))
        for b in range(2):
            expected = per_token_layer(neox, hidden[b], hidden[b],
                                       lambda t, s, _b=b: s == t or (s < t and bool(routed[_b, s])))
            torch.testing.assert_close(out[b][routed[b]], expected[routed[b]])
        # all routed: the layer's own forward
        everyone = torch.ones(2, 5, dtype=torch.bool)
        torch.testing.assert_close(neox.forward_routed(hidden, everyone, BlockContext(mixing="routed")),
                                   neox(hidden, BlockContext()))


def test_unrouted_tokens_are_invisible_to_routed_ones():
    neox = block()
    hidden = torch.randn(1, 6, 8, dtype=torch.float64)
    routed = torch.tensor([[True, False, True, False, True, True]])
    changed = hidden.clone()
    changed[0, 1] = torch.randn(8, dtype=torch.float64)  # an unrouted token's state
    with torch.no_grad():
        a = neox.forward_routed(hidden, routed, BlockContext(mixing="routed"))
        b = neox.forward_routed(changed, routed, BlockContext(mixing="routed"))
        c = neox(hidden, BlockContext())
        d = neox(changed, BlockContext())
    assert torch.equal(a[routed], b[routed])
    assert not torch.allclose(c[0, 2:], d[0, 2:])  # the plain layer does read it


def test_shared_kv_reuses_the_first_hop_keys_and_values():
    neox = block(seed=1)
    first = torch.randn(1, 5, 8, dtype=torch.float64)
    later = torch.randn(1, 5, 8, dtype=torch.float64)
    routed = torch.tensor([[False, True, True, False, True]])
    cache: dict = {}
    with torch.no_grad():
        out0 = neox.forward_routed(first, torch.ones_like(routed), BlockContext(layer=1, hop=0, mixing="shared_kv", kv_cache=cache))
        torch.testing.assert_close(out0, neox(first, BlockContext()))  # hop 0: the plain layer
        assert set(cache) == {1}
        out1 = neox.forward_routed(later, routed, BlockContext(layer=1, hop=1, mixing="shared_kv", kv_cache=cache))
        expected = per_token_layer(neox, later[0], first[0], lambda t, s: s <= t)
    torch.testing.assert_close(out1[0][routed[0]], expected[routed[0]])


def test_universal_transformer_block_adds_its_depth_signal_when_routed():
    torch.manual_seed(0)
    backbone = UniversalTransformerBackbone(UniversalTransformerConfig(d_model=8, n_layers=1, n_heads=2), vocab_size=5)
    shared = backbone.blocks[0].eval()
    hidden = torch.randn(2, 4, 8)
    everyone = torch.ones(2, 4, dtype=torch.bool)
    with torch.no_grad():
        for n in (0, 2):
            torch.testing.assert_close(shared.forward_routed(hidden, everyone, BlockContext(hop=n, mixing="routed")),
                                       shared(hidden, BlockContext(hop=n)))
