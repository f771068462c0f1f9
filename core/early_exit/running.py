"""`RunningTokens`: which tokens a halting loop still runs, and whether the loop goes on."""

from __future__ import annotations

import torch
from torch import Tensor

from .policy import speculation_mode


class RunningTokens:
    """Which tokens a halting loop still runs, and whether the loop goes on.

    Exact mode (the CPU): after each hop the number of running tokens is read at once;
    `record` returns False as soon as no token runs, and `active` is None while every
    token runs (no masking cost).

    Speculative mode (see `ponderlab.core.early_exit.policy`): `record` copies "any token
    running?" to the host without blocking, the loop queues the next hop with the mask as
    `active`, and `keep_hop` reads the answer after that. When no token was running the
    queued hop is dropped and the loop stops, with the exact mode's results (the dropped
    hop froze every token). Under "auto" (CUDA) the choice is made per hop: speculate
    only while the GPU is still busy with the hop just queued.

        tokens = RunningTokens(state)
        for n in range(cap):
            new_state = hop(state, n, tokens.active)
            if not tokens.keep_hop():
                break
            ...  # bookkeeping with new_state, giving `running`
            if not tokens.record(running):
                break
    """

    def __init__(self, state: Tensor):
        mode = speculation_mode(state)
        self.speculative = mode != "exact"
        self.adaptive = mode == "auto"
        self.active: Tensor | None = None  # the `active` argument of the next hop
        self._any_running: Tensor | None = None  # host copy, in flight after a speculative record
        self._copied: torch.cuda.Event | None = None  # marks the end of that copy
        self._hop_queued: torch.cuda.Event | None = None  # marks the end of the last hop (auto)

    def record(self, running: Tensor) -> bool:
        """Note the (B, L) mask after a hop; False when the loop must stop now."""
        gpu_busy = self._hop_queued is None or not self._hop_queued.query()
        if not (self.speculative and (gpu_busy or not self.adaptive)):
            count = int(torch.count_nonzero(running))
            self.active = None if count == running.numel() else running
            return count > 0
        self.active = running
        self._any_running = running.any().to("cpu", non_blocking=True)
        if running.is_cuda:
            self._copied = torch.cuda.Event()
            self._copied.record()
        return True

    @property
    def speculated(self) -> bool:
        """Whether the last `record` left its answer in flight (read by the next `keep_hop`)."""
        return self._any_running is not None

    def keep_hop(self) -> bool:
        """Call after queuing a hop: False when no token was running (drop the hop, stop)."""
        if self.adaptive:
            self._hop_queued = torch.cuda.Event()
            self._hop_queued.record()
        if not self.speculated:
            return True
        if self._copied is not None:
            self._copied.synchronize()
        any_running, self._any_running = bool(self._any_running), None
        return any_running
