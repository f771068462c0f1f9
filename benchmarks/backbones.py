"""Training throughput (tokens/s) and peak memory per backbone at seed 000's sizes.

Hidden 128, 1 and 4 layers, batch 32 x 82 tokens (binary copy, n = 40), AdamW
steps on random tokens; each backbone with fixed depth (`none`) and with ACT
around every layer (`graves`, max 4 hops, threshold 0.9 as in seed 000). Memory
backbones use 2 segments of 41 tokens, 16 memory tokens (ARMT d_mem 32); Mamba
uses state 32; the Universal Transformer is one shared layer (its depth comes
from the hops), so it runs in the 1-layer rows only.

Every configuration runs in a fresh process. CPU memory is the peak resident set
size of that process above its size after building the model (so the weights,
activations, gradients and optimizer state of training); on CUDA it is
`torch.cuda.max_memory_allocated` (bf16 autocast, as the trainer does).

    python benchmarks/backbones.py [--device cpu|cuda] [--steps 3] [--backbones lstm,mamba]
"""

from __future__ import annotations

import argparse
import multiprocessing as mp
import resource
import time

DEFAULT_BACKBONES = ("lstm", "transformer", "universal_transformer", "mamba", "rmt", "armt")
BATCH, LENGTH, SEGMENT = 32, 82, 41
HALTINGS = {
    "none": {"name": "none"},
    "graves": {"name": "graves", "max_hops": 4, "epsilon": 0.1, "scope": "layer"},
}


def backbone_spec(name: str, n_layers: int) -> dict:
    spec = {"name": name, "d_model": 128, "n_layers": n_layers}
    if name in ("rmt", "armt"):
        spec.update(segment_size=SEGMENT, memory_size=16)
    if name == "armt":
        spec["d_mem"] = 32
    if name == "mamba":
        spec["d_state"] = 32
    return spec


def _rss_mb() -> float:
    with open("/proc/self/statm") as handle:
        pages = int(handle.read().split()[1])
    return pages * resource.getpagesize() / 2**20


def measure(args: tuple) -> dict:
    """Child process: build, warm up one step, time `steps` steps."""
    backbone, n_layers, halting, device_name, steps, threads = args
    import torch

    import ponderlab

    torch.set_num_threads(threads)
    device = torch.device(device_name)
    model = ponderlab.build_model(
        backbone=backbone_spec(backbone, n_layers), halting=HALTINGS[halting], vocab_size=128, seed=0
    ).to(device)
    model.train()
    optimizer = torch.optim.AdamW(model.parameters(), lr=3e-4, weight_decay=0.01)
    generator = torch.Generator().manual_seed(0)
    inputs = torch.randint(0, 2, (BATCH, LENGTH), generator=generator).to(device)
    labels = torch.full_like(inputs, -100)
    labels[:, LENGTH // 2 :] = inputs[:, LENGTH // 2 :]
    autocast = torch.autocast("cuda", dtype=torch.bfloat16) if device.type == "cuda" else None
    base_rss = _rss_mb()

    def step():
        if autocast is None:
            out = model(inputs, labels=labels)
        else:
            with autocast:
                out = model(inputs, labels=labels)
        optimizer.zero_grad(set_to_none=True)
        out.loss.backward()
        optimizer.step()
        return out

    step()  # warm-up
    if device.type == "cuda":
        torch.cuda.synchronize()
        torch.cuda.reset_peak_memory_stats()
    hops = 0.0
    start = time.perf_counter()
    for _ in range(steps):
        hops = float(step().stats.hops.mean())
    if device.type == "cuda":
        torch.cuda.synchronize()
    elapsed = time.perf_counter() - start
    if device.type == "cuda":
        memory = torch.cuda.max_memory_allocated() / 2**20
    else:
        memory = resource.getrusage(resource.RUSAGE_SELF).ru_maxrss / 1024 - base_rss
    return {
        "backbone": backbone,
        "layers": n_layers,
        "halting": halting,
        "tokens_per_s": BATCH * LENGTH * steps / elapsed,
        "step_s": elapsed / steps,
        "memory_mb": memory,
        "hops": hops,
        "params": sum(p.numel() for p in model.parameters()),
    }


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--device", default=None, help="cpu or cuda (default: cuda when available)")
    parser.add_argument("--steps", type=int, default=3)
    parser.add_argument("--threads", type=int, default=1)
    parser.add_argument("--backbones", default=",".join(DEFAULT_BACKBONES))
    parser.add_argument("--layers", default="1,4")
    args = parser.parse_args()
    import torch

    device = args.device or ("cuda" if torch.cuda.is_available() else "cpu")
    jobs = []
    for backbone in args.backbones.split(","):
        for n_layers in (int(n) for n in args.layers.split(",")):
            if backbone == "universal_transformer" and n_layers != 1:
                continue
            for halting in HALTINGS:
                jobs.append((backbone, n_layers, halting, device, args.steps, args.threads))
    context = mp.get_context("spawn")
    memory_label = "peak CUDA MB" if device == "cuda" else "peak RSS above model, MB"
    print(f"device {device}, {args.threads} thread(s), batch {BATCH} x {LENGTH} tokens, {args.steps} timed steps")
    print(f"| backbone | layers | halting | mean hops | params | step s | tokens/s | {memory_label} |")
    print("|---|---|---|---|---|---|---|---|")
    for job in jobs:
        with context.Pool(1) as pool:
            row = pool.apply(measure, (job,))
        print(
            f"| {row['backbone']} | {row['layers']} | {row['halting']} | {row['hops']:.2f} | "
            f"{row['params'] / 1e3:.0f}k | {row['step_s']:.3f} | {row['tokens_per_s']:,.0f} | "
            f"{row['memory_mb']:,.0f} |",
            flush=True,
        )


if __name__ == "__main__":
    main()
