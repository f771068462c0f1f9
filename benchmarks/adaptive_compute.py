"""Adaptive computation, measured: the methods since 2022 (and, with --all, every registered
halting strategy) against fixed depth on the same GPT-NeoX backbone, in one run.

Per method: inference time of one forward pass (no autograd), layer applications per
token (`stats.layers`: the compute actually spent), speedup = time(fixed) / time(method),
ideal = layers(fixed) / layers(method) and efficiency = speedup / ideal. Fixed depth is
`none` in depth scope (every layer once). Model-scope methods (mixture_of_recursions,
recurrent_depth) iterate a core of n_layers / cap layers, so their cap equals fixed
depth's layers. Rows marked "masked" run the routed blocks densely with masked attention
(`routed_execution = "masked"`), the computation the routed path replaces.

`layerskip self-speculative` is a decoding workload: greedy generation of `--decode-new`
tokens after `--decode-prompt` tokens, for `--decode-rows` sequences one at a time,
against the full model's greedy decoding (its "fixed" time). ponderlab has no KV cache:
every forward recomputes the prefix, so a forward costs about (prefix x layers run) and
the layers column counts sequential layer passes per generated token (a draft step E, a
verification N; greedy decoding N), see plugins/halting/layerskip_decoding.py.

The models are untrained: settings (printed) make tokens exit or route at different
depths; routers and halting units get fixed random noise (`--perturb`) so decisions
depend on content. The numbers measure what each implementation saves per layer
skipped, not which method learns to halt well (examples/adaptive_study/). Timing
alternates the fixed model and the method (`--repeats` each, medians of the per-pair
ratios, see benchmarks/halting.py); on the CPU one thread, thread CPU time.

    nice -n 5 python benchmarks/adaptive_compute.py
    nice -n 5 python benchmarks/adaptive_compute.py --train --only "fixed depth" mixture_of_depths ...
    python benchmarks/adaptive_compute.py --device cuda --d-model 512 --length 512
"""

from __future__ import annotations

import argparse
import math
import platform

import torch
from timing import benchmark_device, registry_model, sync, time_pair  # benchmarks/

from ponderlab.core.registry import get_registry
from ponderlab.plugins.halting.layerskip_decoding import greedy_decode, self_speculative_decode

