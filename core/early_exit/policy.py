"""Whether halting loops may queue a hop before they know it is needed (GPU speculation).

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
