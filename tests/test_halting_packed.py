"""Depth-scope inference on packed rows: the same results as the dense hops, with work only for running tokens."""

from __future__ import annotations

from typing import Literal

import pytest
import torch
from torch import Tensor, nn

from ponderlab.core.config import BackboneConfig
from ponderlab.core.early_exit import (
    PackedHops,
    active_rows,
    depth_hop,
    gather_active,
    hop_policy,
    scatter_active,
)
from ponderlab.core.halting import cumulative_halting_loop
from ponderlab.core.interfaces import Backbone, Block, BlockContext
from ponderlab.core.model import PonderModel
from ponderlab.plugins.backbones.transformer import TransformerBackbone, TransformerConfig
from ponderlab.plugins.halting.graves import GravesACT, GravesConfig
from ponderlab.plugins.halting.threshold import ThresholdACT, ThresholdConfig

D, VOCAB = 8, 7


class ShiftConfig(BackboneConfig):
    name: Literal["packed_shift_test"] = "packed_shift_test"


class ShiftBlock(Block):
    """s_t + tanh(W s_t + U s_{t-1}): the previous token's state is read from `hidden`,
    so a running token sees the frozen state of a halted neighbour. Records the rows
    each call computes."""

    def __init__(self):
        super().__init__()
        self.own = nn.Linear(D, D)
        self.previous = nn.Linear(D, D, bias=False)
        self.computed: list[int] = []

    def forward(self, hidden: Tensor, context: BlockContext) -> Tensor:  # (B, L, D)
        active = context.active
        if active is None:
            active = torch.ones(hidden.shape[:2], dtype=torch.bool)
        rows = active_rows(active)
        return scatter_active(hidden, rows, self.forward_rows(hidden, rows, gather_active(hidden, rows), context))

    def forward_rows(self, hidden: Tensor, rows: Tensor, states: Tensor, context: BlockContext) -> Tensor:
        self.computed.append(len(rows))
        flat = hidden.reshape(-1, D)
        previous = flat.index_select(0, (rows - 1).clamp_min(0)) * (rows % hidden.shape[1] != 0).unsqueeze(1)
        return states + torch.tanh(self.own(states) + self.previous(previous))  # (K, D)


class ShiftBackbone(Backbone):
    config_class = ShiftConfig

    def __init__(self, config: ShiftConfig, *, vocab_size: int):
        super().__init__(config, vocab_size=vocab_size)
        self.embedding = nn.Embedding(vocab_size, D)
        self.blocks = nn.ModuleList(ShiftBlock() for _ in range(config.n_layers))
        self.norm = nn.LayerNorm(D)


def shift_model(halting_cls, halting_config, *, n_layers: int = 4, halting_std: float | None = 2.0,
                halting_seed: int = 1) -> PonderModel:
    """A float64 model in eval mode; halting weights N(0, halting_std^2), biases as configured
    (None: the strategy's initialisation, where every token gets h = sigmoid(bias))."""
    torch.manual_seed(0)
    backbone = ShiftBackbone(ShiftConfig(d_model=D, n_layers=n_layers), vocab_size=VOCAB)
    model = PonderModel(backbone, halting_cls, halting_config, vocab_size=VOCAB).double().eval()
    generator = torch.Generator().manual_seed(halting_seed)
    for name, parameter in model.sites[0].named_parameters():  # token-dependent halting
        if halting_std is not None and name.endswith("weight"):
            nn.init.normal_(parameter, std=halting_std, generator=generator)
    return model


def both_paths(model: PonderModel, ids: Tensor, mask: Tensor | None = None):
    """(packed, dense) results of one inference pass: ModelOutput and the site's PonderOutput."""
    results = []
    for packed in (True, False):
        model.packed_inference = packed
        with torch.no_grad():
            hidden = model.backbone.embed(ids)
            site = model.run_stack(hidden, mask=mask).sites[0]
            results.append((model(ids, mask=mask), site))
    return results


#: (strategy, config, halting weight seed): seeds whose tokens exit at each of the 4 layers
STRATEGIES = [
    (ThresholdACT, ThresholdConfig(threshold=0.9, halting_bias_init=0.0), 1),
    (GravesACT, GravesConfig(scope="depth", epsilon=0.1, halting_bias_init=0.0), 4),
]


def mixed_exit_model(index: int) -> PonderModel:
    cls, config, seed = STRATEGIES[index]
    return shift_model(cls, config, halting_seed=seed)


