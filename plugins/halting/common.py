"""Pieces shared by halting strategies: halting units and the cumulative ACT loop.

Conventions used by every strategy here:

* A token is *running* while it still takes hops. Hops after the first get
  `active = running` (or None while every token runs), so the core freezes
  halted tokens and a block with `supports_active_subset = True` computes only
  the running ones (see `ponderlab.core.rows`). Loops stop as soon as no token runs
  (`RunningTokens`; on a GPU without a host sync per hop).
* Bookkeeping is done in float32 (float64 when the state is float64, so that
  gradient checks in double precision see double precision everywhere).
"""

from __future__ import annotations

import math
from collections.abc import Callable

import torch
import torch.nn.functional as F
from torch import Tensor, nn

from ponderlab.core.errors import SpecError
from ponderlab.core.interfaces import HopFn, PonderOutput
from ponderlab.core.rows import active_rows, gather_active
from ponderlab.core.speculation import speculation_mode

#: halting_probability(step, state (B, L, D), active (B, L) bool | None) -> (B, L) in [0, 1]
HaltingFn = Callable[[int, Tensor, "Tensor | None"], Tensor]


def logit(p: float) -> float:
    """The bias that makes a zero-weight halting unit output sigmoid(bias) = p."""
    return math.log(p / (1.0 - p))


def accumulation_dtype(tensor: Tensor) -> torch.dtype:
    """float64 for float64 inputs, float32 otherwise (also under bf16 autocast)."""
    return torch.float64 if tensor.dtype == torch.float64 else torch.float32


class RunningTokens:
    """Which tokens a halting loop still runs, and whether the loop goes on.

    Exact mode (the CPU): after each hop the number of running tokens is read at
    once, which costs nothing on a CPU; `record` returns False as soon as no token
    runs, and `active` is None while every token runs (no masking cost).

    Speculative mode (see `ponderlab.core.speculation`): a host read waits for all
    queued kernels and leaves the GPU idle while the host prepares the next hop.
    So `record` copies "any token running?" to the host without blocking, the loop
    queues the next hop with the mask as `active`, and `keep_hop` reads the answer
    after that. When no token was running the queued hop is dropped and the loop
    stops: outputs, weights and hop counts are those of the exact mode (the dropped
    hop froze every token, and freezing with an all-True mask is the identity).

    On CUDA (policy "auto") the choice is made per hop: speculate only while the
    GPU is still busy with the hop just queued. When it has already finished it
    (small work, the host is the bottleneck) a read costs no GPU time, and the
    exact mode saves the masking and copy launches of the speculative one.

        tokens = RunningTokens(state)
        for step in range(cap):
            new_state = hop(state, step, tokens.active)
            if not tokens.keep_hop():
                break
            ...  # bookkeeping with new_state, giving `running`
            if not tokens.record(running):
                break
    """

    def __init__(self, state: Tensor):
        mode = speculation_mode(state)
        self.speculative = mode != "exact"
        self.adaptive = mode == "adaptive"
        self.active: Tensor | None = None  # the `active` argument of the next hop
        self._any_running: Tensor | None = None  # host copy, in flight after a speculative record
        self._copied: torch.cuda.Event | None = None  # marks the end of that copy
        self._hop_queued: torch.cuda.Event | None = None  # marks the end of the last hop (adaptive)

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


# --------------------------------------------------------------------------- halting units


def rowwise_linear(state: Tensor, weight: Tensor, bias: Tensor) -> Tensor:
    """(..., D) @ (1, D)^T + (1,) -> (...), without copying a state whose leading dims are permuted.

    An LSTM with batch_first returns a (B, L, D) view of an (L, B, D) buffer; F.linear
    would copy it before the matrix-vector product. Permuting the leading dims into
    memory order first makes it a free view.
    """
    leading = state.dim() - 1
    if not state.is_contiguous() and leading > 1:
        order = sorted(range(leading), key=lambda d: -state.stride(d))
        permuted = state.permute(*order, leading)
        if permuted.is_contiguous():
            logits = F.linear(permuted, weight, bias).squeeze(-1)
            return logits.permute(*(order.index(d) for d in range(leading)))
    return F.linear(state, weight, bias).squeeze(-1)


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
        return rowwise_linear(state, self.linear.weight, self.linear.bias)

    def forward(self, state: Tensor, active: Tensor | None = None) -> Tensor:  # (B, L, D) -> (B, L)
        # A linear unit is cheaper to run on every token than to gather the active ones.
        logits = self.logits(state)
        if state.dtype != torch.float64:
            logits = logits.float()
        return torch.sigmoid(logits)


