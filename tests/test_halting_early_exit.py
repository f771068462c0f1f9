"""Real early exit: halted tokens cost no position-wise work, and loops stop when all halted."""

from __future__ import annotations

from typing import Literal

import pytest
import torch
from torch import nn
from twin_checks import (
    assert_same_inference,
    assert_same_logits_and_gradients,
    block_rows,
    halting_twins,
)

from ponderlab.core.config import BackboneConfig
from ponderlab.core.early_exit import apply_to_active
from ponderlab.core.interfaces import Backbone, Block, BlockContext
from ponderlab.core.model import PonderModel
from ponderlab.plugins.backbones.transformer import (
    TransformerBackbone,
    TransformerConfig,
)
from ponderlab.plugins.halting.graves import GravesACT, GravesConfig
from ponderlab.plugins.halting.reference import script_mlp
from ponderlab.plugins.halting.threshold import ThresholdACT, ThresholdConfig
from ponderlab.plugins.halting.ut import UniversalTransformerACT, UTConfig

D, VOCAB = 8, 6


class CountingConfig(BackboneConfig):
    name: Literal["counting_test"] = "counting_test"


class CountingBlock(Block):
    """Causal shift-mix (all tokens) + residual MLP on the active tokens; counts MLP rows."""

    def __init__(self, subset: bool):
        super().__init__()
        self.subset = subset
        self.mix = nn.Parameter(torch.full((D,), 0.1))
        self.mlp = nn.Sequential(nn.Linear(D, 2 * D), nn.GELU(), nn.Linear(2 * D, D))
        self.register_buffer("keep_flag", torch.tensor([0.0] + [1.0] * (D - 1)))  # channel 0 untouched
        self.rows: list[int] = []

    def positionwise(self, x):
        self.rows.append(x.shape[0] if x.dim() == 2 else x.shape[0] * x.shape[1])
        return x + self.mlp(x) * self.keep_flag

    def forward(self, hidden, context: BlockContext):
        previous = torch.cat([torch.zeros_like(hidden[:, :1]), hidden[:, :-1]], dim=1)
        mixed = hidden + self.mix * previous * self.keep_flag  # (B, L, D), causal
        return apply_to_active(self.positionwise, mixed, context.active if self.subset else None)


class CountingBackbone(Backbone):
    config_class = CountingConfig

    def __init__(self, config, *, vocab_size, subset: bool = True):
        super().__init__(config, vocab_size=vocab_size)
        self.embedding = nn.Embedding(vocab_size, D)
        with torch.no_grad():  # channel 0 = +20 for even token ids, -20 for odd ones
            self.embedding.weight[:, 0] = torch.tensor([20.0 if i % 2 == 0 else -20.0 for i in range(vocab_size)])
        self.blocks = nn.ModuleList(CountingBlock(subset) for _ in range(config.n_layers))
        self.norm = nn.LayerNorm(D)


def twin_models(halting_cls, halting_config, n_layers: int):
    """The same weights with and without subset computation."""
    models = []
    for subset in (True, False):
        torch.manual_seed(0)
        backbone = CountingBackbone(CountingConfig(d_model=D, n_layers=n_layers), vocab_size=VOCAB, subset=subset)
        models.append(PonderModel(backbone, halting_cls, halting_config, vocab_size=VOCAB))
    models[1].load_state_dict(models[0].state_dict())
    return models


def even_tokens_exit_after_layer_one(model: PonderModel) -> None:
    """Threshold units: layer 1 halts even tokens (h = 1), no unit halts anyone else."""
    units = model.sites[0].units
    script_mlp(units[0].hidden, units[0].out, control_index=0)  # logit = channel 0 = +-20
    for unit in units[1:]:
        with torch.no_grad():
            unit.out.weight.zero_()
            unit.out.bias.fill_(-20.0)


