"""`CumulativeHalting`: the base of strategies built on the cumulative ACT loop."""

from __future__ import annotations

from torch import Tensor

from ponderlab.core.interfaces import HaltingStrategy, HopFn, PonderOutput

from .loop import cumulative_halting_loop


class CumulativeHalting(HaltingStrategy):
    """Halt once sum_n h_n reaches `halting_threshold()`, or at `max_hops()` (the cap). A subclass
    defines `halting_threshold()` and `halting_probability(n, state, active)`: h_n after hop n,
    (B, L) from a (B, L, D) state, or (K,) from packed (K, D) rows."""

    def forward(self, state: Tensor, hop: HopFn, mask: Tensor | None = None) -> PonderOutput:
        return cumulative_halting_loop(state, hop, mask=mask, n_hops=self.max_hops(),
                                       threshold=self.halting_threshold(),
                                       halting_probability=self.halting_probability)
