"""`random`: random halting with a chosen mean hop count (the control for learned halting).

Each token draws its hop count N independently of its content, with E[N] =
`mean_hops`, capped at `max_hops` (the number of layers in depth scope); it takes
exactly N hops and its output is the state after hop N (halted tokens are frozen
and skipped like in the learned strategies). Comparing a learned strategy with
`random` at the same mean hops separates "halting where it matters" from "more
compute on average"; `constant` is the zero-variance version.

Distributions:
  two_point  N in {floor(m), ceil(m)}, P(ceil) = m - floor(m) (least variance, default);
  geometric  N = min(G, cap) with G ~ Geometric(q), q chosen (by bisection) so that
             E[N] = m exactly: the random counterpart of ACT's decaying halting.
Draws use torch's global generator, in training and evaluation alike.
Scopes: layer, model, depth. No parameters, no ponder cost.
"""

from __future__ import annotations

import math
from typing import Literal

import torch
from pydantic import Field, model_validator
from torch import Tensor

from ponderlab.core.halting import (
    ACTConfig,
    HaltingStrategy,
    HopFn,
    PonderOutput,
    RunningTokens,
    depth_cap_error,
    fixed_hops_output,
)
from ponderlab.core.hookspecs import hookimpl


class RandomHaltingConfig(ACTConfig):
    name: Literal["random"] = "random"
    mean_hops: float = Field(2.0, ge=1, description="E[N], the mean hops per token per site.")
    distribution: Literal["two_point", "geometric"] = Field(
        "two_point", description="two_point: N in {floor, ceil} of mean_hops; geometric: capped geometric."
    )

    @model_validator(mode="after")
    def _mean_within_cap(self):
        if self.scope != "depth" and self.mean_hops > self.max_hops:
            raise ValueError(f"mean_hops {self.mean_hops} exceeds max_hops {self.max_hops}")
        return self


def capped_geometric_mean(q: float, cap: int) -> float:
    """E[min(G, cap)] for G ~ Geometric(q) on {1, 2, ...}: (1 - (1 - q)^cap) / q."""
    if q <= 0.0:
        return float(cap)
    return (1.0 - (1.0 - q) ** cap) / q


def solve_geometric_q(mean: float, cap: int, iterations: int = 200) -> float:
    """The q in (0, 1] with E[min(G, cap)] = mean (the mean falls as q grows)."""
    if mean >= cap:
        return 0.0
    low, high = 0.0, 1.0
    for _ in range(iterations):
        mid = 0.5 * (low + high)
        if capped_geometric_mean(mid, cap) > mean:
            low = mid
        else:
            high = mid
    return 0.5 * (low + high)


def sample_hops(shape: torch.Size, *, mean: float, cap: int, distribution: str, device) -> Tensor:
    """(B, L) long hop counts in [1, cap] with expectation `mean`."""
    uniform = torch.rand(shape, device=device, dtype=torch.float64)
    if distribution == "two_point":
        floor = math.floor(mean)
        return (floor + (uniform < mean - floor).long()).clamp(1, cap)
    q = solve_geometric_q(mean, cap)
    if q <= 0.0:
        return torch.full(shape, cap, dtype=torch.long, device=device)
    if q >= 1.0:
        return torch.ones(shape, dtype=torch.long, device=device)
    draws = 1 + torch.floor(torch.log1p(-uniform) / math.log1p(-q))  # G ~ Geometric(q)
    return draws.clamp(1, cap).long()


class RandomHalting(HaltingStrategy):
    """Content-independent halting: each token takes a random number of hops."""

    config_class = RandomHaltingConfig

    def __init__(self, config: RandomHaltingConfig, *, d_model: int, n_layers: int):
        super().__init__(config, d_model=d_model, n_layers=n_layers)
        if config.scope == "depth" and config.mean_hops > n_layers:
            raise depth_cap_error("random", "mean_hops", config.mean_hops, n_layers)

    def forward(self, state: Tensor, hop: HopFn, mask: Tensor | None = None) -> PonderOutput:
        cap = self.max_hops()
        counts = sample_hops(
            state.shape[:-1],
            mean=self.config.mean_hops,
            cap=cap,
            distribution=self.config.distribution,
            device=state.device,
        )  # (B, L)
        if mask is not None:
            counts = counts.masked_fill(~mask, 1)  # padding takes one hop
        tokens = RunningTokens(state)
        for n in range(cap):
            if n > 0 and not tokens.record(counts > n):  # (B, L) running mask
                break
            next_state = hop(state, n, tokens.active)
            if not tokens.keep_hop():  # speculative mode: no token was running, drop that hop
                break
            state = next_state
        return fixed_hops_output(state, counts)


@hookimpl
def ponderlab_register_halting(register):
    register(RandomHalting)
