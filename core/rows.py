"""Row-wise work on (B, L, D) states: the helpers of blocks that compute only running tokens.

Rows are tokens, addressed by flat indices b * L + t (`active_rows`). A block with
`supports_active_subset` uses `apply_to_active` (or `gather_active` / `scatter_active`)
for its position-wise part; one with `forward_rows` uses `rows_or_every_token` as its
`forward`. `where_rows` and `copy_rows_` keep or write rows without changing a
state's memory layout.
"""

from __future__ import annotations

import math
from collections.abc import Callable
from typing import TYPE_CHECKING

import torch
from torch import Tensor, nn

from .speculation import speculation_mode

if TYPE_CHECKING:
    from .interfaces import BlockContext


def where_rows(mask: Tensor, chosen: Tensor, other: Tensor) -> Tensor:
    """Rows of `chosen` where mask (B, L) is True, rows of `other` elsewhere: (B, L, D).

    The result has `chosen`'s memory layout. `torch.where` would follow the mask's
    (row-major) layout, so the permuted view an LSTM returns ((L, B, D) in memory)
    came back transposed and the next LSTM hop paid a full copy to undo it. Laying
    the small mask out like `chosen` first avoids that.
    """
    if not chosen.is_contiguous() and chosen.dim() == 3 and chosen.stride(0) < chosen.stride(1):
        mask = mask.t().contiguous().t()  # (B, L) view of an (L, B) buffer, like chosen
    return torch.where(mask.unsqueeze(-1), chosen, other)


def copy_rows_(target: Tensor, rows: Tensor, values: Tensor) -> Tensor:
    """target[rows] = values in place: target (N, D), rows (K,) long, values (K, D).

    PyTorch's CPU `index_copy_` moves one element at a time; on contiguous rows
    whose byte width divides by 16 it runs on a complex128 view instead (the same
    bytes in wider elements), several times faster for float32 rows. Bitwise the
    same copy either way.
    """
    row_bytes = target.shape[-1] * target.element_size()
    wide = (
        target.device.type == "cpu"
        and target.dtype == values.dtype
        and target.is_contiguous()
        and values.is_contiguous()
        and row_bytes % 16 == 0
        and target.storage_offset() * target.element_size() % 16 == 0
        and values.storage_offset() * values.element_size() % 16 == 0
    )
    if wide:
        target.view(torch.complex128).index_copy_(0, rows, values.view(torch.complex128))
        return target
    return target.index_copy_(0, rows, values.to(target.dtype))


def active_rows(active: Tensor) -> Tensor:
    """(B, L) bool -> (K,) long: flat indices (b * L + t) of the active tokens, row-major order."""
    return active.reshape(-1).nonzero().squeeze(1)


def rows_mask(rows: Tensor, shape: torch.Size | tuple[int, ...]) -> Tensor:
    """(K,) flat indices -> (B, L) bool mask, True at those tokens (the inverse of `active_rows`)."""
    mask = torch.zeros(math.prod(shape), dtype=torch.bool, device=rows.device)
    return mask.index_fill_(0, rows, True).view(shape)


def gather_active(hidden: Tensor, rows: Tensor) -> Tensor:
    """(B, L, D), (K,) flat indices -> (K, D): the rows of the active tokens."""
    return hidden.reshape(-1, hidden.shape[-1]).index_select(0, rows)


def scatter_active(base: Tensor, rows: Tensor, values: Tensor) -> Tensor:
    """A copy of `base` (B, L, D) whose rows `rows` (K,) are replaced by `values` (K, D)."""
    out = base.clone(memory_format=torch.contiguous_format)
    return out.view(-1, out.shape[-1]).index_copy(0, rows, values.to(base.dtype)).view(base.shape)


def apply_to_active(fn: Callable[[Tensor], Tensor], hidden: Tensor, active: Tensor | None) -> Tensor:
    """Apply a position-wise `fn` ((..., D) -> (..., D)) to the active tokens only.

    Inactive rows keep their input value. This is the helper a block with
    `supports_active_subset = True` uses for its position-wise work (MLP,
    projections), so halted tokens cost nothing there. Rows are gathered with
    `index_select` on flat indices (much cheaper than boolean-mask indexing).
    """
    if active is None:
        return fn(hidden)
    rows = active_rows(active)
    return scatter_active(hidden, rows, fn(gather_active(hidden, rows)))


def rows_or_every_token(block: nn.Module, hidden: Tensor, context: BlockContext,
                        every_token: Callable[[Tensor], Tensor]) -> Tensor:
    """The forward of a block with `forward_rows` that keeps inactive rows: (B, L, D) -> (B, L, D).

    Without an active mask (or with every token active) `every_token(hidden)`. Under a
    loop that avoids host reads (a GPU, see `ponderlab.core.speculation`) also every
    token, the inactive rows kept by one `where`: finding the active rows would read
    the mask on the host. Otherwise `block.forward_rows` on the active tokens, written
    into a copy of `hidden`.
    """
    active = context.active
    if active is None:
        return every_token(hidden)
    if speculation_mode(hidden) != "exact":
        return where_rows(active, every_token(hidden), hidden)
    if bool(active.all()):
        return every_token(hidden)
    rows = active_rows(active)  # (K,) flat indices of the running tokens
    updated = block.forward_rows(hidden, rows, gather_active(hidden, rows), context)  # (K, D)
    return scatter_active(hidden, rows, updated)  # halted tokens keep their rows
