"""A check shared by the early-exit tests: a model that skips halted tokens against its twin
that computes every token, with the same weights."""

from __future__ import annotations

import torch
from torch import nn


def assert_same_logits_and_gradients(fast: nn.Module, full: nn.Module, fast_logits: torch.Tensor,
                                     full_logits: torch.Tensor) -> None:
    """Equal logits, and equal gradients of one loss for every parameter (in the same order)."""
    torch.testing.assert_close(fast_logits, full_logits)
    fast_logits.square().sum().backward()
    full_logits.square().sum().backward()
    for (name, fast_param), full_param in zip(fast.named_parameters(), full.parameters(), strict=True):
        torch.testing.assert_close(fast_param.grad, full_param.grad, msg=name)
