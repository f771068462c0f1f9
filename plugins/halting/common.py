"""Pieces shared by halting strategies: halting units, the cumulative ACT loop, subset helpers.

Conventions used by every strategy here:

* A token is *running* while it still takes hops. Hops after the first get
  `active = running` (or None while every token runs), so the core freezes
  halted tokens and a block with `supports_active_subset = True` computes only
  the running ones (see `apply_to_active`). Loops stop as soon as no token runs.
* Bookkeeping is done in float32 (float64 when the state is float64, so that
  gradient checks in double precision see double precision everywhere).
"""

from __future__ import annotations

from collections.abc import Callable

import torch
from torch import Tensor, nn

from ponderlab.core.errors import SpecError
from ponderlab.core.interfaces import HopFn, PonderOutput

#: halting_probability(step, state (B, L, D), active (B, L) bool | None) -> (B, L) in [0, 1]
HaltingFn = Callable[[int, Tensor, "Tensor | None"], Tensor]


def accumulation_dtype(tensor: Tensor) -> torch.dtype:
    """float64 for float64 inputs, float32 otherwise (also under bf16 autocast)."""
    return torch.float64 if tensor.dtype == torch.float64 else torch.float32


# --------------------------------------------------------------------------- active subsets


def active_rows(active: Tensor) -> Tensor:
    """(B, L) bool -> (K,) long: flat indices (b * L + t) of the active tokens, row-major order."""
    return active.reshape(-1).nonzero().squeeze(1)


def gather_active(hidden: Tensor, rows: Tensor) -> Tensor:
    """(B, L, D), (K,) flat indices -> (K, D): the rows of the active tokens."""
    return hidden.reshape(-1, hidden.shape[-1]).index_select(0, rows)


def scatter_active(base: Tensor, rows: Tensor, values: Tensor) -> Tensor:
    """A copy of `base` (B, L, D) whose rows `rows` (K,) are replaced by `values` (K, D)."""
    out = base.clone(memory_format=torch.contiguous_format)
    return out.view(-1, out.shape[-1]).index_copy(0, rows, values.to(base.dtype)).view(base.shape)


def apply_to_active(fn: Callable[[Tensor], Tensor], hidden: Tensor, active: Tensor | None) -> Tensor:
    """Apply a position-wise `fn` ((..., D) -> (..., D)) to the active tokens only.

    Inactive rows keep their input value. This is the helper a block with
    `supports_active_subset = True` uses for its position-wise work (MLP,
    projections), so halted tokens cost nothing there. Rows are gathered with
    `index_select` on flat indices (much cheaper than boolean-mask indexing).
    """
    if active is None:
        return fn(hidden)
    rows = active_rows(active)
    return scatter_active(hidden, rows, fn(gather_active(hidden, rows)))


def running_as_active(running: Tensor) -> Tensor | None:
    """The `active` argument for the next hop: None while every token runs (no masking cost)."""
    return None if bool(running.all()) else running


# --------------------------------------------------------------------------- halting units


class HaltingUnit(nn.Module):
    """h = sigmoid(W s + b): per-token halting probability, (B, L, D) -> (B, L).

    The weight starts at zero so that every token starts with h = sigmoid(bias):
    with bias 1.0 and threshold 0.9 every token halts at exactly hop 2 at init.
    """

    def __init__(self, d_model: int, bias_init: float):
        super().__init__()
        self.linear = nn.Linear(d_model, 1)
        nn.init.zeros_(self.linear.weight)
        nn.init.constant_(self.linear.bias, bias_init)

    def logits(self, state: Tensor) -> Tensor:  # (..., D) -> (...)
        return self.linear(state).squeeze(-1)

    def forward(self, state: Tensor, active: Tensor | None = None) -> Tensor:  # (B, L, D) -> (B, L)
        # A linear unit is cheaper to run on every token than to gather the active ones.
        return torch.sigmoid(self.logits(state).to(accumulation_dtype(state)))


