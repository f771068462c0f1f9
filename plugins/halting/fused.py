"""Fused CPU kernels for the cumulative ACT loop with a linear halting unit.

`cumulative_halting_loop` (common.py) is the reference. After each hop it reads the
(B, L, D) state twice, once for the halting unit and once for the weighted sum, and
runs about a dozen small (B, L) ops; its backward adds as many passes again. On a
CPU those passes hit memory that the hop itself has pushed out of cache, and they
are most of what `graves` costs over `constant` (docs/benchmarks.md). `fused_act.c`
does one pass per hop: per token, the unit's dot product, the running sum, the
weight, the remainder and the hop count, and the weighted sum of the state row
while that row is in cache. Its backward is one pass over the hops' states per
token (`FusedBookkeeping`, an autograd node for the whole loop).

The kernels are compiled on first use with the system C compiler (`$CC`, else cc,
gcc or clang) into a per-machine cache (`$PONDERLAB_KERNEL_CACHE`, default
~/.cache/ponderlab/kernels) and loaded with ctypes. When no compiler works the loop
warns once and stays eager. They run where they give the eager loop's results:
CPU, float32/float64 states, the exact hop policy and a linear unit (`graves`,
any scope), in training and at inference. Double backward is not supported
(`once_differentiable`). `PONDERLAB_FUSED_ACT=0` or `fused_bookkeeping(False)`
turns them off. tests/test_halting_fused.py compares both paths.
"""

from __future__ import annotations

import ctypes
import functools
import hashlib
import os
import platform
import shutil
import subprocess
import tempfile
import warnings
from collections.abc import Callable, Iterator
from concurrent.futures import ThreadPoolExecutor
from contextlib import contextmanager
from contextvars import ContextVar
from pathlib import Path

import torch
from torch import Tensor
from torch.autograd.function import once_differentiable

from ponderlab.core.interfaces import HopFn, PonderOutput
from ponderlab.core.speculation import speculation_mode

from .common import HaltingUnit

SOURCE = Path(__file__).with_name("fused_act.c")
COMPILE_FLAGS = (
    "-O3", "-march=native", "-fno-math-errno",
    # the unit's dot product may be summed in vector lanes (as BLAS does)
    "-fassociative-math", "-fno-signed-zeros", "-fno-trapping-math",
    "-shared", "-fPIC",
)
FORWARD_SYMBOLS = {torch.float32: "ponderlab_act_hop_f32", torch.float64: "ponderlab_act_hop_f64"}
BACKWARD_SYMBOLS = {torch.float32: "ponderlab_act_backward_f32", torch.float64: "ponderlab_act_backward_f64"}
FIRST, MIDDLE, CAP = 0, 1, 2  # the kernel's modes
ELEMENTS_PER_WORKER = 1 << 18  # state elements (1 MiB of float32) per thread of the kernel

_ENABLED: ContextVar[bool | None] = ContextVar("ponderlab_fused_act", default=None)


class KernelBuildError(RuntimeError):
    """The C compiler could not build fused_act.c."""


@contextmanager
def fused_bookkeeping(enabled: bool) -> Iterator[None]:
    """Allow (True) or forbid (False) the fused kernel in the enclosed halting loops."""
    token = _ENABLED.set(enabled)
    try:
        yield
    finally:
        _ENABLED.reset(token)


def fused_enabled() -> bool:
    """`fused_bookkeeping` where set, else the environment (PONDERLAB_FUSED_ACT=0 turns it off)."""
    enabled = _ENABLED.get()
    return os.environ.get("PONDERLAB_FUSED_ACT", "1") != "0" if enabled is None else enabled


def kernel_cache_dir() -> Path:
    configured = os.environ.get("PONDERLAB_KERNEL_CACHE")
    if configured:
        return Path(configured)
    return Path(os.environ.get("XDG_CACHE_HOME", Path.home() / ".cache")) / "ponderlab" / "kernels"


def find_compiler() -> str | None:
    candidates = [os.environ["CC"]] if os.environ.get("CC") else ["cc", "gcc", "clang"]
    return next((found for name in candidates if (found := shutil.which(name))), None)


