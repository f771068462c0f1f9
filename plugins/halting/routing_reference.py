"""Slow, per-token references of the routing strategies (MoD, MoR) with Python floats.

One sequence at a time (expert-choice routing ranks a whole sequence), one token at a
time, following docs/halting.md. Layers are position-wise callables `layer_fn(n, s) -> s`
on one token's state (D,); routers are `logit_fn(i, s) -> float`. Each function returns
the tokens' final states, their hops and the auxiliary loss terms (unweighted).
"""

from __future__ import annotations

import math
from collections.abc import Callable, Sequence

import torch
from torch import Tensor

LayerFn = Callable[[int, Tensor], Tensor]
LogitFn = Callable[[int, Tensor], float]


def capacity_k(capacity: float, length: int) -> int:
    """ceil(capacity * length), between 1 and length."""
    return min(length, max(1, math.ceil(capacity * length - 1e-9)))


def top_k_by_hand(scores: Sequence[float], k: int, eligible: Sequence[bool]) -> list[bool]:
    """The k highest scores among eligible tokens (ties: the earlier position)."""
    order = sorted((t for t, ok in enumerate(eligible) if ok), key=lambda t: (-scores[t], t))
    chosen = set(order[:k])
    return [t in chosen for t in range(len(scores))]


def bce(logit: float, target: bool) -> float:
    """Binary cross-entropy of sigmoid(logit) against target: log(1 + e^z) - y z."""
    return math.log1p(math.exp(logit)) - (logit if target else 0.0)


def mean_bce(logits: Sequence[float], targets: Sequence[bool], over: Sequence[bool]) -> float:
    terms = [bce(z, y) for z, y, ok in zip(logits, targets, over, strict=True) if ok]
    return sum(terms) / max(1, len(terms))


def route(scores: list[float], decide: list[float], capacity: float, eligible: list[bool],
          real_length: int, training: bool) -> tuple[list[bool], float | None]:
    """Routed tokens and the BCE term of one routing step (None where no loss is taken)."""
    if capacity >= 1.0:
        return list(eligible), None
    if not training:
        return [z > 0.0 and ok for z, ok in zip(decide, eligible, strict=True)], None
    routed = top_k_by_hand(scores, capacity_k(capacity, real_length), eligible)
    return routed, mean_bce(decide, routed, eligible)


def mixture_of_depths_sequence(
    states: list[Tensor], *, n_layers: int, routed_layers: list[int], layer_fn: LayerFn,
    router_fn: LogitFn, decide_fn: LogitFn, capacity: float, training: bool,
    real: list[bool] | None = None,
) -> dict:
    """MoD over one sequence: x' = x + r (f(x) - x) for routed tokens at routed layers."""
    real = real or [True] * len(states)
    layers, losses = [0] * len(states), []
    for n in range(n_layers):
        if n not in routed_layers:
            states = [layer_fn(n, s) for s in states]
            layers = [c + 1 for c in layers]
            continue
        i = routed_layers.index(n)
        r = [router_fn(i, s) for s in states]
        routed, loss = route(r, [decide_fn(i, s) for s in states], capacity, real, sum(real), training)
        states = [s + rt * (layer_fn(n, s) - s) if go else s for s, rt, go in zip(states, r, routed, strict=True)]
        layers = [c + int(go) for c, go in zip(layers, routed, strict=True)]
        if loss is not None:
            losses.append(loss)
    return {"states": states, "hops": layers, "losses": losses}


def expert_choice_sequence(
    states: list[Tensor], *, capacities: list[float], layer_fn: LayerFn, router_fn: LogitFn,
    decide_fn: LogitFn, training: bool, real: list[bool] | None = None,
) -> dict:
    """MoR expert choice: g_r = sigmoid(router logit); top-k_r among the tokens routed at r - 1."""
    real = real or [True] * len(states)
    eligible, hops, losses = list(real), [0] * len(states), []
    for r, capacity in enumerate(capacities):
        logits = [router_fn(r, s) for s in states]
        routed, loss = route(logits, [decide_fn(r, s) for s in states], capacity, eligible, sum(real), training)
        if r and not any(routed):
            break
        gates = [1.0 / (1.0 + math.exp(-z)) for z in logits]
        states = [s + g * (layer_fn(r, s) - s) if go else s for s, g, go in zip(states, gates, routed, strict=True)]
        hops = [c + int(go) for c, go in zip(hops, routed, strict=True)]
        eligible = routed
        if loss is not None:
            losses.append(loss)
    return {"states": states, "hops": hops, "losses": losses}


def token_choice_token(s: Tensor, *, logits: list[float], layer_fn: LayerFn) -> dict:
    """MoR token choice for one token: d = argmax softmax(logits) + 1 recursions, each scaled by p_d."""
    top = max(logits)
    exps = [math.exp(z - top) for z in logits]
    probs = [e / sum(exps) for e in exps]
    depth = max(range(len(probs)), key=lambda i: (probs[i], -i)) + 1
    gate = probs[depth - 1]
    for r in range(depth):
        s = s + gate * (layer_fn(r, s) - s)
    return {"state": s, "hops": depth, "probs": probs}


def balance_by_hand(probs: list[list[float]], depths: list[int]) -> float:
    """N_r * sum_i f_i P_i over the given tokens."""
    n, count = len(probs[0]), len(probs)
    fraction = [sum(d == i + 1 for d in depths) / count for i in range(n)]
    mean_prob = [sum(p[i] for p in probs) / count for i in range(n)]
    return n * sum(f * p for f, p in zip(fraction, mean_prob, strict=True))


def as_tokens(state: Tensor) -> list[list[Tensor]]:
    """(B, L, D) -> per sequence, per token (D,) float64 states."""
    return [[token.double() for token in sequence] for sequence in state]


def stack_tokens(sequences: list[list[Tensor]]) -> Tensor:
    return torch.stack([torch.stack(tokens) for tokens in sequences])


def set_linear(linear: torch.nn.Linear, weight: list[list[float]], bias: list[float]) -> None:
    """Give a router hand-picked weights."""
    with torch.no_grad():
        linear.weight.copy_(torch.tensor(weight))
        linear.bias.copy_(torch.tensor(bias))


class PositionwiseLayers:
    """Position-wise hops: layer n maps s -> tanh(W_n s + b_n) + s; records each hop's `active`."""

    def __init__(self, n_layers: int, d_model: int, dtype=torch.float32, seed: int = 0):
        generator = torch.Generator().manual_seed(seed)
        self.weights = [torch.randn(d_model, d_model, generator=generator, dtype=dtype) for _ in range(n_layers)]
        self.biases = [torch.randn(d_model, generator=generator, dtype=dtype) for _ in range(n_layers)]
        self.active: list[torch.Tensor | None] = []

    def layer(self, n: int, s: torch.Tensor) -> torch.Tensor:
        return torch.tanh(s @ self.weights[n].T.to(s.dtype) + self.biases[n].to(s.dtype)) + s

    def hop(self, state, n, active):
        self.active.append(active)
        new = self.layer(n, state)
        return new if active is None else torch.where(active.unsqueeze(-1), new, state)
