"""mixture_of_depths: config and scopes, a hand-computed 3-token case, the slow per-token
reference, float64 gradients, causality at inference, and the conformance kit."""

from __future__ import annotations

import math

import pytest
import torch
from pydantic import ValidationError
from routing_checks import assert_inference_is_causal, router_functions

from ponderlab.core.errors import SpecError
from ponderlab.core.halting.routing import top_capacity
from ponderlab.core.model import PonderModel
from ponderlab.plugins.backbones.lstm import LSTMBackbone, LSTMConfig
from ponderlab.plugins.backbones.transformer import TransformerBackbone, TransformerConfig
from ponderlab.plugins.halting.mixture_of_depths import MixtureOfDepths, MixtureOfDepthsConfig
from ponderlab.plugins.halting.routing_reference import (
    PositionwiseLayers,
    as_tokens,
    bce,
    mixture_of_depths_sequence,
    set_linear,
    stack_tokens,
)
from ponderlab.testing import ContractError, HaltingContract, check_contract, check_plugin

VOCAB = 11


def site(d_model: int = 1, n_layers: int = 2, **options) -> MixtureOfDepths:
    return MixtureOfDepths(MixtureOfDepthsConfig(**options), d_model=d_model, n_layers=n_layers)


# --------------------------------------------------------------------------- config and scopes


def test_config_defaults_and_validation():
    config = MixtureOfDepthsConfig()
    assert (config.scope, config.capacity, config.route_every, config.causal) == ("depth", 0.125, 2, "router")
    for bad in ({"capacity": 0.0}, {"capacity": 1.5}, {"route_every": 3}, {"causal": "oracle"},
                {"predictor_hidden": 4}):
        with pytest.raises(ValidationError):
            MixtureOfDepthsConfig(**bad)
    MixtureOfDepthsConfig(causal="predictor", predictor_hidden=4)


@pytest.mark.parametrize("scope", ["layer", "model"])
def test_scopes_other_than_depth_are_refused(scope):
    with pytest.raises(SpecError, match="around distinct layers") as error:
        site(scope=scope)
    assert error.value.path == "halting.scope"


def test_backbone_without_routed_attention_is_refused():
    backbone = LSTMBackbone(LSTMConfig(d_model=8, n_layers=2), vocab_size=VOCAB)
    with pytest.raises(SpecError, match="forward_routed") as error:
        PonderModel(backbone, MixtureOfDepths, MixtureOfDepthsConfig(), vocab_size=VOCAB)
    assert error.value.path == "backbone.name"


def test_every_other_layer_is_routed():
    assert site(n_layers=5).routed_layers == [1, 3]
    assert site(n_layers=3, route_every=1).routed_layers == [0, 1, 2]


# --------------------------------------------------------------------------- hand-computed case


def test_top_capacity_by_hand():
    scores = torch.tensor([[0.2, 0.9, 0.5], [0.3, 0.3, 0.1]])
    # k = ceil(0.5 * 3) = 2: the two largest; a tie goes to the earlier position
    assert top_capacity(scores, 0.5).tolist() == [[False, True, True], [True, True, False]]
    # only eligible tokens compete (row 0: k = 2 but only 2 are eligible); padding shortens
    # the sequence (row 1: k = ceil(0.5 * 2) = 1) and is not eligible (as the router passes it)
    eligible = torch.tensor([[True, False, True], [False, True, True]])
    mask = torch.tensor([[True, True, True], [False, True, True]])
    assert top_capacity(scores, 0.5, eligible, mask).tolist() == [[True, False, True], [False, True, False]]
    assert top_capacity(scores, 1 / 3, eligible, mask).tolist() == [[False, False, True], [False, True, False]]


def hand_hop(state, n, active):
    return state + 1.0 if n == 0 else 2.0 * state  # layer 0: s + 1 (dense); layer 1: f(s) = 2 s


