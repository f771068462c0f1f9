"""`RunningTokens`: which tokens a halting loop still runs, and whether the loop goes on."""

from __future__ import annotations

import torch
from torch import Tensor

from .policy import speculation_mode


class RunningTokens:
    """A loop calls `keep_hop()` after queuing each hop (False: drop it, stop), `record(running)`
    after its bookkeeping (False: stop), and passes `active` to the next hop. Exact mode reads
    the running count at once; speculative mode (policy.py) reads it only after queuing the
    next hop, dropped if no token ran ("auto", CUDA: while the GPU is busy with the last hop)."""

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
        gpu_idle = self._hop_queued is not None and self._hop_queued.query()
        if not self.speculative or (self.adaptive and gpu_idle):  # read the count now
            count = int(torch.count_nonzero(running))
            self.active = None if count == running.numel() else running
            return count > 0
        self.active, self._any_running = running, running.any().to("cpu", non_blocking=True)
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
