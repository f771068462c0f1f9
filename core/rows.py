"""Row-wise selection on (B, L, D) states that keeps their memory layout."""

from __future__ import annotations

import torch
from torch import Tensor


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
