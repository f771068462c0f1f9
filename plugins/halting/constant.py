"""`constant`: every token takes exactly `hops` hops (ACT's cap as compute, no halting).

The fixed-compute baseline for ACT: "constant depth k" re-applies each layer
(layer scope) or the stack (model scope) exactly k times; in depth scope every
token exits after the first k distinct layers. The output is the last state.
Default hops 2 (the hops seed 000's setting gives every token at init). Specs may
still say `steps`, the option's old name (with a DeprecationWarning).
"""

from __future__ import annotations

from typing import Any, Literal

from pydantic import Field, model_validator
from torch import Tensor

from ponderlab.core.halting import (
    HaltingConfig,
    HaltingStrategy,
    HopFn,
    PonderOutput,
    depth_cap_error,
    fixed_hops_output,
    renamed_key,
)
from ponderlab.core.hookspecs import hookimpl


class ConstantConfig(HaltingConfig):
    name: Literal["constant"] = "constant"
    hops: int = Field(2, ge=1, description="Hops per site for every token (depth: layers run).")

    @model_validator(mode="before")
    @classmethod
    def _old_name(cls, data: Any) -> Any:
        return renamed_key(data, "steps", "hops")


class ConstantDepth(HaltingStrategy):
    """Re-applies the hop function `hops` times; the output is the last state."""

    config_class = ConstantConfig

    def __init__(self, config: ConstantConfig, *, d_model: int, n_layers: int):
        super().__init__(config, d_model=d_model, n_layers=n_layers)
        if config.scope == "depth" and config.hops > n_layers:
            raise depth_cap_error("constant", "hops", config.hops, n_layers)

    def max_hops(self) -> int:
        return self.config.hops

    def forward(self, state: Tensor, hop: HopFn) -> PonderOutput:
        for n in range(self.config.hops):
            state = hop(state, n, None)
        return fixed_hops_output(state, self.config.hops)


@hookimpl
def ponderlab_register_halting(register):
    register(ConstantDepth)