class HaltingMLP(nn.Module):
    """h = sigmoid(w2 . relu(W1 s + b1) + b2): seed 002's small halting MLP (about D^2/2 params).

    ReLU rather than GELU: the unit runs after every layer on every running token,
    so its cost counts against the early-exit speedup.

    The output weight starts at zero, so h = sigmoid(bias_init) for every token at
    init. With `active` given, only the active tokens are evaluated (the others get 0).
    """

    def __init__(self, d_model: int, bias_init: float, hidden: int | None = None):
        super().__init__()
        width = hidden or max(1, d_model // 2)
        self.hidden = nn.Linear(d_model, width)
        self.act = nn.ReLU()
        self.out = nn.Linear(width, 1)
        nn.init.zeros_(self.out.weight)
        nn.init.constant_(self.out.bias, bias_init)

    def logits(self, state: Tensor) -> Tensor:  # (..., D) -> (...)
        return self.out(self.act(self.hidden(state))).squeeze(-1)

    def forward(self, state: Tensor, active: Tensor | None = None) -> Tensor:  # (B, L, D) -> (B, L)
        dtype = accumulation_dtype(state)
        if active is None:
            return torch.sigmoid(self.logits(state).to(dtype))
        rows = active_rows(active)
        values = torch.sigmoid(self.logits(gather_active(state, rows)).to(dtype))  # (K,)
        out = torch.zeros(active.numel(), dtype=dtype, device=state.device)
        return out.index_copy(0, rows, values).view(active.shape)


# --------------------------------------------------------------------------- the ACT loop


def accumulate(output: Tensor, weight: Tensor, state: Tensor) -> Tensor:
    """output + weight * state: (B, L, D) + (B, L) * (B, L, D), one fused op (in place without grad)."""
    state = state.to(output.dtype)
    if torch.is_grad_enabled() and (output.requires_grad or weight.requires_grad or state.requires_grad):
        return torch.addcmul(output, weight.unsqueeze(-1), state)
    return output.addcmul_(weight.unsqueeze(-1), state)


def cumulative_halting_loop(
    state: Tensor,
    hop: HopFn,
    *,
    n_hops: int,
    threshold: float,
    halting_probability: HaltingFn,
) -> PonderOutput:
    """Graves ACT bookkeeping, shared by `graves` (any scope) and `threshold` (depth).

    After hop n (state s_n) every running token gets h_n. It halts at
    N = min{n : sum_{m<=n} h_m >= threshold}, or at hop `n_hops` (the cap).
    Weights: p_n = h_n for n < N and p_N = R = 1 - sum_{m<N} h_m, so they sum to 1
    for every token, capped ones included. Output y = sum_n p_n s_n (a sum, not an
    interpolation); ponder cost N + R, with gradient through R only.
    """
    dtype = accumulation_dtype(state)
    shape = state.shape[:-1]  # (B, L)
    halting_sum = torch.zeros(shape, dtype=dtype, device=state.device)  # sum of h while continuing
    n_updates = torch.zeros_like(halting_sum)
    running = torch.ones(shape, dtype=torch.bool, device=state.device)
    output = torch.zeros(state.shape, dtype=dtype, device=state.device)  # (B, L, D)
    for step in range(n_hops):
        active = None if step == 0 else running_as_active(running)
        state = hop(state, step, active)  # (B, L, D); halted tokens keep their state
        h = halting_probability(step, state, active)  # (B, L)
        new_sum = halting_sum + h
        if step == n_hops - 1:  # the cap: every running token halts here
            continues = torch.zeros_like(running)
        else:
            continues = running & (new_sum < threshold)
        halts_now = running ^ continues  # running & ~continues
        # p_n = h_n while continuing, R = 1 - sum_{m<n} h_m at the halting hop, 0 once halted
        weight = torch.where(continues, h, torch.where(halts_now, 1.0 - halting_sum, 0.0))
        output = accumulate(output, weight, state)
        halting_sum = torch.where(continues, new_sum, halting_sum)
        n_updates = n_updates + running
        running = continues
        if not bool(running.any()):
            break
    remainder = 1.0 - halting_sum  # R = 1 - sum_{m<N} h_m (halting_sum stopped growing at N)
    return PonderOutput(
        output=output.to(state.dtype),
        hops=n_updates,
        ponder_cost=n_updates + remainder,
        remainder=remainder,
    )


# --------------------------------------------------------------------------- misc


def fixed_hops_output(output: Tensor, hops: int | Tensor) -> PonderOutput:
    """PonderOutput for a strategy without halting weights: `hops` per token (int or (B, L))."""
    shape = output.shape[:-1]  # (B, L)
    dtype = accumulation_dtype(output)
    if isinstance(hops, Tensor):
        hop_counts = hops.to(dtype)
    else:
        hop_counts = torch.full(shape, float(hops), dtype=dtype, device=output.device)
    return PonderOutput(
        output=output,
        hops=hop_counts,
        ponder_cost=torch.zeros(shape, dtype=dtype, device=output.device),
        remainder=torch.zeros(shape, dtype=dtype, device=output.device),
    )


def require_scope(strategy: str, scope: str, supported: frozenset[str], hint: str = "") -> None:
    """Raise a SpecError naming halting.scope when `scope` is not supported."""
    if scope not in supported:
        allowed = ", ".join(sorted(supported))
        raise SpecError(
            f"halting {strategy!r} does not support scope {scope!r} (supported: {allowed}){hint}",
            path="halting.scope",
        )


def depth_cap_error(strategy: str, option: str, value: float, n_layers: int) -> SpecError:
    """The error for a depth-scope option larger than the stack."""
    return SpecError(
        f"{option} {value} exceeds the {n_layers} layer(s) available to halting {strategy!r} "
        "in depth scope",
        path=f"halting.{option}",
    )
