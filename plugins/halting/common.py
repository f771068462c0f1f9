"""Deprecated: import from `ponderlab.core.halting` (the halting toolkit) instead.

This module was the place third-party strategies imported halting units and the ACT
loop from; it re-exports them from the toolkit and warns once on import.
"""

from __future__ import annotations

import warnings

from ponderlab.core.halting import *  # noqa: F403
from ponderlab.core.halting import __all__  # noqa: F401

warnings.warn(
    "ponderlab.plugins.halting.common is deprecated; import from ponderlab.core.halting",
    DeprecationWarning,
    stacklevel=2,
)
