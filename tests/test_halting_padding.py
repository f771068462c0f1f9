"""Padding in a batch: it halts after one hop, never keeps the loop running, stays out of losses."""

from __future__ import annotations

import pytest
import torch
from torch import nn

from ponderlab.core.model import PonderModel
from ponderlab.plugins.backbones.armt import ARMTBackbone, ARMTConfig
from ponderlab.plugins.backbones.transformer import TransformerBackbone, TransformerConfig
from ponderlab.plugins.halting.graves import GravesACT, GravesConfig
from ponderlab.plugins.halting.pondernet import PonderNet, PonderNetConfig
from ponderlab.plugins.halting.random_halting import RandomHalting, RandomHaltingConfig
from ponderlab.plugins.halting.reference import ScriptedHop, script_linear
from ponderlab.plugins.halting.threshold import ThresholdACT, ThresholdConfig
from ponderlab.plugins.halting.ut import UniversalTransformerACT, UTConfig

VOCAB = 7

STRATEGIES = [
    (GravesACT, GravesConfig(max_hops=4, halting_bias_init=-2.0)),
    (GravesACT, GravesConfig(scope="model", max_hops=3, halting_bias_init=-2.0)),
    (GravesACT, GravesConfig(scope="depth", halting_bias_init=-2.0)),
    (ThresholdACT, ThresholdConfig(threshold=0.9)),
    (UniversalTransformerACT, UTConfig(max_hops=4, halting_bias_init=-2.0)),
    (PonderNet, PonderNetConfig(scope="model", max_hops=4, inference="most_likely")),
]


def build(cls, config, n_layers: int = 2, backbone: str = "transformer") -> PonderModel:
    torch.manual_seed(0)
    if backbone == "armt":
        body = ARMTBackbone(ARMTConfig(d_model=16, n_layers=n_layers, n_heads=2, segment_size=4,
                                       memory_size=2, d_mem=4), vocab_size=VOCAB)
    else:
        body = TransformerBackbone(TransformerConfig(d_model=16, n_layers=n_layers, n_heads=2), vocab_size=VOCAB)
    model = PonderModel(body, cls, config, vocab_size=VOCAB).double()
    for site in model.sites:  # token-dependent halting so hop counts vary
        for module in site.modules():
            if isinstance(module, nn.Linear) and module.out_features == 1:
                nn.init.normal_(module.weight, std=20.0, generator=torch.Generator().manual_seed(1))
    return model.eval()


def count_hops(model: PonderModel) -> list[int]:
    """Record how many tokens each block application had to compute (all, or the active ones)."""
    calls: list[int] = []
    original = model._apply_block

    def counting(index, state, n, active, memory):
        calls.append(state.shape[:-1].numel() if active is None else int(active.sum()))
        return original(index, state, n, active, memory)

    model._apply_block = counting
    return calls


@pytest.mark.parametrize("cls, config", STRATEGIES, ids=lambda v: getattr(v, "scope", v.__name__ if isinstance(v, type) else v))
def test_padded_batch_matches_unpadded_runs_and_pads_halt_at_once(cls, config):
    model = build(cls, config)
    generator = torch.Generator().manual_seed(2)
    lengths = [9, 5, 3]
    ids = torch.randint(0, VOCAB, (3, 9), generator=generator)
    mask = torch.arange(9).unsqueeze(0) < torch.tensor(lengths).unsqueeze(1)  # (B, L), right padding
    with torch.no_grad():
        padded = model(ids.masked_fill(~mask, 0), mask=mask)
        for b, n in enumerate(lengths):  # causal model: real tokens see only real tokens
            alone = model(ids[b : b + 1, :n])
            torch.testing.assert_close(padded.logits[b, :n], alone.logits[0])
            assert torch.equal(padded.stats.hops[b, :n], alone.stats.hops[0])
    pads = ~mask
    for site_hops in padded.stats.site_hops:
        assert site_hops[pads].eq(1).all()
    assert padded.stats.hops[mask].gt(1).any()  # real tokens do ponder