#: method -> (strategy, scope, options, perturb, routed_execution) at n_layers L
METHODS = {
    "calm": lambda L: ("calm", "depth", {"confidence": "softmax", "threshold": 0.004}, False, None),
    "layerskip fixed exit": lambda L: ("layerskip", "depth", {"exit_layer": L // 2}, False, None),
    "mixture_of_depths": lambda L: ("mixture_of_depths", "depth", {}, True, None),
    "mixture_of_depths masked": lambda L: ("mixture_of_depths", "depth", {}, True, "masked"),
    "mixture_of_recursions": lambda L: ("mixture_of_recursions", "model", {"recursions": 4}, True, None),
    "mixture_of_recursions masked": lambda L: (
        "mixture_of_recursions", "model", {"recursions": 4}, True, "masked"),
    "mixture_of_recursions kv_sharing": lambda L: (
        "mixture_of_recursions", "model", {"recursions": 4, "kv_sharing": True}, True, None),
    "recurrent_depth": lambda L: ("recurrent_depth", "model", {"max_hops": 4, "exit_threshold": 0.3}, True, None),
}

#: --all: the other registered strategies, strategy -> (scope, options, perturb)
OTHERS = {
    "none": lambda L: ("depth", {}, False),
    "constant": lambda L: ("depth", {"hops": L // 2}, False),
    "random": lambda L: ("depth", {"mean_hops": L / 2, "distribution": "geometric"}, False),
    "graves": lambda L: ("depth", {"halting_bias_init": math.log(1 / (L / 2 - 1)), "epsilon": 0.01}, True),
    "threshold": lambda L: ("depth", {"halting_bias_init": math.log(1 / (L / 2 - 1)), "threshold": 0.99}, True),
    "ut": lambda L: ("model", {"max_hops": 2, "halting_bias_init": 0.0, "epsilon": 0.4}, True),
    "pondernet": lambda L: ("depth", {"inference": "most_likely", "lambda_p": 2 / L}, True),
}


def cap_of(options: dict) -> int:
    """How many times a model-scope method may apply its core (1 in depth scope)."""
    return options.get("max_hops", options.get("recursions", 1))


def build(strategy: str, scope: str | None, options: dict, perturb: bool, args, device) -> torch.nn.Module:
    """The model of `strategy` on a backbone whose core times the cap is `args.layers` layers."""
    halting = {"name": strategy, **options}
    if scope is not None:
        halting["scope"] = scope
    core_layers = args.layers // cap_of(options) if scope == "model" else args.layers
    backbone = {"name": "transformer", "d_model": args.d_model, "n_layers": core_layers,
                "n_heads": args.heads, "ffn_size": args.ffn or 4 * args.d_model}
    model = registry_model(backbone, halting, args.vocab, device).eval()
    if perturb:
        generator = torch.Generator().manual_seed(1)
        with torch.no_grad():
            for parameter in model.sites.parameters():
                noise = torch.randn(parameter.shape, generator=generator).to(device)
                parameter.add_(args.perturb * noise)
    return model


def shown(scope: str, options: dict) -> str:
    text = ", ".join(f"{k}={v:.3g}" if isinstance(v, float) else f"{k}={v}" for k, v in options.items())
    return f"{scope}: {text or 'defaults'}"


def row(name: str, timing: dict, layers: float, ideal: float, settings: str) -> str:
    speedup = 1.0 / timing["ratio"]
    return (f"{name:<34}{1e3 * timing['first']:>10.1f}{1e3 * timing['second']:>10.1f}"
            f"{layers:>11.2f}{speedup:>9.2f}{ideal:>7.2f}{speedup / ideal:>7.2f}  {settings}")


def forward_case(model, fixed, fixed_layers: float, ids, args, device) -> tuple[dict, float, float]:
    """Timing of one forward of `model` against `fixed` (with `--train`: a training step,
    forward and backward), its layers per token and the ideal."""
    if args.train:
        model.train()
        fixed.train()
        torch.manual_seed(0)
    with torch.no_grad():
        layers = float(model(ids).stats.layers.float().mean())

    def forward(net):
        def run():
            if args.train:
                net.zero_grad(set_to_none=True)
                net(ids, labels=ids).loss.backward()
                return
            with torch.no_grad():
                net(ids)
        return run

    sync(device)
    timing = time_pair(forward(fixed), forward(model), repeats=args.repeats, warmup=args.warmup, device=device)
    return timing, layers, fixed_layers / layers


def decoding_case(args, device) -> str:
    """layerskip self-speculative decoding against the full model's greedy decoding."""
    exit_layer, drafts = args.layers // 2, args.draft_tokens
    model = build("layerskip", "depth", {}, False, args, device)
    prompt = torch.randint(0, args.vocab, (args.decode_rows, args.decode_prompt),
                           generator=torch.Generator().manual_seed(2)).to(device)
    greedy, _ = greedy_decode(model, prompt, args.decode_new)
    tokens, stats = self_speculative_decode(model, prompt, args.decode_new, exit_layer=exit_layer, draft_tokens=drafts)
    assert torch.equal(tokens, greedy), "self-speculative output differs from greedy decoding"
    timing = time_pair(lambda: greedy_decode(model, prompt, args.decode_new),
                       lambda: self_speculative_decode(model, prompt, args.decode_new, exit_layer=exit_layer,
                                                       draft_tokens=drafts),
                       repeats=args.repeats, warmup=1, device=device)
    layers = stats.layer_passes_per_token
    settings = (f"E={exit_layer}, d={drafts}, acceptance {stats.acceptance_rate:.2f}, token layers/token "
                f"{stats.token_layers_per_token:.1f}; {args.decode_rows} x ({args.decode_prompt} + "
                f"{args.decode_new}) tokens, ms per sequence")
    timing = {**timing, "first": timing["first"] / args.decode_rows, "second": timing["second"] / args.decode_rows}
    return row("layerskip self-speculative", timing, layers, args.layers / layers, settings)


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.split("\n")[0])
    parser.add_argument("--device", default="cpu")
    parser.add_argument("--d-model", type=int, default=256)
    parser.add_argument("--heads", type=int, default=4)
    parser.add_argument("--ffn", type=int, default=None, help="MLP width (default 4 x d_model).")
    parser.add_argument("--layers", type=int, default=8)
    parser.add_argument("--batch", type=int, default=8)
    parser.add_argument("--length", type=int, default=256)
    parser.add_argument("--vocab", type=int, default=256)
    parser.add_argument("--repeats", type=int, default=3)
    parser.add_argument("--warmup", type=int, default=1)
    parser.add_argument("--perturb", type=float, default=0.5, help="Std of the routers' / halting units' noise.")
    parser.add_argument("--draft-tokens", type=int, default=2, help="d of self-speculative decoding.")
    parser.add_argument("--decode-rows", type=int, default=2)
    parser.add_argument("--decode-prompt", type=int, default=64)
    parser.add_argument("--decode-new", type=int, default=16)
    parser.add_argument("--only", nargs="*", default=None, help="Run only these methods (names as printed).")
    parser.add_argument("--all", action="store_true", help="Also every other registered halting strategy.")
    parser.add_argument("--train", action="store_true",
                        help="Time a training step (forward + backward) instead of inference; no decoding row.")
    args = parser.parse_args()
    device = benchmark_device(args.device)
    name = torch.cuda.get_device_name(device) if device.type == "cuda" else platform.processor() or "cpu"
    print(f"device {device} ({name}), torch {torch.__version__}, d_model {args.d_model}, ffn "
          f"{args.ffn or 4 * args.d_model}, {args.layers} layers, {args.heads} heads, batch {args.batch} x "
          f"length {args.length}, vocab {args.vocab}, repeats {args.repeats}"
          + (", training step (forward + backward)" if args.train else ", inference forward"))
    torch.manual_seed(0)
    ids = torch.randint(0, args.vocab, (args.batch, args.length), device=device)
    fixed = build("none", "depth", {}, False, args, device)
    with torch.no_grad():
        fixed_layers = float(fixed(ids).stats.layers.float().mean())

    header = (f"{'method':<34}{'ms fixed':>10}{'ms method':>10}{'layers/tok':>11}{'speedup':>9}"
              f"{'ideal':>7}{'eff.':>7}  settings")
    print(header)
    print("-" * len(header))
    cases = {"fixed depth": lambda L: ("none", "depth", {}, False, None), **METHODS}
    if args.all:
        registered = sorted(info.name for info in get_registry().all() if info.kind == "halting")
        covered = {case(args.layers)[0] for case in cases.values()}
        cases.update({f"{strategy}": (lambda L, s=strategy: (s, *OTHERS.get(s, lambda L: (None, {}, True))(L), None))
                      for strategy in registered if strategy not in covered})
    for method, case in cases.items():
        if args.only is not None and method not in args.only:
            continue
        strategy, scope, options, perturb, execution = case(args.layers)
        try:
            model = build(strategy, scope, options, perturb, args, device)
            if execution is not None:
                for block in model.backbone.blocks:
                    block.routed_execution = execution
            timing, layers, ideal = forward_case(model, fixed, fixed_layers, ids, args, device)
        except Exception as exc:  # a plugin that cannot run here is reported, not fatal
            print(f"{method:<34} could not run: {type(exc).__name__}: {exc}"[:160])
            continue
        print(row(method, timing, layers, ideal, shown(model.scope, options)), flush=True)
        if method == "layerskip fixed exit" and not args.train and (args.only is None or "layerskip self-speculative" in args.only):
            print(decoding_case(args, device), flush=True)
    if not args.train and args.only is not None and "layerskip self-speculative" in args.only and "layerskip fixed exit" not in args.only:
        print(decoding_case(args, device), flush=True)


if __name__ == "__main__":
    main()
