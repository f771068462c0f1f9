"""calm: hand-computed exits, thresholds and weights; a per-token reference with state
copying; the depth-weighted loss; float64 gradients; causality; scopes; the kit."""

from __future__ import annotations

import math

import pytest
import torch
from adaptive_checks import (
    VOCAB,
    exit_reference,
    per_layer_ce,
    per_layer_states,
    table_hop,
    tiny_model,
)
from torch import nn

from ponderlab.core.errors import SpecError
from ponderlab.core.halting import ExitHead
from ponderlab.plugins.halting.calm import CALM, CALMConfig
from ponderlab.plugins.halting.confidence import (
    position_thresholds,
    softmax_response,
    state_saturation,
)
from ponderlab.testing import check_plugin


def identity_head(width: int) -> ExitHead:
    linear = nn.Linear(width, width, bias=False)
    nn.init.eye_(linear.weight)
    return ExitHead(lambda s: s, linear)


def test_softmax_response_exits_three_tokens_by_hand():
    # head = identity on logits (x, 0): p_(1) - p_(2) = tanh(x / 2)
    # token 0: x = 3 at layer 1 (0.905 >= 0.9) -> exits after 1 layer
    # token 1: x = 1 (0.462), then 4 (0.964) -> 2 layers; token 2: x = 0 (gap 0) -> 3 layers
    x = torch.tensor([[3.0, 1.0, 0.0], [0.0, 4.0, 0.0], [0.0, 0.0, 0.0]])  # (N, L)
    states = torch.stack([x, torch.zeros_like(x)], dim=-1).unsqueeze(1)  # (N, 1, L, 2)
    strategy = CALM(CALMConfig(threshold=0.9), d_model=2, n_layers=3).eval()
    out = strategy(torch.zeros(1, 3, 2), table_hop(states), head=identity_head(2))
    assert out.hops.tolist() == [[1.0, 2.0, 3.0]]
    assert out.output[0, :, 0].tolist() == [3.0, 4.0, 0.0]  # each token's exit state
    assert math.isclose(float(softmax_response(torch.tensor([3.0, 0.0]))), math.tanh(1.5), rel_tol=1e-6)


def test_decaying_threshold_by_hand():
    # lambda_t = 0.9 * 0.9 + 0.1 * exp(-4 t / 3)
    got = position_thresholds(0.9, 3, tau=4.0, decay_length=3, device="cpu")
    expected = [0.81 + 0.1, 0.81 + 0.1 * math.exp(-4 / 3), 0.81 + 0.1 * math.exp(-8 / 3)]
    assert torch.allclose(got, torch.tensor(expected), atol=1e-6)
    # token 0 (gap tanh(1.5) = 0.905) no longer exits at t = 0, whose threshold is 0.91
    x = torch.tensor([[3.0, 3.0, 0.0], [3.0, 3.0, 0.0], [0.0, 0.0, 0.0]])
    states = torch.stack([x, torch.zeros_like(x)], dim=-1).unsqueeze(1)
    config = CALMConfig(threshold=0.9, decay_tau=4.0, decay_length=3)
    out = CALM(config, d_model=2, n_layers=3).eval()(torch.zeros(1, 3, 2), table_hop(states),
                                                     head=identity_head(2))
    assert out.hops.tolist() == [[3.0, 1.0, 3.0]]


def test_state_saturation_exit_by_hand():
    # cos((1, 1), (1, 0)) = 0.7071 >= 0.7 exits after layer 1; cos((0, 1), (1, 0)) = 0 does not
    start = torch.tensor([[[1.0, 0.0], [1.0, 0.0]]])  # (1, 2, 2)
    layer1 = torch.tensor([[[1.0, 1.0], [0.0, 1.0]]])
    layer2 = torch.tensor([[[5.0, 5.0], [0.0, 2.0]]])
    strategy = CALM(CALMConfig(confidence="state", threshold=0.7), d_model=2, n_layers=2).eval()
    out = strategy(start, table_hop(torch.stack([layer1, layer2])))
    assert out.hops.tolist() == [[1.0, 2.0]]
    assert out.output.tolist() == [[[1.0, 1.0], [0.0, 2.0]]]
    assert math.isclose(float(state_saturation(layer1[0, 0], start[0, 0])), 1 / math.sqrt(2), rel_tol=1e-6)


@pytest.mark.parametrize("confidence", ["softmax", "state", "classifier"])
def test_exit_matches_per_token_reference_with_state_copying(confidence):
    torch.manual_seed(3)
    config = CALMConfig(confidence=confidence, threshold={"softmax": 0.3, "state": 0.8,
                                                          "classifier": 0.5}[confidence])
    model = tiny_model(CALM, config).eval()
    site = model.sites[0]
    ids = torch.randint(0, VOCAB, (2, 6))
    with torch.no_grad():
        out = model(ids)

        def conf(layer, new, old):
            if confidence == "softmax":
                return float(softmax_response(model.head(model.backbone.finalize(new))))
            if confidence == "state":
                return float(state_saturation(new, old))
            return float(site.classifiers[layer](new.view(1, 1, -1)))

        states, hops = exit_reference(model, ids, conf, [config.threshold] * 6)
        logits = model.head(model.backbone.finalize(states))
    assert len(set(hops.flatten().tolist())) > 1, "the case must mix exit layers"
    assert torch.equal(out.stats.layers, hops)
    assert torch.allclose(out.logits, logits, atol=1e-5)


