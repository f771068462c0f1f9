"""`none`: no pondering. Every layer is applied once (fixed depth), in any scope."""

from __future__ import annotations

from typing import Literal

from torch import Tensor

from ponderlab.core.halting import (
    HaltingConfig,
    HaltingStrategy,
    HopFn,
    PonderOutput,
    fixed_hops_output,
)
from ponderlab.core.hookspecs import hookimpl


class NoHaltingConfig(HaltingConfig):
    name: Literal["none"] = "none"


class NoHalting(HaltingStrategy):
    """One hop per site; in depth scope, every distinct layer once."""

    config_class = NoHaltingConfig

    def forward(self, state: Tensor, hop: HopFn) -> PonderOutput:
        hops = self.max_hops()
        for n in range(hops):
            state = hop(state, n, None)
        return fixed_hops_output(state, hops)


@hookimpl
def ponderlab_register_halting(register):
    register(NoHalting)
