"""Every registered plugin passes the conformance suite of ponderlab.testing.

One parametrised test over the registry as found at collection time: built-ins,
and any third-party plugin installed in the environment. A failure lists every
contract the plugin broke.
"""

from __future__ import annotations

import pytest

from ponderlab.core.registry import get_registry
from ponderlab.testing import check_plugin

PLUGINS = get_registry().all()


@pytest.mark.parametrize("info", PLUGINS, ids=[f"{p.kind}-{p.name}" for p in PLUGINS])
def test_registered_plugin_conforms(info):
    check_plugin(info.cls)


def test_every_kind_is_covered():
    assert {p.kind for p in PLUGINS} == {"backbone", "halting", "task"}
