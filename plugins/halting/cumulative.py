"""The base class of strategies built on the cumulative ACT loop (`graves`, `threshold`).

A subclass gives the halting threshold and the per-hop halting probability; this
class runs the dense loop (`forward`, any scope) and, for inference in depth scope,
the same loop on packed rows of running tokens (`forward_packed`). Where the unit
is linear (`linear_unit`), the dense loop on a CPU runs in fused kernels (fused.py),
in training and at inference.
"""

from __future__ import annotations

from torch import Tensor

from ponderlab.core.interfaces import HaltingStrategy, HopFn, PonderOutput, RowHopFn

from .common import HaltingUnit, cumulative_halting_loop
from .fused import fused_cumulative_halting_loop, fused_loop_applies
from .packed import packed_cumulative_halting_loop


class CumulativeHalting(HaltingStrategy):
    """Halt once sum_n h_n reaches `halting_threshold()`, or at `max_hops()` (the cap)."""

    supports_packed_depth = True

    def halting_threshold(self) -> float:
        raise NotImplementedError

    def halting_probability(self, step: int, state: Tensor, active: Tensor | None) -> Tensor:
        """h_n after hop `step`: (B, L) from a (B, L, D) state, or (K,) from packed (K, D) rows."""
        raise NotImplementedError

    def linear_unit(self, step: int) -> HaltingUnit | None:
        """The linear unit giving h after hop `step`, or None where the unit is not linear."""
        return None

    def forward(self, state: Tensor, hop: HopFn, mask: Tensor | None = None) -> PonderOutput:
        n_hops = self.max_hops()
        if n_hops > 1 and fused_loop_applies(state, n_hops, self.linear_unit(0)):
            return fused_cumulative_halting_loop(state, hop, mask=mask, n_hops=n_hops,
                                                 threshold=self.halting_threshold(),
                                                 unit_for_step=self.linear_unit)
        return cumulative_halting_loop(state, hop, mask=mask, n_hops=n_hops,
                                       threshold=self.halting_threshold(),
                                       halting_probability=self.halting_probability)

    def forward_packed(self, state: Tensor, row_hop: RowHopFn, mask: Tensor | None = None) -> PonderOutput:
        """Depth scope only (the core calls it there): hop n is layer n on packed rows."""
        return packed_cumulative_halting_loop(state, row_hop, mask=mask, n_hops=self.max_hops(),
                                              threshold=self.halting_threshold(),
                                              halting_probability=self.halting_probability)
