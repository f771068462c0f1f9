"""`pondernet`: PonderNet (Banino et al. 2021, arXiv 2107.05407).

Hop n produces state s_n and lambda_n = sigmoid(W s_n + b) (n = 1..N, N = max_hops).
Halting distribution: p_n = lambda_n prod_{j<n} (1 - lambda_j); the last hop takes
all remaining mass, p_N = prod_{j<N} (1 - lambda_j), so sum_n p_n = 1.

Training runs all N hops and returns the per-hop states with p; the core turns
them into the expected task loss sum_n p_n CE(head(s_n)). This strategy adds
aux_loss = beta * mean over tokens of KL(p || g), in the paper's direction
(sum_n p_n log(p_n / g_n)), where g is the geometric prior
g_n = lambda_p (1 - lambda_p)^(n-1), truncated at N and renormalised to sum to 1.
The output the head sees in training is s_n at a hop n ~ p (a sample of the
model's own halting).

Inference (eval mode): halting by sampling Bernoulli(lambda_n) after each hop
(`inference: sample`, the paper), or at the most likely hop argmax_n p_n
(`inference: most_likely`); either way the state of the halting hop is returned
and tokens stop as soon as their halting hop is decided (early exit; for most_likely a
token stops once its best p_n is at least the mass left for later hops).

Statistics: hops = hops executed (N in training); ponder_cost = expected halting
hop sum_n n p_n in training, the realised hop at inference; remainder = the
mass forced onto the last hop. The KL is the regulariser (no time penalty).

Defaults: lambda_p 0.2, beta 0.01 (the paper's parity settings use beta 0.01),
max_hops 4 (the paper used 20 on parity), halting_bias_init = logit(lambda_p).
Scopes: model, depth, and layer only with a single layer (the expected loss
needs the states that reach the head).
"""

from __future__ import annotations

from typing import ClassVar, Literal

import torch
from pydantic import Field
from torch import Tensor

from ponderlab.core.early_exit import where_rows
from ponderlab.core.errors import SpecError
from ponderlab.core.halting import (
    ACTConfig,
    HaltingStrategy,
    HaltingUnit,
    HopFn,
    PonderOutput,
    RunningTokens,
    Scope,
    accumulation_dtype,
    logit,
)
from ponderlab.core.hookspecs import hookimpl


class PonderNetConfig(ACTConfig):
    name: Literal["pondernet"] = "pondernet"
    inference_options: ClassVar[tuple[str, ...]] = ("inference",)
    scope: Scope = Field(
        "model", description="model (default), depth, or layer with a single layer."
    )
    max_hops: int = Field(4, ge=1, description="Hops N (layer/model scopes); the last takes all mass.")
    lambda_p: float = Field(0.2, gt=0, lt=1, description="Parameter of the geometric prior.")
    beta: float = Field(0.01, ge=0, description="Weight of KL(p || prior) in the loss.")
    halting_bias_init: float | None = Field(
        None, description="Initial bias of the lambda unit (default logit(lambda_p))."
    )
    inference: Literal["sample", "most_likely"] = Field(
        "sample", description="Eval-mode halting: sample Bernoulli(lambda_n), or the argmax of p."
    )


def halting_distribution(lambdas: Tensor) -> Tensor:
    """(..., N) lambdas -> (..., N) p_n = lambda_n prod_{j<n}(1 - lambda_j); p_N takes the rest."""
    survive = torch.cumprod(1.0 - lambdas, dim=-1)  # prod_{j<=n}(1 - lambda_j)
    before = torch.cat([torch.ones_like(survive[..., :1]), survive[..., :-1]], dim=-1)
    return torch.cat([(lambdas * before)[..., :-1], before[..., -1:]], dim=-1)


def truncated_geometric(lambda_p: float, n: int, *, dtype=torch.float32, device=None) -> Tensor:
    """(n,) g_k = lambda_p (1 - lambda_p)^(k-1) for k = 1..n, renormalised to sum to 1."""
    k = torch.arange(n, dtype=dtype, device=device)
    g = lambda_p * (1.0 - lambda_p) ** k
    return g / g.sum()


def kl_to_prior(p: Tensor, prior: Tensor) -> Tensor:
    """(..., N) -> (...): KL(p || prior) = sum_n p_n (log p_n - log prior_n), 0 log 0 = 0.

    p_n is exactly 0 once a lambda saturates to 1 in float32; log p_n is taken of p_n clamped
    to the dtype's smallest normal there, so the value is still 0 and the gradient stays finite
    (xlogy(p, p)'s gradient at 0 is NaN, which ruined training runs)."""
    log_p = torch.log(p.clamp_min(torch.finfo(p.dtype).tiny))
    return (p * (log_p - torch.log(prior))).sum(-1)


