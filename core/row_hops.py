"""Depth-scope hops on packed rows: inference that computes only the running tokens.

In depth scope hop n applies layer n. With the dense hop (`PonderModel._apply_block`)
every layer gets the whole (B, L, D) state and an `active` mask, so each layer
gathers the running tokens, and the halting loop masks, weighs and sums full-size
tensors. For inference the core can instead hand a strategy with
`supports_packed_depth` a `DepthRowHops`: the strategy keeps its running tokens
packed as (K, D) rows, shrinking K when tokens halt, and asks for layer n on those
rows only. Blocks still see every token (keys, values or a shifted neighbour come
from halted tokens' frozen states), through one (B, L, D) buffer that holds each
token's latest state and is updated in place.
"""

from __future__ import annotations

import torch
from torch import Tensor, nn

from .interfaces import Block, BlockContext, HaltingStrategy
from .rows import copy_rows_
from .speculation import speculation_mode


def packs_rows(site: HaltingStrategy, blocks: nn.ModuleList, hidden: Tensor) -> bool:
    """Whether a depth-scope pass over `hidden` can run on packed rows.

    Needs: no autograd (the state buffer is written in place), a strategy with
    `forward_packed`, blocks with `forward_rows`, and loops that read the running
    count after every hop (packing needs it; on a GPU under the default policy the
    loops avoid that host read, see `ponderlab.core.speculation`).
    """
    return (
        not torch.is_grad_enabled()
        and type(site).supports_packed_depth
        and all(type(block).supports_packed_rows for block in blocks)
        and speculation_mode(hidden) == "exact"
    )


class DepthRowHops:
    """row_hop(step, rows, states) for a depth-scope loop: layer `step` on the tokens at `rows`.

    rows (K,) are flat indices b * L + t (None: every token); states (K, D) their
    current states, as the loop keeps them. The new states (K, D) are returned and
    written into the shared buffer, which later layers read for context.
    """

    def __init__(self, blocks: nn.ModuleList, hidden: Tensor):
        self.blocks = blocks
        self.hidden = hidden  # (B, L, D): every token's latest state
        self.width = hidden.shape[-1]

    def __call__(self, step: int, rows: Tensor | None, states: Tensor | None) -> Tensor:
        block: Block = self.blocks[step]
        context = BlockContext(layer=step, step=0)  # as the dense depth hop: layer n, step 0
        if rows is None:
            new = block(self.hidden, context)  # (B, L, D)
            if new.untyped_storage().data_ptr() == self.hidden.untyped_storage().data_ptr():
                new = new.clone()  # never write into a caller's tensor below
            self.hidden = new.contiguous()
            return self.hidden.view(-1, self.width)  # (B*L, D)
        new = block.forward_rows(self.hidden, rows, states, context)  # (K, D)
        if step < len(self.blocks) - 1:  # the last layer's states are read by nobody else
            copy_rows_(self.hidden.view(-1, self.width), rows, new)
        return new
