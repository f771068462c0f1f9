"""recurrent_depth: the iteration-count law, hand-computed KL exits, truncated
backpropagation against a manual loop, float64 gradients, causality, scopes, the kit."""

from __future__ import annotations

import math

import pytest
import torch
from adaptive_checks import VOCAB, table_hop, tiny_model
from torch import nn

from ponderlab.core.errors import SpecError
from ponderlab.core.halting import ExitHead
from ponderlab.core.interfaces import BlockContext
from ponderlab.plugins.halting.recurrent_depth import (
    RecurrentDepth,
    RecurrentDepthConfig,
    sample_recurrence,
    successive_kl,
)
from ponderlab.testing import check_plugin


def test_recurrence_law_mean_and_cap():
    # sigma = 0: r = Poisson(r_bar) + 1, so E[r] = r_bar + 1 (cap far away)
    torch.manual_seed(0)
    draws = [sample_recurrence(3.0, 0.0, 100) for _ in range(4000)]
    assert abs(sum(draws) / len(draws) - 4.0) < 0.1
    assert min(draws) >= 1
    # sigma > 0: heavy tail (log-normal rate), E[e^tau] = r_bar still; capped draws stay <= cap
    heavy = [sample_recurrence(3.0, 1.0, 100) for _ in range(4000)]
    assert abs(sum(heavy) / len(heavy) - 4.0) < 0.25
    assert max(heavy) > max(draws)
    assert max(sample_recurrence(3.0, 1.0, 5) for _ in range(200)) == 5


def test_kl_exit_by_hand():
    # identity head on 2 logits; iterations give token 0: (0,0),(0,0) -> KL 0 -> stops after 2;
    # token 1: (0,0),(2,0),(2,0) -> stops after 3; token 2 changes every time -> cap 4
    seq = torch.tensor([
        [[0.0, 0.0], [0.0, 0.0], [0.0, 0.0]],
        [[0.0, 0.0], [2.0, 0.0], [1.0, 0.0]],
        [[0.0, 0.0], [2.0, 0.0], [2.0, 0.0]],
        [[0.0, 0.0], [2.0, 0.0], [3.0, 0.0]],
    ]).unsqueeze(1)  # (N, 1, L, 2)
    linear = nn.Linear(2, 2, bias=False)
    nn.init.eye_(linear.weight)
    strategy = RecurrentDepth(RecurrentDepthConfig(max_hops=4, exit_threshold=1e-3, init_std=0.0),
                              d_model=2, n_layers=1).eval()
    out = strategy(torch.zeros(1, 3, 2), table_hop(seq), head=ExitHead(lambda s: s, linear))
    assert out.hops.tolist() == [[2.0, 3.0, 4.0]]
    assert out.output[0, :, 0].tolist() == [0.0, 2.0, 3.0]  # each token's last iteration
    # KL(p || q) of (2, 0) against (0, 0): p = (s, 1 - s), s = sigmoid(2)
    s = 1 / (1 + math.exp(-2))
    expected = s * math.log(2 * s) + (1 - s) * math.log(2 * (1 - s))
    got = successive_kl(torch.tensor([2.0, 0.0]), torch.tensor([0.0, 0.0]))
    assert math.isclose(float(got), expected, rel_tol=1e-6)


def test_truncated_backprop_matches_manual_loop():
    config = RecurrentDepthConfig(scope="model", mean_recurrence=6.0, sigma=0.0, max_hops=6,
                                  backprop_hops=2, init_std=0.5)
    model = tiny_model(RecurrentDepth, config, layers=2).double().train()
    site = model.sites[0]
    ids = torch.randint(0, VOCAB, (2, 4), generator=torch.Generator().manual_seed(1))
    torch.manual_seed(3)
    model(ids, labels=ids).loss.backward()
    got = site.adapter.weight.grad.clone()
    model.zero_grad()
    torch.manual_seed(3)  # the same draws: s_0 first, then tau and the Poisson count
    embedded = model.backbone.embed(ids)
    state = torch.randn_like(embedded) * 0.5
    steps = sample_recurrence(6.0, 0.0, 6)
    for n in range(steps):
        with torch.set_grad_enabled(n >= steps - 2):
            state = site.adapter(torch.cat([embedded, state], dim=-1))
            for index, block in enumerate(model.backbone.blocks):
                state = block(state, BlockContext(layer=index, hop=n))
    logits = model.head(model.backbone.finalize(state))
    loss = torch.nn.functional.cross_entropy(logits.flatten(0, 1), ids.flatten())
    loss.backward()
    assert steps > 2
    assert torch.allclose(got, site.adapter.weight.grad, atol=1e-10)


