"""mixture_of_recursions: config and scopes, hand-computed 3-token cases (expert and token
choice), the slow per-token references, float64 gradients, causality at inference with
recursion-wise attention and KV sharing, and the conformance kit."""

from __future__ import annotations

import math

import pytest
import torch
from pydantic import ValidationError
from routing_checks import assert_inference_is_causal, router_functions

from ponderlab.core.errors import SpecError
from ponderlab.core.model import PonderModel
from ponderlab.plugins.backbones.lstm import LSTMBackbone, LSTMConfig
from ponderlab.plugins.backbones.transformer import TransformerBackbone, TransformerConfig
from ponderlab.plugins.halting.mixture_of_recursions import (
    MixtureOfRecursions,
    MixtureOfRecursionsConfig,
    default_capacities,
)
from ponderlab.plugins.halting.routing_reference import (
    PositionwiseLayers,
    as_tokens,
    balance_by_hand,
    bce,
    expert_choice_sequence,
    set_linear,
    stack_tokens,
    token_choice_token,
)
from ponderlab.testing import ContractError, check_contract, check_plugin

VOCAB = 11


def site(d_model: int = 1, n_layers: int = 1, **options) -> MixtureOfRecursions:
    return MixtureOfRecursions(MixtureOfRecursionsConfig(**options), d_model=d_model, n_layers=n_layers)


def doubling(state, n, active):
    return 2.0 * state  # f(h) = 2 h at every recursion, so f(h) - h = h


# --------------------------------------------------------------------------- config and scopes


def test_config_defaults_and_validation():
    config = MixtureOfRecursionsConfig()
    assert (config.scope, config.recursions, config.routing, config.kv_sharing) == ("model", 3, "expert_choice", False)
    assert default_capacities(3) == pytest.approx([1.0, 2 / 3, 1 / 3])
    for bad in ({"capacities": [1.0, 0.5]}, {"capacities": [0.5, 0.6, 0.1]}, {"capacities": [1.0, 0.0, 0.0]},
                {"routing": "token_choice", "capacities": [1.0, 0.5, 0.2]}, {"recursions": 0}):
        with pytest.raises(ValidationError):
            MixtureOfRecursionsConfig(**bad)


def test_depth_scope_is_refused():
    with pytest.raises(SpecError, match="shared block") as error:
        site(scope="depth")
    assert error.value.path == "halting.scope"


@pytest.mark.parametrize("kv_sharing", [False, True])
def test_backbone_without_routed_attention_is_refused(kv_sharing):
    backbone = LSTMBackbone(LSTMConfig(d_model=8, n_layers=1), vocab_size=VOCAB)
    config = MixtureOfRecursionsConfig(kv_sharing=kv_sharing)
    with pytest.raises(SpecError, match="shared_kv" if kv_sharing else "'routed'") as error:
        PonderModel(backbone, MixtureOfRecursions, config, vocab_size=VOCAB)
    assert error.value.path == "backbone.name"


# --------------------------------------------------------------------------- hand-computed cases


def test_expert_choice_three_tokens_by_hand():
    strategy = site(recursions=2, capacities=[1.0, 0.5]).train()
    set_linear(strategy.routers[0].linear, [[0.0]], [0.0])  # g_0 = 0.5 for every token
    set_linear(strategy.routers[1].linear, [[1.0]], [0.0])  # g_1 = sigmoid(h)
    h = torch.tensor([[[1.0], [-1.0], [2.0]]])
    out = strategy(h, doubling)
    # r = 0, capacity 1: every token, h + 0.5 (2h - h) = 1.5 h -> (1.5, -1.5, 3)
    # r = 1, k = ceil(0.5 * 3) = 2 of the eligible: tokens 0 and 2; h (1 + sigmoid(h))
    sig = [1 / (1 + math.exp(-v)) for v in (1.5, 3.0)]
    assert out.output.squeeze().tolist() == pytest.approx([1.5 * (1 + sig[0]), -1.5, 3.0 * (1 + sig[1])])
    assert out.hops.squeeze().tolist() == [2.0, 1.0, 2.0]
    expected = (bce(1.5, True) + bce(-1.5, False) + bce(3.0, True)) / 3  # r = 1 only (capacity 1: no loss)
    assert out.aux_loss.item() == pytest.approx(0.01 * expected, rel=1e-6)
    # inference: sigmoid(logit) > 0.5 among the tokens of recursion 0
    out = strategy.eval()(h, doubling)
    assert out.hops.squeeze().tolist() == [2.0, 1.0, 2.0]