def test_threshold_skips_exited_tokens_and_matches_full_computation():
    n_layers = 4
    fast, full = twin_models(ThresholdACT, ThresholdConfig(threshold=0.99), n_layers)
    for model in (fast, full):
        even_tokens_exit_after_layer_one(model)
        model.eval()
    ids = torch.tensor([[0, 1, 2, 3, 5, 4], [1, 1, 0, 3, 2, 5]])
    even = ids % 2 == 0
    with torch.no_grad():
        a, b = fast(ids), full(ids)
    torch.testing.assert_close(a.logits, b.logits)
    assert a.stats.hops[even].eq(1).all() and a.stats.hops[~even].eq(n_layers).all()
    rows = [block.rows for block in fast.backbone.blocks]
    assert rows[0] == [ids.numel()]
    assert all(r == [int((~even).sum())] for r in rows[1:])  # only running tokens are computed
    assert all(block.rows == [ids.numel()] for block in full.backbone.blocks)


def test_threshold_stops_when_every_token_exited():
    fast, _ = twin_models(ThresholdACT, ThresholdConfig(threshold=0.99), 3)
    even_tokens_exit_after_layer_one(fast)
    fast.eval()
    with torch.no_grad():
        out = fast(torch.tensor([[0, 2, 4, 2]]))
    assert out.stats.hops.eq(1).all()
    assert [len(block.rows) for block in fast.backbone.blocks] == [1, 0, 0]


@pytest.mark.parametrize(
    "cls, config",
    [(GravesACT, GravesConfig(max_hops=4, epsilon=0.1)), (UniversalTransformerACT, UTConfig(max_hops=4))],
)
def test_layer_scope_strategies_skip_halted_tokens(cls, config):
    fast, full = twin_models(cls, config, n_layers=1)
    for model in (fast, full):
        unit = model.sites[0].units[0] if cls is GravesACT else model.sites[0].unit
        with torch.no_grad():  # logit = channel 0 / 4: even tokens h = 0.993 (halt at hop 1), odd h = 0.007
            unit.linear.weight.zero_()
            unit.linear.weight[0, 0] = 0.25
            unit.linear.bias.zero_()
        model.train()
    ids = torch.tensor([[0, 1, 2, 3, 4, 5]])
    a, b = fast(ids), full(ids)
    hops = a.stats.hops[0].tolist()
    assert hops == [1.0, 4.0, 1.0, 4.0, 1.0, 4.0]
    assert fast.backbone.blocks[0].rows == [6, 3, 3, 3]
    # logits and gradients agree (the subset path is an exact reformulation)
    assert_same_logits_and_gradients(fast, full, a.logits, b.logits)


# --------------------------------------------------------------------------- GPT-NeoX


def neox_twins(halting_cls, halting_config, *, parallel_residual: bool, dtype: torch.dtype = torch.float64):
    def build():
        torch.manual_seed(0)
        config = TransformerConfig(d_model=16, n_layers=3, n_heads=2, ffn_size=32,
                                   parallel_residual=parallel_residual)
        return PonderModel(TransformerBackbone(config, vocab_size=VOCAB), halting_cls, halting_config,
                           vocab_size=VOCAB).to(dtype)

    # halting that depends on the token; states are small at init (embedding std 0.02): large weights.
    # The full twin's inference keeps the dense hops: the reference for the packed ones.
    fast, full = halting_twins(build, std=30.0)
    return fast, full, block_rows(fast, lambda block: block.layer.mlp)


@pytest.mark.parametrize("parallel_residual", [True, False])
def test_neox_threshold_early_exit_runs_the_mlp_only_for_running_tokens(parallel_residual):
    config = ThresholdConfig(threshold=0.6, halting_bias_init=0.0)
    fast, full, mlp_rows = neox_twins(ThresholdACT, config, parallel_residual=parallel_residual)
    ids = torch.randint(0, VOCAB, (3, 10), generator=torch.Generator().manual_seed(4))
    assert mlp_rows == assert_same_inference(fast, full, ids)