class PonderNet(HaltingStrategy):
    """PonderNet halting: expected loss over hops in training, sampled halting at inference."""

    config_class = PonderNetConfig

    def __init__(self, config: PonderNetConfig, *, d_model: int, n_layers: int):
        super().__init__(config, d_model=d_model, n_layers=n_layers)
        if config.scope == "layer" and n_layers > 1:
            raise SpecError(
                f"pondernet in layer scope needs a single layer (got {n_layers}): its loss is an "
                "expectation over the hop states that reach the head; use scope model or depth",
                path="halting.scope",
            )
        bias = config.halting_bias_init
        if bias is None:
            bias = logit(config.lambda_p)
        units = n_layers if config.scope == "depth" else 1
        self.units = torch.nn.ModuleList(HaltingUnit(d_model, bias) for _ in range(units))

    def lambda_at(self, n: int, state: Tensor) -> Tensor:
        return self.units[n if len(self.units) > 1 else 0](state)  # (B, L)

    def forward(self, state: Tensor, hop: HopFn, mask: Tensor | None = None) -> PonderOutput:
        if self.training:
            return self._expected(state, hop, mask)
        return self._halted(state, hop, mask)

    # ------------------------------------------------------------------ training
    def _expected(self, state: Tensor, hop: HopFn, mask: Tensor | None) -> PonderOutput:
        n_hops = self.max_hops()
        dtype = accumulation_dtype(state)
        states, lambdas = [], []
        for n in range(n_hops):
            state = hop(state, n, None)
            states.append(state)
            lambdas.append(self.lambda_at(n, state))
        p = halting_distribution(torch.stack(lambdas, dim=-1))  # (B, L, N)
        prior = truncated_geometric(self.config.lambda_p, n_hops, dtype=dtype, device=p.device)
        kl = kl_to_prior(p, prior)  # (B, L)
        chosen = torch.multinomial(p.detach().reshape(-1, n_hops).float(), 1).view(p.shape[:-1])
        stacked = torch.stack(states, dim=-2)  # (B, L, N, D)
        index = chosen[..., None, None].expand(*chosen.shape, 1, stacked.shape[-1])
        output = stacked.gather(-2, index).squeeze(-2)  # (B, L, D)
        hop_numbers = torch.arange(1, n_hops + 1, dtype=dtype, device=p.device)  # n = 1..N
        return PonderOutput(
            output=output,
            hops=torch.full(p.shape[:-1], float(n_hops), dtype=dtype, device=p.device),
            ponder_cost=(p * hop_numbers).sum(-1),
            remainder=p[..., -1] if n_hops > 1 else torch.zeros_like(p[..., 0]),
            hop_states=states,
            hop_probs=p,
            hop_weights=[(chosen == n).to(dtype) for n in range(n_hops)],  # the sampled state
            aux_loss=self.config.beta * (kl.mean() if mask is None else kl[mask].mean()),  # real tokens
        )

    # ------------------------------------------------------------------ inference
    def _halted(self, state: Tensor, hop: HopFn, mask: Tensor | None) -> PonderOutput:
        n_hops = self.max_hops()
        most_likely = self.config.inference == "most_likely"
        dtype = accumulation_dtype(state)
        shape = state.shape[:-1]  # (B, L)
        running = torch.ones(shape, dtype=torch.bool, device=state.device)
        output = state.clone()
        hops = torch.zeros(shape, dtype=dtype, device=state.device)
        halting_step = torch.zeros_like(hops)
        survive = torch.ones_like(hops)  # prod_{j<n}(1 - lambda_j)
        best = torch.full(shape, -1.0, dtype=dtype, device=state.device)  # best p_n so far
        tokens = RunningTokens(state)
        for n in range(n_hops):
            next_state = hop(state, n, tokens.active)
            if not tokens.keep_hop():  # speculative mode: no token was running, drop that hop
                break
            state = next_state
            lam = self.lambda_at(n, state)
            last = n == n_hops - 1
            # tokens that must stop now: all at the cap, padding after its first hop
            forced = ~mask if n == 0 and mask is not None and not last else last
            hops = hops + running.to(dtype)
            if most_likely:  # keep this hop's state where p_n is the best so far
                p_n = survive if last else lam * survive
                chosen = running & (p_n > best)
                best = torch.where(chosen, p_n, best)
                survive = survive * (1.0 - lam)
                stops = running & ((best >= survive) | forced)  # at hop 0 every token is chosen
            else:  # keep this hop's state where the token halts
                stops = running & ((torch.rand_like(lam) < lam) | forced)
                chosen = stops
            output = where_rows(chosen, state, output)
            halting_step = halting_step.masked_fill(chosen, n + 1.0)
            running = running & ~stops
            if not tokens.record(running):
                break
        return PonderOutput(
            output=output,
            hops=hops,
            ponder_cost=halting_step,
            remainder=torch.zeros_like(hops),
            hop_weights=[(halting_step == n + 1).to(dtype) for n in range(int(hops.max()))],
        )


@hookimpl
def ponderlab_register_halting(register):
    register(PonderNet)
