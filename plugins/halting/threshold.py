"""`threshold`: cumulative halting across the distinct layers with real early exit (seed 002).

After layer l a small MLP halting unit gives h_l for each running token; a token
exits after layer N = min{l : sum_{m<=l} h_m >= threshold}, or after the last
layer. Weights p_l = h_l before the exit layer and the remainder
R = 1 - sum_{m<N} h_m at it, so they sum to 1 for every token, including tokens
that never reach the threshold (they get R at the last layer). The output is
the weighted sum of the layer states. Ponder cost = N + R, where N counts the
layers actually executed (seed 002 summed the weights instead, which is about 1
whatever the depth); loss CE + time_penalty * mean(N + R).

Defaults (seed 002): threshold 0.99 (0.95 balanced, 0.8 aggressive),
time_penalty (seed 002's lambda) 0.01 (0.001 accuracy, 0.1 speed), halting MLP
D -> D/2 -> ReLU -> 1 (about D^2/2 parameters). halting_bias_init defaults to the value
that makes every token run every layer at init: sigmoid(b) = 1 / (n_layers + 1).

Early exit: exited tokens are passed as inactive to later layers (a block with
`forward_rows` skips their position-wise work, and the halting MLP is
evaluated only on running tokens); the loop stops once every token has exited.
For inference with blocks that compute rows, the loop keeps the running tokens
packed from layer to layer (`ponderlab.core.early_exit`).
Scope: depth only (for re-applied layers use `graves` or `ut`).
"""

from __future__ import annotations

from typing import Literal

from pydantic import Field
from torch import Tensor, nn

from ponderlab.core.halting import (
    CumulativeHalting,
    HaltingConfig,
    HaltingMLP,
    Scope,
    logit,
    require_scope,
)
from ponderlab.core.hookspecs import hookimpl


class ThresholdConfig(HaltingConfig):
    name: Literal["threshold"] = "threshold"
    scope: Scope = Field("depth", description="Only depth: halting across the distinct layers.")
    threshold: float = Field(0.99, gt=0, le=1, description="Exit once the cumulative h reaches it.")
    time_penalty: float = Field(0.01, ge=0, description="lambda: weight of mean(N + R) in the loss.")
    halting_bias_init: float | None = Field(
        None, description="Initial output bias of the halting MLP (default: full depth at init)."
    )
    halting_hidden: int | None = Field(None, ge=1, description="Halting MLP width (default D/2).")


def full_depth_bias(n_layers: int) -> float:
    """logit(1 / (n_layers + 1)): cumulative h stays below 1 until the last layer."""
    return logit(1.0 / (n_layers + 1))


class ThresholdACT(CumulativeHalting):
    """Early-exit ACT across the distinct layers (a halting MLP after each layer but the last)."""

    config_class = ThresholdConfig
    supported_scopes = frozenset({"depth"})

    def __init__(self, config: ThresholdConfig, *, d_model: int, n_layers: int):
        super().__init__(config, d_model=d_model, n_layers=n_layers)
        require_scope("threshold", config.scope, self.supported_scopes,
                      "; for re-applied layers use graves or ut")
        bias = config.halting_bias_init
        if bias is None:
            bias = full_depth_bias(n_layers)
        # one halting MLP per layer but the last: every running token exits after the last layer
        self.units = nn.ModuleList(
            HaltingMLP(d_model, bias, config.halting_hidden) for _ in range(n_layers - 1)
        )

    def halting_probability(self, n: int, state: Tensor, active: Tensor | None) -> Tensor:
        return self.units[n](state, active)  # (B, L), zero for inactive tokens

    def halting_threshold(self) -> float:
        return self.config.threshold


@hookimpl
def ponderlab_register_halting(register):
    register(ThresholdACT)