def test_three_tokens_by_hand_training_and_inference():
    strategy = site(capacity=0.5)  # layer 0 dense, layer 1 routed, k = 2 of 3
    set_linear(strategy.routers[0].linear, [[0.5]], [-1.0])
    x = torch.tensor([[[0.0], [2.0], [1.0]]])
    # after layer 0: s = (1, 3, 2); r = 0.5 s - 1 = (-0.5, 0.5, 0.0): top-2 are tokens 1 and 2
    out = strategy.train()(x, hand_hop)
    # routed: s + r (2 s - s) = s (1 + r): 3 * 1.5 = 4.5 and 2 * 1.0 = 2; token 0 keeps 1
    assert out.output.squeeze().tolist() == pytest.approx([1.0, 4.5, 2.0])
    assert out.hops.squeeze().tolist() == [1.0, 2.0, 2.0]
    expected_bce = (bce(-0.5, False) + bce(0.5, True) + bce(0.0, True)) / 3
    assert math.log1p(math.exp(-0.5)) == pytest.approx(bce(-0.5, False))
    assert out.aux_loss.item() == pytest.approx(0.01 * expected_bce, rel=1e-6)
    # inference: sigmoid(r) > 0.5 routes token 1 only (token 2 sits at exactly 0.5)
    out = strategy.eval()(x, hand_hop)
    assert out.output.squeeze().tolist() == pytest.approx([1.0, 4.5, 2.0])
    assert out.hops.squeeze().tolist() == [1.0, 2.0, 1.0]
    assert out.aux_loss is None


def test_routed_hop_gets_the_routed_tokens_as_active():
    strategy = site(d_model=3, n_layers=4, capacity=0.4).train()
    layers = PositionwiseLayers(4, 3)
    out = strategy(torch.randn(2, 5, 3), layers.hop)
    assert layers.active[0] is None and layers.active[2] is None  # dense layers
    for hop_index in (1, 3):
        assert layers.active[hop_index].sum(1).tolist() == [2, 2]  # k = ceil(0.4 * 5)
    assert out.hops.sum(1).tolist() == [14.0, 14.0]  # 2 dense layers * 5 tokens + 2 * 2 routed


# --------------------------------------------------------------------------- slow reference


@pytest.mark.parametrize("training", [True, False])
@pytest.mark.parametrize("causal", ["router", "predictor"])
@pytest.mark.parametrize("route_every", [1, 2])
def test_matches_the_per_token_reference(training, causal, route_every):
    torch.manual_seed(0)
    n_layers, width = 4, 3
    strategy = site(d_model=width, n_layers=n_layers, capacity=0.4, route_every=route_every,
                    causal=causal).double().train(training)
    for parameter in strategy.parameters():  # routers far from zero: mixed decisions at inference
        torch.nn.init.normal_(parameter, std=1.0)
    layers = PositionwiseLayers(n_layers, width, torch.float64)
    state = torch.randn(3, 6, width, dtype=torch.float64)
    mask = torch.ones(3, 6, dtype=torch.bool)
    mask[2, 4:] = False
    out = strategy(state, layers.hop, mask=mask)
    router_fn, decide_fn = router_functions(strategy)
    expected, losses = [], []
    for b, tokens in enumerate(as_tokens(state.detach())):
        real = mask[b].tolist()
        ref = mixture_of_depths_sequence(
            tokens, n_layers=n_layers, routed_layers=strategy.routed_layers, layer_fn=layers.layer,
            router_fn=router_fn, decide_fn=decide_fn, capacity=0.4, training=training, real=real)
        expected.append(ref["states"])
        assert out.hops[b][mask[b]].tolist() == [h for h, ok in zip(ref["hops"], real, strict=True) if ok]
        losses.append(ref["losses"])
    torch.testing.assert_close(out.output[mask], stack_tokens(expected)[mask].to(out.output.dtype))
    if training:
        # the site takes the BCE over the whole batch's real tokens at each routed layer
        count = mask.sum().item()
        per_layer = [sum(losses[b][i] * mask[b].sum().item() for b in range(3)) / count
                     for i in range(len(strategy.routed_layers))]
        assert out.aux_loss.item() == pytest.approx(0.01 * sum(per_layer) / len(per_layer), rel=1e-9)
    else:
        assert out.aux_loss is None