def test_expert_choice_is_hierarchical():
    strategy = site(recursions=3, capacities=[1.0, 2 / 3, 2 / 3]).train()
    set_linear(strategy.routers[0].linear, [[0.0]], [0.0])
    set_linear(strategy.routers[1].linear, [[1.0]], [0.0])  # prefers large h
    set_linear(strategy.routers[2].linear, [[-1.0]], [0.0])  # prefers small h: token 0 would win
    active = []

    def hop(state, n, mask):
        active.append(mask)
        return doubling(state, n, mask)

    out = strategy(torch.tensor([[[-3.0], [1.0], [2.0]]]), hop)
    assert active[1].tolist() == [[False, True, True]]
    assert active[2].tolist() == [[False, True, True]]  # token 0 was not chosen at r = 1
    assert out.hops.squeeze().tolist() == [1.0, 3.0, 3.0]


def test_token_choice_three_tokens_by_hand():
    strategy = site(recursions=3, routing="token_choice").train()
    set_linear(strategy.router, [[0.0], [0.0], [2.0]], [0.0, 1.0, 0.0])
    h = torch.tensor([[[1.0], [-1.0], [0.0]]])
    out = strategy(h, doubling)
    # logits: (0, 1, 2) -> depth 3; (0, 1, -2) -> depth 2; (0, 1, 0) -> depth 2; each recursion h (1 + g)
    probs = [[math.exp(z) / sum(math.exp(v) for v in row) for z in row] for row in ([0, 1, 2], [0, 1, -2], [0, 1, 0])]
    g = [probs[0][2], probs[1][1], probs[2][1]]
    assert out.output.squeeze().tolist() == pytest.approx([(1 + g[0]) ** 3, -((1 + g[1]) ** 2), 0.0])
    assert out.hops.squeeze().tolist() == [3.0, 2.0, 2.0]
    fractions = [0.0, 2 / 3, 1 / 3]
    mean_probs = [sum(p[i] for p in probs) / 3 for i in range(3)]
    balance = 3 * sum(f * p for f, p in zip(fractions, mean_probs, strict=True))
    assert out.aux_loss.item() == pytest.approx(0.01 * balance, rel=1e-6)
    assert balance_by_hand(probs, [3, 2, 2]) == pytest.approx(balance)


# --------------------------------------------------------------------------- slow references


@pytest.mark.parametrize("training", [True, False])
@pytest.mark.parametrize("causal", ["router", "predictor"])
def test_expert_choice_matches_the_per_token_reference(training, causal):
    torch.manual_seed(0)
    width, capacities = 3, [1.0, 0.6, 0.3]
    strategy = site(d_model=width, recursions=3, capacities=capacities, causal=causal).double().train(training)
    for parameter in strategy.parameters():
        torch.nn.init.normal_(parameter, std=1.0)
    layers = PositionwiseLayers(3, width, torch.float64)
    state = torch.randn(3, 6, width, dtype=torch.float64)
    mask = torch.ones(3, 6, dtype=torch.bool)
    mask[1, 3:] = False
    out = strategy(state, layers.hop, mask=mask)
    router_fn, decide_fn = router_functions(strategy)
    expected = []
    for b, tokens in enumerate(as_tokens(state)):
        real = mask[b].tolist()
        ref = expert_choice_sequence(tokens, capacities=capacities, layer_fn=layers.layer,
                                     router_fn=router_fn, decide_fn=decide_fn, training=training, real=real)
        expected.append(ref["states"])
        assert out.hops[b].tolist() == [float(h) for h in ref["hops"]]
    torch.testing.assert_close(out.output[mask], stack_tokens(expected)[mask])


