"""`constant`: every token takes exactly `steps` hops (the compute of ACT's cap, no halting)."""

from __future__ import annotations

from typing import Literal

from pydantic import Field
from torch import Tensor

from ponderlab.core.config import HaltingConfig
from ponderlab.core.hookspecs import hookimpl
from ponderlab.core.interfaces import HaltingStrategy, HopFn, PonderOutput

from .common import fixed_hops_output


class ConstantConfig(HaltingConfig):
    name: Literal["constant"] = "constant"
    steps: int = Field(2, ge=1, description="Hops per site for every token.")


class ConstantDepth(HaltingStrategy):
    """Re-applies the hop function `steps` times; the output is the last state."""

    config_class = ConstantConfig
    supported_scopes = frozenset({"layer", "model"})

    def max_hops(self) -> int:
        return self.config.steps

    def forward(self, state: Tensor, hop: HopFn) -> PonderOutput:
        for step in range(self.config.steps):
            state = hop(state, step, None)
        return fixed_hops_output(state, self.config.steps)


@hookimpl
def ponderlab_register_halting(register):
    register(ConstantDepth)