class HaltingMLP(nn.Module):
    """h = sigmoid(w2 . relu(W1 s + b1) + b2): seed 002's small halting MLP (about D^2/2 params).

    ReLU rather than GELU: the unit runs after every layer on every running token,
    so its cost counts against the early-exit speedup.

    The output weight starts at zero, so h = sigmoid(bias_init) for every token at
    init. With `active` given, only the active tokens are evaluated (the others get 0),
    except where loops avoid host syncs (a GPU): there every token is evaluated, which
    costs a fraction of a layer, and the loop ignores h of halted tokens.
    """

    def __init__(self, d_model: int, bias_init: float, hidden: int | None = None):
        super().__init__()
        width = hidden or max(1, d_model // 2)
        self.hidden = nn.Linear(d_model, width)
        self.act = nn.ReLU(inplace=True)  # on the linear's own output: safe under autograd
        self.out = nn.Linear(width, 1)
        nn.init.zeros_(self.out.weight)
        nn.init.constant_(self.out.bias, bias_init)

    def logits(self, state: Tensor) -> Tensor:  # (..., D) -> (...)
        return self.out(self.act(self.hidden(state))).squeeze(-1)

    def forward(self, state: Tensor, active: Tensor | None = None) -> Tensor:  # (B, L, D) -> (B, L)
        dtype = accumulation_dtype(state)
        if active is None or speculation_mode(state) != "exact":  # gathering rows costs a host sync on a GPU
            return torch.sigmoid(self.logits(state).to(dtype))
        rows = active_rows(active)
        values = torch.sigmoid(self.logits(gather_active(state, rows)).to(dtype))  # (K,)
        out = torch.zeros(active.numel(), dtype=dtype, device=state.device)
        return out.index_copy(0, rows, values).view(active.shape)


# --------------------------------------------------------------------------- the ACT loop


def accumulate(output: Tensor, weight: Tensor, state: Tensor) -> Tensor:
    """output += weight * state: (B, L, D) + (B, L) * (B, L, D), one fused in-place op.

    `output` must be the loop's own accumulator. In place is autograd-safe here:
    addcmul's backward needs only `weight` and `state`, and no other op saves the
    accumulator, so no new (B, L, D) buffer is allocated per hop, in training too.
    """
    return output.addcmul_(weight.unsqueeze(-1), state.to(output.dtype))


def cumulative_halting_loop(
    state: Tensor,
    hop: HopFn,
    *,
    n_hops: int,
    threshold: float,
    halting_probability: HaltingFn,
    mask: Tensor | None = None,
) -> PonderOutput:
    """Graves ACT bookkeeping, shared by `graves` (any scope) and `threshold` (depth).

    After hop n (state s_n) every running token gets h_n. It halts at
    N = min{n : sum_{m<=n} h_m >= threshold}, or at hop `n_hops` (the cap).
    Weights: p_n = h_n for n < N and p_N = R = 1 - sum_{m<N} h_m, so they sum to 1
    for every token, capped ones included. Output y = sum_n p_n s_n (a sum, not an
    interpolation); ponder cost N + R, with gradient through R only.

    Kept to a handful of small ops per hop (the loop runs after every hop of every
    site): h >= 0 makes the running sum c_n monotone, so "running after hop n" is
    just c_n < threshold, and hop counts and remainders are read off the per-hop
    masks and weights once, after the loop. Padding (`mask` False) halts after
    its first hop with weight 1. `RunningTokens` decides when the loop stops
    (without a host sync per hop on a GPU).
    """
    total = remaining = one = zero = limit = None  # (B, L) tensors, made at the first hop
    halt_index: Tensor | None = None  # N - 1: the number of hops after which a token continued
    output: Tensor | None = None  # sum_n p_n s_n, (B, L, D)
    weights: list[Tensor] = []  # p_n, (B, L) each
    tokens = RunningTokens(state)
    for step in range(n_hops):
        next_state = hop(state, step, tokens.active)  # (B, L, D); halted tokens keep their state
        if not tokens.keep_hop():  # speculative mode: no token was running, drop that hop
            break
        state = next_state
        if step == n_hops - 1:  # the cap: every running token halts with its remainder
            weight = remaining if remaining is not None else state.new_ones(state.shape[:-1])
            running = None
        else:
            h = halting_probability(step, state, tokens.active)  # (B, L), >= 0
            if total is None:
                total = h if mask is None else h.masked_fill(~mask, threshold + 1.0)  # pads halt now
                remaining = one = torch.ones_like(h)  # remaining = 1 - c_0
                zero = h.new_zeros(())
                limit = h.new_full((), threshold)
            else:
                total = total + h  # c_n
            running = total < limit  # (B, L) bool; c_n only grows, so a halted token stays halted
            # p_n = h_n while continuing, R = 1 - c_{n-1} at the halting hop, 0 once halted
            weight = torch.where(running, h, remaining)
            remaining = torch.where(running, one - total, zero)
            halt_index = running.long() if halt_index is None else halt_index.add_(running)
        weights.append(weight)
        if output is None:  # state first: the product keeps the state's memory layout (an LSTM's
            output = state * weight.unsqueeze(-1)  # is permuted), so the next layer gets it unchanged
        else:
            output = accumulate(output, weight, state)
        if running is None or not tokens.record(running):
            break
    if halt_index is None:  # a single hop
        halt_index = torch.zeros(weights[0].shape, dtype=torch.long, device=weights[0].device)
    remainder = torch.stack(weights).gather(0, halt_index.unsqueeze(0)).squeeze(0)  # R = p_N
    hops = halt_index.to(remainder.dtype).add_(1)  # N
    return PonderOutput(
        output=output.to(state.dtype),
        hops=hops,
        ponder_cost=hops + remainder,
        remainder=remainder,
        hop_weights=weights,
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
