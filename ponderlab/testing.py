"""Conformance tests for ponderlab plugins: check the contracts the core relies on.

In a plugin package's tests:

    from ponderlab.testing import BackboneContract   # or HaltingContract, TaskContract
    from my_package import MyBackbone

    class TestMyBackbone(BackboneContract):
        plugin = MyBackbone
        config = {"d_model": 16}     # optional: small options for fast tests

Each contract becomes one test (config, yaml round trip, entry point, output
shapes, causality, gradient flow, determinism, checkpoint, halting weights, ...);
a failure names the plugin and the broken contract. Without pytest classes:
`check_plugin(MyBackbone)` runs them all, `check_contract(MyBackbone, "causality")`
one. See docs/plugins.md for what each contract means.
"""

from ponderlab.core import conformance as _conformance
from ponderlab.core.conformance import *  # noqa: F403  (the public names listed in its __all__)

__all__ = list(_conformance.__all__)
