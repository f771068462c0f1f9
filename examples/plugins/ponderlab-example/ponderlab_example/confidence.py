"""`confidence_exit`: early exit on a learned confidence (CALM, Schuster et al. 2022, arXiv 2207.07061).

After hop n a confidence unit gives c_n = sigmoid(w . s_n + b) per token. A token
exits at the first hop with c_n >= threshold, or at the cap (max_hops; the
number of layers in depth scope). Exited tokens are frozen (passed as inactive
to later hops) and the output is each token's state at its exit hop.

The unit is trained by an auxiliary loss, as CALM trains its early-exit
classifier on oracle labels: binary cross-entropy towards "the state has
saturated", 1[cos(s_n, s_{n-1}) >= 1 - tolerance], on the tokens that ran hop n,
weighted by aux_weight. The ponder cost is the hop count (not differentiable;
compute is steered by threshold and tolerance, not by a time penalty).

Defaults: max_hops 4, threshold 0.9, tolerance 0.05, aux_weight 0.1, bias -2
(c ~ 0.12 at init, so tokens start by running every hop).
"""

from __future__ import annotations

from typing import Literal

import torch
import torch.nn.functional as F
from pydantic import Field
from torch import Tensor, nn

from ponderlab.core.halting import ACTConfig, HaltingStrategy, HopFn, PonderOutput, RunningTokens
from ponderlab.core.hookspecs import hookimpl


class ConfidenceExitConfig(ACTConfig):  # max_hops (default 4), not settable in depth scope
    name: Literal["confidence_exit"] = "confidence_exit"
    threshold: float = Field(0.9, gt=0, lt=1, description="Exit once the confidence reaches it.")
    tolerance: float = Field(0.05, gt=0, lt=1, description="Saturated: cos(s_n, s_{n-1}) >= 1 - tolerance.")
    aux_weight: float = Field(0.1, ge=0, description="Weight of the confidence loss.")
    confidence_bias_init: float = Field(-2.0, description="Initial bias of the confidence unit.")


class ConfidenceExit(HaltingStrategy):
    """Per-token early exit; output = the state at the exit hop."""

    config_class = ConfidenceExitConfig

    def __init__(self, config: ConfidenceExitConfig, *, d_model: int, n_layers: int):
        super().__init__(config, d_model=d_model, n_layers=n_layers)
        self.confidence = nn.Linear(d_model, 1)
        nn.init.zeros_(self.confidence.weight)
        nn.init.constant_(self.confidence.bias, config.confidence_bias_init)

    def forward(self, state: Tensor, hop: HopFn) -> PonderOutput:
        shape = state.shape[:-1]  # (B, L)
        running = torch.ones(shape, dtype=torch.bool, device=state.device)
        hops = torch.zeros(shape, device=state.device)
        aux_total = torch.zeros((), device=state.device)
        aux_count = torch.zeros((), device=state.device)
        previous = state
        tokens = RunningTokens(state)  # no host read per hop on a GPU (docs/plugins.md)
        for n in range(self.max_hops()):
            new_state = hop(state, n, tokens.active)  # (B, L, D)
            if not tokens.keep_hop():  # queued after every token had exited: drop it
                break
            state = new_state
            hops = hops + running.float()
            confidence = torch.sigmoid(self.confidence(state).squeeze(-1).float())  # (B, L)
            with torch.no_grad():
                similarity = F.cosine_similarity(state.float(), previous.float(), dim=-1)
                saturated = (similarity >= 1.0 - self.config.tolerance).float()  # (B, L) oracle label
            loss = F.binary_cross_entropy(confidence, saturated, reduction="none")
            aux_total = aux_total + (loss * running).sum()
            aux_count = aux_count + running.sum()
            previous = state
            running = running & (confidence < self.config.threshold)
            if not tokens.record(running):
                break
        return PonderOutput(
            output=state,
            hops=hops,
            ponder_cost=hops.clone(),
            remainder=torch.zeros_like(hops),
            aux_loss=self.config.aux_weight * aux_total / aux_count.clamp(min=1),
        )


@hookimpl
def ponderlab_register_halting(register):
    register(ConfidenceExit)
