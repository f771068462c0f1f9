"""ponderlab.testing on backbones with one defect each: causality, unused parameters, seeding,
checkpoint state, shapes, active subsets and packed rows (sound parents: conformance_kit_plugins)."""

from __future__ import annotations

import pytest
import torch
from conformance_kit_plugins import (
    KitBackbone,
    KitBackboneConfig,
    KitBlock,
    broken,
)
from torch import Tensor, nn

from ponderlab.core.interfaces import (
    BlockContext,
)
from ponderlab.core.model import PonderModel
from ponderlab.plugins.halting.threshold import ThresholdACT, ThresholdConfig
from ponderlab.testing import (
    ConformanceError,
    check_contract,
    check_plugin,
)

# --------------------------------------------------------------------------- backbones


class PeekingBlock(KitBlock):
    def running_mean(self, x: Tensor) -> Tensor:  # a mean over the whole sequence: sees the future
        return x.mean(1, keepdim=True).expand_as(x)


class PeekingBackbone(KitBackbone):
    block_class = PeekingBlock


def test_a_block_that_sees_the_future_breaks_causality():
    broken(PeekingBackbone, "causality", "must depend only on tokens <= t")


class DeadWeightBlock(KitBlock):
    def __init__(self, d_model: int):
        super().__init__(d_model)
        self.unused = nn.Linear(d_model, d_model)


class DeadWeightBackbone(KitBackbone):
    block_class = DeadWeightBlock


def test_an_unused_parameter_is_named():
    broken(DeadWeightBackbone, "gradient flow", r"no gradient .*blocks\.0\.unused\.weight")


class FixedInitBackbone(KitBackbone):
    def __init__(self, config, *, vocab_size: int):
        super().__init__(config, vocab_size=vocab_size)
        generator = torch.Generator().manual_seed(0)  # ignores the run's seed
        with torch.no_grad():
            for parameter in self.parameters():
                parameter.copy_(torch.randn(parameter.shape, generator=generator) * 0.1)


def test_initialisation_must_follow_the_seed():
    broken(FixedInitBackbone, "determinism", "initialisation ignores the seed")


class UnseededBackbone(KitBackbone):
    def __init__(self, config, *, vocab_size: int):
        super().__init__(config, vocab_size=vocab_size)
        generator = torch.Generator()
        generator.seed()  # fresh entropy on every build
        with torch.no_grad():
            self.embedding.weight.copy_(torch.randn(self.embedding.weight.shape, generator=generator))


def test_two_builds_from_one_seed_must_match():
    broken(UnseededBackbone, "determinism", "built from seed 123 differ in: backbone.embedding.weight")


class ScratchBufferBackbone(KitBackbone):
    """Keeps a random offset in a non-persistent buffer: lost by save/load."""

    def __init__(self, config, *, vocab_size: int):
        super().__init__(config, vocab_size=vocab_size)
        self.register_buffer("offset", torch.randn(config.d_model), persistent=False)

    def embed(self, input_ids: Tensor) -> Tensor:
        return self.embedding(input_ids) + self.offset


def test_state_outside_the_state_dict_breaks_checkpoints():
    broken(ScratchBufferBackbone, "checkpoint", "loaded from the checkpoint gives other logits")


class NarrowBlock(KitBlock):
    def forward(self, hidden: Tensor, context: BlockContext) -> Tensor:
        return super().forward(hidden, context)[:, :-1]  # drops the last position


class NarrowBackbone(KitBackbone):
    block_class = NarrowBlock


def test_blocks_must_keep_the_shape():
    broken(NarrowBackbone, "output shapes", r"blocks\[0\] \(hop 0\) has shape \(2, 8, 16\), expected \(2, 9, 16\)")


class SkippingBlock(KitBlock):
    """Skips inactive tokens but feeds zeros for inactive tokens into the running mean."""

    def forward(self, hidden: Tensor, context: BlockContext) -> Tensor:
        mixed = self.mix(hidden)
        if context.active is not None:
            mixed = mixed * context.active.unsqueeze(-1)
        return hidden + torch.tanh(self.mlp(hidden) + self.running_mean(mixed))


