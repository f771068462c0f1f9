"""`recurrent_depth`: a shared core iterated r times (Geiping et al. 2025, arXiv 2502.05171).

Model scope (the whole stack is the recurrent core R) or layer scope (each layer is
its own core). With e the site's input (the prelude's output; here the embedding or
the previous layer's output) and a random start s_0 ~ N(0, init_std^2 I):
s_n = R(A([e; s_{n-1}])), A a linear adapter 2D -> D (initialised to e + s).
The output is s_r.

Training: r is drawn once per training forward from the paper's heavy-tailed
log-normal Poisson: tau ~ N(log(r_bar) - sigma^2 / 2, sigma), r = Poisson(e^tau) + 1,
capped at `max_hops`; gradients flow through the last `backprop_hops` (k) hops
only (the earlier ones run without autograd: truncated backpropagation).

Inference: up to `max_hops` iterations; with the output head given, a token stops after
iteration n >= 2 once KL(p_n || p_{n-1}) < `exit_threshold`, p_n = softmax(head(s_n))
(in layer scope the head reads the layer's state). Stopped tokens are frozen.
Without a head (the strategy used on its own) every token runs `max_hops`.

Defaults: r_bar (`mean_recurrence`) 4, sigma 0.5, cap 8, k 8, exit_threshold 5e-4 (the
paper: r_bar 32, k 8, threshold 5e-4), init_std 0.1 (an option; the paper draws s_0 at
random with a fixed std).
"""

from __future__ import annotations

import math
from typing import Any, ClassVar, Literal

import torch
import torch.nn.functional as F
from pydantic import Field, model_validator
from torch import Tensor, nn

from ponderlab.core.early_exit import active_rows, gather_active, rows_mask, speculates
from ponderlab.core.halting import (
    ACTConfig,
    ExitHead,
    HaltingStrategy,
    HopFn,
    PonderOutput,
    RunningTokens,
    Scope,
    accumulation_dtype,
    fixed_hops_output,
    renamed_key,
    require_scope,
)
from ponderlab.core.hookspecs import hookimpl


class RecurrentDepthConfig(ACTConfig):
    name: Literal["recurrent_depth"] = "recurrent_depth"
    inference_options: ClassVar[tuple[str, ...]] = ("exit_threshold",)
    scope: Scope = Field("model", description="model (the stack is the core) or layer.")
    mean_recurrence: float = Field(4.0, gt=0, description="r_bar: mean of the Poisson part of r.")
    sigma: float = Field(0.5, ge=0, description="sigma of the log-normal Poisson.")
    max_hops: int = Field(8, ge=1, description="Cap on iterations (training and inference).")
    backprop_hops: int = Field(8, ge=1, description="k: the last hops, which get gradients.")
    exit_threshold: float | None = Field(
        5e-4, gt=0, description="KL exit threshold at inference (None: always max_hops)."
    )
    init_std: float = Field(0.1, ge=0, description="Std of the random initial state s_0.")

    @model_validator(mode="before")
    @classmethod
    def _old_backprop_name(cls, data: Any) -> Any:
        return renamed_key(data, "backprop_steps", "backprop_hops")


def sample_recurrence(mean: float, sigma: float, cap: int, generator=None) -> int:
    """r = Poisson(e^tau) + 1, tau ~ N(log(mean) - sigma^2/2, sigma), capped at `cap`."""
    tau = torch.normal(torch.tensor(math.log(mean) - sigma**2 / 2), torch.tensor(sigma), generator=generator)
    r = int(torch.poisson(torch.exp(tau).reshape(1), generator=generator).item()) + 1
    return min(r, cap)


def successive_kl(logits: Tensor, previous_logits: Tensor) -> Tensor:  # (B, L, V) x2 -> (B, L)
    """KL(p_n || p_{n-1}) per token."""
    dtype = accumulation_dtype(logits)
    log_p = F.log_softmax(logits.to(dtype), dim=-1)
    log_q = F.log_softmax(previous_logits.to(dtype), dim=-1)
    return (log_p.exp() * (log_p - log_q)).sum(-1)


