"""`mixture_of_recursions`: Mixture-of-Recursions (Bae et al. 2025, arXiv 2507.10524).

A shared recursion block (the whole stack in model scope, each layer in layer scope) is
applied up to N_r = `recursions` times; routers decide per token how many recursions it
gets. A token's recursion r updates h <- h + g (f(h) - h), f(h) the block's output (its
residual delta f(h) - h is the paper's f); tokens not routed at r keep h.

`routing: expert_choice` (default): before recursion r a router gives
g_r = sigmoid(theta_r^T h) and the top-k_r tokens of each sequence continue, chosen only
among the tokens routed at r - 1 (hierarchical filtering), k_r = ceil(capacity_r * L) with
shrinking capacities (default (N_r - r) / N_r: every token at r = 0, ..., 1/N_r at the last).
Top-k looks ahead, so inference is per token, as in MoD: `causal: router` (BCE of the
router logit against the top-k targets, route where sigmoid > 0.5) or `causal: predictor`
(an MLP on the stop-gradient state with the same BCE). aux_loss = aux_weight * mean over
routed recursions of the BCE. A recursion with capacity 1 routes every eligible token.

`routing: token_choice`: one router at the start, p = softmax(W h) over N_r depths; a
token takes d = argmax p + 1 recursions, each scaled by its g = p_d. Balancing loss
(Switch-style): N_r * sum_i f_i P_i, f_i the fraction of tokens sent to depth i, P_i the
mean p_i over tokens; aux_loss = balance_weight * it. Causal by construction.

Attention: `kv_sharing: false` (default) is recursion-wise, each recursion's attention runs
among the tokens active at it; `kv_sharing: true` reuses the keys and values of the first
recursion (every token's) at later ones. Both need `forward_routed` (GPT-NeoX `transformer`).

Statistics: hops = recursions per token; no ponder cost. Scopes: model (default), layer.
"""

from __future__ import annotations

from typing import ClassVar, Literal

import torch
from pydantic import Field, model_validator
from torch import Tensor, nn

from ponderlab.core.halting import (
    HaltingConfig,
    HopFn,
    PonderOutput,
    Scope,
    accumulation_dtype,
    require_scope,
)
from ponderlab.core.halting.routing import (
    CapacityRouter,
    RoutingStrategy,
    TokenMixing,
    routed_output,
    routed_update,
)
from ponderlab.core.hookspecs import hookimpl

#: why the kit's "halting weights" contract cannot hold (see ponderlab.testing)
KEEPS_INPUT = (
    "a routed recursion gives h + g (f(h) - h), an affine combination keeping weight 1 - g on "
    "the state it started from (the site's input at the first recursion)"
)


def default_capacities(recursions: int) -> list[float]:
    """(N_r - r) / N_r for r = 0 .. N_r - 1: all tokens first, 1/N_r at the last recursion."""
    return [(recursions - r) / recursions for r in range(recursions)]


class MixtureOfRecursionsConfig(HaltingConfig):
    name: Literal["mixture_of_recursions"] = "mixture_of_recursions"
    scope: Scope = Field("model", description="model: the stack is the recursion block; layer: each layer.")
    recursions: int = Field(3, ge=1, description="N_r, the most recursions a token takes.")
    routing: Literal["expert_choice", "token_choice"] = Field("expert_choice", description="Who chooses.")
    capacities: list[float] | None = Field(
        None, description="Expert choice: fraction of the sequence at each recursion, non-increasing "
        "(default (N_r - r) / N_r).",
    )
    causal: Literal["router", "predictor"] = Field(
        "router", description="Expert choice at inference: sigmoid(router logit) > 0.5, or an MLP predictor."
    )
    aux_weight: float = Field(0.01, ge=0, description="Expert choice: weight of the routing BCE.")
    balance_weight: float = Field(0.01, ge=0, description="Token choice: weight of the balancing loss.")
    kv_sharing: bool = Field(False, description="Reuse the first recursion's keys and values.")

    @model_validator(mode="after")
    def _capacities_shrink(self):
        if self.capacities is None:
            return self
        if self.routing != "expert_choice":
            raise ValueError("capacities apply only with routing: expert_choice")
        if len(self.capacities) != self.recursions:
            raise ValueError(f"capacities has {len(self.capacities)} entries; recursions is {self.recursions}")
        if any(not 0 < c <= 1 for c in self.capacities):
            raise ValueError("every capacity must be in (0, 1]")
        if any(b > a for a, b in zip(self.capacities, self.capacities[1:], strict=False)):
            raise ValueError("capacities must not grow: only tokens routed at r - 1 are eligible at r")
        return self

    def capacity_list(self) -> list[float]:
        return self.capacities if self.capacities is not None else default_capacities(self.recursions)