def test_neox_active_path_gives_the_same_gradients_in_training():
    config = GravesConfig(max_hops=3, epsilon=0.1, halting_bias_init=-1.0)
    fast, full, mlp_rows = neox_twins(GravesACT, config, parallel_residual=True)
    ids = torch.randint(0, VOCAB, (2, 9), generator=torch.Generator().manual_seed(5))
    a, b = fast.train()(ids), full.train()(ids)
    assert len(set(a.stats.hops.flatten().tolist())) > 1
    assert min(mlp_rows) < ids.numel()  # later hops computed a subset
    assert_same_logits_and_gradients(fast, full, a.logits, b.logits)


def test_neox_active_path_under_bf16_autocast_matches_the_full_layer():
    """Mixed precision as the trainer runs it: projections in bf16, the frozen rows in float32."""
    config = ThresholdConfig(threshold=0.6, halting_bias_init=0.0)
    fast, full, mlp_rows = neox_twins(ThresholdACT, config, parallel_residual=False, dtype=torch.float32)
    ids = torch.randint(0, VOCAB, (3, 10), generator=torch.Generator().manual_seed(4))
    with torch.no_grad(), torch.autocast("cpu", dtype=torch.bfloat16):
        a, b = fast.eval()(ids), full.eval()(ids)
    assert 1 < len(set(a.stats.layers.flatten().tolist()))  # the active path ran
    assert min(mlp_rows) < ids.numel()
    assert torch.equal(a.stats.layers, b.stats.layers)
    torch.testing.assert_close(a.logits.float(), b.logits.float(), rtol=0.02, atol=0.02)


def test_neox_attention_queries_only_for_running_tokens(monkeypatch):
    """Halted tokens contribute keys and values, but no query is computed for them."""
    import ponderlab.plugins.backbones.transformer as transformer_module

    query_lengths: list[tuple[int, int]] = []
    real_sdpa = torch.nn.functional.scaled_dot_product_attention

    def recording_sdpa(query, key, *args, **kwargs):
        query_lengths.append((query.shape[-2], key.shape[-2]))
        return real_sdpa(query, key, *args, **kwargs)

    monkeypatch.setattr(transformer_module.F, "scaled_dot_product_attention", recording_sdpa)
    config = ThresholdConfig(threshold=0.6, halting_bias_init=0.0)
    fast, _, _ = neox_twins(ThresholdACT, config, parallel_residual=True)
    ids = torch.randint(0, VOCAB, (3, 10), generator=torch.Generator().manual_seed(4))
    with torch.no_grad():
        layers = fast.eval()(ids).stats.layers
    length = ids.shape[1]
    packed = [int((layers >= n).sum(1).max()) for n in (2, 3)]  # most running tokens in a sequence
    reach = [int((layers >= n).any(0).nonzero().max()) + 1 if k else 0 for n, k in zip((2, 3), packed, strict=True)]
    assert 0 < packed[0] < length
    # layer 1: every token (the HF layer); later layers: packed running queries over the keys
    # up to the last running position (later halted tokens are read by nobody)
    assert query_lengths == [(length, length)] + [(k, r) for k, r in zip(packed, reach, strict=True) if k]


@pytest.mark.gpu
def test_neox_early_exit_on_gpu_matches_full_computation_on_cpu():
    """Packed queries, explicit causal mask and subset MLP give the CPU's full-layer result on CUDA."""
    config = ThresholdConfig(threshold=0.6, halting_bias_init=0.0)
    fast, full, mlp_rows = neox_twins(ThresholdACT, config, parallel_residual=False)
    ids = torch.randint(0, VOCAB, (3, 10), generator=torch.Generator().manual_seed(4))
    with torch.no_grad():
        expected = full.eval()(ids)
        got = fast.cuda().eval()(ids.cuda())
    layers = got.stats.layers.cpu()
    assert 1 < len(set(layers.flatten().tolist()))  # a mix of early and late exits
    torch.testing.assert_close(got.logits.cpu(), expected.logits)
    assert torch.equal(layers, expected.stats.layers)
    running = [int((layers >= n).sum()) for n in range(1, 4)]
    assert mlp_rows == [ids.numel()] + [r for r in running[1:] if r]
