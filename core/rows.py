"""Deprecated: import from `ponderlab.core.early_exit` instead (row helpers for blocks)."""

from __future__ import annotations

import warnings

from ponderlab.core.early_exit.rows import *  # noqa: F403
from ponderlab.core.early_exit.rows import (  # noqa: F401
    active_rows,
    apply_to_active,
    gather_active,
    rows_mask,
    scatter_active,
    where_rows,
)

warnings.warn("ponderlab.core.rows is deprecated; import from ponderlab.core.early_exit",
              DeprecationWarning, stacklevel=2)
