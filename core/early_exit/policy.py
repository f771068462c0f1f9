"""Whether halting loops may queue a hop before they know it is needed (GPU speculation), and
`RunningTokens`, which tracks the running tokens of a loop under that policy.

On a GPU, reading "does any token still run?" back to the host waits for every queued
kernel, and the GPU idles while the host prepares the next hop. A loop may instead queue
the next hop first and read the answer afterwards, dropping that hop when no token was
running (`RunningTokens`). That is only safe when a hop has no side effects, so the
model switches it off around hops that record per-layer outputs for memory writes.

Policies: "auto" (speculate on CUDA tensors, while the GPU is busy), "exact" (never),
"speculative" (at every hop, also on the CPU; tests use it to compare both paths).
"""

from __future__ import annotations

from collections.abc import Iterator
from contextlib import contextmanager
from contextvars import ContextVar
from typing import Literal

import torch
from torch import Tensor

HopPolicy = Literal["auto", "exact", "speculative"]

_POLICY: ContextVar[HopPolicy] = ContextVar("ponderlab_hop_policy", default="auto")


@contextmanager
def hop_policy(policy: HopPolicy) -> Iterator[None]:
    """Run the enclosed halting loops under `policy`."""
    if policy not in ("auto", "exact", "speculative"):
        raise ValueError(f"unknown hop policy {policy!r} (expected auto, exact or speculative)")
    token = _POLICY.set(policy)
    try:
        yield
    finally:
        _POLICY.reset(token)


def speculation_mode(state: Tensor) -> HopPolicy:
    """The policy that applies to loops over `state`: "auto" only on CUDA, else "exact"."""
    policy = _POLICY.get()
    return "exact" if policy == "auto" and not state.is_cuda else policy


def speculates(state: Tensor) -> bool:
    """Whether loops over `state` may avoid host reads (so nothing may read masks on the host)."""
    return speculation_mode(state) != "exact"


class RunningTokens:
    """A loop calls `keep_hop()` after queuing each hop (False: drop it, stop), `record(running)`
    after its bookkeeping (False: stop), and passes `active` to the next hop. Exact mode reads
    the running count at once; speculative mode (module docstring) reads it only after queuing the
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
