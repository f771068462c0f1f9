"""Confidence-based early exit across distinct layers, shared by `calm` and `layerskip`.

Confidence measures of token t after layer i (Schuster et al. 2022, section 3.5):

* softmax response: p_(1) - p_(2), the gap between the two largest probabilities of
  softmax(head(s_i));
* hidden-state saturation: cos(s_i, s_{i-1}) (s_0: the input of the first layer);
* learned classifier: sigmoid(w_i . s_i + b_i) (the strategy owns the units).

A running token exits after layer i when its confidence reaches its threshold lambda_t;
every running token exits after the last layer. The decaying threshold (CALM eq. 5):
lambda_t = clip_[0,1](9/10 lambda + 1/10 exp(-tau t / N)), t the position, N a length.
"""

from __future__ import annotations

from collections.abc import Callable

import torch
import torch.nn.functional as F
from torch import Tensor

from ponderlab.core.early_exit import active_rows, gather_active, rows_mask, speculates
from ponderlab.core.halting import HopFn, PonderOutput, RunningTokens, accumulation_dtype

#: confidence(layer, new state (B, L, D), previous state (B, L, D)) -> (B, L); position-wise
#: (each token's from its own states), so the loop may call it on running tokens' rows only
ConfidenceFn = Callable[[int, Tensor, Tensor], Tensor]


def softmax_response(logits: Tensor) -> Tensor:  # (B, L, V) -> (B, L)
    """p_(1) - p_(2): the gap between the two most likely outputs."""
    top = torch.softmax(logits.to(accumulation_dtype(logits)), dim=-1).topk(2, dim=-1).values
    return top[..., 0] - top[..., 1]


def state_saturation(new: Tensor, old: Tensor) -> Tensor:  # (B, L, D), (B, L, D) -> (B, L)
    """cos(s_i, s_{i-1}) per token."""
    dtype = accumulation_dtype(new)
    return F.cosine_similarity(new.to(dtype), old.to(dtype), dim=-1)


def position_thresholds(
    threshold: float, length: int, *, tau: float | None, decay_length: int | None, device
) -> Tensor:
    """(L,) lambda_t: constant `threshold`, or CALM's decaying one when tau is given."""
    if tau is None:
        return torch.full((length,), threshold, device=device)
    positions = torch.arange(length, device=device, dtype=torch.float64)
    horizon = float(decay_length or length)
    decayed = 0.9 * threshold + 0.1 * torch.exp(-tau * positions / horizon)
    return decayed.clamp(0.0, 1.0).to(torch.float32)


def confident_exit_loop(
    state: Tensor,
    hop: HopFn,
    *,
    n_layers: int,
    confidence: ConfidenceFn,
    thresholds: Tensor,
    mask: Tensor | None = None,
) -> PonderOutput:
    """Layer n at hop n; a token exits after the first layer whose confidence reaches
    thresholds (L,) at its position. Exited tokens are frozen by the core, so later tokens
    read their exit state in the skipped layers (CALM's state copying). Output: each
    token's state after its exit layer; hops: layers it ran."""
    dtype = accumulation_dtype(state)
    hops = torch.zeros(state.shape[:-1], dtype=dtype, device=state.device)  # (B, L)
    running = torch.ones(state.shape[:-1], dtype=torch.bool, device=state.device)
    tokens = RunningTokens(state)
    for n in range(n_layers):
        new = hop(state, n, tokens.active)  # (B, L, D)
        if not tokens.keep_hop():
            break
        hops = hops + running.to(dtype)
        previous, state = state, new
        if n == n_layers - 1:
            break
        confident = running_confident(confidence, n, state, previous, thresholds, running)  # (B, L)
        running = running & ~confident
        if mask is not None and n == 0:
            running = running & mask  # padding exits after its first layer
        if not tokens.record(running):
            break
    zeros = torch.zeros_like(hops)
    return PonderOutput(output=state, hops=hops, ponder_cost=zeros, remainder=zeros.clone())


def running_confident(
    confidence: ConfidenceFn, n: int, new: Tensor, old: Tensor, thresholds: Tensor, running: Tensor
) -> Tensor:
    """(B, L) confidence >= thresholds (L,) at the running tokens (B, L), False elsewhere.

    Computed for the running tokens' rows only (the softmax response's head costs V x D per
    token), except under GPU speculation, where finding the rows is a host read forbidden
    there (`ponderlab.core.early_exit.policy`): then for every token, masked.
    """
    if speculates(new) or bool(running.all()):
        return (confidence(n, new, old) >= thresholds) & running
    rows = active_rows(running)  # (K,)
    values = confidence(n, gather_active(new, rows).unsqueeze(0), gather_active(old, rows).unsqueeze(0))[0]  # (K,)
    confident = values >= thresholds[rows % running.shape[1]]  # (K,) each at its position
    return rows_mask(rows[confident], running.shape)


def depth_weights(n_layers: int, like: Tensor) -> Tensor:
    """(B, L, N) CALM's per-layer loss weights w_i = i / sum_j j (i = 1..N) for every token."""
    weights = torch.arange(1, n_layers + 1, dtype=accumulation_dtype(like), device=like.device)
    weights = weights / weights.sum()
    return weights.expand(*like.shape[:-1], n_layers)


