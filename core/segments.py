"""Segment recurrence for memory backbones (RMT, ARMT), in one place.

The input (B, L, D) is split into segments of `backbone.segment_size` tokens
(the last one may be shorter), processed left to right. Per segment:

  1. `wrap_segment` adds the memory tokens ((B, Ls, D) -> (B, Lw, D));
  2. `PonderModel.run_stack` runs the stack under the halting scope:
     `read_memory(layer, ...)` before EVERY hop of a layer, `write_memory(layer, ...)`
     ONCE per layer after its ponder loop (from the combined output), so pondering
     never sees memory written from the segment it is working on;
  3. `unwrap_segment` strips the memory tokens and may update token memory (RMT);
  4. per-site halting outputs are kept for the real tokens only (`token_mask`).

Truncated BPTT (`backbone.bptt_depth = k`): the memory leaving segment i is
detached when i < n_segments - k, so gradients through memory reach at most the
last k segments (k - 1 segment boundaries carry gradient); an earlier segment
gets gradient only from the loss at its own positions. `None`: full BPTT.
"""

from __future__ import annotations

from dataclasses import dataclass
from typing import Any, Protocol

import torch
from torch import Tensor

from .interfaces import Backbone, PonderOutput


@dataclass
class StackOutput:
    """Result of one pass through the stack: hidden (B, L, D), one PonderOutput per site."""

    hidden: Tensor
    sites: list[PonderOutput]
    memory: object = None


class StackRunner(Protocol):
    """What segment recurrence needs of the model: its backbone and one pass of the stack."""

    backbone: Backbone

    def run_stack(self, hidden: Tensor, memory: Any = None, mask: Tensor | None = None) -> StackOutput: ...


def padding_mask(mask: Tensor | None) -> Tensor | None:
    """(B, L) bool at real tokens of a padded batch; None when nothing is padding."""
    return None if mask is None or bool(mask.all()) else mask.bool()


def _padded_hops(output: PonderOutput, n_hops: int) -> tuple[list[Tensor], Tensor]:
    """A site's hop states and probabilities padded to n_hops (extra hops: last state, probability 0)."""
    states = list(output.hop_states)
    probs = output.hop_probs  # (B, Lw, n)
    missing = n_hops - len(states)
    if missing:
        states += [states[-1]] * missing
        probs = torch.cat([probs, probs.new_zeros(*probs.shape[:-1], missing)], dim=-1)
    return states, probs


def _concat_sites(per_segment: list[list[PonderOutput]]) -> list[PonderOutput]:
    """Join each site's per-segment outputs along the sequence axis.

    Hop states/probabilities (PonderNet) are joined when every segment has them; a
    segment that ran fewer hops is padded with zero-probability hops. Auxiliary
    losses are averaged over segments, weighted by their number of real tokens.
    """
    joined = []
    for site_outputs in zip(*per_segment, strict=True):
        hop_states = hop_probs = None
        if all(o.hop_states is not None and o.hop_probs is not None for o in site_outputs):
            n_hops = max(len(o.hop_states) for o in site_outputs)
            padded = [_padded_hops(o, n_hops) for o in site_outputs]
            hop_states = [torch.cat([states[n] for states, _ in padded], dim=1) for n in range(n_hops)]
            hop_probs = torch.cat([probs for _, probs in padded], dim=1)
        # (auxiliary loss, real tokens) of the segments that have one
        aux = [(o.aux_loss, o.hops.shape[1]) for o in site_outputs if o.aux_loss is not None]
        aux_loss = None
        if aux:
            aux_loss = sum(loss * n for loss, n in aux) / sum(n for _, n in aux)
        joined.append(
            PonderOutput(
                output=torch.cat([o.output for o in site_outputs], dim=1),
                hops=torch.cat([o.hops for o in site_outputs], dim=1),
                ponder_cost=torch.cat([o.ponder_cost for o in site_outputs], dim=1),
                remainder=torch.cat([o.remainder for o in site_outputs], dim=1),
                hop_states=hop_states,
                hop_probs=hop_probs,
                aux_loss=aux_loss,
            )
        )
    return joined


def _token_slice(output: PonderOutput, keep: Tensor | None) -> PonderOutput:
    """Drop memory positions (keep: (Lw,) bool) from a site's per-token tensors."""
    if keep is None:
        return output
    return PonderOutput(
        output=output.output[:, keep],
        hops=output.hops[:, keep],
        ponder_cost=output.ponder_cost[:, keep],
        remainder=output.remainder[:, keep],
        hop_states=[s[:, keep] for s in output.hop_states] if output.hop_states is not None else None,
        hop_probs=output.hop_probs[:, keep] if output.hop_probs is not None else None,
        aux_loss=output.aux_loss,
    )


def segment_bounds(length: int, segment_size: int | None) -> list[tuple[int, int]]:
    """[(start, end)] of the segments of a length-`length` input (one segment when size is None)."""
    size = segment_size or max(length, 1)
    return [(start, min(start + size, length)) for start in range(0, length, size)]


def wrapped_mask(mask: Tensor | None, keep: Tensor | None, wrapped_length: int) -> Tensor | None:
    """The padding mask of a wrapped segment: memory tokens count as real. (B, Ls) -> (B, Lw)."""
    if mask is None or keep is None:
        return mask
    out = mask.new_ones(mask.shape[0], wrapped_length)
    out[:, keep] = mask
    return out


def run_segments(model: StackRunner, hidden: Tensor, mask: Tensor | None = None) -> StackOutput:
    """hidden (B, L, D), padding mask (B, L) or None -> StackOutput over the real tokens."""
    backbone = model.backbone
    batch, length, _ = hidden.shape
    bounds = segment_bounds(length, backbone.segment_size)
    depth = backbone.bptt_depth
    memory = backbone.init_memory(batch, hidden.device, hidden.dtype)
    outputs: list[Tensor] = []
    per_segment: list[list[PonderOutput]] = []
    for index, (start, end) in enumerate(bounds):
        segment = hidden[:, start:end]  # (B, Ls, D)
        seg_len = end - start
        keep = backbone.token_mask(memory, seg_len, hidden.device)  # (Lw,) or None
        wrapped = backbone.wrap_segment(segment, memory)  # (B, Lw, D)
        segment_mask = None if mask is None else padding_mask(mask[:, start:end])  # (B, Ls) or None
        stack = model.run_stack(wrapped, memory, wrapped_mask(segment_mask, keep, wrapped.shape[1]))
        out, memory = backbone.unwrap_segment(stack.hidden, stack.memory, seg_len)  # (B, Ls, D)
        outputs.append(out)
        per_segment.append([_token_slice(site, keep) for site in stack.sites])
        if depth is not None and index < len(bounds) - depth:
            memory = backbone.detach_memory(memory)
    return StackOutput(torch.cat(outputs, dim=1), _concat_sites(per_segment), memory)
