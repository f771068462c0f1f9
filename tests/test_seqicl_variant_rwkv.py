"""RWKV's two variants against slow references written from their formulas (float64).

seq_icl's RWKVLayer adds +exp(time_decay) to its log-state each step (past weights grow);
the paper's decays by exp(-exp(time_decay)). The references below sum the WKV directly,
token by token, with no stabiliser and no scan: obviously correct at these sizes.
"""

from __future__ import annotations

import pytest
import torch

import ponderlab
from ponderlab.plugins.backbones.mixer_stack import FeedForward
from ponderlab.plugins.backbones.rwkv import RWKVChannelMix, RWKVTimeMix

F64 = torch.float64
D, B, L = 6, 2, 9


def rwkv_time_mix_reference(x, p, sign):
    """out_t = W_o (sigmoid(r_t) * wkv_t), every sum over past tokens written out.

    sign +1 (seq_icl): the weight of token i at step t is e^{+(t-1-i) exp(time_decay) + k_i};
    sign -1 (paper): e^{-(t-1-i) exp(time_decay) + k_i}. x (B, L, D).
    """
    previous = torch.cat([torch.zeros_like(x[:, :1]), x[:, :-1]], dim=1)

    def mixed(ratio):
        return x * ratio + previous * (1 - ratio)

    k = mixed(p["mix_k"]) @ p["key"].T  # (B, L, D)
    v = mixed(p["mix_v"]) @ p["value"].T
    r = mixed(p["mix_r"]) @ p["receptance"].T
    w = torch.exp(p["time_decay"])  # (D,)
    rows = []
    for t in range(x.shape[1]):
        numerator = torch.exp(p["time_first"] + k[:, t]) * v[:, t]
        denominator = torch.exp(p["time_first"] + k[:, t])
        for i in range(t):
            weight = torch.exp(sign * (t - 1 - i) * w + k[:, i])
            numerator = numerator + weight * v[:, i]
            denominator = denominator + weight
        rows.append(torch.sigmoid(r[:, t]) * numerator / denominator)
    return torch.stack(rows, dim=1) @ p["out_proj"].T


def set_weights(mixer, seed):
    """Random weights (time_decay in [-1, 1.2], so seq_icl's growth stays moderate)."""
    generator = torch.Generator().manual_seed(seed)
    params = {}
    with torch.no_grad():
        for name, param in mixer.named_parameters():
            value = torch.randn(param.shape, generator=generator, dtype=F64) * 0.5
            if name == "time_decay":
                value = torch.linspace(-1.0, 1.2, param.numel(), dtype=F64)
            param.copy_(value)
    for name, param in mixer.named_parameters():
        params[name.replace(".weight", "")] = param
    return params


@pytest.mark.parametrize("variant", ["seq_icl", "paper"])
@pytest.mark.parametrize("reference", [False, True])
def test_time_mix_matches_the_direct_sums(variant, reference):
    mixer = RWKVTimeMix(D, -5.0, 3.0, seq_icl=variant == "seq_icl").double()
    params = set_weights(mixer, seed=1)
    x = torch.randn(B, L, D, dtype=F64, generator=torch.Generator().manual_seed(2), requires_grad=True)
    out = mixer.mix(x, reference=reference)
    expected = rwkv_time_mix_reference(x, params, sign=1.0 if variant == "seq_icl" else -1.0)
    torch.testing.assert_close(out, expected, rtol=1e-10, atol=1e-12)
    upstream = torch.randn(out.shape, dtype=F64, generator=torch.Generator().manual_seed(3))
    inputs = [x, *params.values()]
    got = torch.autograd.grad(out, inputs, upstream, retain_graph=True)
    want = torch.autograd.grad(expected, inputs, upstream)
    for name, g_got, g_want in zip(["x", *params], got, want, strict=True):
        torch.testing.assert_close(g_got, g_want, rtol=1e-9, atol=1e-11, msg=f"gradient of {name}")


def test_the_two_signs_give_different_layers():
    """Same weights, seq_icl's sign vs the paper's: outputs differ after the first token only."""
    x = torch.randn(1, 5, D, dtype=F64, generator=torch.Generator().manual_seed(4))
    outs = []
    for seq_icl in (True, False):
        mixer = RWKVTimeMix(D, -5.0, 3.0, seq_icl=seq_icl).double()
        set_weights(mixer, seed=1)
        outs.append(mixer.mix(x, reference=False))
    torch.testing.assert_close(outs[0][:, :2], outs[1][:, :2])  # t = 0, 1: no decay applied yet
    assert (outs[0][:, 2:] - outs[1][:, 2:]).abs().max() > 1e-3


def test_seq_icl_variant_builds_seq_icls_stack():
    """N(0, 1) mixer inits, the GELU (tanh) MLP instead of the channel mix, unscaled output init."""
    def backbone(variant):
        model = ponderlab.build_model(
            backbone={"name": "rwkv", "d_model": 64, "n_layers": 2, "variant": variant},
            halting={"name": "none"}, vocab_size=7, seed=0,
        )
        return model.backbone

    seq_icl, paper = backbone("seq_icl"), backbone("paper")
    mixer = seq_icl.blocks[0].mixer
    assert isinstance(seq_icl.blocks[0].ffn, FeedForward)
    assert seq_icl.blocks[0].ffn.act.approximate == "tanh"
    assert isinstance(paper.blocks[0].ffn, RWKVChannelMix)
    assert mixer.decay_sign == 1.0 and paper.blocks[0].mixer.decay_sign == -1.0
    for name in ("time_decay", "time_first", "mix_k", "mix_v", "mix_r"):
        values = getattr(mixer, name)
        assert values.min() < -0.5 and values.max() > 0.5, name  # N(0, 1), not a ramp in [0, 1]
    # std 0.02 for seq_icl's `output`, 0.02 / sqrt(4) for the paper variant's rescaled out_proj
    assert 0.015 < mixer.out_proj.weight.std() < 0.025
    assert 0.0075 < paper.blocks[0].mixer.out_proj.weight.std() < 0.0125
