"""Mamba's selective scan (S6; Gu & Dao 2023, arXiv 2312.00752) in three implementations.

    h_t = exp(delta_t * A) * h_{t-1} + delta_t * B_t * u_t    (per channel e, per state n)
    y_t = sum_n C_t[n] * h_t[e, n] + D[e] * u_t[e],   then y * silu(z) when a gate z is given

Shapes (our layout): u, delta, z (B, L, E); A (E, N); B, C (B, L, N); D (E,).

* `selective_scan_reference`: an obvious step loop under autograd; the ground truth
  the tests compare against (in float64).
* `selective_scan`: the fast pure-PyTorch path used on CPU and whenever the CUDA
  kernels are missing. `_FusedScan` walks the sequence once in each direction over
  cache-sized (B, N, E) slices, writing states in place, and its hand-written
  backward runs the adjoint recurrence in reverse,
      g_t = C_t (x) dy_t + exp(delta_{t+1} A) * g_{t+1},
  from which every input gradient is a per-step product or a small batched matmul.
  Autograd keeps no per-step graph, and no per-step slice ever gets a full-size
  gradient. Per-step buffers are small allocations the allocator recycles, where
  one (B, L, N, E) block would be fresh pages on every call. The decays exp(delta A)
  are saved on CPU and recomputed in backward on CUDA (half the memory).
* The `mamba-ssm` / `causal-conv1d` CUDA kernels (`pip install ponderlab[cuda]`),
  loaded lazily by `cuda_kernels()` and used by the Mamba block only when both
  import and the tensors are on a CUDA device.
"""

from __future__ import annotations

import functools
from typing import Any

import torch
import torch.nn.functional as F
from torch import Tensor
from torch.autograd.function import once_differentiable


def _gate(y: Tensor, u: Tensor, D: Tensor | None, z: Tensor | None) -> Tensor:
    """y + D * u, then gated by silu(z): all (B, L, E)."""
    if D is not None:
        y = y + u * D
    if z is not None:
        y = y * F.silu(z)
    return y


# --------------------------------------------------------------------------- reference


def selective_scan_reference(
    u: Tensor, delta: Tensor, A: Tensor, B: Tensor, C: Tensor, D: Tensor | None = None, z: Tensor | None = None
) -> Tensor:
    """The recurrence written out step by step (slow; for tests). Returns (B, L, E)."""
    batch, length, channels = u.shape
    state = u.new_zeros(batch, channels, A.shape[1])  # (B, E, N)
    outputs = []
    for t in range(length):
        decay = torch.exp(delta[:, t, :, None] * A)  # (B, E, N)
        drive = (delta[:, t] * u[:, t])[:, :, None] * B[:, t, None, :]  # (B, E, N)
        state = decay * state + drive
        outputs.append((state * C[:, t, None, :]).sum(-1))  # (B, E)
    return _gate(torch.stack(outputs, dim=1), u, D, z)


# --------------------------------------------------------------------------- fast torch path


