"""Every strategy in every scope it supports, clear errors elsewhere, and seed 000's init check."""

from __future__ import annotations

import math

import pytest
import torch

import ponderlab
from ponderlab.core.errors import SpecError
from ponderlab.core.run import build_model_from_spec
from ponderlab.core.spec import validate_spec

VOCAB = 11
LSTM = {"name": "lstm", "d_model": 8, "n_layers": 2}
TRANSFORMER = {"name": "transformer", "d_model": 16, "n_layers": 2, "n_heads": 2, "ffn_size": 16}

SUPPORTED = [
    ("none", "layer", {}), ("none", "model", {}), ("none", "depth", {}),
    ("constant", "layer", {"hops": 2}), ("constant", "model", {"hops": 2}), ("constant", "depth", {"hops": 1}),
    ("random", "layer", {"mean_hops": 1.5, "max_hops": 3}), ("random", "model", {"mean_hops": 2.0}),
    ("random", "depth", {"mean_hops": 1.5}),
    ("graves", "layer", {"max_hops": 3}), ("graves", "model", {"max_hops": 3}), ("graves", "depth", {}),
    ("ut", "layer", {"max_hops": 3}), ("ut", "model", {"max_hops": 3, "combine": "interpolate"}),
    ("threshold", "depth", {}),
    ("pondernet", "model", {"max_hops": 3}), ("pondernet", "depth", {}),
]


def spec_data(halting: dict, backbone: dict | None = None) -> dict:
    return {
        "task": {"name": "binary_copy", "length": 3, "train_size": 8, "validation_size": 4, "test_size": 4},
        "backbone": backbone or LSTM,
        "halting": halting,
    }


@pytest.mark.parametrize("name, scope, options", SUPPORTED)
def test_strategy_trains_and_evaluates_in_scope(name, scope, options):
    spec = validate_spec(spec_data({"name": name, "scope": scope, **options}))
    torch.manual_seed(0)
    model = build_model_from_spec(spec, VOCAB)
    ids = torch.randint(0, VOCAB, (2, 6))
    labels = torch.randint(0, VOCAB, (2, 6))
    out = model(ids, labels=labels)
    assert torch.isfinite(out.loss)
    out.loss.backward()
    for param in model.sites.parameters():
        assert param.grad is not None and torch.isfinite(param.grad).all()
    model.eval()
    with torch.no_grad():
        evaluated = model(ids)
    cap = model.sites[0].max_hops()
    assert evaluated.logits.shape == (2, 6, VOCAB)
    assert (evaluated.stats.hops >= 1).all() and (evaluated.stats.hops <= cap).all()


@pytest.mark.parametrize(
    "halting, path, message",
    [
        ({"name": "ut", "scope": "depth"}, "halting.scope", "does not support scope 'depth'"),
        ({"name": "threshold", "scope": "layer"}, "halting.scope", "does not support scope 'layer'"),
        ({"name": "threshold", "scope": "model"}, "halting.scope", "supported: depth"),
        ({"name": "graves", "scope": "depth", "max_hops": 3}, "halting.max_hops", "max_hops does not apply"),
        ({"name": "random", "mean_hops": 3, "max_hops": 2}, "halting.mean_hops", "exceeds max_hops"),
        ({"name": "graves", "epsilon": 1.5}, "halting.epsilon", "less than 1"),
        ({"name": "ut", "combine": "sum"}, "halting.combine", "accumulated"),
        ({"name": "pondernet", "inference": "greedy"}, "halting.inference", "most_likely"),
        ({"name": "threshold", "threshold": 2}, "halting.threshold", "less than or equal to 1"),
        ({"name": "threshold", "treshold": 0.9}, "halting.treshold", "unknown key"),
    ],
)
def test_invalid_combinations_are_spec_errors(halting, path, message):
    with pytest.raises(SpecError, match=message) as info:
        validate_spec(spec_data(halting))
    assert info.value.path == path


@pytest.mark.parametrize(
    "halting, path",
    [
        ({"name": "pondernet", "scope": "layer"}, "halting.scope"),  # 2 layers: no single head-facing site
        ({"name": "constant", "scope": "depth", "hops": 3}, "halting.hops"),
        ({"name": "random", "scope": "depth", "mean_hops": 2.5}, "halting.mean_hops"),
    ],
)
def test_combinations_that_need_the_layer_count_fail_at_build(halting, path):
    spec = validate_spec(spec_data(halting))
    with pytest.raises(SpecError) as info:
        build_model_from_spec(spec, VOCAB)
    assert info.value.path == path


SEED000 = [  # seed 000's setting: halting bias 1.0, threshold 0.9
    {"name": "graves", "epsilon": 0.1, "halting_bias_init": 1.0, "scope": "layer", "max_hops": 4},
    {"name": "graves", "epsilon": 0.1, "halting_bias_init": 1.0, "scope": "model", "max_hops": 4},
    {"name": "graves", "epsilon": 0.1, "halting_bias_init": 1.0, "scope": "depth"},
    {"name": "ut", "epsilon": 0.1, "halting_bias_init": 1.0, "scope": "layer", "max_hops": 4},
    {"name": "threshold", "threshold": 0.9, "halting_bias_init": 1.0},
]


@pytest.mark.parametrize("backbone", [LSTM, {**TRANSFORMER, "n_layers": 3, "n_heads": 1}])
@pytest.mark.parametrize("halting", SEED000)
def test_seed000_init_every_token_takes_exactly_two_hops(backbone, halting):
    torch.manual_seed(1)
    model = ponderlab.build_model(backbone=backbone, halting=halting, vocab_size=VOCAB)
    # two hops per site; depth scope runs two distinct layers, the others re-apply every layer twice
    layers = 2.0 if model.scope == "depth" else 2.0 * backbone["n_layers"]
    ids = torch.randint(0, VOCAB, (3, 9))
    for mode in (True, False):
        model.train(mode)
        stats = model(ids).stats
        assert stats.hops.eq(2).all()
        assert stats.layers.eq(layers).all()
        # h = sigmoid(1) = 0.731 at hop 1, so R = 1 - 0.731 at hop 2 for every token
        torch.testing.assert_close(stats.remainder, torch.full_like(stats.remainder, 1 - 1 / (1 + math.exp(-1))))
