"""ponderlab.testing catches defects that a plugin's initial weights hide, and split leaks.

Every contract check perturbs the plugin's parameters first, so a halting unit that
reads future tokens through zero-initialised weights (as the docs recommend for
halting units) and a block whose future-reading path starts at zero both break
`causality`. Also: a task whose validation and test splits share examples, and a
halting config whose saved dump does not validate again in depth scope.
"""

from __future__ import annotations

import datasets
import torch
from conformance_kit_plugins import (
    KitBackbone,
    KitBlock,
    KitHalting,
    KitHaltingConfig,
    KitTask,
    broken,
)
from pydantic import model_validator
from torch import Tensor, nn

from ponderlab.core.halting import HaltingUnit
from ponderlab.core.interfaces import TaskData
from ponderlab.testing import check_contract

# --------------------------------------------------------------------------- halting


class FutureReadingHalting(KitHalting):
    """h = sigmoid(w . (s_t + mean over the whole sequence of s) + b), w zero at init.

    At initialisation h = sigmoid(b) everywhere, so the future never shows; with any
    trained (here: perturbed) w the halting decision at t depends on tokens after t.
    """

    def __init__(self, config, *, d_model: int, n_layers: int):
        super().__init__(config, d_model=d_model, n_layers=n_layers)
        self.unit = HaltingUnit(d_model, bias_init=0.0)  # zero weight at init

    def halting(self, state: Tensor) -> Tensor:
        pooled = state.mean(1, keepdim=True).expand_as(state)  # (B, L, D): sees the future
        return self.unit(state + pooled).float()


def test_zero_init_hides_the_future_reading_unit_only_without_perturbation():
    model = FutureReadingHalting(KitHaltingConfig(), d_model=4, n_layers=1)
    state = torch.randn(2, 5, 4)
    changed = state.clone()
    changed[:, 3:] += 1.0
    assert torch.equal(model.halting(state), model.halting(changed))  # at init: blind to the future


def test_a_future_reading_halting_unit_breaks_causality():
    broken(FutureReadingHalting, "causality", "logits at positions < .* changed")


# --------------------------------------------------------------------------- backbones


class LatentPeekingBlock(KitBlock):
    """Causal at initialisation: the future-reading path's weights start at zero."""

    def __init__(self, d_model: int):
        super().__init__(d_model)
        self.peek = nn.Linear(d_model, d_model)
        nn.init.zeros_(self.peek.weight)
        nn.init.zeros_(self.peek.bias)

    def forward(self, hidden: Tensor, context) -> Tensor:
        future = self.peek(hidden.mean(1, keepdim=True)).expand_as(hidden)  # mean over all positions
        return super().forward(hidden, context) + future


class LatentPeekingBackbone(KitBackbone):
    block_class = LatentPeekingBlock


def test_a_block_that_reads_the_future_only_after_training_breaks_causality():
    broken(LatentPeekingBackbone, "causality", "must depend only on tokens <= t")


def test_the_sound_parents_pass_causality():
    check_contract(KitBackbone, "causality")
    check_contract(KitHalting, "causality")


# --------------------------------------------------------------------------- tasks


class SharedHoldoutTask(KitTask):
    """Train is disjoint from both, but validation and test are the same examples."""

    def build(self, seed: int) -> TaskData:
        data = super().build(seed)
        return TaskData(train=data.train, validation=data.validation, test=data.validation)


def test_validation_and_test_must_not_share_examples():
    check_contract(KitTask, "split overlap")
    broken(SharedHoldoutTask, "split overlap", "20 of 20 test examples also appear in validation")


def test_a_shared_example_is_named():
    class OneSharedTask(KitTask):
        def build(self, seed: int) -> TaskData:
            data = super().build(seed)
            test = datasets.concatenate_datasets([data.test.select(range(19)), data.validation.select([0])])
            return TaskData(train=data.train, validation=data.validation, test=test)

    broken(OneSharedTask, "split overlap", r"1 of 20 test examples also appear in validation \(first: \[8, ")


# --------------------------------------------------------------------------- saved specs


class DepthCapConfig(KitHaltingConfig):
    """Rejects max_hops in depth scope, but still dumps its default there (the graves bug)."""

    @model_validator(mode="after")
    def _no_cap_in_depth(self):
        if self.scope == "depth" and "max_hops" in self.model_fields_set:
            raise ValueError("max_hops does not apply in depth scope")
        return self


class DepthCapHalting(KitHalting):
    config_class = DepthCapConfig


def test_a_depth_scope_dump_that_does_not_validate_again_breaks_the_yaml_round_trip():
    broken(DepthCapHalting, "yaml round trip", r"does not validate again \(depth scope\).*ACTConfig")