def test_float64_gradients():
    # k = cap: no truncation, so the analytic gradient is the exact one (truncation is biased
    # on purpose; test_truncated_backprop_matches_manual_loop checks it)
    config = RecurrentDepthConfig(mean_recurrence=2.0, max_hops=3, backprop_hops=3, init_std=0.3)
    model = tiny_model(RecurrentDepth, config, layers=1).double().train()
    ids = torch.randint(0, VOCAB, (1, 3), generator=torch.Generator().manual_seed(2))
    weight = model.sites[0].adapter.weight.detach().clone().requires_grad_()

    def loss(value):
        torch.manual_seed(0)  # the same iteration count at every evaluation
        return torch.func.functional_call(model, {"sites.0.adapter.weight": value}, (ids,),
                                          {"labels": ids}).loss

    assert torch.autograd.gradcheck(loss, (weight,), eps=1e-6, atol=1e-5)


@pytest.mark.parametrize("scope", ["model", "layer"])
def test_causal_at_inference(scope):
    config = RecurrentDepthConfig(scope=scope, max_hops=5, exit_threshold=1e-2)
    model = tiny_model(RecurrentDepth, config, layers=2).eval()
    ids = torch.randint(0, VOCAB, (2, 8), generator=torch.Generator().manual_seed(6))
    changed = ids.clone()
    changed[:, 5:] = (changed[:, 5:] + 1) % VOCAB
    with torch.no_grad():
        torch.manual_seed(0)
        a = model(ids)
        torch.manual_seed(0)
        b = model(changed)
    assert torch.allclose(a.logits[:, :5], b.logits[:, :5], atol=1e-5)
    assert torch.equal(a.stats.hops[:, :5], b.stats.hops[:, :5])
    assert not torch.equal(a.logits[:, 5:], b.logits[:, 5:])


@pytest.mark.parametrize("scope", ["model", "layer"])
def test_running_rows_equal_the_dense_computation(scope, monkeypatch):
    """At inference the head (and the core's rows path) runs on running tokens only; the
    dense computation (every token through the core and the head, stopped ones frozen) agrees."""
    import ponderlab.core.early_exit.execution as execution
    import ponderlab.plugins.halting.recurrent_depth as module

    config = RecurrentDepthConfig(scope=scope, max_hops=5, exit_threshold=0.05)
    model = tiny_model(RecurrentDepth, config, layers=2).double().eval()
    head_rows = []
    model.head.register_forward_hook(lambda m, args, out: head_rows.append(args[0].shape[:-1].numel()))
    ids = torch.randint(0, VOCAB, (3, 8), generator=torch.Generator().manual_seed(7))
    mask = torch.ones(3, 8, dtype=torch.bool)
    mask[1, 6:] = False
    with torch.no_grad():
        torch.manual_seed(0)
        fast = model(ids, mask=mask)
        fast_rows, head_rows[:] = list(head_rows), []
        with monkeypatch.context() as patch:
            patch.setattr(execution, "computes_rows", lambda block: False)
            patch.setattr(module, "speculates", lambda state: True)
            torch.manual_seed(0)
            slow = model(ids, mask=mask)
    hops = fast.stats.hops[mask]
    assert hops.min() < hops.max(), "the case must mix exit iterations"
    assert torch.equal(fast.stats.hops, slow.stats.hops)
    torch.testing.assert_close(fast.logits, slow.logits)
    assert min(fast_rows[1:-1]) < 24 and max(head_rows) == 24  # rows only vs every token


def test_depth_scope_is_rejected():
    with pytest.raises(SpecError, match="does not support scope 'depth'"):
        RecurrentDepth(RecurrentDepthConfig(scope="depth"), d_model=4, n_layers=2)


def test_layer_scope_passes_the_kit():
    check_plugin(RecurrentDepth, {"scope": "layer", "exit_threshold": None})
