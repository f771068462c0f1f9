"""ponderlab.testing catches broken plugins, names the broken contract, and passes sound ones.

Each broken plugin below is a sound one with a single defect; its test asserts
that exactly that contract fails (with a message that says why) while the sound
plugin passes it.
"""

from __future__ import annotations

import random
from typing import ClassVar, Literal

import datasets
import pytest
import torch
from pydantic import ConfigDict, Field, field_serializer
from torch import Tensor, nn

from ponderlab.core.config import BackboneConfig, HaltingConfig, TaskConfig
from ponderlab.core.interfaces import (
    IGNORE_INDEX,
    Backbone,
    Block,
    BlockContext,
    HaltingStrategy,
    PonderOutput,
    Task,
    TaskData,
)
from ponderlab.core.model import PonderModel
from ponderlab.plugins.halting.threshold import ThresholdACT, ThresholdConfig
from ponderlab.testing import (
    CONTRACTS,
    BackboneContract,
    Conformance,
    ConformanceError,
    ContractError,
    HaltingContract,
    TaskContract,
    check_contract,
    check_plugin,
)

# --------------------------------------------------------------------------- sound plugins


class KitBackboneConfig(BackboneConfig):
    name: Literal["kit_backbone"] = "kit_backbone"
    d_model: int = Field(8, ge=1)


class KitBlock(Block):
    """Causal: position-wise MLP plus a running mean over earlier positions."""

    def __init__(self, d_model: int):
        super().__init__()
        self.mix = nn.Linear(d_model, d_model)
        self.mlp = nn.Linear(d_model, d_model)

    def running_mean(self, x: Tensor) -> Tensor:  # (B, L, D) -> (B, L, D), causal
        counts = torch.arange(1, x.shape[1] + 1, dtype=x.dtype).view(1, -1, 1)
        return x.cumsum(1) / counts

    def forward(self, hidden: Tensor, context: BlockContext) -> Tensor:
        return hidden + torch.tanh(self.mlp(hidden) + self.running_mean(self.mix(hidden)))


class KitBackbone(Backbone):
    config_class = KitBackboneConfig
    block_class: ClassVar[type[Block]] = KitBlock

    def __init__(self, config, *, vocab_size: int):
        super().__init__(config, vocab_size=vocab_size)
        self.embedding = nn.Embedding(vocab_size, config.d_model)
        self.blocks = nn.ModuleList(self.block_class(config.d_model) for _ in range(config.n_layers))
        self.norm = nn.LayerNorm(config.d_model)


class KitHaltingConfig(HaltingConfig):
    name: Literal["kit_halting"] = "kit_halting"
    max_hops: int = Field(3, ge=1)
    time_penalty: float = 0.01


class KitHalting(HaltingStrategy):
    """Per-token halting at h >= 0.5 with a (1 - h) ponder cost; output = the last state."""

    config_class = KitHaltingConfig

    def __init__(self, config, *, d_model: int, n_layers: int):
        super().__init__(config, d_model=d_model, n_layers=n_layers)
        self.unit = nn.Linear(d_model, 1)

    def halting(self, state: Tensor) -> Tensor:  # (B, L, D) -> (B, L)
        return torch.sigmoid(self.unit(state).squeeze(-1).float())

    def forward(self, state, hop):
        running = torch.ones(state.shape[:-1], dtype=torch.bool)
        hops = torch.zeros(state.shape[:-1])
        cost = torch.zeros(state.shape[:-1])
        for n in range(self.max_hops()):
            state = hop(state, n, None if bool(running.all()) else running)
            h = self.halting(state)
            hops = hops + running.float()
            cost = cost + torch.where(running, 1.0 - h, torch.zeros_like(h))
            running = running & (h < 0.5)
            if not bool(running.any()):
                break
        return PonderOutput(output=state, hops=hops, ponder_cost=cost, remainder=torch.zeros_like(hops))


class KitTaskConfig(TaskConfig):
    name: Literal["kit_task"] = "kit_task"
    size: int = Field(20, ge=1)


class KitTask(Task):
    """Copy 6 random symbols; test strings never occur in train."""

    config_class = KitTaskConfig
    vocab_size = 10

    def example(self, rng: random.Random) -> dict:
        symbols = [rng.randrange(8) for _ in range(6)]
        ids = [8, *symbols, 9, *symbols]
        labels = [IGNORE_INDEX] * 7 + symbols + [IGNORE_INDEX]
        return {"input_ids": ids, "labels": labels}

    def build(self, seed: int) -> TaskData:
        rng = random.Random(seed)
        splits: dict[str, list[dict]] = {"test": [], "validation": [], "train": []}
        seen: set[tuple] = set()
        for split in splits:
            while len(splits[split]) < self.config.size:
                row = self.example(rng)
                key = tuple(row["input_ids"])
                if split != "train" and key in seen:
                    continue
                if split == "train" and key in seen:
                    continue
                seen.add(key)
                splits[split].append(row)
        return TaskData(**{s: datasets.Dataset.from_list(rows) for s, rows in splits.items()})


