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
