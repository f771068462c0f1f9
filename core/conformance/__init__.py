"""Conformance checks: the contracts the core relies on, runnable on any plugin class.

Public through `ponderlab.testing`. One `Conformance` object checks one plugin
class with one small config; each contract is a named check that raises a
`ContractError` saying which plugin broke which contract and how.

Contracts (see docs/plugins.md):
  all kinds   config, yaml round trip, entry point
  backbone    construction, output shapes, causality, active subset, gradient flow,
              determinism, checkpoint
  halting     scopes, hop protocol, halting weights, halting stats, packed depth,
              causality, gradient flow, determinism, checkpoint
  task        task data, split overlap, determinism, extra metrics

Model-level checks wrap the plugin in a real `PonderModel` with small probe
plugins for the other parts (a position-wise backbone, a two-hop halting
strategy), so a failure points at the plugin under test, not at a neighbour.
"""

from __future__ import annotations

from collections.abc import Iterable
from typing import Any, ClassVar

from ..config import PluginConfig
from .backbone import BackboneChecks
from .base import CONTRACTS, SMALL_OPTIONS, ConformanceError, ContractError, plugin_kind
from .common import CommonChecks
from .halting import HaltingChecks
from .task import TaskChecks


class Conformance(CommonChecks, BackboneChecks, HaltingChecks, TaskChecks):
    """Checks one plugin class against the contracts of its kind.

    `config`: option overrides (a dict) or a ready config object; by default the
    class defaults with small sizes (see `SMALL_OPTIONS`, `conformance_config`).
    """


# --------------------------------------------------------------------------- public helpers


def check_plugin(
    plugin: type, config: dict[str, Any] | PluginConfig | None = None, *, skip: Iterable[str] = ()
) -> None:
    """Check every contract of a plugin class; raise ConformanceError listing the broken ones."""
    checker = Conformance(plugin, config)
    failures = checker.run(skip=skip)
    if failures:
        raise ConformanceError(checker.label, failures)


def check_contract(plugin: type, contract: str, config: dict[str, Any] | PluginConfig | None = None) -> None:
    """Check one named contract of a plugin class (raises ContractError)."""
    Conformance(plugin, config).check(contract)


# --------------------------------------------------------------------------- pytest base classes


class _ContractTests:
    """Subclass with `plugin = MyClass` (and optionally `config = {...}`) in a `Test*` class."""

    plugin: ClassVar[type]
    config: ClassVar[dict[str, Any] | None] = None
    #: contracts not to run, with the reason in a comment (e.g. ("entry point",) before installing)
    skip_contracts: ClassVar[tuple[str, ...]] = ()

    def _check(self, contract: str) -> None:
        exempt = getattr(self.plugin, "conformance_exempt", None) or {}
        if contract in self.skip_contracts or contract in exempt:
            import pytest

            pytest.skip(exempt.get(contract) or f"contract {contract!r} is in skip_contracts")
        cls = type(self)
        checker = cls.__dict__.get("_conformance")
        if checker is None:
            if not isinstance(getattr(cls, "plugin", None), type):
                raise TypeError(f"{cls.__name__}: set `plugin = YourPluginClass` on the test class")
            checker = Conformance(cls.plugin, cls.config)
            cls._conformance = checker
        checker.check(contract)


def _contract_test(contract: str):
    """A pytest method that checks one contract, named test_<contract with underscores>."""

    def test(self: _ContractTests) -> None:
        self._check(contract)

    test.__name__ = "test_" + contract.replace(" ", "_")
    test.__doc__ = f"The {contract!r} contract."
    return test


def _contract_suite(kind: str) -> type[_ContractTests]:
    """The pytest base class with one test method per contract of `kind` (see CONTRACTS)."""
    name = f"{kind.capitalize()}Contract"
    doc = f"Conformance tests for a {kind} plugin: `class TestMine({name}): plugin = Mine`."
    methods = {test.__name__: test for test in map(_contract_test, CONTRACTS[kind])}
    return type(name, (_ContractTests,), {"__doc__": doc, **methods})


BackboneContract = _contract_suite("backbone")
HaltingContract = _contract_suite("halting")
TaskContract = _contract_suite("task")

__all__ = [
    "CONTRACTS",
    "SMALL_OPTIONS",
    "BackboneContract",
    "ConformanceError",
    "Conformance",
    "ContractError",
    "HaltingContract",
    "TaskContract",
    "check_contract",
    "check_plugin",
    "plugin_kind",
]