SOUND = [KitBackbone, KitHalting, KitTask]


@pytest.mark.parametrize("plugin", SOUND, ids=lambda p: p.__name__)
def test_sound_plugins_pass_every_contract(plugin):
    check_plugin(plugin, skip=["entry point"])


def test_unregistered_plugin_breaks_the_entry_point_contract():
    with pytest.raises(ContractError, match="entry point.*install the package") as info:
        check_contract(KitBackbone, "entry point")
    assert info.value.contract == "entry point"
    assert "kit_backbone" in info.value.plugin


# --------------------------------------------------------------------------- pytest base classes


class TestKitBackboneThroughTheBaseClass(BackboneContract):
    plugin = KitBackbone
    config = {"n_layers": 3}
    skip_contracts = ("entry point",)  # defined in this test file, not installed


class TestKitHaltingThroughTheBaseClass(HaltingContract):
    plugin = KitHalting
    skip_contracts = ("entry point",)


class TestKitTaskThroughTheBaseClass(TaskContract):
    plugin = KitTask
    skip_contracts = ("entry point",)


@pytest.mark.parametrize("base", [BackboneContract, HaltingContract, TaskContract])
def test_base_classes_have_one_test_per_contract(base):
    kind = {BackboneContract: "backbone", HaltingContract: "halting", TaskContract: "task"}[base]
    tests = {name for name in dir(base) if name.startswith("test_")}
    assert tests == {"test_" + c.replace(" ", "_") for c in CONTRACTS[kind]}


def test_config_overrides_reach_the_checked_config():
    checker = Conformance(KitBackbone, {"n_layers": 3})
    assert checker.config.n_layers == 3
    assert checker.config.d_model == 16  # the small default for d_model


# --------------------------------------------------------------------------- helpers


def broken(plugin: type, contract: str, message: str) -> ContractError:
    """Assert `plugin` breaks `contract` with `message` (a regex); the sound parent passes it."""
    sound = next(s for s in SOUND if issubclass(plugin, s))
    check_contract(sound, contract)
    with pytest.raises(ContractError, match=message) as info:
        check_contract(plugin, contract)
    assert info.value.contract == contract
    assert f"broke the {contract!r} contract" in str(info.value)
    return info.value


# --------------------------------------------------------------------------- config


class ExtraAllowedConfig(KitBackboneConfig):
    model_config = ConfigDict(extra="allow")


class ExtraAllowedBackbone(KitBackbone):
    config_class = ExtraAllowedConfig


def test_config_must_forbid_unknown_keys():
    broken(ExtraAllowedBackbone, "config", "unknown option was accepted")


class RoundingConfig(KitBackboneConfig):
    scale: float = 0.123456

    @field_serializer("scale")
    def _rounded(self, value: float) -> float:
        return round(value, 2)


class RoundingBackbone(KitBackbone):
    config_class = RoundingConfig


def test_config_must_survive_yaml():
    broken(RoundingBackbone, "yaml round trip", r"scale: 0\.123456 -> 0\.12")


class UnnamedConfig(BackboneConfig):
    name: str = "unnamed"


class UnnamedBackbone(KitBackbone):
    config_class = UnnamedConfig


def test_name_must_be_a_literal():
    with pytest.raises(ContractError, match="Literal") as info:
        check_contract(UnnamedBackbone, "config")
    assert info.value.contract == "config"


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


# --------------------------------------------------------------------------- halting


class ShrinkingHalting(KitHalting):
    def forward(self, state, hop):
        out = super().forward(state, hop)
        out.output = 0.9 * out.output
        return out


def test_weights_must_sum_to_one():
    broken(ShrinkingHalting, "halting weights", r"sum to values in \[0\.9000, 0\.9000\], not 1")


class LastHopWeightsHalting(KitHalting):
    """Reports hop_weights: all weight on each token's last hop, which is what its output is."""

    def forward(self, state, hop):
        out = super().forward(state, hop)
        out.hop_weights = [(out.hops == n + 1).float() for n in range(int(out.hops.max()))]
        return out


class FirstHopWeightsHalting(KitHalting):
    """Reports hop_weights that put everything on the first hop, which its output is not."""

    def forward(self, state, hop):
        out = super().forward(state, hop)
        out.hop_weights = [torch.ones_like(out.hops)] + [torch.zeros_like(out.hops)] * (int(out.hops.max()) - 1)
        return out