class MixtureOfRecursions(RoutingStrategy):
    """Routed recursions of a shared block; see the module docstring."""

    config_class = MixtureOfRecursionsConfig
    supported_scopes = frozenset({"layer", "model"})
    conformance_exempt: ClassVar[dict[str, str]] = {"halting weights": KEEPS_INPUT}

    def __init__(self, config: MixtureOfRecursionsConfig, *, d_model: int, n_layers: int):
        super().__init__(config, d_model=d_model, n_layers=n_layers)
        require_scope("mixture_of_recursions", config.scope, self.supported_scopes,
                      " (it recurses a shared block; across distinct layers use mixture_of_depths)")
        if config.routing == "expert_choice":
            self.routers = nn.ModuleList(
                CapacityRouter(d_model, gate="sigmoid", rule=config.causal if capacity < 1 else "router")
                for capacity in config.capacity_list()
            )
        else:
            self.router = nn.Linear(d_model, config.recursions)

    def max_hops(self) -> int:
        return self.config.recursions

    def token_mixing(self) -> TokenMixing:
        return "shared_kv" if self.config.kv_sharing else "routed"

    def forward(self, state: Tensor, hop: HopFn, mask: Tensor | None = None) -> PonderOutput:
        if self.config.routing == "expert_choice":
            return self._expert_choice(state, hop, mask)
        return self._token_choice(state, hop, mask)

    def _expert_choice(self, state: Tensor, hop: HopFn, mask: Tensor | None) -> PonderOutput:
        hops = torch.zeros(state.shape[:2], dtype=accumulation_dtype(state), device=state.device)  # (B, L)
        eligible, losses = None, []
        for r, (router, capacity) in enumerate(zip(self.routers, self.config.capacity_list(), strict=True)):
            gate, routed, loss = router(state, capacity, eligible, mask)  # (B, L) each
            if r and not bool(routed.any()):
                break  # nobody continues (hierarchical: nobody can later)
            state = routed_update(state, hop(state, r, routed), gate, routed)  # (B, L, D)
            hops = hops + routed.to(hops.dtype)
            eligible = routed
            if loss is not None:
                losses.append(loss)
        return routed_output(state, hops, losses, self.config.aux_weight)

    def _token_choice(self, state: Tensor, hop: HopFn, mask: Tensor | None) -> PonderOutput:
        probs = torch.softmax(self.router(state).to(accumulation_dtype(state)), dim=-1)  # (B, L, N_r)
        depth = probs.argmax(-1) + 1  # (B, L) recursions per token
        if mask is not None:
            depth = depth.masked_fill(~mask, 1)  # padding: one recursion
        gate = probs.gather(-1, (depth - 1).unsqueeze(-1)).squeeze(-1)  # (B, L) g = p_d
        for r in range(self.config.recursions):
            active = depth > r  # (B, L)
            if r and not bool(active.any()):
                break
            state = routed_update(state, hop(state, r, active), gate, active)
        return routed_output(state, depth, [balance_loss(probs, depth, mask)], self.config.balance_weight)


def balance_loss(probs: Tensor, depth: Tensor, mask: Tensor | None = None) -> Tensor:
    """N_r * sum_i f_i P_i over real tokens: probs (B, L, N_r), depth (B, L) in 1..N_r."""
    n = probs.shape[-1]
    chosen = torch.nn.functional.one_hot(depth - 1, n).to(probs.dtype)  # (B, L, N_r)
    weights = torch.ones_like(depth, dtype=probs.dtype) if mask is None else mask.to(probs.dtype)
    total = weights.sum().clamp_min(1.0)
    fraction = (chosen * weights.unsqueeze(-1)).sum((0, 1)) / total  # f_i
    mean_prob = (probs * weights.unsqueeze(-1)).sum((0, 1)) / total  # P_i
    return n * (fraction * mean_prob).sum()


@hookimpl
def ponderlab_register_halting(register):
    register(MixtureOfRecursions)
