"""Deprecated: import from `ponderlab.core.tasks` (the task helpers) instead.

Third-party tasks imported `disjoint_splits`, `lm_example`, `rng_for`, `load_published`
from here; this module re-exports them from `ponderlab.core.tasks` and warns on import.
It will be removed in ponderlab 0.2.
"""

from __future__ import annotations

import warnings

from ponderlab.core.tasks import *  # noqa: F403
from ponderlab.core.tasks import __all__  # noqa: F401

warnings.warn(
    "ponderlab.plugins.tasks.common is deprecated; import from ponderlab.core.tasks",
    DeprecationWarning,
    stacklevel=2,
)
