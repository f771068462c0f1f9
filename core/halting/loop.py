"""The cumulative ACT loop (Graves 2016), used by `graves` (any scope) and `threshold` (depth)
through their base `CumulativeHalting`.

After hop n (state s_n) every running token gets h_n. It halts at
N = min{n : sum_{m<=n} h_m >= threshold}, or at hop `n_hops` (the cap). Weights:
p_n = h_n for n < N and p_N = R = 1 - sum_{m<N} h_m, so they sum to 1 for every token,
capped ones included. Output y = sum_n p_n s_n; ponder cost N + R, gradient through R only.
Padding (`mask` False) halts after its first hop with weight 1.

One loop, two layouts of the tokens: `DenseTokens` keeps whole (B, L, D) states (halted
tokens frozen by the hop); `ponderlab.core.early_exit.PackedTokens` keeps the running
tokens packed as (K, D) rows and shrinks them as tokens halt (inference in depth scope,
when the core passes a `PackedHops`).
"""

from __future__ import annotations

from collections.abc import Callable

import torch
from torch import Tensor

from ponderlab.core.early_exit import PackedHops, PackedTokens, RunningTokens
from ponderlab.core.interfaces import HaltingStrategy, HopFn, PonderOutput

from .outputs import accumulate
from .units import accumulation_dtype

#: halting_probability(n, states (..., D), active (B, L) bool | None) -> (...) in [0, 1]
HaltingFn = Callable[[int, Tensor, "Tensor | None"], Tensor]


class CumulativeHalting(HaltingStrategy):
    """Halt once sum_n h_n reaches `halting_threshold()`, or at `max_hops()` (the cap). A subclass
    defines `halting_threshold()` and `halting_probability(n, state, active)`: h_n after hop n,
    (B, L) from a (B, L, D) state, or (K,) from packed (K, D) rows."""

    def forward(self, state: Tensor, hop: HopFn, mask: Tensor | None = None) -> PonderOutput:
        return cumulative_halting_loop(state, hop, mask=mask, n_hops=self.max_hops(),
                                       threshold=self.halting_threshold(),
                                       halting_probability=self.halting_probability)


def cumulative_halting_loop(state: Tensor, hop: HopFn, *, n_hops: int, threshold: float,
                            halting_probability: HaltingFn, mask: Tensor | None = None) -> PonderOutput:
    """Run the cumulative ACT loop over `state` (B, L, D); see the module docstring."""
    dtype = accumulation_dtype(state)
    tokens = PackedTokens(state, hop) if isinstance(hop, PackedHops) else DenseTokens(state, hop)
    total, remaining = 0.0, 1.0  # c_n and 1 - c_n of the kept tokens (tensors from hop 1 on)
    for n in range(n_hops):
        if (states := tokens.hop(n)) is None:  # (B, L, D) or (K, D); None: a speculated hop dropped
            break
        if last := n == n_hops - 1:  # the cap: every running token halts with its remainder
            weight = remaining if n > 0 else states.new_ones(states.shape[:-1])  # a single hop: 1
            running = torch.zeros_like(weight, dtype=torch.bool)
        else:
            h = halting_probability(n, states, tokens.active)  # >= 0; (B, L), or (K,) = (B*L,) at hop 1
            total = total + h  # c_n only grows, so a halted token stays halted
            if n == 0 and mask is not None:  # padding halts after its first hop, with weight 1
                total = total.masked_fill(~mask.reshape(h.shape), threshold + 1.0)
            running = total < threshold
            weight = torch.where(running, h, remaining)  # p_n while running, R when halting, 0 after
            remaining = torch.where(running, 1.0 - total, 0.0)
        if (carried := tokens.settle(weight.to(dtype), running, (total, remaining), last)) is None:
            break
        total, remaining = carried
    output, weights, halt_index = tokens.result()
    remainder = torch.stack(weights).gather(0, halt_index.unsqueeze(0)).squeeze(0)  # R = p_N
    hops = halt_index.to(remainder.dtype).add_(1)  # N
    return PonderOutput(output=output, hops=hops, ponder_cost=hops + remainder, remainder=remainder,
                        hop_weights=weights)


class DenseTokens(RunningTokens):
    """Whole (B, L, D) states, halted tokens frozen by the hop; `settle` adds p_n s_n."""

    def __init__(self, state: Tensor, hop: HopFn):
        super().__init__(state)
        self.state, self.hop_fn = state, hop
        self.output: Tensor | None = None  # sum_n p_n s_n, (B, L, D)
        self.weights: list[Tensor] = []  # p_n, (B, L) each
        self.halt_index = torch.zeros(state.shape[:-1], dtype=torch.long, device=state.device)  # N - 1

    def hop(self, n: int) -> Tensor | None:
        self.state = self.hop_fn(self.state, n, self.active)  # halted tokens keep their state
        return self.state if self.keep_hop() else None  # None: a speculated hop to drop

    def settle(self, weight: Tensor, running: Tensor, carried: tuple, last: bool) -> tuple | None:
        self.weights.append(weight)
        if self.output is None:  # state first: the product keeps the state's memory layout
            self.output = self.state * weight.unsqueeze(-1)
        else:
            self.output = accumulate(self.output, weight, self.state)
        self.halt_index += running  # a running token halts at a later hop
        return carried if last or self.record(running) else None  # at the cap all halt: no read

    def result(self) -> tuple[Tensor, list[Tensor], Tensor]:
        """(output (B, L, D) in the state's dtype, p_n (B, L) per hop, N - 1 (B, L))."""
        return self.output.to(self.state.dtype), self.weights, self.halt_index
