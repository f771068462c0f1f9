"""PonderNet: halting distribution, truncated geometric prior, KL direction, loss, inference."""

from __future__ import annotations

import math

import pytest
import torch
import torch.nn.functional as F
from torch.func import functional_call

import ponderlab
from ponderlab.core.errors import SpecError
from ponderlab.core.halting import logit
from ponderlab.plugins.halting.pondernet import (
    PonderNet,
    PonderNetConfig,
    halting_distribution,
    kl_to_prior,
    truncated_geometric,
)
from ponderlab.plugins.halting.reference import ScriptedHop, pondernet_token, script_linear

D64 = torch.float64


# lambda per hop (the third is ignored: the last hop takes the remaining mass)
LAMBDAS = [[0.5, 0.4, 0.7], [0.2, 0.9, 0.7], [0.1, 0.1, 0.7]]
# p_n = lambda_n prod_{j<n}(1 - lambda_j); p_3 = prod_{j<3}(1 - lambda_j)
PROBS = [[0.5, 0.2, 0.3], [0.2, 0.72, 0.08], [0.1, 0.09, 0.81]]
EXPECTED_STEPS = [1.8, 1.88, 2.71]  # sum_n n p_n
MOST_LIKELY = [1.0, 2.0, 3.0]  # argmax_n p_n
EXECUTED_MOST_LIKELY = [1.0, 2.0, 3.0]  # stop once best p >= mass left


def site(**options) -> PonderNet:
    config = PonderNetConfig(max_hops=3, **options)
    strategy = PonderNet(config, d_model=5, n_layers=1).double()
    script_linear(strategy.units[0].linear, control_index=3)
    return strategy


def scripted() -> ScriptedHop:
    return ScriptedHop(torch.tensor([[[logit(v) for v in row] for row in LAMBDAS]], dtype=D64))


def test_halting_distribution_and_prior_by_hand():
    p = halting_distribution(torch.tensor(LAMBDAS, dtype=D64))
    torch.testing.assert_close(p, torch.tensor(PROBS, dtype=D64))
    torch.testing.assert_close(p.sum(-1), torch.ones(3, dtype=D64))
    prior = truncated_geometric(0.5, 3, dtype=D64)  # [1/2, 1/4, 1/8] renormalised by 7/8
    torch.testing.assert_close(prior, torch.tensor([4 / 7, 2 / 7, 1 / 7], dtype=D64))


def test_kl_direction_is_p_to_prior():
    p = torch.tensor([0.5, 0.2, 0.3], dtype=D64)
    g = truncated_geometric(0.5, 3, dtype=D64)
    forward = 0.5 * math.log(0.5 / (4 / 7)) + 0.2 * math.log(0.2 / (2 / 7)) + 0.3 * math.log(0.3 / (1 / 7))
    reverse = (4 / 7) * math.log((4 / 7) / 0.5) + (2 / 7) * math.log((2 / 7) / 0.2) + (1 / 7) * math.log((1 / 7) / 0.3)
    assert kl_to_prior(p, g).item() == pytest.approx(forward, abs=1e-12)
    assert forward == pytest.approx(0.0844805, abs=1e-6)
    assert abs(forward - reverse) > 0.01  # the two directions differ on this case
    # 0 log 0 = 0: a distribution with an empty step stays finite
    assert math.isfinite(kl_to_prior(torch.tensor([1.0, 0.0, 0.0], dtype=D64), g).item())


def test_a_saturated_lambda_gives_zero_mass_a_finite_kl_and_finite_gradients():
    # sigmoid(20) is 1.0 in float32: p = (0.5, 0.5, 0, 0) exactly, the case that made training runs NaN
    logits = torch.tensor([[0.0, 20.0, 0.0, 0.0]], requires_grad=True)
    p = halting_distribution(torch.sigmoid(logits))
    assert p[0, 2].item() == 0.0 and p[0, 3].item() == 0.0
    g = truncated_geometric(0.34, 4)
    kl = kl_to_prior(p, g)
    by_hand = sum(0.5 * math.log(0.5 / g[k].item()) for k in (0, 1))  # 0 log 0 = 0 for the rest
    assert kl.item() == pytest.approx(by_hand, rel=1e-5)
    kl.sum().backward()
    assert torch.isfinite(logits.grad).all()
    # away from 0 the gradient is the formula's: d KL / d logit_0 in float64 against autograd of the plain formula
    x = torch.tensor([[0.3, -0.2, 0.1, 0.0]], dtype=D64, requires_grad=True)
    q = halting_distribution(torch.sigmoid(x))
    plain = (q * (q.log() - truncated_geometric(0.34, 4, dtype=D64).log())).sum()
    (expected,) = torch.autograd.grad(plain, x)
    (got,) = torch.autograd.grad(kl_to_prior(halting_distribution(torch.sigmoid(x)), truncated_geometric(0.34, 4, dtype=D64)).sum(), x)
    assert torch.allclose(got, expected, atol=1e-12)


