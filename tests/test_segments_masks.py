"""The padding mask of a wrapped segment (core/segments.py): memory tokens count as real."""

from __future__ import annotations

import torch

from ponderlab.core.segments import wrapped_mask


def test_memory_positions_are_real_and_segment_positions_keep_their_padding():
    mask = torch.tensor([[True, True, False], [True, False, False]])  # (B, Ls): two padded rows
    keep = torch.tensor([False, False, True, True, True, False])  # memory, 3 segment tokens, memory
    assert wrapped_mask(mask, keep, 6).tolist() == [
        [True, True, True, True, False, True],
        [True, True, True, False, False, True],
    ]


def test_nothing_to_wrap_returns_the_mask_itself():
    mask = torch.tensor([[True, False]])
    assert wrapped_mask(None, torch.tensor([True, True, False]), 3) is None
    assert wrapped_mask(mask, None, 2) is mask
