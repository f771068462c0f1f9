"""Capacity routing over a sequence: what routing strategies (MoD, MoR) are made of.

A routing strategy is an ordinary ponder site whose hops compute only the tokens a
router chose (`active`), with two additions to the halting contract:

* token mixing: `RoutingStrategy.token_mixing()` says what a routed token reads in a
  block. "all" (every strategy's default): every token's current state, as in early exit.
  "routed": only the tokens routed at that hop (MoD; MoR's recursion-wise attention).
  "shared_kv": keys and values computed at the site's first hop (MoR's KV sharing).
  The core passes it in `BlockContext.mixing` and calls the block's `forward_routed`
  (the `RoutedBlock` protocol, GPT-NeoX only); other blocks are refused at build time.
* auxiliary losses: the site returns them, weighted, in `PonderOutput.aux_loss`.

Helpers: `capacity_tokens` (k of a capacity fraction), `top_capacity` (expert-choice top-k
per sequence among eligible tokens), `routed_update` (x + g (f(x) - x) on routed tokens),
`routed_output` (the PonderOutput with the weighted mean auxiliary loss),
`routing_bce` (BCE of logits against the top-k targets), `CapacityRouter` (a per-hop
linear router with the paper's two causal inference rules).
"""

from __future__ import annotations

import math
from typing import Literal, Protocol, runtime_checkable

import torch
import torch.nn.functional as F
from torch import Tensor, nn

from ponderlab.core.errors import SpecError
from ponderlab.core.interfaces import BlockContext, HaltingStrategy, PonderOutput

from .outputs import fixed_hops_output

#: what a routed token reads in a block (see the module docstring)
TokenMixing = Literal["all", "routed", "shared_kv"]
#: how a router decides at inference: its own logit (trained with BCE) or an auxiliary predictor
CausalRule = Literal["router", "predictor"]


@runtime_checkable
class RoutedBlock(Protocol):
    """A block that can restrict token mixing to the routed tokens (the routing protocol)."""

    def forward_routed(self, hidden: Tensor, routed: Tensor, context: BlockContext) -> Tensor:
        """(B, L, D) new states; rows outside routed (B, L) are ignored by the core.

        context.mixing "routed": token mixing reads only routed tokens (causally);
        "shared_kv": keys and values are those stored in `context.kv_cache[context.layer]`
        at the site's first hop (hop 0), which stores them there.
        """


class RoutingStrategy(HaltingStrategy):
    """A ponder site that routes tokens by capacity; `token_mixing()` defaults to "routed"."""

    def token_mixing(self) -> TokenMixing:
        return "routed"


def site_mixing(site: nn.Module) -> TokenMixing:
    """What a site's routed tokens read: its `token_mixing()`, "all" for halting strategies."""
    mixing = getattr(site, "token_mixing", None)
    return mixing() if callable(mixing) else "all"


def require_routed_blocks(strategy: str, mixing: TokenMixing, blocks: nn.ModuleList) -> None:
    """SpecError when a site needs `forward_routed` and some block lacks it."""
    if mixing == "all":
        return
    missing = sorted({type(b).__name__ for b in blocks if not callable(getattr(b, "forward_routed", None))})
    if missing:
        raise SpecError(
            f"halting {strategy!r} needs blocks whose attention can be restricted to the routed "
            f"tokens (`forward_routed`, token mixing {mixing!r}); {', '.join(missing)} has none: "
            "use the `transformer` backbone (GPT-NeoX)",
            path="backbone.name",
        )


def capacity_tokens(capacity: float, length: int) -> int:
    """k = ceil(capacity * L), at least 1 and at most L."""
    return min(length, max(1, math.ceil(capacity * length - 1e-9)))


