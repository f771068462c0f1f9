"""`row_attention.attend_rows` (the packed-query attention of `hf_rows` and the GPT-NeoX block)
against a slow reference: one query at a time, a softmax over the keys it may read."""

from __future__ import annotations

import pytest
import torch

from ponderlab.core.early_exit import active_rows
from ponderlab.plugins.backbones.row_attention import attend_rows, rotary


def reference(query, key, value, active, scaling, window=None):
    """Each active token b, t (row-major) on its own: softmax over keys s <= t (and s > t - window)."""
    heads, kv_heads = query.shape[1], key.shape[1]
    out = []
    for k, row in enumerate(active_rows(active).tolist()):
        b, t = divmod(row, active.shape[1])
        heads_out = []
        for h in range(heads):
            g = h // (heads // kv_heads)  # the key/value head serving query head h
            reads = [s for s in range(key.shape[2]) if s <= t and (window is None or s > t - window)]
            scores = torch.stack([scaling * query[k, h] @ key[b, g, s] for s in reads])
            weights = scores.softmax(0)
            heads_out.append(sum(w * value[b, g, s] for w, s in zip(weights, reads, strict=True)))
        out.append(torch.cat(heads_out))
    return torch.stack(out)  # (K, H*dh)


# Row 0: two active tokens; row 1: none; row 2: every one of the first L' = 5 keys' positions
ACTIVE = torch.tensor([
    [False, True, False, True, False, False, False],
    [False, False, False, False, False, False, False],
    [True, True, True, True, True, False, False],
])


@pytest.mark.parametrize(("heads", "kv_heads", "window", "length"), [
    (2, 2, None, 7), (4, 2, None, 7), (4, 1, 2, 7), (2, 2, None, 5), (2, 2, 2, 5),
])
def test_attend_rows_equals_one_query_at_a_time(heads, kv_heads, window, length):
    generator = torch.Generator().manual_seed(heads + kv_heads + length)
    count = int(ACTIVE.sum())
    query = torch.randn(count, heads, 3, generator=generator, dtype=torch.float64)  # (K, H, dh)
    key = torch.randn(3, kv_heads, length, 3, generator=generator, dtype=torch.float64)  # (B, Hkv, L', dh)
    value = torch.randn(3, kv_heads, length, 3, generator=generator, dtype=torch.float64)
    out = attend_rows(query, key, value, ACTIVE, scaling=0.7, dropout=0.0, window=window)
    assert out.shape == (count, heads * 3)
    torch.testing.assert_close(out, reference(query, key, value, ACTIVE, 0.7, window))


def test_rotary_turns_pairs_by_hand_and_keeps_the_rest():
    # dh 4 with a 2-channel rotary span: channels (x0, x1) -> (x0 c - x1 s, x1 c + x0 s), x2, x3 kept
    x = torch.tensor([1.0, 2.0, 3.0, 4.0])
    cos, sin = torch.tensor([0.5, 0.5]), torch.tensor([0.25, 0.25])
    torch.testing.assert_close(rotary(x, cos, sin), torch.tensor([0.5 - 0.5, 1.0 + 0.25, 3.0, 4.0]))


@pytest.mark.parametrize("size", [2, 8, 64])
def test_rotary_is_transformers_own_rotary_on_the_span(size):
    """Our rotate_half (no import of `transformers` at registration) is the one GPT-NeoX and Llama use."""
    from transformers.models.gpt_neox.modeling_gpt_neox import apply_rotary_pos_emb

    generator = torch.Generator().manual_seed(size)
    q, k = torch.randn(2, 3, 5, size + 4, generator=generator), torch.randn(2, 3, 5, size + 4, generator=generator)
    cos, sin = torch.randn(2, 5, size, generator=generator), torch.randn(2, 5, size, generator=generator)
    expected_q, expected_k = apply_rotary_pos_emb(q, k, cos, sin)  # GPT-NeoX: partial rotary, rest kept
    torch.testing.assert_close(rotary(q, cos.unsqueeze(1), sin.unsqueeze(1)), expected_q)
    torch.testing.assert_close(rotary(k, cos.unsqueeze(1), sin.unsqueeze(1)), expected_k)