def kl_still_running(head: ExitHead, current: Tensor, previous_logits: Tensor, running: Tensor,
                     threshold: float) -> Tensor:
    """The tokens (B, L) that go on: running ones whose KL(p_n || p_{n-1}) >= threshold.

    current (B, L, D) holds s_n; previous_logits (B, L, V) the logits of each token's last
    state, overwritten with p_n's at the running tokens. The head runs on the running
    tokens' rows only (stopped tokens' states and logits do not change), except under GPU
    speculation, where finding the rows is a forbidden host read: then on every token.
    """
    if speculates(current):
        logits = head(current)  # (B, L, V)
        going_on = running & (successive_kl(logits, previous_logits) >= threshold)
        previous_logits.copy_(logits)
        return going_on
    rows = active_rows(running)  # (K,)
    fresh = head(gather_active(current, rows))  # (K, V)
    flat = previous_logits.view(-1, previous_logits.shape[-1])  # (B*L, V)
    keep = successive_kl(fresh, flat.index_select(0, rows)) >= threshold  # (K,)
    flat.index_copy_(0, rows, fresh.to(flat.dtype))
    return rows_mask(rows[keep], running.shape)


class RecurrentDepth(HaltingStrategy):
    """Input-injected recurrence with random depth in training and KL exit at inference."""

    config_class = RecurrentDepthConfig
    supported_scopes = frozenset({"layer", "model"})

    def __init__(self, config: RecurrentDepthConfig, *, d_model: int, n_layers: int):
        super().__init__(config, d_model=d_model, n_layers=n_layers)
        require_scope("recurrent_depth", config.scope, self.supported_scopes,
                      "; recurrent depth re-applies a shared core (for distinct layers use calm)")
        self.adapter = nn.Linear(2 * d_model, d_model, bias=False)
        with torch.no_grad():  # A([e; s]) = e + s at init
            eye = torch.eye(d_model)
            self.adapter.weight.copy_(torch.cat([eye, eye], dim=1))

    def max_hops(self) -> int:
        return self.config.max_hops

    def inject(self, embedded: Tensor, state: Tensor) -> Tensor:  # (B, L, D) x2 -> (B, L, D)
        return self.adapter(torch.cat([embedded, state], dim=-1))

    def initial_state(self, embedded: Tensor) -> Tensor:  # (B, L, D)
        return torch.randn_like(embedded) * self.config.init_std

    def forward(
        self, state: Tensor, hop: HopFn, mask: Tensor | None = None, head: ExitHead | None = None
    ) -> PonderOutput:
        embedded, current = state, self.initial_state(state)
        if self.training:
            config = self.config
            hops = sample_recurrence(config.mean_recurrence, config.sigma, config.max_hops)
            first_with_grad = max(0, hops - config.backprop_hops)
            grad = torch.is_grad_enabled()
            for n in range(hops):
                with torch.set_grad_enabled(grad and n >= first_with_grad):
                    current = hop(self.inject(embedded, current), n, None)
            return fixed_hops_output(current, hops)
        if head is None or self.config.exit_threshold is None:
            for n in range(self.config.max_hops):
                current = hop(self.inject(embedded, current), n, None)
            return fixed_hops_output(current, self.config.max_hops)
        return self._kl_exit(embedded, current, hop, head, mask)

    def _kl_exit(self, embedded: Tensor, current: Tensor, hop: HopFn, head: ExitHead,
                 mask: Tensor | None) -> PonderOutput:
        dtype = accumulation_dtype(embedded)
        hops = torch.zeros(embedded.shape[:-1], dtype=dtype, device=embedded.device)  # (B, L)
        running = torch.ones(embedded.shape[:-1], dtype=torch.bool, device=embedded.device)
        tokens = RunningTokens(embedded)
        previous_logits = None
        for n in range(self.config.max_hops):
            new = hop(self.inject(embedded, current), n, tokens.active)  # (B, L, D)
            if not tokens.keep_hop():
                break
            hops = hops + running.to(dtype)
            current = torch.where(running.unsqueeze(-1), new, current)  # stopped tokens keep s
            if previous_logits is None:
                previous_logits = head(current)  # (B, L, V): every token ran the first iteration
                if mask is not None:
                    running = running & mask  # padding stops after its first iteration
            else:
                running = kl_still_running(head, current, previous_logits, running, self.config.exit_threshold)
            if n == self.config.max_hops - 1 or not tokens.record(running):
                break
        return fixed_hops_output(current, hops)


@hookimpl
def ponderlab_register_halting(register):
    register(RecurrentDepth)
