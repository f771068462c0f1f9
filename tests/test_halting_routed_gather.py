"""GPT-NeoX `forward_routed` computes the routed tokens only (gathered (B, C, D)); it must equal
the masked dense path (`routed_execution = "masked"`) in value and gradient, in one block and
in whole MoD / MoR models, for training and inference."""

from __future__ import annotations

import pytest
import torch

from ponderlab.core.interfaces import BlockContext
from ponderlab.core.model import PonderModel
from ponderlab.plugins.backbones.transformer import (
    TransformerBackbone,
    TransformerConfig,
    routed_positions,
)
from ponderlab.plugins.halting.mixture_of_depths import MixtureOfDepths, MixtureOfDepthsConfig
from ponderlab.plugins.halting.mixture_of_recursions import (
    MixtureOfRecursions,
    MixtureOfRecursionsConfig,
)

VOCAB = 11


def backbone(parallel: bool = True, seed: int = 0, n_layers: int = 2) -> TransformerBackbone:
    torch.manual_seed(seed)
    config = TransformerConfig(d_model=8, n_layers=n_layers, n_heads=2, parallel_residual=parallel)
    return TransformerBackbone(config, vocab_size=VOCAB).double()


def set_execution(module: torch.nn.Module, execution: str) -> None:
    for block in module.modules():
        if hasattr(block, "routed_execution"):
            block.routed_execution = execution


def assert_same_gradients(got, expected) -> None:
    """Equal gradients, a None one (parameter unused) only against an all-zero one."""
    for a, b in zip(got, expected, strict=True):
        if a is None or b is None:
            assert a is None and b is None or float((a if a is not None else b).abs().max()) == 0.0
        else:
            torch.testing.assert_close(a, b)


def test_routed_positions_by_hand():
    routed = torch.tensor([[False, True, True, False], [False, False, False, False], [True, False, False, True]])
    positions, valid = routed_positions(routed)
    assert positions.tolist() == [[1, 2], [0, 1], [0, 3]]  # routed first, in order; then padding
    assert valid.tolist() == [[True, True], [False, False], [True, True]]


# Row 0: 3 routed; row 1: 1 routed (padding slots); row 2: none routed (all padding)
ROUTED = torch.tensor([
    [True, False, True, True, False, False],
    [False, False, False, False, True, False],
    [False, False, False, False, False, False],
])


def run_block(block, hidden, routed, mixing, execution, cache=None, hop=0):
    block.routed_execution = execution
    context = BlockContext(layer=1, hop=hop, mixing=mixing, kv_cache=cache)
    return block.forward_routed(hidden, routed, context)


@pytest.mark.parametrize("parallel", [True, False])
@pytest.mark.parametrize("mixing", ["routed", "shared_kv"])
def test_gathered_block_equals_the_masked_one_with_gradients(parallel, mixing):
    block = backbone(parallel).blocks[1].train()  # no dropout in these configs: training = eval
    first = torch.randn(3, 6, 8, dtype=torch.float64)
    hidden = torch.randn(3, 6, 8, dtype=torch.float64, requires_grad=True)
    weights = torch.randn(3, 6, 8, dtype=torch.float64)
    results = {}
    for execution in ("gathered", "masked"):
        cache: dict = {}
        if mixing == "shared_kv":  # hop 0 (every token routed) stores the keys and values
            run_block(block, first, torch.ones_like(ROUTED), mixing, execution, cache, hop=0)
        out = run_block(block, hidden, ROUTED, mixing, execution, cache, hop=1 if mixing == "shared_kv" else 0)
        loss = (out * weights * ROUTED.unsqueeze(-1)).sum()  # the core reads routed rows only
        grads = torch.autograd.grad(loss, [hidden, *block.parameters()], allow_unused=True)
        results[execution] = (out, grads)
    (gathered, g_grads), (masked, m_grads) = results["gathered"], results["masked"]
    torch.testing.assert_close(gathered[ROUTED], masked[ROUTED])
    assert torch.equal(gathered[~ROUTED], hidden[~ROUTED])  # unrouted rows come back unchanged
    assert_same_gradients(g_grads, m_grads)
    assert float(g_grads[0].abs().sum()) > 0