class _FusedScan(torch.autograd.Function):
    """y_t = C_t . h_t for the S6 recurrence; states are (B, N, E) slices, one per step.

    keep_decays: save exp(delta_t A) for the backward pass (fastest; the CPU default)
    or recompute it there (half the saved memory; the default on CUDA, where exp is cheap).
    for_backward: False when no gradient is wanted (keeps only the running state).
    """

    @staticmethod
    def forward(
        ctx, u: Tensor, delta: Tensor, A: Tensor, B: Tensor, C: Tensor, keep_decays: bool, for_backward: bool
    ) -> Tensor:
        # Time-major copies so that every per-step slice is contiguous.
        u_t = u.transpose(0, 1).contiguous()  # (L, B, E)
        delta_t = delta.transpose(0, 1).contiguous()  # (L, B, E)
        B_t = B.transpose(0, 1).contiguous()  # (L, B, N)
        C_t = C.transpose(0, 1).contiguous()  # (L, B, N)
        A_t = A.t().contiguous()  # (N, E)
        length, batch, channels = u_t.shape
        drive_in = delta_t * u_t  # (L, B, E): delta * u
        y = u_t.new_empty(length, batch, 1, channels)  # (L, B, 1, E)
        states: list[Tensor] = []
        decays: list[Tensor] = []  # exp(delta_t A) for t >= 1 (step 0 decays the zero state)
        state = None
        for t in range(length):
            new = drive_in[t].unsqueeze(1) * B_t[t].unsqueeze(-1)  # (B, N, E)
            if state is not None:
                decay = torch.mul(delta_t[t].unsqueeze(1), A_t).exp_()  # (B, N, E)
                new.addcmul_(decay, state)
                if keep_decays and for_backward:
                    decays.append(decay)
            torch.bmm(C_t[t].unsqueeze(1), new, out=y[t])  # (B, 1, N) @ (B, N, E)
            if for_backward:
                states.append(new)
            state = new
        if for_backward:
            # Saved (not kept on ctx) so autograd frees them after backward unless the graph is retained.
            ctx.save_for_backward(u_t, delta_t, drive_in, A_t, B_t, C_t, *states, *decays)
        return y.squeeze(2).transpose(0, 1)  # (B, L, E)

    @staticmethod
    @once_differentiable
    def backward(ctx, grad_y: Tensor):
        u_t, delta_t, drive_in, A_t, B_t, C_t, *saved = ctx.saved_tensors
        length, batch, channels = u_t.shape
        states, kept_decays = saved[:length], saved[length:]
        n_state = A_t.shape[0]
        gy = grad_y.transpose(0, 1).contiguous().unsqueeze(2)  # (L, B, 1, E)
        g = u_t.new_empty(batch, n_state, channels)  # adjoint of h_t, (B, N, E)
        g_next = torch.empty_like(g)
        work = torch.empty_like(g)
        decay_next = None  # exp(delta_{t+1} A)
        decay_grad = torch.zeros_like(g)  # sum_t W_t * delta_t, reduced over B at the end
        g_drive = u_t.new_empty(length, batch, 1, channels)  # d/d(delta*u)
        g_B = u_t.new_empty(length, batch, 1, n_state)
        g_C = u_t.new_empty(length, batch, 1, n_state)
        g_delta = torch.zeros_like(u_t)  # (L, B, E)
        for t in range(length - 1, -1, -1):
            torch.mul(C_t[t].unsqueeze(-1), gy[t], out=g)  # C_t (x) dy_t
            if decay_next is not None:
                g.addcmul_(decay_next, g_next)
            torch.bmm(gy[t], states[t].transpose(1, 2), out=g_C[t])  # sum_e dy * h
            torch.bmm(B_t[t].unsqueeze(1), g, out=g_drive[t])  # sum_n B * g
            torch.bmm(drive_in[t].unsqueeze(1), g.transpose(1, 2), out=g_B[t])  # sum_e du * g
            if t > 0:
                if kept_decays:
                    decay = kept_decays[t - 1]
                else:
                    decay = torch.mul(delta_t[t].unsqueeze(1), A_t).exp_()
                # W = g * h_{t-1} * exp(delta A); d decay / d delta = A decay, d decay / dA = delta decay.
                torch.mul(g, states[t - 1], out=work).mul_(decay)
                decay_grad.addcmul_(work, delta_t[t].unsqueeze(1))
                torch.sum(work.mul_(A_t), dim=1, out=g_delta[t])
                decay_next = decay
            g, g_next = g_next, g
        g_drive = g_drive.squeeze(2)  # (L, B, E)
        g_u = g_drive * delta_t
        g_delta.addcmul_(g_drive, u_t)
        g_A = decay_grad.sum(0).t()  # (E, N)
        return (
            g_u.transpose(0, 1),
            g_delta.transpose(0, 1),
            g_A,
            g_B.squeeze(2).transpose(0, 1),
            g_C.squeeze(2).transpose(0, 1),
            None,
            None,
        )


def selective_scan(
    u: Tensor,
    delta: Tensor,
    A: Tensor,
    B: Tensor,
    C: Tensor,
    D: Tensor | None = None,
    z: Tensor | None = None,
    keep_decays: bool | None = None,
) -> Tensor:
    """Fast PyTorch selective scan (any device). delta must already be positive (softplus applied).

    Computed in float32 (float64 stays float64); returns u's dtype, (B, L, E).
    keep_decays: save exp(delta A) for backward (default: on CPU) or recompute it (default on CUDA).
    """
    dtype = torch.float64 if u.dtype == torch.float64 else torch.float32
    keep = (not u.is_cuda) if keep_decays is None else keep_decays
    for_backward = torch.is_grad_enabled() and any(t.requires_grad for t in (u, delta, A, B, C))
    with torch.autocast(device_type=u.device.type, enabled=False):
        y = _FusedScan.apply(
            u.to(dtype), delta.to(dtype), A.to(dtype), B.to(dtype), C.to(dtype), keep, for_backward
        )
        y = _gate(y, u.to(dtype), None if D is None else D.to(dtype), None if z is None else z.to(dtype))
    return y.to(u.dtype)


# --------------------------------------------------------------------------- CUDA kernels


@functools.lru_cache(maxsize=1)
def cuda_kernels() -> tuple[Any, Any] | None:
    """(selective_scan_fn, causal_conv1d_fn) from mamba-ssm / causal-conv1d, or None if absent."""
    try:
        from causal_conv1d import causal_conv1d_fn
        from mamba_ssm.ops.selective_scan_interface import selective_scan_fn
    except Exception:  # ImportError, or a build that does not match this torch
        return None
    return selective_scan_fn, causal_conv1d_fn