def build_kernel(compiler: str, cache_dir: Path) -> Path:
    """Compile fused_act.c unless the cache has it; returns the shared library's path.

    The name hashes the source, the flags, the compiler and the machine (`-march=native`
    code must not be loaded on another CPU). The library is written to a temporary file
    and renamed into place, so concurrent builders never load a partial file.
    """
    source = SOURCE.read_bytes()
    key = hashlib.sha256(b"\0".join([
        source, " ".join(COMPILE_FLAGS).encode(), compiler.encode(),
        platform.machine().encode(), platform.node().encode(),
    ])).hexdigest()[:16]
    target = cache_dir / f"fused_act-{key}.so"
    if target.exists():
        return target
    cache_dir.mkdir(parents=True, exist_ok=True)
    handle, partial = tempfile.mkstemp(prefix=".fused_act-", suffix=".so", dir=cache_dir)
    os.close(handle)
    try:
        done = subprocess.run([compiler, *COMPILE_FLAGS, "-o", partial, str(SOURCE), "-lm"],
                              capture_output=True, text=True, timeout=300)
        if done.returncode != 0:
            raise KernelBuildError(f"{compiler} failed on {SOURCE.name}: {done.stderr.strip()[-2000:]}")
        os.replace(partial, target)
    finally:
        if os.path.exists(partial):
            os.remove(partial)
    return target


@functools.cache
def load_kernel() -> ctypes.CDLL | None:
    """The compiled kernel, or None (with one warning) when it cannot be built or loaded."""
    compiler = find_compiler()
    try:
        if compiler is None:
            raise KernelBuildError("no C compiler found ($CC, cc, gcc or clang)")
        library = ctypes.CDLL(str(build_kernel(compiler, kernel_cache_dir())))
    except (KernelBuildError, OSError, subprocess.SubprocessError) as error:
        warnings.warn(f"ponderlab: the fused ACT kernel is not available, halting loops stay eager ({error})",
                      RuntimeWarning, stacklevel=2)
        return None
    i64, ptr, real = ctypes.c_int64, ctypes.c_void_p, ctypes.c_double
    for symbol in FORWARD_SYMBOLS.values():
        function = getattr(library, symbol)
        function.restype = i64
        function.argtypes = [
            ptr, i64, i64,  # state, its strides over the token grid
            ptr, i64, i64,  # output, its strides
            i64, i64, i64,  # grid (n0, n1), width
            ptr, real, real,  # unit weight, unit bias, threshold
            ptr, ptr, ptr, ptr, ptr, ptr,  # total, remaining, hops, remainder, weight, running
            i64, i64,  # per-token strides
            ptr, i64, ctypes.c_int,  # keep (or NULL), step, mode
        ]
    for symbol in BACKWARD_SYMBOLS.values():
        function = getattr(library, symbol)
        function.restype = None
        function.argtypes = [
            i64, ptr, ptr,  # hops run, state pointers, their strides (2 per hop)
            ptr, ptr,  # state gradient pointers, their strides
            ptr, i64, i64,  # output gradient, its strides
            i64, i64, i64,  # grid (n0, n1), width
            ptr, ptr, ptr,  # unit weight pointers, unit weight and bias gradients (accumulated)
            ptr, ptr, ptr,  # weight pointers, hops, remainder gradient (or NULL)
            ptr, i64, i64,  # weight gradient pointers (or NULL), per-token strides
        ]
    return library


def fused_loop_applies(state: Tensor, n_hops: int, unit: object) -> bool:
    """Whether `fused_cumulative_halting_loop` gives the eager loop's results for this call."""
    return (
        isinstance(unit, HaltingUnit)
        and n_hops >= 2
        and state.dim() == 3
        and state.device.type == "cpu"
        and state.dtype in FORWARD_SYMBOLS
        and speculation_mode(state) == "exact"
        and fused_enabled()
        and load_kernel() is not None
    )