@pytest.mark.parametrize("cls", [GravesACT, UniversalTransformerACT])
def test_padding_does_not_keep_the_loop_running(cls):
    """Real tokens halt at hop 1; pads, left to themselves, would run to the cap."""
    cap = 4
    if cls is GravesACT:
        site, hop_shift = GravesACT(GravesConfig(max_hops=cap), d_model=cap + 2, n_layers=1), 0
        script_linear(site.units[0].linear, control_index=cap)
    else:
        site, hop_shift = UniversalTransformerACT(UTConfig(max_hops=cap), d_model=cap + 2, n_layers=1), 1
        script_linear(site.unit.linear, control_index=cap)
    mask = torch.tensor([[True, True, True, False, False]])
    controls = torch.where(mask, 10.0, -10.0).unsqueeze(-1).expand(1, 5, cap + hop_shift).double()
    for given, expected_calls in ((mask, 1), (None, cap)):
        hop = ScriptedHop(controls, shift=hop_shift)
        out = site.double()(hop.initial_state(), hop, mask=given)
        assert len(hop.calls) == expected_calls
        assert out.hops[mask].eq(1).all()
        torch.testing.assert_close(out.ponder_cost[mask], out.hops[mask] + out.remainder[mask])


def test_pondernet_kl_averages_over_real_tokens_only():
    model = build(PonderNet, PonderNetConfig(scope="model", max_hops=4, beta=1.0)).train()
    ids = torch.randint(0, VOCAB, (1, 8), generator=torch.Generator().manual_seed(4))
    mask = torch.tensor([[True] * 5 + [False] * 3])
    padded = model(ids, mask=mask).stats.regularizer
    alone = model(ids[:, :5]).stats.regularizer
    full = model(ids).stats.regularizer
    torch.testing.assert_close(padded, alone)
    assert not torch.allclose(full, alone)  # the pads' KL would have counted


def test_random_halting_gives_pads_one_hop():
    model = build(RandomHalting, RandomHaltingConfig(scope="model", max_hops=4, mean_hops=3.0))
    ids = torch.randint(0, VOCAB, (4, 6), generator=torch.Generator().manual_seed(5))
    mask = torch.arange(6).unsqueeze(0) < torch.tensor([[6], [4], [2], [1]])
    with torch.no_grad():
        out = model(ids, mask=mask)
    assert out.stats.hops[~mask].eq(1).all() and out.stats.hops[mask].gt(1).any()


def test_pondernet_sampled_inference_gives_pads_one_hop_and_their_first_state():
    model = build(PonderNet, PonderNetConfig(scope="model", max_hops=4, lambda_p=0.2, inference="sample"))
    ids = torch.randint(0, VOCAB, (4, 6), generator=torch.Generator().manual_seed(7))
    mask = torch.arange(6).unsqueeze(0) < torch.tensor([[6], [4], [2], [1]])
    first: list[torch.Tensor] = []
    original = model._apply_block

    def record(index, state, n, active, memory):  # the stack's output after hop 1
        out = original(index, state, n, active, memory)
        if n == 0 and index == model.n_layers - 1:
            first.append(out)
        return out

    model._apply_block = record
    torch.manual_seed(8)
    with torch.no_grad():
        out = model(ids, mask=mask)
        expected = model.head(model.backbone.finalize(first[0]))
    assert out.stats.hops[~mask].eq(1).all() and out.stats.hops[mask].gt(1).any()
    torch.testing.assert_close(out.logits[~mask], expected[~mask])


def test_memory_backbone_gets_the_segment_mask():
    """ARMT: segments of padding halt at once; memory tokens and real tokens are unaffected."""
    model = build(GravesACT, GravesConfig(max_hops=3, halting_bias_init=-2.0), backbone="armt")
    ids = torch.randint(0, VOCAB, (2, 8), generator=torch.Generator().manual_seed(6))
    mask = torch.tensor([[True] * 8, [True] * 3 + [False] * 5])
    with torch.no_grad():
        padded = model(ids, mask=mask)
        alone = model(ids[1:, :3])
    torch.testing.assert_close(padded.logits[1, :3], alone.logits[0])
    assert padded.stats.hops[1, 3:].eq(1).all()
