"""`PackedTokens`: the cumulative ACT loop's layout for running tokens packed as (K, D) rows.

`ponderlab.core.halting.cumulative_halting_loop` uses it when the core hands it a
`PackedHops` (depth-scope inference, see execution.py); no autograd.
"""

from __future__ import annotations

import torch
from torch import Tensor

from .execution import PackedHops


class PackedTokens:
    """The running tokens as packed (K, D) rows (no autograd); a token's output row and halting
    hop are written when it halts, and the rows shrink to the tokens still running."""

    def __init__(self, state: Tensor, hop: PackedHops):
        self.shape, self.dtype = state.shape, state.dtype
        self.rows_hop = hop.rows
        self.rows: Tensor | None = None  # (K,) flat indices of the running tokens; None: all
        self.states: Tensor | None = None  # (K, D)
        self.sums: Tensor | None = None  # (K, D) sum_n p_n s_n of the running tokens
        self.output: Tensor | None = None  # (B*L, D)
        self.weights: list[Tensor] = []  # p_n, (B*L,) each
        self.active = None  # halting units see packed rows only
        self.halt_index = torch.zeros(state.shape[:-1].numel(), dtype=torch.long, device=state.device)

    def hop(self, n: int) -> Tensor:
        self.states = self.rows_hop(n, self.rows, self.states)  # (K, D)
        return self.states

    def settle(self, weight: Tensor, running: Tensor, carried: tuple, last: bool) -> tuple | None:
        full = weight if self.rows is None else weight.new_zeros(self.halt_index.shape).index_copy_(0, self.rows, weight)
        self.weights.append(full)
        if self.sums is None:
            self.sums = self.states * weight.unsqueeze(-1)  # (K, D)
        else:
            self.sums.addcmul_(weight.unsqueeze(-1), self.states.to(self.sums.dtype))
        kept = running.nonzero().squeeze(1)  # (K',) positions of the tokens that go on
        if kept.shape[0] == weight.shape[0]:
            return carried
        halted = (~running).nonzero().squeeze(1)
        halted_rows = halted if self.rows is None else self.rows.index_select(0, halted)
        if self.output is None:  # the first tokens halt; every token ran, so rows are in place
            self.output = self.sums
        else:
            self.output.index_copy_(0, halted_rows, self.sums.index_select(0, halted))
        self.halt_index.index_fill_(0, halted_rows, len(self.weights) - 1)
        if kept.shape[0] == 0:
            return None
        self.rows = kept if self.rows is None else self.rows.index_select(0, kept)
        self.states, self.sums = self.states.index_select(0, kept), self.sums.index_select(0, kept)
        return tuple(tensor.index_select(0, kept) for tensor in carried)

    def result(self) -> tuple[Tensor, list[Tensor], Tensor]:
        """(output (B, L, D) in the state's dtype, p_n (B, L) per hop, N - 1 (B, L))."""
        batch_shape = self.shape[:-1]
        output = self.output.view(self.shape).to(self.dtype)
        return output, [weight.view(batch_shape) for weight in self.weights], self.halt_index.view(batch_shape)
