"""Run seq_icl's own Triton kernels (on CPU, in Triton's interpreter) beside ponderlab's seq_icl
layers and compare their gradients: the LRU scan, the GILR scan and the RWKV log-space WKV.

LRU: seq_icl's `LRULayer` concatenates the scan's real and imaginary outputs. Autograd then hands
the kernel's backward the two halves of one (B, L, 2N) gradient as strided views, and the kernel
reads them as contiguous (B, L, N) arrays. Measured here: the kernel with its two outputs used
apart (contiguous gradients) against the exact gradient, and the kernel inside the layer against
the exact gradient and against the `scan_gradient: seq_icl_kernel` emulation.

GILR: seq_icl's fused scan (`real_scan_tie_input_gate_fused`, h_t = s_t h_{t-1} + (1 - s_t) v_t with
s_t = sigmoid(f_t)) against `linear_recurrence.linear_scan`: forward values and the gradients of v, f.

RWKV: seq_icl's WKV kernel (`wkv_triton_log_space`, with seq_icl's growing past, w = +exp(time_decay))
against `rwkv.wkv_parallel` with the same sign: forward values and the gradients of time_decay,
time_first, k and v.

It needs `triton` (CPU interpreter, no GPU) and a checkout of seq_icl (github.com/berlino/seq_icl;
the RWKV kernel is in later commits than ec42595); it imports the kernels from there and copies
nothing:

    pip install triton
    python examples/seq_icl/seqicl_kernel_check.py --seq-icl /path/to/seq_icl

Exit status 0 when the LRU emulation matches seq_icl's kernel and ponderlab's GILR scan and WKV match
seq_icl's (where the checkout has them), 1 when not, 2 when the LRU kernel cannot be loaded.
"""

from __future__ import annotations

import argparse
import importlib.util
import math
import os
import sys
from pathlib import Path

import torch
from torch.nn import functional as F

from ponderlab.plugins.backbones.linear_recurrence import linear_scan, linear_scan_reference
from ponderlab.plugins.backbones.lru import SeqIclLRUMixer
from ponderlab.plugins.backbones.rwkv import wkv_parallel

KERNELS = Path("src/models/sequence/rnn/scan_triton")
WIDTH = 32  # the LRU kernel's block size; seq_icl's associative-recall width
TOLERANCE = 1e-4  # relative to the largest gradient: float32 rounding


def load_kernel(checkout: Path, file_name: str, function: str):
    """`function` of seq_icl's `file_name` kernel module, run by Triton's interpreter."""
    os.environ["TRITON_INTERPRET"] = "1"  # before triton is imported
    path = checkout / KERNELS / file_name
    if not path.is_file():
        raise FileNotFoundError(f"no {KERNELS / file_name} under {checkout}: is it a seq_icl checkout?")
    spec = importlib.util.spec_from_file_location(f"seqicl_{path.stem}", path)
    module = importlib.util.module_from_spec(spec)
    spec.loader.exec_module(module)
    return getattr(module, function)


def kernel_mixer_output(mixer: SeqIclLRUMixer, x: torch.Tensor, complex_scan) -> torch.Tensor:
    """The mixer's forward with seq_icl's kernel as its scan: (B, L, D) -> (B, L, D)."""
    width = x.shape[-1]
    v_real, v_imag, out_gate = mixer.in_proj(x).split([width, width, 2 * width], -1)
    decay = mixer.decay(x.dtype)  # (D,) complex
    gamma = torch.exp(mixer.gamma_log)
    f_real, f_imag = (part.expand_as(v_real).contiguous() for part in (decay.real, decay.imag))  # (B, L, D)
    h_real, h_imag = complex_scan((gamma * v_real).contiguous(), (gamma * v_imag).contiguous(), f_real, f_imag)
    mixed = torch.cat([h_real, h_imag], dim=-1) * F.silu(out_gate)  # (B, L, 2D)
    return mixer.project(mixed, x)


