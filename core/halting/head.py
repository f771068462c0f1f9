"""The output head inside a ponder loop: the one contract growth for head-based strategies.

A strategy whose `forward` declares a `head` keyword (like `mask`) receives an `ExitHead`
from `PonderModel`: the model's own output head (the backbone's final norm, then the
language-model projection), so confidences and per-hop distributions come from the
same head as the final logits. Callers that give no head (the conformance kit's marker
hops, a strategy used on its own) get `head=None`; strategies must then still work.

Per-hop losses need no new contract: a site that returns `hop_states` with `hop_probs`
(any non-negative weights summing to 1 per token) turns the task loss into
sum_n hop_probs[n] * CE(head(hop_states[n])) (PonderNet's expectation, CALM's and
LayerSkip's weighted per-layer losses).
"""

from __future__ import annotations

import inspect
from collections.abc import Callable
from dataclasses import dataclass

from torch import Tensor, nn


@dataclass(frozen=True)
class ExitHead:
    """logits (..., V) of a state (..., D): `linear(finalize(state))`."""

    finalize: Callable[[Tensor], Tensor]
    linear: nn.Module

    def __call__(self, state: Tensor) -> Tensor:  # (..., D) -> (..., V)
        return self.linear(self.finalize(state))


def takes_keyword(strategy_cls: type, name: str) -> bool:
    """Whether the strategy's `forward` declares the keyword `name` (`mask`, `head`)."""
    return name in inspect.signature(strategy_cls.forward).parameters
