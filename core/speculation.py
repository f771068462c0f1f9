"""Whether halting loops may queue a hop before they know it is needed.

On a GPU, reading "does any token still run?" back to the host waits for every
queued kernel, and the GPU then idles while the host prepares the next hop. A
loop may instead queue the next hop first and read the answer afterwards,
dropping that hop when no token was running (see `RunningTokens` in
`ponderlab.plugins.halting.common`). That is only safe when a hop has no side
effects, so the model switches it off around hops that record per-layer outputs
for memory writes.

Policies: "auto" (on CUDA tensors only, and there only while the GPU is busy,
see `RunningTokens`), "exact" (never), "speculative" (at every hop, also on the
CPU; used by tests to check both paths give the same result).
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


#: How a loop over a given state decides to stop: "exact" reads the running count
#: after every hop, "adaptive" speculates while the GPU is busy, "always" speculates.
SpeculationMode = Literal["exact", "adaptive", "always"]


def speculation_mode(state: Tensor) -> SpeculationMode:
    """The mode of halting loops over `state` under the policy in force."""
    policy = _POLICY.get()
    if policy == "speculative":
        return "always"
    return "adaptive" if policy == "auto" and state.is_cuda else "exact"
