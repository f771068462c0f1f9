"""`mixture_of_depths`: Mixture-of-Depths (Raposo et al. 2024, arXiv 2404.02258).

Depth scope: hop n applies distinct layer n once. At a routed layer a linear router gives
every token a scalar weight r = w^T x + b; the top-k tokens of each sequence
(k = ceil(capacity * L), expert choice) go through the block, with attention among the
routed tokens only, and the rest skip it on the residual path:

    x' = x + r (f(x) - x)   if the token is routed,   x' = x   otherwise,

where f(x) is the block's output (blocks return the updated state, so f(x) - x is the
block's residual delta, the paper's f). Multiplying by r gives the router its gradient.
`route_every: 2` (default, the paper's best) routes layers 1, 3, 5, ... and runs the
others on every token; `route_every: 1` routes every layer.

Top-k looks at future tokens, so inference decides per token (causal):
`causal: router` trains an auxiliary BCE loss on the router logits against the top-k
targets and routes where sigmoid(logit) > 0.5; `causal: predictor` trains a small MLP
(D -> D/2 -> 1, SiLU) on the stop-gradient input with the same BCE and routes where its
sigmoid > 0.5. aux_loss = aux_weight * mean over routed layers of the BCE.

Statistics: hops = layers applied per token; no ponder cost. Defaults: capacity 0.125,
route_every 2, causal router, aux_weight 0.01. Only depth scope (the routers sit on
distinct layers); blocks must implement `forward_routed` (GPT-NeoX `transformer`).
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
    routed_output,
    routed_update,
)
from ponderlab.core.hookspecs import hookimpl

#: why the kit's "halting weights" contract cannot hold (see ponderlab.testing)
SKIPS_LAYERS = (
    "a skipped token keeps x at a routed layer and takes later layers, so its output is the "
    "state of a layer beyond the number of layers it ran; the routed update x + r (f(x) - x) "
    "is an affine combination with an unbounded r"
)


class MixtureOfDepthsConfig(HaltingConfig):
    name: Literal["mixture_of_depths"] = "mixture_of_depths"
    scope: Scope = Field("depth", description="Only depth: routers sit on the distinct layers.")
    capacity: float = Field(0.125, gt=0, le=1, description="Fraction of each sequence a routed block computes.")
    route_every: Literal[1, 2] = Field(
        2, description="2: route layers 1, 3, 5, ... (the others compute every token); 1: every layer."
    )
    causal: Literal["router", "predictor"] = Field(
        "router", description="Inference rule: sigmoid(router logit) > 0.5, or an auxiliary MLP predictor."
    )
    aux_weight: float = Field(0.01, ge=0, description="Weight of the routing BCE in the loss.")
    predictor_hidden: int | None = Field(None, ge=1, description="Predictor MLP width (default D/2).")

    @model_validator(mode="after")
    def _predictor_width_needs_predictor(self):
        if self.predictor_hidden is not None and self.causal != "predictor":
            raise ValueError("predictor_hidden applies only with causal: predictor")
        return self


class MixtureOfDepths(RoutingStrategy):
    """Expert-choice top-k routing around distinct layers; see the module docstring."""

    config_class = MixtureOfDepthsConfig
    supported_scopes = frozenset({"depth"})
    conformance_exempt: ClassVar[dict[str, str]] = {"halting weights": SKIPS_LAYERS}

    def __init__(self, config: MixtureOfDepthsConfig, *, d_model: int, n_layers: int):
        super().__init__(config, d_model=d_model, n_layers=n_layers)
        require_scope("mixture_of_depths", config.scope, self.supported_scopes,
                      " (it routes tokens around distinct layers; for a shared block use "
                      "mixture_of_recursions)")
        self.routed_layers = [n for n in range(n_layers) if n % config.route_every == config.route_every - 1]
        self.routers = nn.ModuleList(
            CapacityRouter(d_model, gate="linear", rule=config.causal, predictor_hidden=config.predictor_hidden)
            for _ in self.routed_layers
        )

    def forward(self, state: Tensor, hop: HopFn, mask: Tensor | None = None) -> PonderOutput:
        layers = torch.zeros(state.shape[:2], dtype=accumulation_dtype(state), device=state.device)  # (B, L)
        losses = []
        for n in range(self.n_layers):
            if n not in self.routed_layers:
                state = hop(state, n, None)  # (B, L, D), every token
                layers = layers + 1.0
                continue
            router = self.routers[self.routed_layers.index(n)]
            weight, routed, loss = router(state, self.config.capacity, None, mask)  # (B, L) each
            state = routed_update(state, hop(state, n, routed), weight, routed)
            layers = layers + routed.to(layers.dtype)
            if loss is not None:
                losses.append(loss)
        return routed_output(state, layers, losses, self.config.aux_weight)


@hookimpl
def ponderlab_register_halting(register):
    register(MixtureOfDepths)
