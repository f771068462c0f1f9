"""`seed000_act`: the ACT of seed 000 (RodkinIvan/t5-experiments, branch ACT, `ACT_basic`).

tensor2tensor's "basic" ACT with seed 000's particulars (docs/halting.md, "Seed 000's ACT").
One block (a layer in layer scope, the stack in model scope) is re-applied; per hop:

    p = sigmoid(W s + b)            s: the state entering the hop (option: the state it produced)
    running    = [H < 1]
    new_halted = [H + p * running > threshold] * running        strict >
    still      = [H + p * running <= threshold] * running
    H += p * still;  R += new_halted * (1 - H);  H += new_halted * R
    N += still + new_halted;  w = p * still + new_halted * R
    y = w * f(s) + (1 - w) * y      y starts at 0 (option: y = y + w * f(s))

The loop goes on while some token has H < threshold and N < max_hops. Seed defaults:
threshold 0.9, halting bias 1.0, PyTorch's default `nn.Linear` init of W, max_hops 4
(the seed's `max_hop`), no noise, time_penalty 0, ponder cost R. Faithful to the seed,
and selectable: tokens stopped by the cap get no remainder (`cap_remainder`), halted
tokens keep being transformed (`freeze_halted`). With both corrections this is `ut`
with `combine: interpolate` and `epsilon = 1 - threshold`.

Its own loop (not the toolkit's cumulative one): t2t's bookkeeping differs from Graves'
in where p is computed and how capped tokens end.
"""

from __future__ import annotations

from typing import Literal

import torch
from pydantic import Field
from torch import Tensor, nn

from ponderlab.core.errors import SpecError
from ponderlab.core.halting import (
    ACTConfig,
    HaltingStrategy,
    HopFn,
    PonderOutput,
    interpolation_weights,
    t2t_hop_update,
)
from ponderlab.core.hookspecs import hookimpl


class Seed000ACTConfig(ACTConfig):
    name: Literal["seed000_act"] = "seed000_act"
    max_hops: int = Field(4, ge=1, description="Cap on hops per token (the seed's max_hop).")
    threshold: float = Field(0.9, gt=0, lt=1, description="A token halts once H + p > threshold (strict).")
    halting_bias_init: float = Field(1.0, description="Initial bias of the halting unit.")
    unit_init: Literal["pytorch", "zeros"] = Field(
        "pytorch", description="Halting weight W: PyTorch's default nn.Linear init (the seed) or zeros."
    )
    probability_from: Literal["entering", "produced"] = Field(
        "entering", description="p of hop n from the state entering hop n (the seed, t2t) or produced by it (Graves)."
    )
    combine: Literal["interpolate", "accumulated"] = Field(
        "interpolate", description="interpolate: y = w*s + (1-w)*y (the seed); accumulated: y = y + w*s."
    )
    cap_remainder: bool = Field(
        False, description="Tokens stopped by max_hops halt with their remainder (the seed: they do not)."
    )
    freeze_halted: bool = Field(
        False, description="Halted tokens keep their state (the seed: later hops still transform them)."
    )
    noisy_halting: bool = Field(False, description="Add Gaussian noise to p in training (the seed's noisy_halting).")
    noise_scale: float = Field(0.1, ge=0, description="Standard deviation of that noise (the seed: 0.1).")
    time_penalty: float = Field(0.0, ge=0, description="tau: weight of the mean ponder cost in the loss.")
    ponder_cost: Literal["remainder", "hops_plus_remainder"] = Field(
        "remainder", description="R (the seed's loss) or N + R (same gradients: N is a count)."
    )


class Seed000ACT(HaltingStrategy):
    """Seed 000's `ACT_basic`, vectorised over the (B, L) tokens, every particular an option."""

    config_class = Seed000ACTConfig
    supported_scopes = frozenset({"layer", "model"})
    # The kit's halting-weights contract wants weights summing to 1, which the seed's own
    # interpolation (weight left on the zero start) and capped tokens break by design; the
    # kit runs on the corrected combination, tests/test_halting_seed000_act.py on the defaults.
    conformance_config = {"combine": "accumulated", "cap_remainder": True}

    def __init__(self, config: Seed000ACTConfig, *, d_model: int, n_layers: int):
        super().__init__(config, d_model=d_model, n_layers=n_layers)
        if config.scope not in self.supported_scopes:
            raise SpecError(
                f"halting 'seed000_act' does not support scope {config.scope!r} (supported: layer, model): "
                "it re-applies one block, a layer or the whole stack; for halting across distinct "
                "layers use graves or threshold",
                path="halting.scope",
            )
        self.unit = nn.Linear(d_model, 1)  # PyTorch's default init, as in the seed
        if config.unit_init == "zeros":
            nn.init.zeros_(self.unit.weight)
        nn.init.constant_(self.unit.bias, config.halting_bias_init)

    def probability(self, state: Tensor, dtype: torch.dtype) -> Tensor:  # (B, L, D) -> (B, L)
        p = torch.sigmoid(self.unit(state).squeeze(-1).to(dtype))
        if self.config.noisy_halting and self.training:
            p = p + torch.randn_like(p) * self.config.noise_scale
        return p

    def forward(self, state: Tensor, hop: HopFn, mask: Tensor | None = None) -> PonderOutput:
        cfg = self.config
        dtype = torch.float64 if state.dtype == torch.float64 else torch.float32
        shape = state.shape[:-1]  # (B, L)
        halting = torch.zeros(shape, dtype=dtype, device=state.device)  # H
        remainder = torch.zeros_like(halting)  # R
        n_updates = torch.zeros_like(halting)  # N
        output = torch.zeros(state.shape, dtype=dtype, device=state.device)  # y, (B, L, D)
        weights: list[Tensor] = []  # w_n, (B, L) each
        active: Tensor | None = None  # tokens the next hop transforms (None: all)
        for n in range(cfg.max_hops):
            running = halting < 1.0  # (B, L)
            if not bool((running & (halting < cfg.threshold)).any()):
                break
            if cfg.probability_from == "entering":
                p = self.probability(state, dtype)
            state = hop(state, n, active)  # (B, L, D)
            if cfg.probability_from == "produced":
                p = self.probability(state, dtype)
            run = running.to(dtype)
            reached = halting + p * run > cfg.threshold
            if cfg.cap_remainder and n == cfg.max_hops - 1:
                reached = torch.ones_like(reached)
            if n == 0 and mask is not None:
                reached = reached | ~mask  # padding halts after its first hop, with weight 1
            halting, remainder, n_updates, weight = t2t_hop_update(
                p, reached, running, halting, remainder, n_updates
            )  # (B, L) each
            weights.append(weight)
            w = weight.unsqueeze(-1)  # (B, L, 1)
            if cfg.combine == "interpolate":
                output = w * state.to(dtype) + (1.0 - w) * output
            else:
                output = output + w * state.to(dtype)
            if cfg.freeze_halted:
                still_running = halting < 1.0
                active = None if bool(still_running.all()) else still_running
        cost = remainder if cfg.ponder_cost == "remainder" else n_updates + remainder
        return PonderOutput(
            output=output.to(state.dtype),
            hops=n_updates,
            ponder_cost=cost,
            remainder=remainder,
            hop_weights=weights if cfg.combine == "accumulated" else interpolation_weights(weights),
        )


@hookimpl
def ponderlab_register_halting(register):
    register(Seed000ACT)
