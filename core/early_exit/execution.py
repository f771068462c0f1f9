"""The one place that chooses how a layer runs for the tokens still running.

* dense: `block(inputs, context)` on every token; the core keeps halted tokens' states.
* subset: a block that implements `forward_rows` (the `RowsBlock` protocol) computes the
  running tokens only, whenever some tokens have halted (finding the rows is a host
  read, under GPU speculation too: the row count sets the shapes).
* packed: depth-scope inference (no autograd, no memory writes, exact policy) where every
  block implements `forward_rows`: the hop given to the halting site is a `PackedHops`,
  and the cumulative ACT loop keeps its running tokens packed as (K, D) rows from layer
  to layer. Other strategies call it as a dense hop.
"""

from __future__ import annotations

from collections.abc import Sequence
from typing import Protocol, runtime_checkable

import torch
from torch import Tensor, nn

from ponderlab.core.interfaces import BlockContext, HopFn

from .policy import speculates
from .rows import active_rows, gather_active, scatter_active, where_rows


@runtime_checkable
class RowsBlock(Protocol):
    """A block that can compute a subset of tokens (the optional early-exit protocol)."""

    def forward_rows(self, hidden: Tensor, rows: Tensor, states: Tensor, context: BlockContext) -> Tensor:
        """New states (K, D) of the tokens at `rows` only.

        hidden (B, L, D) holds every token's current state (what token mixing reads), rows
        (K,) the ascending flat indices b * L + t to compute, states (K, D) their current
        states. Must equal `forward(hidden, context)` at those rows.
        """


def computes_rows(block: nn.Module) -> bool:
    """Whether `block` implements the `RowsBlock` protocol."""
    return callable(getattr(block, "forward_rows", None))


def layer_update(block: nn.Module, inputs: Tensor, state: Tensor, context: BlockContext) -> Tensor:
    """One layer application for the tokens in `context.active` (None: all): (B, L, D).

    inputs (B, L, D) is what the block reads (the state, plus memory for memory
    backbones); tokens outside `context.active` keep their rows of `state`.
    """
    active = context.active
    if active is None:
        return block(inputs, context)
    if computes_rows(block) and not bool(active.all()):
        rows = active_rows(active)  # (K,)
        updated = block.forward_rows(inputs, rows, gather_active(inputs, rows), context)  # (K, D)
        return scatter_active(state, rows, updated)
    return where_rows(active, block(inputs, context), state)  # halted tokens keep their state


class PackedHops:
    """A depth-scope hop that also runs layer n on packed rows of running tokens: `rows(n, rows
    (K,) | None (all), states (K, D))` -> new states (K, D). Blocks read every token from one
    (B, L, D) buffer of latest states, into which new rows are written; called like any hop
    (`hop(state, n, active)`) it runs `dense`."""

    def __init__(self, blocks: Sequence[nn.Module], hidden: Tensor, dense: HopFn | None = None):
        self.blocks, self.hidden, self.dense = blocks, hidden, dense  # hidden: every token's latest state

    def __call__(self, state: Tensor, n: int, active: Tensor | None) -> Tensor:
        return self.dense(state, n, active)

    def rows(self, n: int, rows: Tensor | None, states: Tensor | None) -> Tensor:
        block, context, width = self.blocks[n], BlockContext(layer=n, hop=0), self.hidden.shape[-1]
        if rows is None:
            new = block(self.hidden, context)  # (B, L, D)
            if new.untyped_storage().data_ptr() == self.hidden.untyped_storage().data_ptr():
                new = new.clone()  # never write into a caller's tensor below
            self.hidden = new.contiguous()
            return self.hidden.view(-1, width)  # (B*L, D)
        new = block.forward_rows(self.hidden, rows, states, context)  # (K, D)
        if n < len(self.blocks) - 1:  # the last layer's states are read by nobody else
            self.hidden.view(-1, width).index_copy_(0, rows, new.to(self.hidden.dtype))
        return new


def depth_hop(blocks: Sequence[nn.Module], hidden: Tensor, dense: HopFn, *, dense_only: bool) -> HopFn:
    """`PackedHops` where a depth-scope pass may run on packed rows: no autograd (the buffer is
    written in place), every block a `RowsBlock`, the exact hop policy, and a caller that needs
    no dense hops (`dense_only`: it records per-layer outputs for memory); else `dense`."""
    packs = not (dense_only or torch.is_grad_enabled() or speculates(hidden)) and all(map(computes_rows, blocks))
    return PackedHops(blocks, hidden, dense) if packs else dense
