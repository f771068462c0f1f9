"""`graves`: Adaptive Computation Time (Graves 2016, arXiv 1603.08983).

Per token, hop n produces state s_n and halting probability h_n = sigmoid(W s_n + b).
N = min{n : sum_{m<=n} h_m >= 1 - epsilon}, capped at `max_steps`;
R = 1 - sum_{m<N} h_m; weights p_n = h_n (n < N), p_N = R, so they sum to 1 for
every token, tokens stopped by the cap included. Output y = sum_n p_n s_n.
Ponder cost rho = N + R (gradient through R only); loss adds time_penalty * mean(rho).

Halted tokens are frozen (passed as inactive to later hops), so a block that
supports it skips their work, and the loop stops as soon as every token halted.
"""

from __future__ import annotations

from typing import Literal

import torch
from pydantic import Field
from torch import Tensor

from ponderlab.core.config import HaltingConfig
from ponderlab.core.hookspecs import hookimpl
from ponderlab.core.interfaces import HaltingStrategy, HopFn, PonderOutput

from .common import HaltingUnit


class GravesConfig(HaltingConfig):
    name: Literal["graves"] = "graves"
    max_steps: int = Field(4, ge=1, description="Cap on hops per token (M).")
    epsilon: float = Field(0.01, gt=0, lt=1, description="Halt once sum h >= 1 - epsilon.")
    halting_bias_init: float = Field(1.0, description="Initial bias of the halting unit.")
    time_penalty: float = Field(0.0, ge=0, description="tau: weight of mean(N + R) in the loss.")


class GravesACT(HaltingStrategy):
    """Vectorised Graves ACT over all tokens of a (B, L, D) state."""

    config_class = GravesConfig

    def __init__(self, config: GravesConfig, *, d_model: int, n_layers: int):
        super().__init__(config, d_model=d_model, n_layers=n_layers)
        units = n_layers if config.scope == "depth" else 1
        self.units = torch.nn.ModuleList(
            HaltingUnit(d_model, config.halting_bias_init) for _ in range(units)
        )

    def forward(self, state: Tensor, hop: HopFn) -> PonderOutput:
        threshold = 1.0 - self.config.epsilon
        max_hops = self.max_hops()
        shape = state.shape[:-1]  # (B, L)
        halting_sum = state.new_zeros(shape, dtype=torch.float32)
        remainder = state.new_zeros(shape, dtype=torch.float32)
        n_updates = state.new_zeros(shape, dtype=torch.float32)
        running = torch.ones(shape, dtype=torch.bool, device=state.device)
        output = torch.zeros_like(state, dtype=torch.float32)
        for step in range(max_hops):
            state = hop(state, step, None if step == 0 else running)
            unit = self.units[step if len(self.units) > 1 else 0]
            h = unit(state)  # (B, L)
            reaches = halting_sum + h >= threshold
            halts_now = running & (reaches | (step == max_hops - 1))
            continues = running & ~halts_now
            weight = torch.where(continues, h, torch.zeros_like(h)) + torch.where(
                halts_now, 1.0 - halting_sum, torch.zeros_like(h)
            )
            output = output + weight.unsqueeze(-1) * state.float()
            remainder = torch.where(halts_now, 1.0 - halting_sum, remainder)
            halting_sum = halting_sum + torch.where(continues, h, torch.zeros_like(h))
            n_updates = n_updates + running.float()
            running = continues
            if not bool(running.any()):
                break
        return PonderOutput(
            output=output.to(state.dtype),
            hops=n_updates,
            ponder_cost=n_updates + remainder,
            remainder=remainder,
        )


@hookimpl
def ponderlab_register_halting(register):
    register(GravesACT)
