"""Mamba forward+backward: our fast PyTorch scan vs transformers' sequential fallback, one run.

Both paths run the SAME four transformers `MambaBlock`s (hidden 128, state 16,
batch 32 x 64 tokens by default): the fallback is `MambaBlock.forward` (its
`MambaMixer` loops over time in eager PyTorch when the CUDA kernels are absent);
ours is `mixer_forward(block.mixer, ..., scan="torch")` on the same weights. When
the `mambapy` package is importable its parallel scan (`use_mambapy=True`) is
timed too. Prints per-step times (min and median of --reps after one warm-up),
speed-up ratios and the largest output difference between the paths.

    python benchmarks/mamba_scan.py [--reps 3] [--threads 1] [--device cpu]
"""

from __future__ import annotations

import argparse
import importlib.util
import statistics
import time

import torch
from transformers import MambaConfig
from transformers.models.mamba.modeling_mamba import MambaBlock

from ponderlab.plugins.backbones.mamba import mixer_forward


def build_blocks(config: MambaConfig, device: torch.device) -> torch.nn.ModuleList:
    torch.manual_seed(0)
    blocks = torch.nn.ModuleList(MambaBlock(config, layer_idx=i) for i in range(config.num_hidden_layers))
    for block in blocks:
        block.mixer.init_mamba_weights()
    return blocks.to(device).train()


def fallback_stack(blocks, hidden):
    for block in blocks:
        hidden = block(hidden)
    return hidden


def ours_stack(blocks, hidden):
    for block in blocks:
        hidden = hidden + mixer_forward(block.mixer, block.norm(hidden), scan="torch")
    return hidden


def time_step(stack, blocks, hidden, reps: int) -> tuple[float, float, torch.Tensor]:
    """Seconds per forward+backward step: (min, median) over reps after one warm-up."""
    times = []
    output = None
    for rep in range(reps + 1):
        blocks.zero_grad(set_to_none=True)
        if hidden.is_cuda:
            torch.cuda.synchronize()
        start = time.perf_counter()
        output = stack(blocks, hidden)
        output.pow(2).mean().backward()
        if hidden.is_cuda:
            torch.cuda.synchronize()
        if rep:
            times.append(time.perf_counter() - start)
    return min(times), statistics.median(times), output.detach()


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--hidden", type=int, default=128)
    parser.add_argument("--layers", type=int, default=4)
    parser.add_argument("--state", type=int, default=16)
    parser.add_argument("--batch", type=int, default=32)
    parser.add_argument("--length", type=int, default=64)
    parser.add_argument("--reps", type=int, default=3)
    parser.add_argument("--threads", type=int, default=1)
    parser.add_argument("--device", default="cpu")
    args = parser.parse_args()
    torch.set_num_threads(args.threads)
    device = torch.device(args.device)

    config = MambaConfig(
        hidden_size=args.hidden, state_size=args.state, num_hidden_layers=args.layers, expand=2, conv_kernel=4
    )
    blocks = build_blocks(config, device)
    hidden = torch.randn(args.batch, args.length, args.hidden, device=device) * 0.5
    print(
        f"Mamba stack: hidden {args.hidden}, {args.layers} layers, state {args.state}, "
        f"batch {args.batch} x {args.length} tokens, {device}, {args.threads} thread(s), "
        f"torch {torch.__version__}"
    )

    results = {}
    ours_min, ours_med, ours_out = time_step(ours_stack, blocks, hidden, args.reps)
    results["ours (fast torch scan)"] = (ours_min, ours_med)
    fb_min, fb_med, fb_out = time_step(fallback_stack, blocks, hidden, args.reps)
    results["transformers sequential fallback"] = (fb_min, fb_med)
    mambapy_min = None
    if importlib.util.find_spec("mambapy") is not None:
        config_py = MambaConfig(**{**config.to_dict(), "use_mambapy": True})
        blocks_py = build_blocks(config_py, device)
        blocks_py.load_state_dict(blocks.state_dict())
        mambapy_min, mp_med, _ = time_step(fallback_stack, blocks_py, hidden, args.reps)
        results["transformers + mambapy parallel scan"] = (mambapy_min, mp_med)

    for name, (best, median) in results.items():
        print(f"  {name:40s} min {best:8.3f} s   median {median:8.3f} s")
    print(f"  speed-up vs sequential fallback: {fb_min / ours_min:6.1f}x (min)  {fb_med / ours_med:6.1f}x (median)")
    if mambapy_min is not None:
        print(f"  speed-up vs mambapy:             {mambapy_min / ours_min:6.1f}x (min)")
    else:
        print("  mambapy not importable: its parallel scan was not timed")
    print(f"  max |output difference| ours vs fallback: {(ours_out - fb_out).abs().max().item():.2e}")


if __name__ == "__main__":
    main()