@pytest.mark.parametrize("index", [0, 1], ids=["threshold", "graves"])
@pytest.mark.parametrize("padded", [False, True])
def test_packed_inference_gives_the_dense_results(index, padded):
    """Bitwise for threshold (its halting MLP sees the same gathered rows in both paths);
    to rounding for graves, whose linear unit runs on every token in the dense path."""
    model = mixed_exit_model(index)
    tolerance = 0.0 if index == 0 else 1e-14

    def same(given: Tensor, expected: Tensor) -> None:
        torch.testing.assert_close(given, expected, rtol=0.0, atol=tolerance)
    ids = torch.randint(0, VOCAB, (3, 11), generator=torch.Generator().manual_seed(2))
    mask = None
    if padded:
        mask = torch.ones_like(ids, dtype=torch.bool)
        mask[0, 7:] = False
        mask[2, 3:] = False
    (packed, packed_site), (dense, dense_site) = both_paths(model, ids, mask)
    layers = packed.stats.layers
    assert set(layers[mask if padded else slice(None)].flatten().tolist()) == {1.0, 2.0, 3.0, 4.0}
    same(packed.logits, dense.logits)
    assert torch.equal(packed.stats.hops, dense.stats.hops) and torch.equal(packed.stats.layers, dense.stats.layers)
    same(packed.stats.remainder, dense.stats.remainder)
    same(packed.stats.ponder_cost, dense.stats.ponder_cost)
    same(packed_site.output, dense_site.output)
    assert len(packed_site.hop_weights) == len(dense_site.hop_weights)
    for given, expected in zip(packed_site.hop_weights, dense_site.hop_weights, strict=True):
        same(given, expected)
    if padded:
        assert bool((layers[~mask] == 1).all())  # padding halts after its first layer


@pytest.mark.parametrize("bias, expected_layers", [(30.0, 1.0), (-30.0, 4.0)])
def test_every_token_halting_at_once_or_none_before_the_cap(bias, expected_layers):
    config = ThresholdConfig(threshold=0.9, halting_bias_init=bias)
    model = shift_model(ThresholdACT, config, halting_std=None)  # every token gets h = sigmoid(bias)
    ids = torch.randint(0, VOCAB, (2, 6), generator=torch.Generator().manual_seed(3))
    (packed, _), (dense, _) = both_paths(model, ids)
    assert bool((packed.stats.layers == expected_layers).all())
    assert torch.equal(packed.logits, dense.logits)
    assert torch.equal(packed.stats.remainder, dense.stats.remainder)


def test_each_layer_computes_only_the_running_tokens():
    model = mixed_exit_model(0)
    ids = torch.randint(0, VOCAB, (3, 11), generator=torch.Generator().manual_seed(2))
    with torch.no_grad():
        layers = model(ids).stats.layers  # (B, L)
    computed = [block.computed for block in model.backbone.blocks]
    running = [int((layers > n).sum()) for n in range(4)]
    assert [rows[0] for rows in computed] == running  # layer 1: every token, then the running ones
    assert all(len(rows) == 1 for rows in computed)
    assert sum(running) == int(layers.sum())  # the work is the layers executed


def test_hand_computed_weights_and_rows_of_three_tokens():
    """Three tokens, three layers, threshold 0.9; layer n adds n + 1 to every channel.

    token 0: h_1 = 0.95        -> exits after layer 1, weights (1)
    token 1: h = 0.5, 0.45     -> c_2 = 0.95, exits after layer 2, weights (0.5, 0.5)
    token 2: h = 0.2, 0.3      -> never reaches 0.9: the cap, weights (0.2, 0.3, 0.5)
    """
    h = {0: torch.tensor([0.95, 0.5, 0.2], dtype=torch.float64), 1: torch.tensor([0.45, 0.3], dtype=torch.float64)}
    state = torch.zeros(1, 3, 2, dtype=torch.float64)  # (B, L, D)
    asked: list[list[int] | None] = []

    def row_hop(n, rows, states):
        asked.append(None if rows is None else rows.tolist())
        current = state.reshape(-1, 2) if rows is None else states
        return current + (n + 1)  # s_n = 1, 3, 6 for a token that runs every layer

    def halting_probability(n, states, active):
        assert active is None and states.shape[0] == len(h[n])
        return h[n]

    hops = PackedHops([], state)
    hops.rows = row_hop  # layer n on the given rows, scripted
    out = cumulative_halting_loop(state, hops, n_hops=3, threshold=0.9,
                                  halting_probability=halting_probability)
    assert asked == [None, [1, 2], [2]]  # layer 2 for tokens 1 and 2, layer 3 for token 2 only
    expected = torch.tensor([1.0, 0.5 * 1 + 0.5 * 3, 0.2 * 1 + 0.3 * 3 + 0.5 * 6], dtype=torch.float64)
    torch.testing.assert_close(out.output[0, :, 0], expected, rtol=0, atol=1e-15)
    assert out.hops.tolist() == [[1.0, 2.0, 3.0]]
    torch.testing.assert_close(out.remainder[0], torch.tensor([1.0, 0.5, 0.5], dtype=torch.float64))
    torch.testing.assert_close(out.ponder_cost[0], torch.tensor([2.0, 2.5, 3.5], dtype=torch.float64))
    weights = torch.stack(out.hop_weights, -1)[0]  # (L, N)
    torch.testing.assert_close(weights, torch.tensor([[1.0, 0, 0], [0.5, 0.5, 0], [0.2, 0.3, 0.5]],
                                                     dtype=torch.float64))


