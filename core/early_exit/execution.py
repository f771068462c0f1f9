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

from collections.abc import Callable, Sequence
from dataclasses import dataclass
from typing import Protocol, runtime_checkable

import torch
from torch import Tensor, nn

from ponderlab.core.interfaces import BlockContext, HopFn

from .policy import speculates
from .rows import active_rows, gather_active, scatter_active, where_rows

#: rows_hop(n, rows (K,) | None, states (K, D) | None) -> new states (K, D) of the tokens
#: at flat indices `rows` (None: every token, in row-major order)
RowsHopFn = Callable[[int, "Tensor | None", "Tensor | None"], Tensor]


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


@dataclass
class PackedHops:
    """A hop that can also run on packed rows of running tokens: `rows(n, rows, states)`;
    called like any hop function (`hop(state, n, active)`) it runs `dense`."""

    rows: RowsHopFn
    dense: HopFn | None = None

    def __call__(self, state: Tensor, n: int, active: Tensor | None) -> Tensor:
        return self.dense(state, n, active)


class DepthRowHops:
    """rows_hop for depth scope: layer `n` on the tokens at `rows`. Blocks read every token
    from one (B, L, D) buffer of latest states (halted tokens' frozen ones included), into
    which the new states of the rows are written."""

    def __init__(self, blocks: Sequence[nn.Module], hidden: Tensor):
        self.blocks = blocks
        self.hidden = hidden  # (B, L, D): every token's latest state
        self.width = hidden.shape[-1]

    def __call__(self, n: int, rows: Tensor | None, states: Tensor | None) -> Tensor:
        block = self.blocks[n]
        context = BlockContext(layer=n, hop=0)  # as the dense depth hop: layer n, hop 0
        if rows is None:
            new = block(self.hidden, context)  # (B, L, D)
            if new.untyped_storage().data_ptr() == self.hidden.untyped_storage().data_ptr():
                new = new.clone()  # never write into a caller's tensor below
            self.hidden = new.contiguous()
            return self.hidden.view(-1, self.width)  # (B*L, D)
        new = block.forward_rows(self.hidden, rows, states, context)  # (K, D)
        if n < len(self.blocks) - 1:  # the last layer's states are read by nobody else
            self.hidden.view(-1, self.width).index_copy_(0, rows, new.to(self.hidden.dtype))
        return new


def packs_rows(blocks: Sequence[nn.Module], hidden: Tensor) -> bool:
    """Whether a depth-scope pass over `hidden` may run on packed rows: no autograd (the
    buffer is written in place), every block a `RowsBlock`, and the exact hop policy."""
    return not torch.is_grad_enabled() and all(map(computes_rows, blocks)) and not speculates(hidden)


def depth_hop(blocks: Sequence[nn.Module], hidden: Tensor, dense: HopFn, *, dense_only: bool) -> HopFn:
    """The hop of a depth-scope site: `PackedHops` where packing applies, else `dense`.

    dense_only: the caller needs dense hops (e.g. it records per-layer outputs for memory).
    """
    if dense_only or not packs_rows(blocks, hidden):
        return dense
    return PackedHops(DepthRowHops(blocks, hidden), dense)
