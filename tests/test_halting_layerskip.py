"""layerskip: hand-computed rates, loss weights and curricula; the early-exit loss and layer
dropout against slow references; fixed and confident exits; causality; the kit."""

from __future__ import annotations

import math

import pytest
import torch
from adaptive_checks import VOCAB, exit_reference, per_layer_ce, per_layer_states, tiny_model

from ponderlab.core.conformance import ConformanceError
from ponderlab.core.errors import SpecError
from ponderlab.core.interfaces import BlockContext
from ponderlab.plugins.halting.confidence import softmax_response
from ponderlab.plugins.halting.layerskip import (
    LayerSkip,
    LayerSkipConfig,
    curriculum,
    dropout_rates,
    exit_loss_weights,
)
from ponderlab.testing import check_plugin


def test_dropout_rates_by_hand():
    # p_l = D(l) p_max, D(l) = exp(l ln2 / (L-1)) - 1: 0, sqrt(2) - 1, 1
    rates = dropout_rates(3, 0.2, 1.0)
    assert rates == pytest.approx([0.0, 0.2 * (math.sqrt(2) - 1), 0.2])
    assert dropout_rates(3, 0.2, 0.5) == pytest.approx([0.0, 0.1 * (math.sqrt(2) - 1), 0.1])


def test_exit_loss_weights_by_hand():
    # e(l) = sum_{i<=l} i for l < L-1; e(L-1) = L-1 + sum_{i<=L-2} i
    assert exit_loss_weights(3, 1.0, [True] * 3) == pytest.approx([0.0, 0.25, 0.75])  # 0, 1, 2+1
    assert exit_loss_weights(4, 1.0, [True] * 4) == pytest.approx([0, 0.1, 0.3, 0.6])  # 0, 1, 3, 3+3
    assert exit_loss_weights(4, 1.0, [False, True, False, False]) == pytest.approx([0, 1 / 7, 0, 6 / 7])
    assert exit_loss_weights(4, 0.0, [True] * 4) == pytest.approx([0, 0, 0, 1])


def test_curricula_by_hand():
    assert curriculum("rotational", 1, 4, 2, 10) == [False, True, False, True]
    assert curriculum("rotational", 2, 4, 2, 10) == [True, False, True, False]
    # gradual at t = 5 of T = 10: l > ceil(3 - 0.5 * 3) = 2
    assert curriculum("gradual", 5, 4, 2, 10) == [False, False, False, True]
    assert curriculum("gradual", 10, 4, 2, 10) == [False, True, True, True]  # l > 0


def test_early_exit_loss_matches_per_layer_reference_and_counts_steps():
    model = tiny_model(LayerSkip, LayerSkipConfig(p_max=0.0, exit_curriculum="rotational")).train()
    ids = torch.randint(0, VOCAB, (2, 5), generator=torch.Generator().manual_seed(1))
    for step in range(2):
        out = model(ids, labels=ids)
        ces = per_layer_ce(model, per_layer_states(model, ids), ids)
        weights = exit_loss_weights(3, 1.0, curriculum("rotational", step, 3, 2, 1000))
        expected = sum(w * ce for w, ce in zip(weights, ces, strict=True))
        assert torch.allclose(out.loss, expected, atol=1e-5)
    assert int(model.sites[0].step) == 2
    model.eval()
    with torch.no_grad():
        model(ids)
    assert int(model.sites[0].step) == 2  # inference does not advance the curriculum


def test_layer_dropout_matches_per_sequence_reference():
    model = tiny_model(LayerSkip, LayerSkipConfig(p_max=0.6)).train()
    ids = torch.randint(0, VOCAB, (6, 4), generator=torch.Generator().manual_seed(2))
    torch.manual_seed(7)
    out = model(ids)
    torch.manual_seed(7)  # the same draws, one layer at a time: kept = rand(B) >= p_l
    rates = dropout_rates(3, 0.6, 1.0)
    kept = [torch.rand(6) >= rate for rate in rates]
    assert any(not bool(k.all()) for k in kept), "the case must drop some layers"
    for b in range(6):
        hidden = model.backbone.embed(ids[b : b + 1])
        for index, block in enumerate(model.backbone.blocks):
            if kept[index][b]:
                hidden = block(hidden, BlockContext(layer=index))
        logits = model.head(model.backbone.finalize(hidden))
        assert torch.allclose(out.logits[b : b + 1], logits, atol=1e-5)
        assert out.stats.layers[b].eq(sum(int(k[b]) for k in kept)).all()