def top_capacity(
    scores: Tensor, capacity: float, eligible: Tensor | None = None, mask: Tensor | None = None
) -> Tensor:
    """Expert-choice routing: the top-k scores of each sequence among eligible tokens.

    scores (B, L), eligible (B, L) bool or None (all) -> routed (B, L) bool. k per sequence
    is capacity_tokens(capacity, its real length) (mask (B, L): real tokens; None: L), fewer
    when fewer tokens are eligible. Ties go to the earlier position.
    """
    batch, length = scores.shape
    ranked = scores.detach()
    if eligible is not None:
        ranked = ranked.masked_fill(~eligible, -math.inf)
    order = ranked.argsort(dim=1, descending=True, stable=True)  # (B, L)
    positions = torch.arange(length, device=scores.device).expand(batch, length)
    rank = torch.empty_like(order).scatter_(1, order, positions)  # (B, L) place in the ranking
    if mask is None:
        k = torch.full((batch, 1), capacity_tokens(capacity, length), device=scores.device)
    else:
        lengths = mask.sum(1, keepdim=True)  # (B, 1)
        k = torch.ceil(capacity * lengths - 1e-9).clamp(min=1).minimum(lengths)
    routed = rank < k
    return routed if eligible is None else routed & eligible


def routed_update(state: Tensor, new: Tensor, gate: Tensor, routed: Tensor) -> Tensor:
    """x + g (f(x) - x) on routed tokens, x elsewhere: (B, L, D), gate (B, L), routed (B, L)."""
    scale = (gate * routed).unsqueeze(-1).to(state.dtype)  # (B, L, 1), 0 off the route
    return state + scale * (new - state)


def routed_output(state: Tensor, hops: Tensor, losses: list[Tensor], weight: float) -> PonderOutput:
    """The site's output: the last state, hops (B, L) per token, aux_loss = weight * mean(losses)."""
    output = fixed_hops_output(state, hops)
    if losses:
        output.aux_loss = weight * torch.stack(losses).mean()
    return output


def routing_bce(logits: Tensor, targets: Tensor, mask: Tensor | None = None) -> Tensor:
    """Mean binary cross-entropy of router logits (B, L) against top-k targets (B, L) bool."""
    loss = F.binary_cross_entropy_with_logits(logits, targets.to(logits.dtype), reduction="none")
    if mask is None:
        return loss.mean()
    weights = mask.to(loss.dtype)
    return (loss * weights).sum() / weights.sum().clamp_min(1.0)


class CapacityRouter(nn.Module):
    """One hop's router: score w^T x (MoD's weight r) or sigmoid(w^T x) (MoR's g).

    Training: top-k of the scores among eligible tokens (looks at the whole sequence); aux
    loss = BCE(router logit, routed) for rule "router", BCE(predictor(stop_grad(x)),
    routed) for rule "predictor". Inference (causal, per token): routed where
    sigmoid(router logit) > 0.5, or sigmoid(predictor logit) > 0.5. A capacity of 1 routes
    every eligible token at inference too.
    """

    def __init__(self, d_model: int, *, gate: Literal["linear", "sigmoid"], rule: CausalRule,
                 predictor_hidden: int | None = None):
        super().__init__()
        self.gate = gate
        self.rule = rule
        self.linear = nn.Linear(d_model, 1)
        self.predictor = None
        if rule == "predictor":
            width = predictor_hidden or max(1, d_model // 2)
            self.predictor = nn.Sequential(nn.Linear(d_model, width), nn.SiLU(), nn.Linear(width, 1))

    def forward(
        self, state: Tensor, capacity: float, eligible: Tensor | None, mask: Tensor | None = None
    ) -> tuple[Tensor, Tensor, Tensor | None]:
        """state (B, L, D) -> gate (B, L), routed (B, L) bool, aux loss (scalar; None at inference)."""
        logits = self.linear(state).squeeze(-1)  # (B, L)
        gate = logits if self.gate == "linear" else torch.sigmoid(logits)
        if mask is not None:  # padding is never routed
            eligible = mask if eligible is None else eligible & mask
        decider = logits if self.predictor is None else self.predictor(state.detach()).squeeze(-1)
        if capacity >= 1.0:
            routed = torch.ones_like(logits, dtype=torch.bool) if eligible is None else eligible
            return gate, routed, None
        if not self.training:
            routed = decider > 0.0  # sigmoid(logit) > 0.5
            return gate, routed if eligible is None else routed & eligible, None
        routed = top_capacity(logits, capacity, eligible, mask)
        return gate, routed, routing_bce(decider, routed, eligible)
