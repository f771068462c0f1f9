"""Segment recurrence for memory backbones (RMT, ARMT), in one place.

The input (B, L, D) is split into segments of `backbone.segment_size` tokens,
processed left to right. Each segment is wrapped with memory tokens, run
through the stack (reads before every hop, writes once per layer after its
ponder loop, see `PonderModel.run_stack`), unwrapped, and its memory carried on.

Truncated BPTT (`backbone.bptt_depth = k`): the memory leaving segment i is
detached when i < n_segments - k, so no gradient reaches segments before the
last k through memory.
"""

from __future__ import annotations

from typing import TYPE_CHECKING

import torch
from torch import Tensor

from .interfaces import PonderOutput

if TYPE_CHECKING:
    from .model import PonderModel, StackOutput


def _concat_sites(per_segment: list[list[PonderOutput]]) -> list[PonderOutput]:
    """Join each site's per-segment outputs along the sequence axis."""
    joined = []
    for site_outputs in zip(*per_segment, strict=True):
        hop_states = None
        if all(o.hop_states is not None for o in site_outputs):
            counts = {len(o.hop_states) for o in site_outputs}
            if len(counts) == 1:
                hop_states = [
                    torch.cat([o.hop_states[n] for o in site_outputs], dim=1) for n in range(counts.pop())
                ]
        hop_probs = None
        if hop_states is not None and all(o.hop_probs is not None for o in site_outputs):
            hop_probs = torch.cat([o.hop_probs for o in site_outputs], dim=1)
        aux = [o.aux_loss for o in site_outputs if o.aux_loss is not None]
        joined.append(
            PonderOutput(
                output=torch.cat([o.output for o in site_outputs], dim=1),
                hops=torch.cat([o.hops for o in site_outputs], dim=1),
                ponder_cost=torch.cat([o.ponder_cost for o in site_outputs], dim=1),
                remainder=torch.cat([o.remainder for o in site_outputs], dim=1),
                hop_states=hop_states,
                hop_probs=hop_probs,
                aux_loss=torch.stack(aux).sum() if aux else None,
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


def run_segments(model: PonderModel, hidden: Tensor) -> StackOutput:
    """hidden (B, L, D) -> StackOutput with hidden (B, L, D) and per-site stats over real tokens."""
    from .model import StackOutput

    backbone = model.backbone
    batch, length, _ = hidden.shape
    size = backbone.segment_size or length
    starts = list(range(0, length, size))
    memory = backbone.init_memory(batch, hidden.device, hidden.dtype)
    outputs: list[Tensor] = []
    per_segment: list[list[PonderOutput]] = []
    for index, start in enumerate(starts):
        segment = hidden[:, start : start + size]  # (B, Ls, D)
        seg_len = segment.shape[1]
        wrapped = backbone.wrap_segment(segment, memory)  # (B, Lw, D)
        keep = backbone.token_mask(memory, seg_len, hidden.device)
        stack = model.run_stack(wrapped, memory)
        out, memory = backbone.unwrap_segment(stack.hidden, stack.memory, seg_len)
        outputs.append(out)
        per_segment.append([_token_slice(site, keep) for site in stack.sites])
        depth = backbone.bptt_depth
        if depth is not None and index < len(starts) - depth:
            memory = backbone.detach_memory(memory)
    return StackOutput(torch.cat(outputs, dim=1), _concat_sites(per_segment), memory)