def gradients(output: torch.Tensor, weight: torch.Tensor, inputs: list[torch.Tensor]) -> list[torch.Tensor]:
    return list(torch.autograd.grad((output * weight).sum(), inputs))


def largest_difference(first: list[torch.Tensor], second: list[torch.Tensor]) -> tuple[float, float]:
    """Largest |difference| over the gradients, and the largest |gradient| of `second`."""
    gap = max(float((a - b).abs().max()) for a, b in zip(first, second, strict=True))
    return gap, max(float(b.abs().max()) for b in second)


def step_loop(v_real, v_imag, f_real, f_imag) -> tuple[torch.Tensor, torch.Tensor]:
    """h_t = f_t h_{t-1} + v_t over complex numbers given as real and imaginary parts, (B, L, N) each."""
    states = linear_scan_reference(torch.complex(f_real, f_imag), torch.complex(v_real, v_imag))
    return states.real, states.imag


def separate_outputs_gap(complex_scan, batch: int, length: int) -> float:
    """The LRU kernel's input gradients against the step loop's when its outputs are used apart."""
    generator = torch.Generator().manual_seed(1)
    leaves = [torch.randn(batch, length, WIDTH, generator=generator) for _ in range(2)]
    leaves += [0.95 * torch.rand(batch, length, WIDTH, generator=generator) for _ in range(2)]
    weights = [torch.randn(batch, length, WIDTH, generator=generator) for _ in range(2)]

    def grads(scan) -> list[torch.Tensor]:
        inputs = [leaf.clone().requires_grad_() for leaf in leaves]
        h_real, h_imag = scan(*[leaf * 1.0 for leaf in inputs])
        return torch.autograd.grad((h_real * weights[0]).sum() + (h_imag * weights[1]).sum(), inputs)

    return largest_difference(grads(complex_scan), grads(step_loop))[0]


def check_lru(complex_scan, batch: int, length: int) -> bool:
    print(f"LRU kernel, outputs used apart: largest gradient difference from the step loop "
          f"{separate_outputs_gap(complex_scan, batch, length):.2e}")
    torch.manual_seed(0)
    mixer = SeqIclLRUMixer(WIDTH, 0.9, 0.999, 2 * math.pi, dropout=0.0)
    parameters = list(mixer.parameters())
    x, weight = torch.randn(batch, length, WIDTH), torch.randn(batch, length, WIDTH)
    kernel = gradients(kernel_mixer_output(mixer, x, complex_scan), weight, parameters)
    exact = gradients(mixer(x), weight, parameters)
    mixer.kernel_gradient = True
    emulated = gradients(mixer(x), weight, parameters)
    from_exact, scale = largest_difference(kernel, exact)
    from_emulation, _ = largest_difference(kernel, emulated)
    print(f"LRU kernel inside seq_icl's LRULayer (outputs concatenated), B={batch}, L={length}, N={WIDTH}:")
    print(f"  largest gradient difference from the exact gradient             {from_exact:.2e} "
          f"(largest exact gradient {scale:.2e})")
    print(f"  largest gradient difference from scan_gradient: seq_icl_kernel  {from_emulation:.2e}")
    for (name, _), got, want in zip(mixer.named_parameters(), kernel, exact, strict=True):
        cosine = float(F.cosine_similarity(got.flatten(), want.flatten(), dim=0))
        print(f"  {name:>16}: cosine similarity of the kernel's gradient with the exact one {cosine:+.3f}")
    return from_emulation <= TOLERANCE * scale


def matches_with_message(name: str, kernel_out, own_out, kernel_grads, own_grads) -> bool:
    """Print the largest forward and gradient differences; True when both are float32 rounding."""
    forward_gap = float((kernel_out - own_out).detach().abs().max())
    gap, scale = largest_difference(kernel_grads, own_grads)
    print(f"{name}: largest forward difference {forward_gap:.2e}, largest gradient difference {gap:.2e} "
          f"(largest gradient {scale:.2e})")
    return forward_gap <= TOLERANCE * float(own_out.detach().abs().max()) and gap <= TOLERANCE * scale


