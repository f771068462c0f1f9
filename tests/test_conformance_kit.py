"""ponderlab.testing catches broken plugins, names the broken contract, and passes sound ones.

Each broken plugin below is a sound one with a single defect; its test asserts
that exactly that contract fails (with a message that says why) while the sound
plugin passes it.
"""

from __future__ import annotations

import pytest
from conformance_kit_plugins import (
    SOUND,
    KitBackbone,
    KitBackboneConfig,
    KitHalting,
    KitTask,
    broken,
)
from pydantic import ConfigDict, field_serializer

from ponderlab.core.config import BackboneConfig
from ponderlab.plugins.halting.threshold import ThresholdACT
from ponderlab.testing import (
    CONTRACTS,
    BackboneContract,
    Conformance,
    ContractError,
    HaltingContract,
    TaskContract,
    check_contract,
    check_plugin,
)


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


# --------------------------------------------------------------------------- reports


def test_a_model_contract_checked_alone_passes_a_sound_strategy():
    """A fresh checker builds both models of the determinism check from the same draws, even
    though the first build also probes how many layers the strategy accepts."""
    check_contract(ThresholdACT, "determinism")
    check_contract(KitHalting, "determinism")


def test_unknown_contract_names_are_rejected():
    with pytest.raises(ValueError, match="unknown task contract 'causality'"):
        check_contract(KitTask, "causality")
