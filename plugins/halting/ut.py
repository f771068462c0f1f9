"""`ut`: Universal-Transformer ACT (Dehghani et al. 2018, arXiv 1807.03819; tensor2tensor rules).

One shared transition (a layer in layer scope, the stack in model scope) is
applied up to `max_hops` times. Per hop t, on the state entering the hop:

    p = sigmoid(W s + b)
    new_halted = [H + p > 1 - eps] * running
    still      = [H + p <= 1 - eps] * running
    H += p * still;  R += new_halted * (1 - H);  H += new_halted * R
    N += still + new_halted;  w = p * still + R * new_halted
    accumulated: y = y + w * T(s)        interpolate: y = w * T(s) + (1 - w) * y

Departures from the t2t code, all deliberate (see act.md "known bugs"):
* halted positions are frozen: only running tokens are transformed (passed as
  active; the state fed on is T(s) for them and the old state for the others);
* "running" is an explicit mask, not `H < 1` (H + (1 - H) need not round to 1);
* at the cap every still-running token halts with its remainder, so the weights
  of every token sum to 1 (t2t leaves capped tokens with weights summing to < 1).

Defaults (t2t): epsilon 0.01, halting_bias_init 1.0, time_penalty (act_loss_weight)
0.01, combine accumulated; max_hops 4 here (t2t: 2 x the number of layers).
Ponder cost N + R (t2t's act_loss), gradient through R only.
Scopes: layer and model (UT shares one transition; depth has distinct layers).
"""

from __future__ import annotations

from typing import Literal

import torch
from pydantic import Field
from torch import Tensor

from ponderlab.core.halting import (
    ACTConfig,
    HaltingStrategy,
    HaltingUnit,
    HopFn,
    PonderOutput,
    RunningTokens,
    accumulate,
    accumulation_dtype,
    interpolation_weights,
    require_scope,
    t2t_hop_update,
)
from ponderlab.core.hookspecs import hookimpl


class UTConfig(ACTConfig):
    name: Literal["ut"] = "ut"
    epsilon: float = Field(0.01, gt=0, lt=1, description="Halt once H + p > 1 - epsilon.")
    halting_bias_init: float = Field(1.0, description="Initial bias of the halting unit.")
    time_penalty: float = Field(0.01, ge=0, description="Weight of mean(N + R) (t2t act_loss_weight).")
    combine: Literal["accumulated", "interpolate"] = Field(
        "accumulated",
        description="accumulated: y += w*s (weights sum to 1); interpolate: y = w*s + (1-w)*y (t2t basic).",
    )


class UniversalTransformerACT(HaltingStrategy):
    """Per-position ACT over a shared transition, tensor2tensor update rules."""

    config_class = UTConfig
    supported_scopes = frozenset({"layer", "model"})

    def __init__(self, config: UTConfig, *, d_model: int, n_layers: int):
        super().__init__(config, d_model=d_model, n_layers=n_layers)
        require_scope("ut", config.scope, self.supported_scopes,
                      "; for halting across distinct layers use graves or threshold")
        self.unit = HaltingUnit(d_model, config.halting_bias_init)

    def forward(self, state: Tensor, hop: HopFn, mask: Tensor | None = None) -> PonderOutput:
        cfg = self.config
        threshold = 1.0 - cfg.epsilon
        max_hops = self.max_hops()
        dtype = accumulation_dtype(state)
        shape = state.shape[:-1]  # (B, L)
        halting = torch.zeros(shape, dtype=dtype, device=state.device)  # H
        remainder = torch.zeros_like(halting)  # R
        n_updates = torch.zeros_like(halting)  # N
        running = torch.ones(shape, dtype=torch.bool, device=state.device)
        output = torch.zeros_like(state, dtype=dtype)  # y, (B, L, D), in the state's memory layout
        weights: list[Tensor] = []  # w_n per hop
        tokens = RunningTokens(state)
        for n in range(max_hops):
            p = self.unit(state)  # (B, L), from the state entering this hop
            run = running.to(dtype)
            reached = halting + p * run > threshold
            if n == max_hops - 1:
                reached = torch.ones_like(reached)
            elif n == 0 and mask is not None:
                reached = reached | ~mask  # padding halts after its first hop
            next_state = hop(state, n, tokens.active)
            if not tokens.keep_hop():  # speculative mode: no token was running, drop that hop
                break
            state = next_state
            halting, remainder, n_updates, weight = t2t_hop_update(
                p, reached, running, halting, remainder, n_updates
            )  # (B, L) each
            weights.append(weight)
            if cfg.combine == "accumulated":  # y = y + w s
                output = accumulate(output, weight, state)
            else:  # y = w s + (1 - w) y
                w = weight.unsqueeze(-1)
                output = w * state.to(dtype) + (1.0 - w) * output
            running = ~reached & running
            if not tokens.record(running):
                break
        return PonderOutput(
            output=output.to(state.dtype),
            hops=n_updates,
            ponder_cost=n_updates + remainder,
            remainder=remainder,
            hop_weights=weights if cfg.combine == "accumulated" else interpolation_weights(weights),
        )


@hookimpl
def ponderlab_register_halting(register):
    register(UniversalTransformerACT)
