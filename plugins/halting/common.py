"""Pieces shared by halting strategies."""

from __future__ import annotations

import torch
from torch import Tensor, nn

from ponderlab.core.interfaces import PonderOutput


class HaltingUnit(nn.Module):
    """h = sigmoid(W s + b): per-token halting probability, (B, L, D) -> (B, L).

    The weight starts at zero so that every token starts with h = sigmoid(bias):
    with bias 1.0 and threshold 0.9 every token halts at exactly hop 2 at init.
    """

    def __init__(self, d_model: int, bias_init: float):
        super().__init__()
        self.linear = nn.Linear(d_model, 1)
        nn.init.zeros_(self.linear.weight)
        nn.init.constant_(self.linear.bias, bias_init)

    def forward(self, state: Tensor) -> Tensor:  # (B, L, D) -> (B, L)
        return torch.sigmoid(self.linear(state).squeeze(-1).float())


def fixed_hops_output(output: Tensor, hops: int) -> PonderOutput:
    """PonderOutput for a strategy that runs a fixed number of hops for every token."""
    shape = output.shape[:-1]  # (B, L)
    return PonderOutput(
        output=output,
        hops=output.new_full(shape, float(hops), dtype=torch.float32),
        ponder_cost=output.new_zeros(shape, dtype=torch.float32),
        remainder=output.new_zeros(shape, dtype=torch.float32),
    )
