"""Slow, per-token reference implementations of the halting math, and a scripted hop.

These loops follow the formulas of docs/halting.md one token at a time with
Python floats, so they are easy to read and check against the papers. The tests
compare the vectorised strategies with them; third-party halting strategies can
do the same. Functions take one token's initial state `s0` (D,) and position-wise
callables: `hop_fn(n, s) -> s` (the hop) and `halt_fn(n, s) -> float`.
"""

from __future__ import annotations

import math
from collections.abc import Callable

import torch
from torch import Tensor

TokenHopFn = Callable[[int, Tensor], Tensor]
HaltFn = Callable[[int, Tensor], float]


def cumulative_act_token(s0: Tensor, hop_fn: TokenHopFn, halt_fn: HaltFn, *, n_hops: int, threshold: float) -> dict:
    """Graves / threshold ACT for one token: h_n on the state after hop n; halt when sum h >= threshold."""
    state, total, weights, output = s0, 0.0, [], torch.zeros_like(s0)
    for n in range(n_hops):
        state = hop_fn(n, state)
        h = None if n == n_hops - 1 else halt_fn(n, state)  # the cap needs no h
        if h is None or total + h >= threshold:
            remainder = 1.0 - total
            weights.append(remainder)
            output = output + remainder * state
            return {"output": output, "hops": n + 1, "remainder": remainder,
                    "ponder_cost": n + 1 + remainder, "weights": weights}
        weights.append(h)
        output = output + h * state
        total += h
    raise AssertionError("unreachable: the last hop always halts")


def ut_act_token(
    s0: Tensor, hop_fn: TokenHopFn, halt_fn: HaltFn, *, max_hops: int, threshold: float, combine: str
) -> dict:
    """tensor2tensor ACT for one token: p on the state entering the hop; halt when H + p > threshold."""
    state, halting, output, weights = s0, 0.0, torch.zeros_like(s0), []
    for n in range(max_hops):
        p = halt_fn(n, state)
        state = hop_fn(n, state)
        halts = halting + p > threshold or n == max_hops - 1
        weight = 1.0 - halting if halts else p
        if not halts:
            halting += p
        weights.append(weight)
        output = output + weight * state if combine == "accumulated" else weight * state + (1 - weight) * output
        if halts:
            return {"output": output, "hops": n + 1, "remainder": weight,
                    "ponder_cost": n + 1 + weight, "weights": weights}
    raise AssertionError("unreachable: the last hop always halts")


def pondernet_token(s0: Tensor, hop_fn: TokenHopFn, lambda_fn: HaltFn, *, n_hops: int, lambda_p: float) -> dict:
    """PonderNet for one token: p_n, the hop states, KL(p || truncated geometric(lambda_p))."""
    state, survive, probs, states = s0, 1.0, [], []
    for n in range(n_hops):
        state = hop_fn(n, state)
        states.append(state)
        lam = 1.0 if n == n_hops - 1 else lambda_fn(n, state)
        probs.append(lam * survive)
        survive *= 1.0 - lam
    prior = [lambda_p * (1 - lambda_p) ** k for k in range(n_hops)]
    norm = sum(prior)
    prior = [g / norm for g in prior]
    kl = sum(p * (math.log(p) - math.log(g)) for p, g in zip(probs, prior, strict=True) if p > 0)
    return {"probs": probs, "states": states, "kl": kl, "prior": prior,
            "expected_steps": sum((n + 1) * p for n, p in enumerate(probs)),
            "most_likely": max(range(n_hops), key=lambda n: (probs[n], -n)) + 1}


class ScriptedHop:
    """A hop function whose states script the halting units, for hand-computed cases.

    State layout (D = cap + 2): one-hot marker of the last hop in [0, cap), the
    control value at index cap, a constant 1 at cap + 1. Hop n returns e_n with
    control `controls[..., n + shift]` (shift 1 for strategies that read the state
    entering a hop, like UT). A halting unit reading only the control channel
    (see `script_linear`) then gives h = sigmoid(control), and the output's first
    `cap` channels are the weights of the hop states. Inactive tokens keep their
    state, as the core does; every call's `active` is recorded.
    """

    def __init__(self, controls: Tensor, shift: int = 0):
        self.controls = controls  # (B, L, cap + shift)
        self.cap = controls.shape[-1] - shift
        self.shift = shift
        self.calls: list[Tensor | None] = []

    def initial_state(self) -> Tensor:  # (B, L, D), D = cap + 2
        state = torch.zeros(*self.controls.shape[:-1], self.cap + 2, dtype=self.controls.dtype)
        state[..., self.cap + 1] = 1.0
        if self.shift:
            state[..., self.cap] = self.controls[..., 0]
        return state

    def __call__(self, state: Tensor, n: int, active: Tensor | None) -> Tensor:
        self.calls.append(active)
        new = torch.zeros_like(state)
        new[..., n] = 1.0
        new[..., self.cap] = self.controls[..., n + self.shift] if n + self.shift < self.controls.shape[-1] else 0.0
        new[..., self.cap + 1] = 1.0
        if active is None:
            return new
        return torch.where(active.unsqueeze(-1), new, state)


def script_linear(linear: torch.nn.Linear, control_index: int) -> None:
    """Make a Linear(D, 1) read only the control channel: logit = control."""
    with torch.no_grad():
        linear.weight.zero_()
        linear.weight[0, control_index] = 1.0
        linear.bias.zero_()


def script_mlp(hidden: torch.nn.Linear, out: torch.nn.Linear, control_index: int, offset: float = 12.0) -> None:
    """Make the halting MLP's logit equal the control: act(c + offset) = c + offset for c > -offset."""
    with torch.no_grad():
        hidden.weight.zero_()
        hidden.bias.zero_()
        hidden.weight[0, control_index] = 1.0
        hidden.bias[0] = offset
        out.weight.zero_()
        out.weight[0, 0] = 1.0
        out.bias.fill_(-offset)
