"""CALM at inference computes the running tokens only: later layers run `forward_rows` on
them (exited tokens give keys and values from their copied states, up to the last running
position), and the confidence (the shared head for the softmax response) is computed for
running tokens only. It must equal the dense computation: every layer and every confidence
on every token, exited tokens frozen."""

from __future__ import annotations

import pytest
import torch
from adaptive_checks import VOCAB, tiny_model

import ponderlab.core.early_exit.execution as execution
import ponderlab.plugins.halting.confidence as confidence_module
from ponderlab.plugins.halting.calm import CALM, CALMConfig


def dense(monkeypatch) -> None:
    """Make the core run every block on every token, and the loop score every token."""
    monkeypatch.setattr(execution, "computes_rows", lambda block: False)
    monkeypatch.setattr(confidence_module, "speculates", lambda state: True)


CASES = [
    ({"confidence": "softmax", "threshold": 0.2}, 0),
    ({"confidence": "softmax", "threshold": 0.3, "decay_tau": 2.0}, 1),
    ({"confidence": "state", "threshold": 0.8}, 2),
    ({"confidence": "classifier", "threshold": 0.5}, 3),
]


@pytest.mark.parametrize(("options", "seed"), CASES)
def test_running_rows_equal_the_dense_computation(options, seed, monkeypatch):
    model = tiny_model(CALM, CALMConfig(**options), seed=seed, layers=4).double().eval()
    ids = torch.randint(0, VOCAB, (3, 9), generator=torch.Generator().manual_seed(seed))
    mask = torch.ones(3, 9, dtype=torch.bool)
    mask[2, 6:] = False  # padding exits after its first layer
    with torch.no_grad():
        fast = model(ids, mask=mask)
        with monkeypatch.context() as patch:
            dense(patch)
            slow = model(ids, mask=mask)
    layers = fast.stats.layers[mask]
    assert layers.min() < layers.max(), "the case must mix exit layers"
    assert torch.equal(fast.stats.layers, slow.stats.layers)
    torch.testing.assert_close(fast.logits, slow.logits)


def test_exited_tokens_skip_the_head_and_the_later_layers_work():
    model = tiny_model(CALM, CALMConfig(confidence="softmax", threshold=0.2), layers=4).eval()
    head_rows, mlp_rows = [], []
    model.head.register_forward_hook(lambda m, args, out: head_rows.append(args[0].shape[:-1].numel()))
    for block in model.backbone.blocks:
        block.layer.mlp.register_forward_hook(lambda m, args, out: mlp_rows.append(args[0].shape[:-1].numel()))
    ids = torch.randint(0, VOCAB, (3, 9), generator=torch.Generator().manual_seed(0))
    with torch.no_grad():
        layers = model(ids).stats.layers  # (B, L) layers each token ran
    running = [int((layers >= n).sum()) for n in range(1, 5)]  # tokens that run layer n
    assert running[0] == 27 and running[-1] < running[1] < 27, running
    assert mlp_rows == [n for n in running if n]  # layer n's MLP: its running tokens only
    # confidence after layers 1..3 on the tokens running them, then the final logits
    assert head_rows == [n for n in running[:3] if n] + [27]
