"""Building `PonderOutput`s: fixed hop counts, the in-place weighted sum of hop states, interpolation weights."""

from __future__ import annotations

import torch
from torch import Tensor

from ponderlab.core.interfaces import PonderOutput

from .units import accumulation_dtype


def accumulate(output: Tensor, weight: Tensor, state: Tensor) -> Tensor:
    """output += weight * state, (..., D) + (...) * (..., D), by one in-place addcmul: safe under
    autograd because its backward needs only `weight` and `state` and `output` is the loop's own
    accumulator, which no other op saves."""
    return output.addcmul_(weight.unsqueeze(-1), state.to(output.dtype))


def fixed_hops_output(output: Tensor, hops: int | Tensor) -> PonderOutput:
    """PonderOutput for a strategy without halting weights: `hops` per token (int or (B, L))."""
    shape = output.shape[:-1]  # (B, L)
    dtype = accumulation_dtype(output)
    if isinstance(hops, Tensor):
        hop_counts = hops.to(dtype)
    else:
        hop_counts = torch.full(shape, float(hops), dtype=dtype, device=output.device)
    zeros = torch.zeros(shape, dtype=dtype, device=output.device)
    return PonderOutput(output=output, hops=hop_counts, ponder_cost=zeros, remainder=zeros.clone())


def interpolation_weights(weights: list[Tensor]) -> list[Tensor]:
    """Weights of y_N for y_n = w_n s_n + (1 - w_n) y_{n-1}: e_n = w_n prod_{m>n} (1 - w_m)."""
    effective, keep = [], torch.ones_like(weights[0])
    for weight in reversed(weights):
        effective.append(weight * keep)
        keep = keep * (1.0 - weight)
    return effective[::-1]
