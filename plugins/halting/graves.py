"""`graves`: Adaptive Computation Time (Graves 2016, arXiv 1603.08983).

Per token, hop n gives state s_n and halting probability h_n = sigmoid(W s_n + b); the
cumulative loop (core/halting/loop.py) halts at sum h >= 1 - epsilon or at `max_hops` and
returns y = sum_n p_n s_n and the ponder cost rho = N + R; the loss adds time_penalty * mean(rho).

Defaults: epsilon 0.01 (the paper), halting_bias_init 1.0 (seed 000 / t2t),
max_hops 4 (seed 000's max_hop), time_penalty 0 (seed 000 uses 3e-4 on CA/LSTM).
Scopes: layer (one loop per layer), model (the stack is one hop) and depth (the distinct
layers, one halting unit each but the last; the cap is the number of layers).
"""

from __future__ import annotations

from typing import Literal

from pydantic import Field
from torch import Tensor, nn

from ponderlab.core.halting import ACTConfig, CumulativeHalting, HaltingUnit
from ponderlab.core.hookspecs import hookimpl


class GravesConfig(ACTConfig):
    name: Literal["graves"] = "graves"
    epsilon: float = Field(0.01, gt=0, lt=1, description="Halt once sum h >= 1 - epsilon.")
    halting_bias_init: float = Field(1.0, description="Initial bias of the halting unit.")
    time_penalty: float = Field(0.0, ge=0, description="tau: weight of mean(N + R) in the loss.")


class GravesACT(CumulativeHalting):
    """Vectorised Graves ACT over all tokens of a (B, L, D) state."""

    config_class = GravesConfig

    def __init__(self, config: GravesConfig, *, d_model: int, n_layers: int):
        super().__init__(config, d_model=d_model, n_layers=n_layers)
        units = n_layers - 1 if config.scope == "depth" else 1
        self.units = nn.ModuleList(HaltingUnit(d_model, config.halting_bias_init) for _ in range(units))

    def halting_probability(self, n: int, state: Tensor, active: Tensor | None) -> Tensor:
        return self.units[n if self.config.scope == "depth" else 0](state, active)  # (B, L)

    def halting_threshold(self) -> float:
        return 1.0 - self.config.epsilon


@hookimpl
def ponderlab_register_halting(register):
    register(GravesACT)
