"""The cumulative ACT loop across depth for inference, over packed rows of running tokens.

`cumulative_halting_loop` works on whole (B, L, D) states: after every layer it
masks, weighs and sums full-size tensors, and each block gathers the running
tokens again. This form keeps the running tokens packed as (K, D) rows from layer
to layer (see `ponderlab.core.row_hops`): the layer, the halting probability, the
bookkeeping and the weighted sum are all K-sized, and when tokens halt their
output rows are written once and the packed tensors shrink to the tokens still
running. It gives the dense loop's outputs, weights, hop counts and remainders
(tests/test_halting_packed.py compares them).
"""

from __future__ import annotations

import torch
from torch import Tensor

from ponderlab.core.interfaces import PonderOutput, RowHopFn

from .common import HaltingFn, accumulation_dtype


def packed_cumulative_halting_loop(
    state: Tensor,
    row_hop: RowHopFn,
    *,
    n_hops: int,
    threshold: float,
    halting_probability: HaltingFn,
    mask: Tensor | None = None,
) -> PonderOutput:
    """`cumulative_halting_loop` with hop n = layer n, on packed rows (no autograd).

    state (B, L, D) is the input of layer 1; `row_hop(n, rows, states)` returns
    layer n's new states (K, D) of the tokens at flat indices `rows` (None: all).
    `halting_probability(n, states (K, D), None)` gives h_n (K,). A token halts at
    N = min{n : sum_{m<=n} h_m >= threshold} or at hop `n_hops`, with weights
    p_n = h_n before N and R = 1 - sum_{m<N} h_m at N; padding (`mask` False)
    halts after its first hop with weight 1.
    """
    batch_shape = state.shape[:-1]
    count = batch_shape.numel()
    dtype = accumulation_dtype(state)
    hops = torch.full((count,), float(n_hops), dtype=dtype, device=state.device)  # N, set as tokens halt
    remainder = torch.zeros(count, dtype=dtype, device=state.device)  # R = p_N, set as tokens halt
    output: Tensor | None = None  # (B*L, D): sum_n p_n s_n, a token's row written when it halts
    weights: list[Tensor] = []  # p_n, (B*L,) each
    rows: Tensor | None = None  # (K,) flat indices of the running tokens; None while every token runs
    states = accumulated = total = remaining = None  # (K, D), (K, D), (K,), (K,): running tokens only
    for step in range(n_hops):
        states = row_hop(step, rows, states)  # (K, D)
        if step == n_hops - 1:  # the cap: every running token halts with its remainder
            weight = remaining if remaining is not None else states.new_ones(states.shape[0], dtype=dtype)
            running = torch.zeros_like(weight, dtype=torch.bool)
        else:
            h = halting_probability(step, states, None)  # (K,), >= 0
            if total is None:
                total = h if mask is None else h.masked_fill(~mask.reshape(-1), threshold + 1.0)  # pads halt now
                remaining = torch.ones_like(h)  # 1 - c_0
            else:
                total = total + h  # c_n
            running = total < threshold  # (K,)
            weight = torch.where(running, h, remaining)  # p_n while continuing, R at the halting hop
            remaining = 1.0 - total  # read at later hops only by tokens still running
        weights.append(weight if rows is None else weight.new_zeros(count).index_copy_(0, rows, weight))
        if accumulated is None:
            accumulated = states * weight.unsqueeze(-1)  # (K, D) in the accumulation dtype
        else:
            accumulated.addcmul_(weight.unsqueeze(-1), states.to(accumulated.dtype))
        kept = running.nonzero().squeeze(1)  # (K',) positions of the tokens that go on
        still, before = kept.shape[0], states.shape[0]
        if still == before:
            continue
        halted = (~running).nonzero().squeeze(1)  # positions of the tokens that halt now
        halted_rows = halted if rows is None else rows.index_select(0, halted)
        if output is None:  # the first tokens halt; every token ran, so the rows are in place
            output = accumulated  # the running tokens' rows are overwritten when they halt
        else:
            output.index_copy_(0, halted_rows, accumulated.index_select(0, halted))
        hops.index_fill_(0, halted_rows, float(step + 1))
        remainder.index_copy_(0, halted_rows, weight.index_select(0, halted))
        if still == 0:
            break
        rows = kept if rows is None else rows.index_select(0, kept)
        states, accumulated, total, remaining = (
            tensor.index_select(0, kept) for tensor in (states, accumulated, total, remaining)
        )
    return PonderOutput(
        output=output.view(state.shape).to(state.dtype),
        hops=hops.view(batch_shape),
        ponder_cost=(hops + remainder).view(batch_shape),
        remainder=remainder.view(batch_shape),
        hop_weights=[weight.view(batch_shape) for weight in weights],
    )