class SkippingBackbone(KitBackbone):
    block_class = SkippingBlock


def test_active_subset_must_not_change_active_tokens():
    broken(SkippingBackbone, "active subset", "the output for active tokens changes")


class KeepingBlock(KitBlock):
    """Keeps inactive rows itself: inactive rows are the input rows."""

    def forward(self, hidden: Tensor, context: BlockContext) -> Tensor:
        output = super().forward(hidden, context)
        if context.active is None:
            return output
        return torch.where(context.active.unsqueeze(-1), output, hidden)


class KeepingBackbone(KitBackbone):
    block_class = KeepingBlock


class EmptySubsetBlock(KitBlock):
    """Records the peak of the running rows, which fails at K = 0."""

    def forward(self, hidden: Tensor, context: BlockContext) -> Tensor:
        output = super().forward(hidden, context)
        if context.active is not None:
            running = output[context.active]  # (K, D)
            self.peak = float(running.abs().max())  # max() of an empty tensor raises
        return output


class EmptySubsetBackbone(KitBackbone):
    block_class = EmptySubsetBlock


def test_a_block_must_accept_a_hop_with_no_active_token():
    broken(EmptySubsetBackbone, "active subset", r"fails with no active token: RuntimeError")


class RowsBlock(KitBlock):
    """Computes rows: the running mean reads every token from `hidden`."""

    def forward_rows(self, hidden: Tensor, rows: Tensor, states: Tensor, context: BlockContext) -> Tensor:
        mixed = self.running_mean(self.mix(hidden)).reshape(-1, hidden.shape[-1]).index_select(0, rows)
        return states + torch.tanh(self.mlp(states) + mixed)  # (K, D)


class RowsBackbone(KitBackbone):
    block_class = RowsBlock


class RowsOnlyBlock(RowsBlock):
    """Computes rows but averages over the computed rows only, dropping the others."""

    def forward_rows(self, hidden: Tensor, rows: Tensor, states: Tensor, context: BlockContext) -> Tensor:
        counts = torch.arange(1, len(rows) + 1, dtype=states.dtype).unsqueeze(1)
        return states + torch.tanh(self.mlp(states) + self.mix(states).cumsum(0) / counts)


class RowsOnlyBackbone(KitBackbone):
    block_class = RowsOnlyBlock


def test_packed_rows_claim_is_checked():
    check_contract(RowsBackbone, "active subset")
    broken(RowsOnlyBackbone, "active subset", r"forward_rows differs from forward")


def test_the_same_output_whether_the_block_or_the_core_keeps_halted_rows():
    """The model's output is the same whether the block or the core keeps halted rows."""
    torch.manual_seed(0)
    outputs = []
    for backbone_cls in (KitBackbone, KeepingBackbone):
        torch.manual_seed(0)
        backbone = backbone_cls(KitBackboneConfig(n_layers=2), vocab_size=11)
        model = PonderModel(backbone, ThresholdACT, ThresholdConfig(threshold=0.5, halting_bias_init=0.0),
                            vocab_size=11)
        nn.init.normal_(model.sites[0].units[0].out.weight, std=3.0, generator=torch.Generator().manual_seed(2))
        outputs.append(model.eval()(torch.randint(0, 11, (2, 7), generator=torch.Generator().manual_seed(1))))
    assert set(outputs[0].stats.layers.flatten().tolist()) == {1.0, 2.0}  # some tokens exit after layer 1
    torch.testing.assert_close(outputs[0].logits, outputs[1].logits)


def test_check_plugin_lists_every_broken_contract():
    class TwiceBroken(PeekingBackbone):
        block_class = type("PeekingDeadBlock", (PeekingBlock, DeadWeightBlock), {})

    with pytest.raises(ConformanceError) as info:
        check_plugin(TwiceBroken, skip=["entry point"])
    contracts = [f.contract for f in info.value.failures]
    assert contracts == ["causality", "gradient flow"]
    assert "broke 2 contracts" in str(info.value)
