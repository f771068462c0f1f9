"""Hand-computed cases for core/segments.py (written against mutmut's survivors, docs/testing.md)."""

from __future__ import annotations

import pytest
import torch

from ponderlab.core.interfaces import PonderOutput
from ponderlab.core.segments import (
    StackOutput,
    _concat_sites,
    _padded_hops,
    _token_slice,
    padding_mask,
    run_segments,
    segment_bounds,
)


def site(values: list[float], **extra) -> PonderOutput:
    """A one-row site whose per-token tensors all hold `values` (output: (1, L, 1))."""
    row = torch.tensor([values], dtype=torch.float64)
    return PonderOutput(output=row.unsqueeze(-1), hops=row, ponder_cost=row * 2, remainder=row * 3, **extra)


@pytest.mark.parametrize(("length", "size", "bounds"), [
    (5, 2, [(0, 2), (2, 4), (4, 5)]),
    (4, 2, [(0, 2), (2, 4)]),
    (3, None, [(0, 3)]),
    (3, 8, [(0, 3)]),
    (1, 1, [(0, 1)]),
    (0, None, []),
])
def test_segment_bounds(length, size, bounds):
    assert segment_bounds(length, size) == bounds


def test_padding_mask_is_none_without_padding_and_bool_with_it():
    assert padding_mask(None) is None
    assert padding_mask(torch.ones(2, 3, dtype=torch.long)) is None
    mask = padding_mask(torch.tensor([[1, 1, 0], [1, 1, 1]]))
    assert mask.dtype == torch.bool
    assert mask.tolist() == [[True, True, False], [True, True, True]]


def test_padded_hops_repeat_the_last_state_with_probability_zero():
    hop_states = [torch.full((1, 2, 1), value) for value in (1.0, 2.0, 3.0)]
    probs = torch.tensor([[[0.25, 0.25, 0.5], [0.5, 0.5, 0.0]]])
    output = PonderOutput(output=hop_states[-1], hops=torch.ones(1, 2), ponder_cost=torch.ones(1, 2),
                          remainder=torch.ones(1, 2), hop_states=hop_states, hop_probs=probs)
    states, padded = _padded_hops(output, 5)
    assert [s[0, 0, 0].item() for s in states] == [1.0, 2.0, 3.0, 3.0, 3.0]
    assert padded.tolist() == [[[0.25, 0.25, 0.5, 0.0, 0.0], [0.5, 0.5, 0.0, 0.0, 0.0]]]
    states, same = _padded_hops(output, 3)
    assert len(states) == 3 and same is probs


def test_concat_sites_joins_along_the_sequence_and_weights_aux_losses_by_length():
    first = site([1.0, 2.0, 3.0], hop_states=[torch.full((1, 3, 1), 7.0), torch.full((1, 3, 1), 8.0)],
                 hop_probs=torch.full((1, 3, 2), 0.5), aux_loss=torch.tensor(1.0))
    second = site([4.0], hop_states=[torch.full((1, 1, 1), 9.0)], hop_probs=torch.ones(1, 1, 1),
                  aux_loss=torch.tensor(5.0))
    (joined,) = _concat_sites([[first], [second]])
    assert joined.output[0, :, 0].tolist() == [1.0, 2.0, 3.0, 4.0]
    assert joined.hops.tolist() == [[1.0, 2.0, 3.0, 4.0]]
    assert joined.ponder_cost.tolist() == [[2.0, 4.0, 6.0, 8.0]]
    assert joined.remainder.tolist() == [[3.0, 6.0, 9.0, 12.0]]
    assert [s[0, :, 0].tolist() for s in joined.hop_states] == [[7.0, 7.0, 7.0, 9.0], [8.0, 8.0, 8.0, 9.0]]
    assert joined.hop_probs.tolist() == [[[0.5, 0.5], [0.5, 0.5], [0.5, 0.5], [1.0, 0.0]]]
    assert joined.aux_loss.item() == pytest.approx((1.0 * 3 + 5.0 * 1) / 4)  # 2.0


def test_concat_sites_keeps_each_site_apart_and_drops_what_a_segment_lacks():
    with_hops = site([1.0], hop_states=[torch.zeros(1, 1, 1)], hop_probs=torch.ones(1, 1, 1),
                     aux_loss=torch.tensor(6.0))
    sites = _concat_sites([[with_hops, site([10.0])], [site([2.0, 3.0]), site([20.0, 30.0])]])
    assert [s.hops.tolist() for s in sites] == [[[1.0, 2.0, 3.0]], [[10.0, 20.0, 30.0]]]
    assert sites[0].hop_states is None and sites[0].hop_probs is None
    assert sites[0].aux_loss.item() == pytest.approx(6.0)  # only the segment that has one
    assert sites[1].aux_loss is None
    states_only = site([1.0], hop_states=[torch.zeros(1, 1, 1)])  # no probabilities: nothing joined
    (joined,) = _concat_sites([[states_only], [with_hops]])
    assert joined.hop_states is None and joined.hop_probs is None
    with pytest.raises(ValueError):  # every segment runs the same sites
        _concat_sites([[site([1.0]), site([2.0])], [site([3.0])]])


