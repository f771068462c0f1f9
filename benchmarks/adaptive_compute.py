"""Adaptive computation, measured: every registered halting strategy against fixed depth.

For each strategy: inference time of one forward pass (no autograd), layer applications
per token (`stats.layers`, the compute actually spent), speedup = time(fixed) / time(method),
ideal = layers(fixed) / layers(method), and efficiency = speedup / ideal. Fixed depth is
`none` in depth scope (every layer once) on the same backbone and sizes (recurrent_depth:
a core of n_layers / iterations layers, so its cap equals fixed depth's layers).
The models are untrained: halting settings (below) are chosen so that tokens exit at
different layers; halting units are perturbed with a fixed seed so exits depend on
content. The numbers measure what each implementation saves per layer skipped, not
which method learns to halt well (that is examples/adaptive_study/).

Timing alternates the fixed model and the method (`--repeats` each, medians of the
per-pair ratios, see benchmarks/halting.py); one CPU thread, thread CPU time.

    python benchmarks/adaptive_compute.py
    python benchmarks/adaptive_compute.py --device cuda --d-model 512 --length 512
"""

from __future__ import annotations

import argparse
import math
import platform

import torch
from halting import registry_model, single_thread_cpu, sync, time_pair, use_clock  # benchmarks/

from ponderlab.core.registry import get_registry

#: strategy -> (scope, options, perturb halting units) at n_layers L
SETTINGS = {
    "none": lambda L: ("depth", {}, False),
    "constant": lambda L: ("depth", {"steps": L // 2}, False),
    "random": lambda L: ("depth", {"mean_hops": L / 2, "distribution": "geometric"}, False),
    "graves": lambda L: ("depth", {"halting_bias_init": math.log(1 / (L / 2 - 1)), "epsilon": 0.01}, True),
    "threshold": lambda L: ("depth", {"halting_bias_init": math.log(1 / (L / 2 - 1)), "threshold": 0.99}, True),
    "ut": lambda L: ("model", {"max_steps": 2, "halting_bias_init": 0.0, "epsilon": 0.4}, True),
    "pondernet": lambda L: ("depth", {"inference": "most_likely", "lambda_p": 2 / L}, True),
    "calm": lambda L: ("depth", {"confidence": "softmax", "threshold": 0.05}, True),
    "layerskip": lambda L: ("depth", {"exit_layer": L // 2}, False),
    "recurrent_depth": lambda L: ("model", {"max_steps": 4, "exit_threshold": 1e-2}, True),
}


def build(name: str, layers: int, args, device) -> tuple[torch.nn.Module, str]:
    """The model of strategy `name` and the settings used (registry defaults when unknown)."""
    scope, options, perturb = SETTINGS.get(name, lambda L: (None, {}, True))(layers)
    halting = {"name": name, **options}
    if scope is not None:
        halting["scope"] = scope
    core_layers = layers // options.get("max_steps", 1) if name == "recurrent_depth" else layers
    backbone = {"name": "transformer", "d_model": args.d_model, "n_layers": core_layers,
                "n_heads": args.heads}
    model = registry_model(backbone, halting, args.vocab, device).eval()
    if perturb:
        generator = torch.Generator().manual_seed(1)
        with torch.no_grad():
            for parameter in model.sites.parameters():
                noise = torch.randn(parameter.shape, generator=generator).to(device)
                parameter.add_(args.perturb * noise)
    shown = ", ".join(f"{k}={v:.3g}" if isinstance(v, float) else f"{k}={v}" for k, v in options.items())
    return model, f"{model.scope}: {shown or 'defaults'}"


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.split("\n")[0])
    parser.add_argument("--device", default="cpu")
    parser.add_argument("--d-model", type=int, default=64)
    parser.add_argument("--heads", type=int, default=4)
    parser.add_argument("--layers", type=int, default=8)
    parser.add_argument("--batch", type=int, default=8)
    parser.add_argument("--length", type=int, default=64)
    parser.add_argument("--vocab", type=int, default=32)
    parser.add_argument("--repeats", type=int, default=9)
    parser.add_argument("--warmup", type=int, default=2)
    parser.add_argument("--perturb", type=float, default=0.5, help="Std of the halting units' noise.")
    args = parser.parse_args()
    if args.device == "cpu":
        device = single_thread_cpu()
    else:
        device = torch.device(args.device)
        use_clock(device, torch.get_num_threads())
    name = torch.cuda.get_device_name(device) if device.type == "cuda" else platform.processor() or "cpu"
    print(f"device {device} ({name}), torch {torch.__version__}, d_model {args.d_model}, "
          f"{args.layers} layers, batch {args.batch} x length {args.length}, repeats {args.repeats}")
    torch.manual_seed(0)
    ids = torch.randint(0, args.vocab, (args.batch, args.length), device=device)
    fixed, _ = build("none", args.layers, args, device)
    fixed_layers = float(fixed(ids).stats.layers.float().mean())

    def forward(model):
        def run():
            with torch.no_grad():
                model(ids)
        return run

    header = f"{'strategy':<20}{'ms fixed':>9}{'ms method':>10}{'layers/tok':>11}{'speedup':>9}{'ideal':>7}{'eff.':>7}  settings"
    print(header)
    print("-" * len(header))
    for strategy in sorted(info.name for info in get_registry().all() if info.kind == "halting"):
        try:
            model, settings = build(strategy, args.layers, args, device)
            with torch.no_grad():
                torch.manual_seed(0)
                layers = float(model(ids).stats.layers.float().mean())
            sync(device)
            timing = time_pair(forward(fixed), forward(model), repeats=args.repeats,
                               warmup=args.warmup, device=device)
        except Exception as exc:  # a plugin that cannot run here is reported, not fatal
            print(f"{strategy:<20} could not run: {type(exc).__name__}: {exc}"[:160])
            continue
        speedup, ideal = 1.0 / timing["ratio"], fixed_layers / layers
        print(f"{strategy:<20}{1e3 * timing['first']:>9.2f}{1e3 * timing['second']:>10.2f}"
              f"{layers:>11.2f}{speedup:>9.2f}{ideal:>7.2f}{speedup / ideal:>7.2f}  {settings}")


if __name__ == "__main__":
    main()
