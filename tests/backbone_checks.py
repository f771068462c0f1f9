"""Shared pieces of the seq_icl backbone tests: conformance test classes for registered
backbones, and the check that a bad backbone option gets one clear spec error."""

from __future__ import annotations

from typing import Any

import pytest

from ponderlab.core.errors import SpecError
from ponderlab.core.registry import get_registry
from ponderlab.core.spec import validate_spec
from ponderlab.testing import BackboneContract


def contract_class(name: str, config: dict[str, Any], *, prefix: str = "") -> type[BackboneContract]:
    """A `Test{prefix}{Class}Contract` class running the kit's backbone contracts on the
    registered backbone `name` built with `config` (bind it to a module-level Test* name)."""
    cls = get_registry().get("backbone", name).cls
    return type(f"Test{prefix}{cls.__name__}Contract", (BackboneContract,), {"plugin": cls, "config": config})


def assert_one_clear_error(backbone: dict[str, Any], key: str) -> None:
    """A spec with this backbone section fails validation with a SpecError naming the
    backbone section and `key`."""
    spec = {"task": {"name": "binary_copy"}, "backbone": backbone, "halting": {"name": "none"}}
    with pytest.raises(SpecError) as info:
        validate_spec(spec)
    assert "backbone" in str(info.value) and key in str(info.value)