def fused_cumulative_halting_loop(
    state: Tensor,
    hop: HopFn,
    *,
    n_hops: int,
    threshold: float,
    unit_for_step: Callable[[int], HaltingUnit],
    mask: Tensor | None = None,
) -> PonderOutput:
    """`cumulative_halting_loop` with h_n = unit_for_step(n)(s_n), one kernel call per hop.

    Same contract and results as the eager loop (up to the order of the unit's
    floating-point sums); call it where `fused_loop_applies`. With autograd on, the
    hop states and the units' parameters get their gradients from the backward
    kernel (`FusedBookkeeping`).
    """
    forward_kernel = getattr(load_kernel(), FORWARD_SYMBOLS[state.dtype])
    dtype = state.dtype
    batch, length = state.shape[:-1]

    def per_token() -> Tensor:  # (B, L)
        return torch.empty(batch, length, dtype=dtype)

    total, remaining, hops, remainder = per_token(), per_token(), per_token(), per_token()
    running = torch.empty(batch, length, dtype=torch.uint8)
    keep = None if mask is None else mask.to(torch.uint8).contiguous()  # (B, L), 0 = padding
    output: Tensor | None = None  # sum_n p_n s_n, (B, L, D) in the first hop's memory layout
    weights: list[Tensor] = []  # p_n, (B, L) each
    states: list[Tensor] = []  # s_n, the hops' outputs (for the backward)
    units: list[HaltingUnit | None] = []  # the unit after each hop (None at the cap)
    active: Tensor | None = None
    for step in range(n_hops):
        state = hop(state, step, active)  # (B, L, D)
        rows = state  # what the kernel reads: rows of D contiguous elements of `dtype`
        if state.dtype != dtype or state.stride(-1) != 1:  # e.g. a hop under bfloat16 autocast
            rows = state.to(dtype).contiguous()
        if output is None:
            output = torch.empty_like(rows, requires_grad=False)  # keeps a permuted layout (an LSTM's)
        mode = FIRST if step == 0 else CAP if step == n_hops - 1 else MIDDLE
        unit = unit_for_step(step) if mode != CAP else None
        unit_weight, unit_bias = unit_parameters(unit, dtype)
        weight = per_token()
        count = forward_hop(forward_kernel, rows, output, unit_weight, unit_bias, threshold,
                            (total, remaining, hops, remainder, weight, running), keep, step, mode)
        weights.append(weight)
        states.append(rows)
        units.append(unit)
        if count == 0:
            break
        # a copy: the kernel rewrites `running` at the next hop, and callers may keep `active`
        active = None if count == batch * length else running.bool()
    if torch.is_grad_enabled():
        output, remainder, *weights = FusedBookkeeping.apply(
            {"output": output, "remainder": remainder, "weights": weights, "hops": hops, "units": units},
            *states, *(tensor for unit in units if unit is not None for tensor in (unit.linear.weight, unit.linear.bias)),
        )
    return PonderOutput(output=output.to(state.dtype), hops=hops, ponder_cost=hops + remainder,
                        remainder=remainder, hop_weights=weights)


def forward_hop(kernel, state: Tensor, output: Tensor, unit_weight: Tensor | None, unit_bias: float,
                threshold: float, per_token: tuple[Tensor, ...], keep: Tensor | None, step: int,
                mode: int) -> int:
    """One hop of the forward kernel over every token; returns how many still run."""

    def call(start: int, stop: int, order: tuple[int, int]) -> int:
        return kernel(
            *strided(state, start, order), *strided(output, start, order),
            stop - start, state.shape[order[1]], state.shape[-1],
            None if unit_weight is None else unit_weight.data_ptr(), unit_bias, threshold,
            *(strided(array, start, order)[0] for array in per_token),
            *strided(per_token[0], 0, order)[1:], strided(keep, start, order)[0], step, mode,
        )

    return sum(run_in_slices(call, state))


