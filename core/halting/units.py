"""Halting units: per-token halting probabilities h = sigmoid(f(s)), (B, L, D) -> (B, L)."""

from __future__ import annotations

import math

import torch
from torch import Tensor, nn

from ponderlab.core.early_exit import active_rows, gather_active, speculates


def logit(p: float) -> float:
    """The bias that makes a zero-weight halting unit output sigmoid(bias) = p."""
    return math.log(p / (1.0 - p))


def accumulation_dtype(tensor: Tensor) -> torch.dtype:
    """float64 for float64 inputs, float32 otherwise (also under bf16 autocast)."""
    return torch.float64 if tensor.dtype == torch.float64 else torch.float32


class HaltingUnit(nn.Module):
    """h = sigmoid(W s + b) per token, (B, L, D) -> (B, L); W starts at zero, so h = sigmoid(bias)
    for every token at init (bias 1.0, threshold 0.9: every token halts at hop 2)."""

    def __init__(self, d_model: int, bias_init: float):
        super().__init__()
        self.linear = nn.Linear(d_model, 1)
        nn.init.zeros_(self.linear.weight)
        nn.init.constant_(self.linear.bias, bias_init)

    def forward(self, state: Tensor, active: Tensor | None = None) -> Tensor:  # every token: cheaper than a gather
        return torch.sigmoid(self.linear(state).squeeze(-1).to(accumulation_dtype(state)))


class HaltingMLP(nn.Module):
    """h = sigmoid(w2 . relu(W1 s + b1) + b2): seed 002's small halting MLP (about D^2/2 params).

    The output weight starts at zero, so h = sigmoid(bias_init) for every token at init.
    With `active` given, only the active tokens are evaluated (the others get 0), except
    where loops avoid host reads (GPU speculation): there every token is evaluated and
    the loop ignores h of halted tokens.
    """

    def __init__(self, d_model: int, bias_init: float, hidden: int | None = None):
        super().__init__()
        width = hidden or max(1, d_model // 2)
        self.hidden = nn.Linear(d_model, width)
        self.act = nn.ReLU(inplace=True)  # on the linear's own output: safe under autograd
        self.out = nn.Linear(width, 1)
        nn.init.zeros_(self.out.weight)
        nn.init.constant_(self.out.bias, bias_init)

    def logits(self, state: Tensor) -> Tensor:  # (..., D) -> (...)
        return self.out(self.act(self.hidden(state))).squeeze(-1)

    def forward(self, state: Tensor, active: Tensor | None = None) -> Tensor:  # (B, L, D) -> (B, L)
        dtype = accumulation_dtype(state)
        if active is None or speculates(state):  # gathering rows costs a host read on a GPU
            return torch.sigmoid(self.logits(state).to(dtype))
        rows = active_rows(active)
        values = torch.sigmoid(self.logits(gather_active(state, rows)).to(dtype))  # (K,)
        out = torch.zeros(active.numel(), dtype=dtype, device=state.device)
        return out.index_copy(0, rows, values).view(active.shape)
