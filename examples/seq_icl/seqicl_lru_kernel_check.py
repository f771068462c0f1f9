"""Run seq_icl's own Triton LRU scan (on CPU, in Triton's interpreter) and compare its gradients
with ponderlab's seq_icl LRU mixer, exact and with `scan_gradient: seq_icl_kernel`.

seq_icl's `LRULayer` concatenates the scan's real and imaginary outputs. Autograd then hands the
kernel's backward the two halves of one (B, L, 2N) gradient as strided views, and the kernel reads
them as contiguous (B, L, N) arrays. This script measures what that does:

1. the kernel with its two outputs used apart (contiguous gradients) against the exact gradient;
2. the kernel inside the layer (outputs concatenated) against the exact gradient and against the
   `seq_icl_kernel` emulation.

It needs `triton` (CPU interpreter, no GPU) and a checkout of seq_icl (github.com/berlino/seq_icl,
commit ec42595 or later); it imports the kernel from there and copies nothing:

    pip install triton
    python examples/seq_icl/seqicl_lru_kernel_check.py --seq-icl /path/to/seq_icl

Exit status 0 when the emulation matches the kernel, 1 when not, 2 when the kernel cannot be loaded.
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

from ponderlab.plugins.backbones.linear_recurrence import linear_scan_reference
from ponderlab.plugins.backbones.lru import SeqIclLRUMixer

KERNEL = Path("src/models/sequence/rnn/scan_triton/complex_rnn.py")
WIDTH = 32  # the kernel's block size; seq_icl's associative-recall width


def load_kernel(checkout: Path):
    """seq_icl's `complex_scan(v_re, v_im, f_re, f_im) -> (h_re, h_im)`, run by Triton's interpreter."""
    os.environ["TRITON_INTERPRET"] = "1"  # before triton is imported
    path = checkout / KERNEL
    if not path.is_file():
        raise FileNotFoundError(f"no {KERNEL} under {checkout}: is it a seq_icl checkout?")
    spec = importlib.util.spec_from_file_location("seqicl_complex_rnn", path)
    module = importlib.util.module_from_spec(spec)
    spec.loader.exec_module(module)
    return module.complex_scan


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


def gradients(mixer: SeqIclLRUMixer, loss: torch.Tensor) -> dict[str, torch.Tensor]:
    names = [name for name, _ in mixer.named_parameters()]
    return dict(zip(names, torch.autograd.grad(loss, list(mixer.parameters())), strict=True))


def largest_difference(first: dict, second: dict) -> tuple[float, float]:
    """Largest |difference| over every parameter's gradient, and the largest |gradient| of `second`."""
    gap = max(float((first[k] - second[k]).abs().max()) for k in first)
    return gap, max(float(second[k].abs().max()) for k in second)


def separate_outputs_gap(complex_scan, batch: int, length: int) -> float:
    """The kernel's input gradients against the step loop's when its outputs are used apart."""
    generator = torch.Generator().manual_seed(1)
    leaves = [torch.randn(batch, length, WIDTH, generator=generator) for _ in range(2)]
    leaves += [0.95 * torch.rand(batch, length, WIDTH, generator=generator) for _ in range(2)]
    weights = [torch.randn(batch, length, WIDTH, generator=generator) for _ in range(2)]

    def grads(scan) -> list[torch.Tensor]:
        inputs = [leaf.clone().requires_grad_() for leaf in leaves]
        h_real, h_imag = scan(*[leaf * 1.0 for leaf in inputs])
        ((h_real * weights[0]).sum() + (h_imag * weights[1]).sum()).backward()
        return [leaf.grad for leaf in inputs]

    def loop(v_real, v_imag, f_real, f_imag):
        states = linear_scan_reference(torch.complex(f_real, f_imag), torch.complex(v_real, v_imag))
        return states.real, states.imag

    return max(float((a - b).abs().max()) for a, b in zip(grads(complex_scan), grads(loop), strict=True))


def main(argv: list[str] | None = None) -> int:
    parser = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    parser.add_argument("--seq-icl", type=Path, required=True, help="a checkout of github.com/berlino/seq_icl")
    parser.add_argument("--batch", type=int, default=4)
    parser.add_argument("--length", type=int, default=40)
    args = parser.parse_args(argv)
    try:
        complex_scan = load_kernel(args.seq_icl)
    except (ImportError, OSError) as error:
        print(f"seqicl_lru_kernel_check: cannot load seq_icl's kernel: {error}", file=sys.stderr)
        return 2

    print(f"kernel, outputs used apart: largest gradient difference from the step loop "
          f"{separate_outputs_gap(complex_scan, args.batch, args.length):.2e}")
    torch.manual_seed(0)
    mixer = SeqIclLRUMixer(WIDTH, 0.9, 0.999, 2 * math.pi, dropout=0.0)
    x = torch.randn(args.batch, args.length, WIDTH)
    weight = torch.randn(args.batch, args.length, WIDTH)
    kernel = gradients(mixer, (kernel_mixer_output(mixer, x, complex_scan) * weight).sum())
    exact = gradients(mixer, (mixer(x) * weight).sum())
    mixer.kernel_gradient = True
    emulated = gradients(mixer, (mixer(x) * weight).sum())
    from_exact, scale = largest_difference(kernel, exact)
    from_emulation, _ = largest_difference(kernel, emulated)
    print(f"kernel inside seq_icl's LRULayer (outputs concatenated), B={args.batch}, L={args.length}, N={WIDTH}:")
    print(f"  largest gradient difference from the exact gradient        {from_exact:.2e} "
          f"(largest exact gradient {scale:.2e})")
    print(f"  largest gradient difference from scan_gradient: seq_icl_kernel {from_emulation:.2e}")
    for name in exact:
        cosine = F.cosine_similarity(kernel[name].flatten(), exact[name].flatten(), dim=0)
        print(f"  {name:>16}: cosine similarity of the kernel's gradient with the exact one {float(cosine):+.3f}")
    return 0 if from_emulation <= 1e-4 * scale else 1


if __name__ == "__main__":
    sys.exit(main())