class FusedBookkeeping(torch.autograd.Function):
    """Hands the forward kernel's results to autograd; the backward kernel gives the
    gradients of the hop states and of each hop's unit weight and bias."""

    @staticmethod
    def forward(ctx, result: dict, *inputs: Tensor):
        """inputs: the hops' states s_n, then the weight and bias of the unit of each hop
        that had one (the ones the forward kernel used)."""
        weights = result["weights"]
        ctx.unit_hops = [n for n, unit in enumerate(result["units"]) if unit is not None]
        ctx.set_materialize_grads(False)  # unused outputs (often the hop weights) get None, not zeros
        ctx.save_for_backward(*inputs, *weights, result["hops"])
        return (result["output"], result["remainder"], *weights)

    @staticmethod
    @once_differentiable
    def backward(ctx, grad_output: Tensor | None, grad_remainder: Tensor | None, *grad_weights: Tensor | None):
        saved = ctx.saved_tensors
        hops_run = (len(saved) - 1 - 2 * len(ctx.unit_hops)) // 2
        states, weights, hops = saved[:hops_run], saved[-1 - hops_run:-1], saved[-1]
        parameters = saved[hops_run:hops_run + 2 * len(ctx.unit_hops)]  # (weight, bias) per unit hop
        dtype, width = states[0].dtype, states[0].shape[-1]
        if grad_output is None:
            grad_output = torch.zeros_like(states[0])
        elif grad_output.stride(-1) != 1:
            grad_output = grad_output.contiguous()
        grad_remainder = None if grad_remainder is None else grad_remainder.contiguous()
        grad_weights = [None if grad is None else grad.contiguous() for grad in grad_weights]
        grad_states = [torch.empty_like(state) for state in states]
        unit_weights: list[Tensor | None] = [None] * hops_run  # (D,) per hop, None at the cap
        for index, n in enumerate(ctx.unit_hops):
            unit_weights[n] = flat_weight(parameters[2 * index], dtype)
        backward_kernel = getattr(load_kernel(), BACKWARD_SYMBOLS[dtype])

        def call(start: int, stop: int, order: tuple[int, int]) -> tuple[Tensor, Tensor]:
            """The slice's state gradients; returns its unit weight and bias gradients."""
            def pointers(tensors) -> ctypes.Array:
                return (ctypes.c_void_p * hops_run)(
                    *(None if tensor is None else strided(tensor, start, order)[0] for tensor in tensors))

            def strides(tensors) -> ctypes.Array:
                return (ctypes.c_int64 * (2 * hops_run))(
                    *(stride for tensor in tensors for stride in strided(tensor, 0, order)[1:]))

            grad_unit_weight = torch.zeros(hops_run, width, dtype=dtype)
            grad_unit_bias = torch.zeros(hops_run, dtype=dtype)
            backward_kernel(
                hops_run, pointers(states), strides(states), pointers(grad_states), strides(grad_states),
                *strided(grad_output, start, order), stop - start, states[0].shape[order[1]], width,
                (ctypes.c_void_p * hops_run)(*(None if w is None else w.data_ptr() for w in unit_weights)),
                grad_unit_weight.data_ptr(), grad_unit_bias.data_ptr(),
                pointers(weights), strided(hops, start, order)[0], strided(grad_remainder, start, order)[0],
                pointers(grad_weights) if any(grad is not None for grad in grad_weights) else None,
                *strided(hops, 0, order)[1:],
            )
            return grad_unit_weight, grad_unit_bias

        partial_sums = run_in_slices(call, states[0])  # in slice order: a deterministic sum
        grad_unit_weight = sum(partial[0] for partial in partial_sums)  # (hops_run, D)
        grad_unit_bias = sum(partial[1] for partial in partial_sums)  # (hops_run,)
        grad_parameters = []
        for index, n in enumerate(ctx.unit_hops):
            weight, bias = parameters[2 * index], parameters[2 * index + 1]
            grad_parameters += [grad_unit_weight[n].view_as(weight).to(weight.dtype),
                                grad_unit_bias[n].view_as(bias).to(bias.dtype)]
        return (None, *grad_states, *grad_parameters)


def strided(tensor: Tensor | None, start: int, order: tuple[int, int]) -> tuple[int | None, int, int]:
    """(address of outer index `start`, outer stride, inner stride) of a (B, L, ...) tensor
    walked in `order`; strides in elements. (None, 0, 0) for None."""
    if tensor is None:
        return None, 0, 0
    outer, inner = tensor.stride(order[0]), tensor.stride(order[1])
    return tensor.data_ptr() + start * outer * tensor.element_size(), outer, inner


def run_in_slices(call: Callable[[int, int, tuple[int, int]], object], state: Tensor) -> list:
    """Run `call(start, stop, order)` over the outer index of the token grid, in slices.

    The tokens are walked in `state`'s memory order (outer index: the larger stride).
    With several torch threads and enough work, slices of the outer index run in
    parallel (ctypes releases the GIL during the call). Returns the calls' results.
    """
    order = (0, 1) if state.stride(0) >= state.stride(1) else (1, 0)
    outer = state.shape[order[0]]
    workers = min(torch.get_num_threads(), outer, state.numel() // ELEMENTS_PER_WORKER)
    if workers <= 1:
        return [call(0, outer, order)]
    bounds = [outer * index // workers for index in range(workers + 1)]
    return list(worker_pool().map(call, bounds[:-1], bounds[1:], [order] * workers))


@functools.cache
def worker_pool() -> ThreadPoolExecutor:
    return ThreadPoolExecutor(max_workers=os.cpu_count() or 1, thread_name_prefix="ponderlab-act")


def unit_parameters(unit: HaltingUnit | None, dtype: torch.dtype) -> tuple[Tensor | None, float]:
    """The unit's weight as the kernels read it (`flat_weight`), and its bias."""
    if unit is None:
        return None, 0.0
    return flat_weight(unit.linear.weight, dtype), float(unit.linear.bias.detach())


def flat_weight(weight: Tensor, dtype: torch.dtype) -> Tensor:
    """A (1, D) unit weight as a contiguous (D,) tensor of `dtype`, outside autograd."""
    return weight.detach().reshape(-1).to(dtype).contiguous()