def test_training_outputs_by_hand():
    strategy = site(lambda_p=0.5, beta=0.1).train()
    hop = scripted()
    out = strategy(hop.initial_state(), hop)
    torch.testing.assert_close(out.hop_probs[0], torch.tensor(PROBS, dtype=D64))
    assert len(out.hop_states) == 3
    for n, state in enumerate(out.hop_states):
        assert state[0, :, n].eq(1).all()  # hop n's own state
    torch.testing.assert_close(out.ponder_cost[0], torch.tensor(EXPECTED_STEPS, dtype=D64))
    assert out.hops.eq(3).all()  # training runs every hop
    torch.testing.assert_close(out.remainder[0], torch.tensor([0.3, 0.08, 0.81], dtype=D64))
    prior = truncated_geometric(0.5, 3, dtype=D64)
    kl = kl_to_prior(torch.tensor(PROBS, dtype=D64), prior)
    assert out.aux_loss.item() == pytest.approx(0.1 * kl.mean().item(), abs=1e-12)
    assert strategy.loss_weight() == 0.0
    # the output is one of the hop states (a sample of the halting step), weight 1
    torch.testing.assert_close(out.output[0, :, :3].sum(-1), torch.ones(3, dtype=D64))


def test_most_likely_inference_by_hand():
    strategy = site(inference="most_likely").eval()
    hop = scripted()
    out = strategy(hop.initial_state(), hop)
    torch.testing.assert_close(out.ponder_cost[0], torch.tensor(MOST_LIKELY, dtype=D64))
    torch.testing.assert_close(out.hops[0], torch.tensor(EXECUTED_MOST_LIKELY, dtype=D64))
    for t, step in enumerate(MOST_LIKELY):
        assert out.output[0, t, int(step) - 1].item() == 1.0  # that hop's state is returned
    assert out.hop_states is None and out.aux_loss is None
    # token A stopped after hop 1 (0.5 >= mass left 0.5), so hop 2 ran only for B and C
    assert hop.calls[1].tolist() == [[False, True, True]]
    assert hop.calls[2].tolist() == [[False, False, True]]


def test_sampled_inference_certain_and_impossible_halting():
    strategy = site().eval()
    for control, steps in ((40.0, 1.0), (-40.0, 3.0)):
        hop = ScriptedHop(torch.full((2, 4, 3), control, dtype=D64))
        out = strategy(hop.initial_state(), hop)
        assert out.hops.eq(steps).all()
        assert out.output[..., int(steps) - 1].eq(1).all()


def test_sampled_inference_follows_the_halting_distribution():
    torch.manual_seed(0)
    strategy = PonderNet(PonderNetConfig(max_hops=4), d_model=6, n_layers=1).double().eval()
    script_linear(strategy.units[0].linear, control_index=4)
    hop = ScriptedHop(torch.zeros(1, 4000, 4, dtype=D64))  # lambda = 0.5 at every hop
    out = strategy(hop.initial_state(), hop)
    freq = torch.stack([(out.ponder_cost == n).double().mean() for n in (1, 2, 3, 4)])
    torch.testing.assert_close(freq, torch.tensor([0.5, 0.25, 0.125, 0.125], dtype=D64), atol=0.03, rtol=0)