def test_neox_packed_inference_matches_dense_hops():
    torch.manual_seed(0)
    config = TransformerConfig(d_model=16, n_layers=3, n_heads=2, ffn_size=32)
    model = PonderModel(TransformerBackbone(config, vocab_size=VOCAB), ThresholdACT,
                        ThresholdConfig(threshold=0.6, halting_bias_init=0.0), vocab_size=VOCAB).double().eval()
    for unit in model.sites[0].units:  # states are small at init: large weights give token-dependent exits
        nn.init.normal_(unit.hidden.weight, std=30.0, generator=torch.Generator().manual_seed(3))
        nn.init.normal_(unit.out.weight, std=30.0, generator=torch.Generator().manual_seed(4))
    ids = torch.randint(0, VOCAB, (3, 10), generator=torch.Generator().manual_seed(4))
    mask = torch.ones_like(ids, dtype=torch.bool)
    mask[1, 6:] = False
    (packed, _), (dense, _) = both_paths(model, ids, mask)
    assert len(set(packed.stats.layers[mask].tolist())) > 1
    torch.testing.assert_close(packed.logits, dense.logits, rtol=1e-12, atol=1e-12)
    assert torch.equal(packed.stats.layers, dense.stats.layers)


def test_packed_rows_only_without_autograd_and_where_every_part_supports_them():
    model = mixed_exit_model(0)
    blocks = model.backbone.blocks
    hidden = torch.zeros(2, 3, D, dtype=torch.float64)

    def dense(state, n, active):
        return state

    def packs_rows(blocks, hidden, dense_only=False):
        return isinstance(depth_hop(blocks, hidden, dense, dense_only=dense_only), PackedHops)

    with torch.no_grad():
        assert packs_rows(blocks, hidden)
        assert not packs_rows(blocks, hidden, dense_only=True)  # e.g. per-layer outputs for memory
        with hop_policy("speculative"):  # loops that do not read the running count per hop
            assert not packs_rows(blocks, hidden)
    assert not packs_rows(blocks, hidden)  # autograd on: training keeps the dense hops


def test_training_keeps_the_dense_hops_and_inference_takes_the_packed_ones(monkeypatch):
    import ponderlab.core.early_exit.execution as model_module

    packed_passes: list[int] = []

    class CountingRowHops(PackedHops):
        def __init__(self, blocks, hidden, dense):
            packed_passes.append(1)
            super().__init__(blocks, hidden, dense)

    monkeypatch.setattr(model_module, "PackedHops", CountingRowHops)
    model = mixed_exit_model(0).train()
    ids = torch.randint(0, VOCAB, (2, 9), generator=torch.Generator().manual_seed(5))
    out = model(ids, labels=ids)
    out.loss.backward()
    assert packed_passes == []  # autograd on: the dense hops, whose state is never written in place
    reached = [int((out.stats.layers > n).sum()) for n in range(4)]
    for block, tokens in zip(model.backbone.blocks, reached, strict=True):
        assert (block.own.weight.grad is not None) == (tokens > 0)
    with torch.no_grad():
        model.eval()(ids)
    assert packed_passes == [1]


class IdentityBlock(Block):
    def forward(self, hidden: Tensor, context: BlockContext) -> Tensor:
        return hidden  # the caller's own tensor

    def forward_rows(self, hidden: Tensor, rows: Tensor, states: Tensor, context: BlockContext) -> Tensor:
        return states + 1.0


def test_row_hops_never_write_into_the_callers_state():
    hidden = torch.randn(2, 3, 4)
    before = hidden.clone()
    hops = PackedHops(nn.ModuleList(IdentityBlock() for _ in range(3)), hidden)
    states = hops.rows(0, None, None)  # every token; the block returns `hidden` itself
    rows = torch.tensor([1, 4])
    states = hops.rows(1, rows, states.index_select(0, rows))
    hops.rows(2, rows, states)
    assert torch.equal(hidden, before)
    expected = before.reshape(-1, 4).clone()
    expected[rows] += 1.0  # layer 2's states written back; layer 3's (the last) not needed
    assert torch.equal(hops.hidden.reshape(-1, 4), expected)