def check_gilr(fused_scan, batch: int, length: int) -> bool:
    generator = torch.Generator().manual_seed(3)
    leaves = [torch.randn(batch, length, WIDTH, generator=generator) for _ in range(2)]  # v, f
    weight = torch.randn(batch, length, WIDTH, generator=generator)

    def run(kernel: bool) -> tuple[torch.Tensor, list[torch.Tensor]]:
        v, f = inputs = [leaf.clone().requires_grad_() for leaf in leaves]
        if kernel:
            out = fused_scan(v * 1.0, f * 1.0)
        else:
            gate = torch.sigmoid(f)
            out = linear_scan(gate, (1 - gate) * v)
        return out, gradients(out, weight, inputs)

    (kernel_out, kernel_grads), (own_out, own_grads) = run(True), run(False)
    return matches_with_message(f"GILR scan kernel, B={batch}, L={length}, C={WIDTH} (gradients of v, f)",
                                kernel_out, own_out, kernel_grads, own_grads)


def check_rwkv(wkv_log_space, batch: int, length: int) -> bool:
    generator = torch.Generator().manual_seed(2)
    leaves = [torch.randn(WIDTH, generator=generator), torch.randn(WIDTH, generator=generator)]
    leaves += [torch.randn(batch, length, WIDTH, generator=generator) for _ in range(2)]
    weight = torch.randn(batch, length, WIDTH, generator=generator)

    def run(kernel: bool) -> tuple[torch.Tensor, list[torch.Tensor]]:
        time_decay, time_first, k, v = inputs = [leaf.clone().requires_grad_() for leaf in leaves]
        if kernel:  # seq_icl's RWKVLayer: w = exp(time_decay) added to the log-state, empty state -inf
            state = torch.full((batch, 3, 1, WIDTH), float("-inf"))
            out, _ = wkv_log_space(torch.exp(time_decay), time_first, k, v, state)
        else:  # the same past, growing by e^{exp(time_decay)} per step
            out = wkv_parallel(-torch.exp(time_decay), time_first, k, v)
        return out, gradients(out, weight, inputs)

    (kernel_out, kernel_grads), (own_out, own_grads) = run(True), run(False)
    return matches_with_message(
        f"RWKV WKV kernel, B={batch}, L={length}, C={WIDTH} (gradients of time_decay, time_first, k, v)",
        kernel_out, own_out, kernel_grads, own_grads)


def main(argv: list[str] | None = None) -> int:
    parser = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    parser.add_argument("--seq-icl", type=Path, required=True, help="a checkout of github.com/berlino/seq_icl")
    parser.add_argument("--batch", type=int, default=4)
    parser.add_argument("--length", type=int, default=40)
    args = parser.parse_args(argv)
    try:
        complex_scan = load_kernel(args.seq_icl, "complex_rnn.py", "complex_scan")
    except (ImportError, OSError) as error:
        print(f"seqicl_kernel_check: cannot load seq_icl's LRU kernel: {error}", file=sys.stderr)
        return 2
    matches = check_lru(complex_scan, args.batch, args.length)
    others = [("GILR", "real_rnn_tie_input_gate.py", "real_scan_tie_input_gate_fused", check_gilr),
              ("RWKV", "rwkv_log.py", "wkv_triton_log_space", check_rwkv)]
    for name, file_name, function, check in others:
        try:
            kernel = load_kernel(args.seq_icl, file_name, function)
        except OSError as error:
            print(f"{name}: not checked ({error})")
        else:
            matches = check(kernel, args.batch, args.length) and matches
    return 0 if matches else 1


if __name__ == "__main__":
    sys.exit(main())
