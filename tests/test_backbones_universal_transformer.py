"""Universal Transformer: one shared layer, re-applied per hop with a depth signal."""

from __future__ import annotations

import math

import pytest
import torch

import ponderlab
from ponderlab.core.errors import SpecError
from ponderlab.core.interfaces import BlockContext
from ponderlab.core.registry import get_registry
from ponderlab.plugins.backbones.universal_transformer import sinusoidal_signal

TINY = {"name": "universal_transformer", "d_model": 16, "n_heads": 2}


def build(halting, **backbone):
    return ponderlab.build_model(backbone={**TINY, **backbone}, halting=halting, vocab_size=11, seed=0)


def record_steps(model):
    """Record (layer, hop) of every application of the shared block."""
    calls = []
    block = model.backbone.blocks[0]
    block.register_forward_pre_hook(lambda module, args: calls.append((args[1].layer, args[1].hop)))
    return calls


def test_sinusoidal_signal_by_hand():
    signal = sinusoidal_signal(3, 6, torch.device("cpu"), torch.float64)
    frequencies = [math.exp(-math.log(10000.0) / 2 * i) for i in range(3)]
    expected = [math.sin(3 * f) for f in frequencies] + [math.cos(3 * f) for f in frequencies]
    torch.testing.assert_close(signal, torch.tensor(expected, dtype=torch.float64))


def test_one_shared_layer_whatever_the_number_of_hops():
    few = build({"name": "constant", "hops": 1})
    many = build({"name": "constant", "hops": 5})
    assert len(many.backbone.blocks) == 1
    count = sum(p.numel() for p in many.backbone.parameters())
    assert count == sum(p.numel() for p in few.backbone.parameters())


def test_constant_depth_applies_the_shared_layer_per_hop_with_its_depth_index():
    model = build({"name": "constant", "hops": 3})
    calls = record_steps(model)
    model(torch.randint(0, 11, (2, 7)))
    assert calls == [(0, 0), (0, 1), (0, 2)]


@pytest.mark.parametrize("kind", ["sinusoidal", "learned"])
def test_depth_signal_changes_the_layer_output(kind):
    model = build({"name": "none"}, depth_embedding=kind)
    if kind == "learned":
        torch.nn.init.normal_(model.backbone.depth.table.weight)
    block = model.backbone.blocks[0]
    hidden = torch.randn(2, 5, 16)
    first = block(hidden, BlockContext(layer=0, hop=0))
    second = block(hidden, BlockContext(layer=0, hop=1))
    assert not torch.allclose(first, second)
    torch.testing.assert_close(first, block(hidden, BlockContext(layer=0, hop=0)))


def test_learned_depth_table_has_a_clear_limit():
    model = build({"name": "constant", "hops": 3}, depth_embedding="learned", max_depth=2)
    with pytest.raises(ValueError, match="hop 2 exceeds backbone.max_depth=2"):
        model(torch.randint(0, 11, (1, 4)))


HALTINGS = {
    "ut": {"name": "ut", "max_hops": 3},
    "graves": {"name": "graves", "max_hops": 3},
    "pondernet": {"name": "pondernet", "max_hops": 3},
    "constant": {"name": "constant", "hops": 3},
}


@pytest.mark.parametrize("halting", list(HALTINGS))
def test_trains_with_each_halting_strategy(halting):
    if halting not in get_registry().names("halting"):
        pytest.skip(f"halting strategy {halting!r} is not installed")
    try:
        model = build(HALTINGS[halting])
    except SpecError as error:  # a strategy may refuse an option it does not have
        pytest.fail(f"{halting}: {error}")
    calls = record_steps(model)
    optimizer = torch.optim.AdamW(model.parameters(), lr=1e-2)
    x = torch.randint(0, 11, (3, 8))
    before = [p.detach().clone() for p in model.backbone.blocks[0].parameters()]
    for _ in range(2):
        out = model(x, labels=x)
        optimizer.zero_grad()
        out.loss.backward()
        optimizer.step()
    assert torch.isfinite(out.loss)
    steps = {n for _, n in calls}
    assert steps and max(steps) < 3 and (halting == "constant") <= (steps == {0, 1, 2})
    assert 1.0 <= float(out.stats.hops.mean()) <= 3.0
    moved = [not torch.equal(a, b) for a, b in zip(before, model.backbone.blocks[0].parameters(), strict=True)]
    assert any(moved)