def test_token_slice_drops_memory_positions_from_every_per_token_tensor():
    output = site([1.0, 2.0, 3.0, 4.0], hop_states=[torch.arange(4.0).view(1, 4, 1)],
                  hop_probs=torch.arange(8.0).view(1, 4, 2), aux_loss=torch.tensor(3.0))
    keep = torch.tensor([False, True, True, False])
    sliced = _token_slice(output, keep)
    assert sliced.output[0, :, 0].tolist() == [2.0, 3.0]
    assert sliced.hops.tolist() == [[2.0, 3.0]]
    assert sliced.ponder_cost.tolist() == [[4.0, 6.0]]
    assert sliced.remainder.tolist() == [[6.0, 9.0]]
    assert sliced.hop_states[0][0, :, 0].tolist() == [1.0, 2.0]
    assert sliced.hop_probs.tolist() == [[[2.0, 3.0], [4.0, 5.0]]]
    assert sliced.aux_loss is output.aux_loss
    assert _token_slice(output, None) is output
    bare = _token_slice(site([1.0, 2.0]), torch.tensor([True, False]))
    assert bare.hop_states is None and bare.hop_probs is None


class OneMemoryToken:
    """A backbone with one memory token in front of each segment; memory = sum of last tokens."""

    def __init__(self, segment_size, bptt_depth):
        self.segment_size, self.bptt_depth = segment_size, bptt_depth
        self.detached_after = []
        self.segment = 0
        self.calls = []

    def init_memory(self, batch, device, dtype):
        self.calls.append(("init_memory", batch, device, dtype))
        return torch.zeros(batch, 1, 1, dtype=dtype, device=device)

    def token_mask(self, memory, segment_length, device):
        self.calls.append(("token_mask", None if memory is None else memory.sum().item(), segment_length, device))
        return torch.tensor([False] + [True] * segment_length, device=device)

    def wrap_segment(self, segment, memory):
        return torch.cat([memory, segment], dim=1)

    def unwrap_segment(self, hidden, memory, segment_length):
        self.segment += 1
        return hidden[:, 1:1 + segment_length], memory

    def detach_memory(self, memory):
        self.detached_after.append(self.segment - 1)
        return memory.detach()


class Stack:
    """run_stack: hidden + 1, memory + the segment's last token, hops = 10 * call + position."""

    def __init__(self, backbone):
        self.backbone = backbone
        self.masks = []

    def run_stack(self, hidden, memory=None, mask=None):
        self.masks.append(None if mask is None else mask.tolist())
        call = len(self.masks) - 1
        positions = torch.arange(hidden.shape[1], dtype=hidden.dtype).expand(hidden.shape[:2])
        out = PonderOutput(output=hidden + 1, hops=positions + 10 * call, ponder_cost=positions,
                           remainder=torch.zeros_like(positions))
        return StackOutput(hidden + 1, [out], memory + hidden[:, -1:])


@pytest.mark.parametrize(("depth", "detached", "grad"), [
    (None, [], [0, 1, 0, 1, 1]),
    (1, [0, 1], [0, 0, 0, 0, 1]),
    (2, [0], [0, 0, 0, 1, 1]),
    (3, [], [0, 1, 0, 1, 1]),
])
def test_run_segments_truncates_bptt_to_the_last_k_segments(depth, detached, grad):
    backbone = OneMemoryToken(segment_size=2, bptt_depth=depth)
    model = Stack(backbone)
    hidden = torch.arange(5.0, dtype=torch.float64).view(1, 5, 1).requires_grad_()
    result = run_segments(model, hidden)
    assert backbone.detached_after == detached
    cpu = torch.device("cpu")
    assert backbone.calls == [("init_memory", 1, cpu, torch.float64), ("token_mask", 0.0, 2, cpu),
                              ("token_mask", 1.0, 2, cpu), ("token_mask", 4.0, 1, cpu)]
    assert result.hidden[0, :, 0].tolist() == [1.0, 2.0, 3.0, 4.0, 5.0]
    assert result.memory.item() == 1.0 + 3.0 + 4.0  # the last token of each segment
    assert result.memory.dtype == torch.float64
    (site_output,) = result.sites
    assert site_output.hops.tolist() == [[1.0, 2.0, 11.0, 12.0, 21.0]]  # memory positions dropped
    result.memory.sum().backward()
    assert hidden.grad[0, :, 0].tolist() == grad


def test_run_segments_passes_each_wrapped_segment_its_padding_mask():
    model = Stack(OneMemoryToken(segment_size=2, bptt_depth=None))
    hidden = torch.zeros(2, 5, 1)
    mask = torch.tensor([[True] * 5, [True, True, True, False, False]])
    run_segments(model, hidden, mask)
    assert model.masks == [None, [[True, True, True], [True, True, False]], [[True, True], [True, False]]]
    model = Stack(OneMemoryToken(segment_size=2, bptt_depth=None))
    run_segments(model, hidden)
    assert model.masks == [None, None, None]