def test_fixed_exit_layer():
    model = tiny_model(LayerSkip, LayerSkipConfig(exit_layer=2)).eval()
    ids = torch.randint(0, VOCAB, (2, 5), generator=torch.Generator().manual_seed(3))
    with torch.no_grad():
        out = model(ids)
        states = per_layer_states(model, ids)
        expected = model.head(model.backbone.finalize(states[1]))
    assert torch.allclose(out.logits, expected, atol=1e-5)
    assert out.stats.layers.eq(2).all()


def test_confident_exit_matches_per_token_reference():
    model = tiny_model(LayerSkip, LayerSkipConfig(confidence="softmax", threshold=0.3)).eval()
    ids = torch.randint(0, VOCAB, (2, 6), generator=torch.Generator().manual_seed(4))
    with torch.no_grad():
        out = model(ids)

        def conf(layer, new, old):
            return float(softmax_response(model.head(model.backbone.finalize(new))))

        states, hops = exit_reference(model, ids, conf, [0.3] * 6)
        logits = model.head(model.backbone.finalize(states))
    assert len(set(hops.flatten().tolist())) > 1
    assert torch.equal(out.stats.layers, hops)
    assert torch.allclose(out.logits, logits, atol=1e-5)


def test_float64_gradients_of_the_early_exit_loss():
    model = tiny_model(LayerSkip, LayerSkipConfig(p_max=0.0, exit_curriculum="none")).double().train()
    ids = torch.randint(0, VOCAB, (1, 4), generator=torch.Generator().manual_seed(5))
    name = "backbone.blocks.0.layer.attention.dense.weight"  # reaches every layer's exit loss
    weight = dict(model.named_parameters())[name].detach().clone().requires_grad_()

    def loss(value):
        return torch.func.functional_call(model, {name: value}, (ids,), {"labels": ids}).loss

    assert torch.autograd.gradcheck(loss, (weight,), eps=1e-6, atol=1e-5)


@pytest.mark.parametrize("options", [{"confidence": "softmax", "threshold": 0.3}, {"exit_layer": 2}])
def test_causal_at_inference(options):
    model = tiny_model(LayerSkip, LayerSkipConfig(**options)).eval()
    ids = torch.randint(0, VOCAB, (2, 8), generator=torch.Generator().manual_seed(6))
    changed = ids.clone()
    changed[:, 5:] = (changed[:, 5:] + 1) % VOCAB
    with torch.no_grad():
        a, b = model(ids), model(changed)
    assert torch.allclose(a.logits[:, :5], b.logits[:, :5], atol=1e-5)
    assert torch.equal(a.stats.hops[:, :5], b.stats.hops[:, :5])
    assert not torch.equal(a.logits[:, 5:], b.logits[:, 5:])


def test_invalid_configs():
    with pytest.raises(SpecError, match="does not support scope"):
        LayerSkip(LayerSkipConfig(scope="model"), d_model=4, n_layers=2)
    with pytest.raises(SpecError, match="exit_layer 3 exceeds"):
        LayerSkip(LayerSkipConfig(exit_layer=3), d_model=4, n_layers=2)
    with pytest.raises(ValueError, match="not both"):
        LayerSkipConfig(exit_layer=1, confidence="softmax")


def test_kit_rejects_layer_dropout_on_exactly_the_halting_weights_contract():
    # a sequence that skips layer 2 but runs layer 3 returns hop 3's state with hops = 2
    with pytest.raises(ConformanceError) as info:
        check_plugin(LayerSkip, {"p_max": 0.4})
    assert [failure.contract for failure in info.value.failures] == ["halting weights"]
    check_plugin(LayerSkip, {"p_max": 0.0, "confidence": "softmax"})
