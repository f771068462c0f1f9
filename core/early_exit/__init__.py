"""Early exit: halted tokens skip work. Everything about it lives in this package.

For block authors: implement `forward_rows` (`RowsBlock`) to compute a subset of tokens;
`rows` has the helpers. For halting loops: `RunningTokens` and `hop_policy`. The core
calls `layer_update` and `depth_hop` (execution.py), the one place that chooses between
dense, subset and packed execution.
"""

from .execution import (
    PackedHops,
    RowsBlock,
    computes_rows,
    depth_hop,
    layer_update,
)
from .packed import PackedTokens
from .policy import HopPolicy, RunningTokens, hop_policy, speculates, speculation_mode
from .rows import active_rows, apply_to_active, gather_active, rows_mask, scatter_active, where_rows

__all__ = [
    "HopPolicy",
    "PackedHops",
    "PackedTokens",
    "RowsBlock",
    "RunningTokens",
    "active_rows",
    "apply_to_active",
    "computes_rows",
    "depth_hop",
    "gather_active",
    "hop_policy",
    "layer_update",
    "rows_mask",
    "scatter_active",
    "speculates",
    "speculation_mode",
    "where_rows",
]