def test_hop_weights_must_reproduce_the_output():
    check_contract(LastHopWeightsHalting, "halting weights")
    broken(FirstHopWeightsHalting, "halting weights", "hop_weights do not give the output's combination")


class InputKeepingHalting(KitHalting):
    def forward(self, state, hop):
        out = super().forward(state, hop)
        out.output = 0.5 * state + 0.5 * out.output
        return out


def test_output_must_combine_hop_states_not_the_input():
    broken(InputKeepingHalting, "halting weights", "keeps weight 0.5000 on the input state")


class BoastingHalting(KitHalting):
    def forward(self, state, hop):
        out = super().forward(state, hop)
        out.hops = torch.full_like(out.hops, float(self.max_hops()))  # claims every hop ran
        return out


def test_hops_must_not_exceed_the_hops_run():
    broken(BoastingHalting, "halting stats", "hops exceed the hops actually run")


class StepSkippingHalting(KitHalting):
    def forward(self, state, hop):
        state = hop(state, 1, None)  # starts at hop 1
        return PonderOutput(
            output=state, hops=torch.ones(state.shape[:-1]), ponder_cost=torch.zeros(state.shape[:-1]),
            remainder=torch.zeros(state.shape[:-1]),
        )


def test_hops_must_be_called_with_steps_in_order():
    broken(StepSkippingHalting, "hop protocol", r"n=1 after hops \[\]; hops must be 0, 1, 2")


def test_packed_depth_must_give_what_forward_gives():
    check_contract(KitHalting, "packed depth")
    check_contract(ThresholdACT, "packed depth")


class DetachingHalting(KitHalting):
    def forward(self, state, hop):
        out = super().forward(state, hop)
        out.output = out.output.detach()
        return out


def test_output_must_carry_gradient_to_the_layers():
    broken(DetachingHalting, "gradient flow", "no gradient reaches the layers")


class PooledHalting(KitHalting):
    """Mixes two hops with a weight pooled over the whole sequence: leaks the future."""

    def forward(self, state, hop):
        first = hop(state, 0, None)
        second = hop(first, 1, None)
        p = torch.sigmoid(self.unit(first).mean(1, keepdim=True))  # (B, 1, 1)
        zeros = torch.zeros(state.shape[:-1])
        return PonderOutput(output=p * first + (1 - p) * second, hops=zeros + 2, ponder_cost=zeros, remainder=zeros)


def test_a_strategy_that_pools_over_the_sequence_breaks_causality():
    broken(PooledHalting, "causality", "must depend only on tokens <= t")


# --------------------------------------------------------------------------- tasks


class LeakyTask(KitTask):
    def build(self, seed: int) -> TaskData:
        rng = random.Random(seed)
        rows = [self.example(rng) for _ in range(self.config.size)]
        split = datasets.Dataset.from_list(rows)
        return TaskData(train=split, validation=split.select(range(5)), test=split.select(range(5, 10)))


def test_test_examples_must_not_appear_in_train():
    broken(LeakyTask, "split overlap", "5 of 5 validation examples also appear in train")


class UnseededTask(KitTask):
    def build(self, seed: int) -> TaskData:
        return super().build(random.randrange(10**9))


def test_the_same_seed_must_give_the_same_splits():
    broken(UnseededTask, "determinism", "two builds with seed 0 give different train splits")


class OutOfVocabularyTask(KitTask):
    vocab_size = 9  # but SEP is token 9


def test_token_ids_must_fit_the_vocabulary():
    broken(OutOfVocabularyTask, "task data", r"train example 0: input_ids must be ints in \[0, vocab_size=9\)")


class UnscoredTask(KitTask):
    def example(self, rng: random.Random) -> dict:
        row = super().example(rng)
        row["labels"] = [IGNORE_INDEX] * len(row["labels"])
        return row


def test_every_example_must_score_something():
    broken(UnscoredTask, "task data", "no position is scored")


# --------------------------------------------------------------------------- reports


def test_check_plugin_lists_every_broken_contract():
    class TwiceBroken(PeekingBackbone):
        block_class = type("PeekingDeadBlock", (PeekingBlock, DeadWeightBlock), {})

    with pytest.raises(ConformanceError) as info:
        check_plugin(TwiceBroken, skip=["entry point"])
    contracts = [f.contract for f in info.value.failures]
    assert contracts == ["causality", "gradient flow"]
    assert "broke 2 contracts" in str(info.value)


def test_a_model_contract_checked_alone_passes_a_sound_strategy():
    """A fresh checker builds both models of the determinism check from the same draws, even
    though the first build also probes how many layers the strategy accepts."""
    check_contract(ThresholdACT, "determinism")
    check_contract(KitHalting, "determinism")


def test_unknown_contract_names_are_rejected():
    with pytest.raises(ValueError, match="unknown task contract 'causality'"):
        check_contract(KitTask, "causality")