def test_shared_kv_first_hop_with_a_subset_routed_stores_every_tokens_keys():
    block = backbone(seed=1).blocks[1].eval()
    first = torch.randn(3, 6, 8, dtype=torch.float64)
    later = torch.randn(3, 6, 8, dtype=torch.float64)
    with torch.no_grad():
        caches, outs = {}, {}
        for execution in ("gathered", "masked"):
            caches[execution] = {}
            run_block(block, first, ROUTED, "shared_kv", execution, caches[execution], hop=0)
            outs[execution] = run_block(block, later, ROUTED.roll(1, 1), "shared_kv", execution,
                                        caches[execution], hop=1)
    for a, b in zip(caches["gathered"][1], caches["masked"][1], strict=True):
        torch.testing.assert_close(a, b)  # (B, H, L, dh): every token's, routed or not
    routed = ROUTED.roll(1, 1)
    torch.testing.assert_close(outs["gathered"][routed], outs["masked"][routed])


def test_nothing_routed_leaves_every_row_unchanged():
    block = backbone().blocks[1].eval()
    hidden = torch.randn(2, 5, 8, dtype=torch.float64)
    with torch.no_grad():
        out = run_block(block, hidden, torch.zeros(2, 5, dtype=torch.bool), "routed", "gathered")
    assert torch.equal(out, hidden)


def test_the_mlp_computes_routed_tokens_only():
    block = backbone().blocks[1].eval()
    seen = []
    block.layer.mlp.register_forward_hook(lambda module, args, out: seen.append(args[0].shape[:-1]))
    hidden = torch.randn(3, 6, 8, dtype=torch.float64)
    with torch.no_grad():
        run_block(block, hidden, ROUTED, "routed", "gathered")
        run_block(block, hidden, ROUTED, "routed", "masked")
    assert seen == [torch.Size([3, 3]), torch.Size([3, 6])]  # C = 3 (the most routed in a row) vs L


# --------------------------------------------------------------------------- whole models


def mod_model(**options) -> PonderModel:
    model = PonderModel(backbone(n_layers=4), MixtureOfDepths,
                        MixtureOfDepthsConfig(capacity=0.5, route_every=1, **options), vocab_size=VOCAB).double()
    for name, parameter in model.sites.named_parameters():  # mixed routing decisions at inference
        torch.nn.init.normal_(parameter, std=0.0 if name.endswith("bias") else 10.0)
    return model


def mor_model(**options) -> PonderModel:
    model = PonderModel(backbone(n_layers=2), MixtureOfRecursions, MixtureOfRecursionsConfig(**options),
                        vocab_size=VOCAB).double()
    for name, parameter in model.sites.named_parameters():
        torch.nn.init.normal_(parameter, std=0.0 if name.endswith("bias") else 10.0)
    return model


MODELS = [
    pytest.param(mod_model, {}, id="mod"),
    pytest.param(mod_model, {"causal": "predictor"}, id="mod-predictor"),
    pytest.param(mor_model, {}, id="mor-expert"),
    pytest.param(mor_model, {"kv_sharing": True, "capacities": [0.75, 0.5, 0.25]}, id="mor-expert-kv"),
    pytest.param(mor_model, {"routing": "token_choice"}, id="mor-token"),
    pytest.param(mor_model, {"routing": "token_choice", "kv_sharing": True}, id="mor-token-kv"),
    pytest.param(mor_model, {"scope": "layer"}, id="mor-layer-scope"),
]


@pytest.mark.parametrize(("make", "options"), MODELS)
@pytest.mark.parametrize("training", [True, False])
def test_gathered_model_equals_the_masked_model(make, options, training):
    model = make(**options).train(training)
    ids = torch.randint(0, VOCAB, (3, 10), generator=torch.Generator().manual_seed(5))
    mask = torch.ones(3, 10, dtype=torch.bool)
    mask[1, 7:] = False  # padding: fewer routed tokens in that row
    results = {}
    for execution in ("gathered", "masked"):
        set_execution(model, execution)
        out = model(ids, labels=ids, mask=mask)
        grads = torch.autograd.grad(out.loss, list(model.parameters()), allow_unused=True) if training else ()
        results[execution] = (out, grads)
    (gathered, g_grads), (masked, m_grads) = results["gathered"], results["masked"]
    torch.testing.assert_close(gathered.logits, masked.logits)
    torch.testing.assert_close(gathered.loss, masked.loss)
    assert torch.equal(gathered.stats.layers, masked.stats.layers)
    hops = gathered.stats.layers[mask]
    assert hops.min() < hops.max()  # routing sent tokens to different depths
    assert_same_gradients(g_grads, m_grads)
    if training:
        assert any(g is not None and float(g.abs().max()) > 0 for g in g_grads)