def test_training_loss_is_depth_weighted_per_layer_loss():
    model = tiny_model(CALM, CALMConfig(confidence="state")).train()
    ids = torch.randint(0, VOCAB, (2, 5), generator=torch.Generator().manual_seed(1))
    labels = torch.randint(0, VOCAB, (2, 5), generator=torch.Generator().manual_seed(2))
    labels[0, 0] = -100
    out = model(ids, labels=labels)
    ces = per_layer_ce(model, per_layer_states(model, ids), labels)
    expected = (1 * ces[0] + 2 * ces[1] + 3 * ces[2]) / 6  # w_i = i / (1 + 2 + 3)
    assert torch.allclose(out.loss, expected, atol=1e-5)
    assert out.stats.layers.eq(3).all()


def test_classifier_loss_is_log_two_at_init_and_leaves_the_model_alone():
    model = tiny_model(CALM, CALMConfig(confidence="classifier", classifier_weight=2.0)).train()
    with torch.no_grad():  # the tiny model's perturbation moved the units; restore c = 0.5
        for unit in model.sites[0].classifiers:
            unit.linear.weight.zero_()
            unit.linear.bias.zero_()
    ids = torch.randint(0, VOCAB, (2, 5), generator=torch.Generator().manual_seed(1))
    out = model(ids, labels=ids)
    assert math.isclose(out.stats.regularizer.item(), 2.0 * math.log(2.0), rel_tol=1e-5)
    out.stats.regularizer.backward()
    assert all(p.grad is None for p in model.backbone.parameters())  # detached states


def test_classifier_targets_by_hand():
    # y_i = 1[argmax head(s_i) = argmax head(s_N)]: layer 1 agrees on token 0 only
    states = [torch.tensor([[[2.0, 0.0], [0.0, 2.0]]]), torch.tensor([[[3.0, 0.0], [3.0, 0.0]]])]
    strategy = CALM(CALMConfig(confidence="classifier"), d_model=2, n_layers=2)
    with torch.no_grad():
        strategy.classifiers[0].linear.bias.fill_(math.log(3.0))  # c = 0.75 for both tokens
    loss = strategy.classifier_loss(states, identity_head(2))
    expected = -(math.log(0.75) + math.log(0.25)) / 2
    assert math.isclose(loss.item(), expected, rel_tol=1e-6)


def test_float64_gradients_of_the_training_loss():
    model = tiny_model(CALM, CALMConfig(confidence="classifier")).double().train()
    ids = torch.randint(0, VOCAB, (1, 4), generator=torch.Generator().manual_seed(4))
    names = ["head.weight", "sites.0.classifiers.0.linear.weight"]
    params = tuple(dict(model.named_parameters())[n].detach().clone().requires_grad_() for n in names)

    def loss(*values):
        out = torch.func.functional_call(model, dict(zip(names, values, strict=True)), (ids,),
                                         {"labels": ids})
        return out.loss

    assert torch.autograd.gradcheck(loss, params, eps=1e-6, atol=1e-5)


@pytest.mark.parametrize("confidence", ["softmax", "state"])
def test_causal_at_inference(confidence):
    model = tiny_model(CALM, CALMConfig(confidence=confidence, threshold=0.5, decay_tau=2.0)).eval()
    ids = torch.randint(0, VOCAB, (2, 8), generator=torch.Generator().manual_seed(5))
    changed = ids.clone()
    changed[:, 5:] = (changed[:, 5:] + 1) % VOCAB
    with torch.no_grad():
        a, b = model(ids), model(changed)
    assert torch.allclose(a.logits[:, :5], b.logits[:, :5], atol=1e-5)  # row subsets: rounding only
    assert torch.equal(a.stats.hops[:, :5], b.stats.hops[:, :5])
    assert not torch.equal(a.logits[:, 5:], b.logits[:, 5:])


@pytest.mark.parametrize("scope", ["layer", "model"])
def test_scopes_other_than_depth_are_rejected(scope):
    with pytest.raises(SpecError, match="does not support scope") as info:
        CALM(CALMConfig(scope=scope), d_model=4, n_layers=2)
    assert info.value.path == "halting.scope"


@pytest.mark.parametrize("confidence", ["softmax", "state"])
def test_other_confidences_pass_the_kit(confidence):
    check_plugin(CALM, {"confidence": confidence, "decay_tau": 4.0})


def test_unknown_options_are_rejected():
    with pytest.raises(ValueError):
        CALMConfig(confidence="entropy")