def test_token_choice_matches_the_per_token_reference():
    torch.manual_seed(1)
    width = 3
    strategy = site(d_model=width, recursions=3, routing="token_choice").double()
    torch.nn.init.normal_(strategy.router.weight, std=2.0)
    layers = PositionwiseLayers(3, width, torch.float64)
    state = torch.randn(2, 7, width, dtype=torch.float64)
    out = strategy(state, layers.hop)
    refs = [[token_choice_token(s, logits=strategy.router(s).tolist(), layer_fn=layers.layer) for s in tokens]
            for tokens in as_tokens(state)]
    torch.testing.assert_close(out.output, stack_tokens([[ref["state"] for ref in seq] for seq in refs]))
    assert out.hops.tolist() == [[float(ref["hops"]) for ref in seq] for seq in refs]
    assert len({ref["hops"] for seq in refs for ref in seq}) > 1  # mixed depths
    flat = [ref for seq in refs for ref in seq]
    balance = balance_by_hand([ref["probs"] for ref in flat], [ref["hops"] for ref in flat])
    assert out.aux_loss.item() == pytest.approx(0.01 * balance, rel=1e-9)


# --------------------------------------------------------------------------- gradients


@pytest.mark.parametrize("routing", ["expert_choice", "token_choice"])
def test_float64_gradients(routing):
    torch.manual_seed(2)
    strategy = site(d_model=2, recursions=2, routing=routing).double().train()
    torch.nn.init.normal_(next(strategy.parameters()), std=1.0)
    layers = PositionwiseLayers(2, 2, torch.float64)
    names = [name for name, _ in strategy.named_parameters()]

    def run(state, *values):
        out = torch.func.functional_call(strategy, dict(zip(names, values, strict=True)), (state, layers.hop))
        return out.output, out.aux_loss

    state = torch.randn(1, 4, 2, dtype=torch.float64, requires_grad=True)
    assert torch.autograd.gradcheck(run, (state, *[p for _, p in strategy.named_parameters()]))


# --------------------------------------------------------------------------- causality


def transformer_model(config: MixtureOfRecursionsConfig, seed: int = 0) -> PonderModel:
    torch.manual_seed(seed)
    backbone = TransformerBackbone(TransformerConfig(d_model=16, n_layers=2, n_heads=2), vocab_size=VOCAB)
    model = PonderModel(backbone, MixtureOfRecursions, config, vocab_size=VOCAB)
    for name, parameter in model.sites.named_parameters():  # mixed routing decisions
        torch.nn.init.normal_(parameter, std=0.0 if name.endswith("bias") else 40.0)
    return model


@pytest.mark.parametrize(
    "options",
    [{}, {"kv_sharing": True}, {"causal": "predictor"}, {"routing": "token_choice"},
     {"routing": "token_choice", "kv_sharing": True}, {"scope": "layer"}],
)
def test_inference_is_causal(options):
    a = assert_inference_is_causal(transformer_model(MixtureOfRecursionsConfig(**options)), vocab=VOCAB)
    assert 1.0 in a.stats.hops and a.stats.hops.max() > 1.0  # routing sent tokens to different depths


def test_kv_sharing_changes_later_recursions_only():
    recursion_wise = transformer_model(MixtureOfRecursionsConfig(capacities=[1.0, 1.0, 1.0])).eval()
    shared = transformer_model(MixtureOfRecursionsConfig(capacities=[1.0, 1.0, 1.0], kv_sharing=True)).eval()
    one = transformer_model(MixtureOfRecursionsConfig(recursions=1, kv_sharing=True)).eval()
    one_plain = transformer_model(MixtureOfRecursionsConfig(recursions=1)).eval()
    ids = torch.randint(0, VOCAB, (2, 8), generator=torch.Generator().manual_seed(4))
    with torch.no_grad():
        assert torch.allclose(one(ids).logits, one_plain(ids).logits, atol=1e-6)  # first recursion: same
        assert not torch.allclose(shared(ids).logits, recursion_wise(ids).logits)


# --------------------------------------------------------------------------- conformance kit


@pytest.mark.parametrize("options", [{}, {"routing": "token_choice", "kv_sharing": True}])
def test_passes_the_kit_except_the_declared_contract(options):
    check_plugin(MixtureOfRecursions, options)
    assert set(MixtureOfRecursions.conformance_exempt) == {"halting weights"}
    with pytest.raises(ContractError) as error:
        check_contract(MixtureOfRecursions, "halting weights", options)
    assert error.value.contract == "halting weights"
    assert "weight" in error.value.problem and "input state" in error.value.problem