# --------------------------------------------------------------------------- gradients


@pytest.mark.parametrize("causal", ["router", "predictor"])
def test_float64_gradients(causal):
    torch.manual_seed(1)
    strategy = site(d_model=2, n_layers=2, capacity=0.5, causal=causal).double().train()
    layers = PositionwiseLayers(2, 2, torch.float64)
    params = dict(strategy.named_parameters())
    names = list(params)

    def run(state, *values):
        replaced = dict(zip(names, values, strict=True))
        out = torch.func.functional_call(strategy, replaced, (state, layers.hop))
        return out.output, out.aux_loss

    state = torch.randn(1, 4, 2, dtype=torch.float64, requires_grad=True)
    values = tuple(params.values())
    assert torch.autograd.gradcheck(lambda *v: run(state.detach(), *v), values)
    # the predictor reads a stop-gradient state: its loss has no gradient to the state by design
    through_state = (lambda s: run(s, *values)) if causal == "router" else (lambda s: run(s, *values)[0])
    assert torch.autograd.gradcheck(through_state, (state,))


def test_predictor_reads_a_stop_gradient_state():
    torch.manual_seed(2)
    layers = PositionwiseLayers(2, 3)
    for causal, reaches in (("router", True), ("predictor", False)):
        strategy = site(d_model=3, n_layers=2, capacity=0.5, causal=causal).train()
        state = torch.randn(1, 4, 3, requires_grad=True)
        (grad,) = torch.autograd.grad(strategy(state, layers.hop).aux_loss, state, allow_unused=True)
        assert (grad is not None and bool(grad.any())) == reaches


# --------------------------------------------------------------------------- causality


def transformer_model(config: MixtureOfDepthsConfig, seed: int = 0) -> PonderModel:
    torch.manual_seed(seed)
    backbone = TransformerBackbone(TransformerConfig(d_model=16, n_layers=4, n_heads=2), vocab_size=VOCAB)
    model = PonderModel(backbone, MixtureOfDepths, config, vocab_size=VOCAB)
    for router in model.sites[0].routers:  # mixed routing decisions
        torch.nn.init.normal_(router.linear.weight, std=2.0)
    return model


@pytest.mark.parametrize("causal", ["router", "predictor"])
def test_inference_is_causal(causal):
    assert_inference_is_causal(transformer_model(MixtureOfDepthsConfig(capacity=0.25, causal=causal)), vocab=VOCAB)


def test_training_routing_looks_ahead_by_hand():
    # expert choice at training time may look ahead (as the paper's): a later token's score
    # decides whether an earlier one is routed
    scores = torch.tensor([[0.5, 0.1]])
    assert top_capacity(scores, 0.5).tolist() == [[True, False]]
    assert top_capacity(torch.tensor([[0.5, 0.9]]), 0.5).tolist() == [[False, True]]


# --------------------------------------------------------------------------- conformance kit


def test_passes_the_kit_except_the_declared_contract():
    check_plugin(MixtureOfDepths)
    check_plugin(MixtureOfDepths, {"causal": "predictor", "capacity": 0.5})
    assert set(MixtureOfDepths.conformance_exempt) == {"halting weights"}
    with pytest.raises(ContractError) as error:
        check_contract(MixtureOfDepths, "halting weights")
    assert error.value.contract == "halting weights"
    assert "beyond the `hops`" in error.value.problem


def test_kit_pytest_class_skips_the_declared_contract_with_its_reason():
    class TestMixtureOfDepths(HaltingContract):
        plugin = MixtureOfDepths

    with pytest.raises(pytest.skip.Exception, match="beyond the number of layers it ran"):
        TestMixtureOfDepths().test_halting_weights()
    TestMixtureOfDepths().test_halting_stats()  # the others still run
