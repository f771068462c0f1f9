"""Rows of (B, L, D) states: tokens addressed by flat indices b * L + t.

`active_rows` finds the running tokens, `gather_active` / `scatter_active` move their
rows, `where_rows` keeps or replaces rows without changing a state's memory layout, and
`apply_to_active` runs position-wise work on the active tokens only.
"""

from __future__ import annotations

from collections.abc import Callable

import torch
from torch import Tensor


def where_rows(mask: Tensor, chosen: Tensor, other: Tensor) -> Tensor:
    """Rows of `chosen` where mask (B, L) is True, rows of `other` elsewhere: (B, L, D).

    The result has `chosen`'s memory layout: `torch.where` would follow the mask's
    row-major layout and transpose the permuted view an LSTM returns ((L, B, D) in memory).
    """
    if not chosen.is_contiguous() and chosen.dim() == 3 and chosen.stride(0) < chosen.stride(1):
        mask = mask.t().contiguous().t()  # (B, L) view of an (L, B) buffer, like chosen
    return torch.where(mask.unsqueeze(-1), chosen, other)


def active_rows(active: Tensor) -> Tensor:
    """(B, L) bool -> (K,) long: flat indices (b * L + t) of the active tokens, row-major order."""
    return active.reshape(-1).nonzero().squeeze(1)


def rows_mask(rows: Tensor, shape: torch.Size | tuple[int, ...]) -> Tensor:
    """(K,) flat indices -> (B, L) bool mask, True at those tokens (the inverse of `active_rows`)."""
    mask = torch.zeros(shape, dtype=torch.bool, device=rows.device)
    return mask.view(-1).index_fill_(0, rows, True).view(shape)


def gather_active(hidden: Tensor, rows: Tensor) -> Tensor:
    """(B, L, D), (K,) flat indices -> (K, D): the rows of the active tokens."""
    return hidden.reshape(-1, hidden.shape[-1]).index_select(0, rows)


def scatter_active(base: Tensor, rows: Tensor, values: Tensor) -> Tensor:
    """A copy of `base` (B, L, D) whose rows `rows` (K,) are replaced by `values` (K, D)."""
    out = base.clone(memory_format=torch.contiguous_format)
    return out.view(-1, out.shape[-1]).index_copy(0, rows, values.to(base.dtype)).view(base.shape)


def apply_to_active(fn: Callable[[Tensor], Tensor], hidden: Tensor, active: Tensor | None) -> Tensor:
    """Apply a position-wise `fn` ((..., D) -> (..., D)) to the active tokens only.

    Inactive rows keep their input value, so halted tokens cost nothing in `fn`.
    """
    if active is None:
        return fn(hidden)
    rows = active_rows(active)
    return scatter_active(hidden, rows, fn(gather_active(hidden, rows)))