def test_matches_per_token_reference():
    generator = torch.Generator().manual_seed(4)
    d, n_hops = 5, 4
    strategy = PonderNet(PonderNetConfig(max_hops=n_hops, lambda_p=0.3, beta=0.5), d_model=d, n_layers=1)
    strategy = strategy.double().train()
    torch.nn.init.normal_(strategy.units[0].linear.weight, std=1.5, generator=generator)
    weights = [torch.randn(d, d, generator=generator, dtype=D64) for _ in range(n_hops)]
    state = torch.randn(2, 3, d, generator=generator, dtype=D64)
    out = strategy(state, lambda s, n, active: torch.tanh(s @ weights[n].T))
    kls = []
    for b in range(2):
        for t in range(3):
            ref = pondernet_token(
                state[b, t], lambda n, s: torch.tanh(weights[n] @ s),
                lambda n, s: float(strategy.units[0](s.view(1, 1, -1)).detach()), n_hops=n_hops, lambda_p=0.3,
            )
            torch.testing.assert_close(out.hop_probs[b, t], torch.tensor(ref["probs"], dtype=D64))
            for n in range(n_hops):
                torch.testing.assert_close(out.hop_states[n][b, t], ref["states"][n])
            assert out.ponder_cost[b, t].item() == pytest.approx(ref["expected_steps"], abs=1e-12)
            kls.append(ref["kl"])
    assert out.aux_loss.item() == pytest.approx(0.5 * sum(kls) / len(kls), abs=1e-12)


def test_gradcheck_float64():
    generator = torch.Generator().manual_seed(6)
    d = 4
    strategy = PonderNet(PonderNetConfig(max_hops=3), d_model=d, n_layers=1).double().train()
    weights = [torch.randn(d, d, generator=generator, dtype=D64) for _ in range(3)]
    state = torch.randn(1, 3, d, generator=generator, dtype=D64, requires_grad=True)
    w = torch.randn(1, d, generator=generator, dtype=D64, requires_grad=True)
    b = torch.zeros(1, dtype=D64, requires_grad=True)

    def run(x, weight, bias):
        params = {"units.0.linear.weight": weight, "units.0.linear.bias": bias}
        out = functional_call(strategy, params, (x, lambda s, n, a: torch.tanh(s @ weights[n].T)))
        return out.hop_probs, out.aux_loss, out.ponder_cost, *out.hop_states

    assert torch.autograd.gradcheck(run, (state, w, b), eps=1e-6, atol=1e-6)


def test_model_loss_is_expected_task_loss_plus_kl():
    torch.manual_seed(0)
    model = ponderlab.build_model(
        backbone={"name": "lstm", "d_model": 8, "n_layers": 1},
        halting={"name": "pondernet", "max_hops": 3, "beta": 0.1, "halting_bias_init": 0.0},
        vocab_size=7,
    ).double()
    torch.nn.init.normal_(model.sites[0].units[0].linear.weight)
    ids = torch.randint(0, 7, (2, 5))
    labels = torch.randint(0, 7, (2, 5))
    labels[0, :2] = -100
    out = model(ids, labels=labels)
    stack = model.run_stack(model.backbone.embed(ids))
    site = stack.sites[0]
    scored = labels != -100
    expected = 0.0
    for n, state in enumerate(site.hop_states):
        logits = model.head(model.backbone.finalize(state))
        ce = F.cross_entropy(logits.flatten(0, 1), labels.clamp_min(0).flatten(), reduction="none").view(2, 5)
        expected = expected + (site.hop_probs[..., n] * ce * scored).sum()
    expected = expected / scored.sum()
    torch.testing.assert_close(out.task_loss, expected.to(out.task_loss.dtype))
    torch.testing.assert_close(out.loss, out.task_loss + site.aux_loss)


def test_scopes_and_options():
    with pytest.raises(SpecError, match="single layer"):
        PonderNet(PonderNetConfig(scope="layer"), d_model=4, n_layers=2)
    assert PonderNet(PonderNetConfig(scope="layer"), d_model=4, n_layers=1).max_hops() == 4
    depth = PonderNet(PonderNetConfig(scope="depth"), d_model=4, n_layers=3)
    assert depth.max_hops() == 3 and len(depth.units) == 3
    with pytest.raises(ValueError, match="max_hops does not apply"):
        PonderNetConfig(scope="depth", max_hops=3)
    with pytest.raises(ValueError):
        PonderNetConfig(lambda_p=1.0)
    # default bias: lambda = lambda_p at init
    fresh = PonderNet(PonderNetConfig(lambda_p=0.25), d_model=4, n_layers=1)
    assert torch.sigmoid(fresh.units[0].linear.bias).item() == pytest.approx(0.25)
