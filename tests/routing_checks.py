"""Shared pieces of the mixture_of_depths / mixture_of_recursions tests: the routers as
per-token functions for the slow references, and the causality check at inference."""

from __future__ import annotations

from collections.abc import Callable

import torch
from torch import Tensor, nn

from ponderlab.core.model import ModelOutput, PonderModel

TokenScore = Callable[[int, Tensor], float]


def router_functions(strategy: nn.Module) -> tuple[TokenScore, TokenScore]:
    """`(router_fn, decide_fn)` of a routing site for one token's state: router i's logit, and
    the score that routes at inference (router i's predictor where it has one, else the logit)."""

    def router_fn(i: int, state: Tensor) -> float:
        return strategy.routers[i].linear(state).item()

    def decide_fn(i: int, state: Tensor) -> float:
        predictor = strategy.routers[i].predictor
        return router_fn(i, state) if predictor is None else predictor(state).item()

    return router_fn, decide_fn


def assert_inference_is_causal(model: PonderModel, *, vocab: int) -> ModelOutput:
    """In eval mode, changing tokens 6.. of 3 x 12 random ids leaves the logits of tokens 0..5
    as they were and changes some later ones; returns the output for the original ids.

    "As they were" is up to float rounding (1e-6 on logits of order 1): the later tokens route
    to other depths, so the active subsets, and with them the shapes the kernels reduce over,
    differ between the two calls; on some CPUs (seen on an AMD EPYC) that moves a logit by one
    ulp (6e-8). Information leaking from a changed token moves logits by orders more."""
    ids = torch.randint(0, vocab, (3, 12), generator=torch.Generator().manual_seed(3))
    changed = ids.clone()
    changed[:, 6:] = (ids[:, 6:] + 1) % vocab
    with torch.no_grad():
        model.eval()
        a, b = model(ids), model(changed)
    torch.testing.assert_close(a.logits[:, :6], b.logits[:, :6], rtol=0.0, atol=1e-6)
    assert not torch.equal(a.logits[:, 6:], b.logits[:, 6:])
    return a
