"""Halting benchmark: ACT bookkeeping overhead and real early-exit speedup, side by side.

(a) overhead = time(graves forced to K hops) / time(constant K hops), same backbone,
    same K, layer scope; graves is forced to the cap by a very negative halting
    bias, so both run exactly the same blocks and the ratio isolates the halting
    unit, the weight bookkeeping and the weighted sum. Target <= 1.05.
(b) early exit, inference: threshold ACT across depth vs fixed depth (`none`,
    depth scope) on a position-wise-dominated backbone (GPT-like projections and MLP,
    a causal shift for token mixing) whose blocks compute only running tokens
    (`forward_rows`: inference keeps them packed across layers, see
    core/early_exit/). The halting units are set so that
    half of the tokens (even ids) exit after the first layer and the rest run all
    layers. efficiency = measured speedup / ideal speedup, where ideal =
    n_layers / mean layers executed. Target >= 0.9.

Timings alternate the two models of a pair (`--repeats` runs each); times are
medians, ratios are medians of the per-pair ratios (two runs made back to back,
so slow drifts of a shared machine cancel), printed with a distribution-free 95%
confidence interval for that median. A verdict is taken on the median and says when
the interval reaches both sides of the target. Single-threaded CPU runs are timed
with the thread's CPU time, GPU runs with wall time around synchronisation.

    python benchmarks/halting.py            # CPU, one thread
    python benchmarks/halting.py --device cuda --scale 64
    python benchmarks/halting.py --device cuda --scale 64 --hop-policy exact  # a host sync per hop
"""

from __future__ import annotations

import argparse
import platform
import subprocess
import sys
from pathlib import Path
from typing import Literal

import torch
from torch import nn

from ponderlab.core.config import BackboneConfig
from ponderlab.core.early_exit import hop_policy
from ponderlab.core.interfaces import Backbone, Block, BlockContext
from ponderlab.core.model import PonderModel
from ponderlab.core.registry import get_registry
from ponderlab.plugins.backbones.mamba import MambaBackbone
from ponderlab.plugins.backbones.mixer_stack import MixerBackbone

sys.path.insert(0, str(Path(__file__).resolve().parent))
from timing import (  # noqa: E402  (benchmarks/)
    CLOCK,
    inference_pass,
    registry_model,
    steady_allocator,
    time_pair,
    train_pass,
    use_clock,
    verdict,
)

# --------------------------------------------------------------------------- (a) overhead


def overhead_case(backbone: dict, hops: int, batch: int, length: int, args, device) -> dict:
    vocab = 32
    constant = registry_model(backbone, {"name": "constant", "hops": hops}, vocab, device)
    graves = registry_model(
        backbone, {"name": "graves", "max_hops": hops, "halting_bias_init": -30.0, "time_penalty": 0.01},
        vocab, device,
    )
    graves.backbone.load_state_dict(constant.backbone.state_dict())
    ids = torch.randint(0, vocab, (batch, length), device=device)
    labels = torch.randint(0, vocab, (batch, length), device=device)
    assert bool((graves.eval()(ids).stats.hops == hops).all()), "graves was not forced to the cap"

    modes = [("inference", lambda model: inference_pass(model, ids)),
             ("train step", lambda model: train_pass(model, ids, labels))]
    rows = []
    for mode, make in modes:
        for model in (constant, graves):
            model.train(mode.startswith("train"))
        timed = time_pair(make(constant), make(graves), repeats=args.repeats,
                          warmup=args.warmup, device=device)
        rows.append({"backbone": backbone["name"], "mode": mode, "hops": hops,
                     "constant_ms": 1e3 * timed["first"], "graves_ms": 1e3 * timed["second"],
                     "ratio": timed["ratio"], "ci": timed["ratio_ci"]})
    return rows


# --------------------------------------------------------------------------- (b) early exit


class MLPStackConfig(BackboneConfig):
    name: Literal["bench_mlp_stack"] = "bench_mlp_stack"
    ffn_mult: int = 4


class ShiftMLPBlock(Block):
    """A transformer-like layer whose token mixing is a cheap causal shift.

    Position-wise work as in a GPT layer (about 12 D^2 weights per token): a gated
    "attention" unit with q/k/v and output projections, then a 4D MLP. The causal
    mix adds the previous token's state. `forward_rows` computes the running tokens only.
    """

    def __init__(self, d_model: int, ffn: int):
        super().__init__()
        self.mix = nn.Parameter(torch.full((d_model,), 0.1))
        self.norm1 = nn.LayerNorm(d_model)
        self.qkv = nn.Linear(d_model, 3 * d_model)
        self.proj = nn.Linear(d_model, d_model)
        self.norm2 = nn.LayerNorm(d_model)
        self.mlp = nn.Sequential(nn.Linear(d_model, ffn), nn.GELU(), nn.Linear(ffn, d_model))

    def positionwise(self, x: torch.Tensor) -> torch.Tensor:  # (..., D)
        q, k, v = self.qkv(self.norm1(x)).chunk(3, dim=-1)
        x = x + self.proj(v * torch.sigmoid(q + k))
        return x + self.mlp(self.norm2(x))

    def forward(self, hidden: torch.Tensor, context: BlockContext) -> torch.Tensor:
        previous = torch.nn.functional.pad(hidden[:, :-1], (0, 0, 1, 0))  # (B, L, D), token t-1
        return self.positionwise(torch.addcmul(hidden, self.mix, previous))

    def forward_rows(self, hidden: torch.Tensor, rows: torch.Tensor, states: torch.Tensor,
                     context: BlockContext) -> torch.Tensor:  # (K, D) for the tokens at rows (K,)
        flat = hidden.reshape(-1, hidden.shape[-1])  # (B*L, D)
        previous = flat.index_select(0, (rows - 1).clamp_min(0))  # (K, D), token t-1
        previous.mul_((rows % hidden.shape[1] != 0).unsqueeze(1))  # position 0 has no previous token
        return self.positionwise(torch.addcmul(states, self.mix, previous))


class MLPStack(Backbone):
    """Position-wise-dominated backbone of ShiftMLPBlocks (`force_half_exit` sets its flag channel)."""

    config_class = MLPStackConfig

    def __init__(self, config: MLPStackConfig, *, vocab_size: int):
        super().__init__(config, vocab_size=vocab_size)
        d = config.d_model
        self.embedding = nn.Embedding(vocab_size, d)
        self.blocks = nn.ModuleList(ShiftMLPBlock(d, config.ffn_mult * d) for _ in range(config.n_layers))
        self.norm = nn.LayerNorm(d)


def flag_preserving_linears(backbone: Backbone) -> list[nn.Linear]:
    """The linears that write each block's residual update (channel 0 must stay the input flag)."""
    if isinstance(backbone, MLPStack):
        return [linear for block in backbone.blocks for linear in (block.mlp[2], block.proj)]
    if isinstance(backbone, MixerBackbone):  # seq_icl: the mixer's and the FFN's output projections
        return [linear for block in backbone.blocks for linear in (block.mixer.out_proj, block.ffn.out_proj)]
    if isinstance(backbone, MambaBackbone):  # the mixer's output projection
        return [block.mixer.out_proj for block in backbone.blocks]
    return [linear for block in backbone.blocks  # GPT-NeoX: attention output and MLP output
            for linear in (block.layer.attention.dense, block.layer.mlp.dense_4h_to_h)]


def force_half_exit(model: PonderModel) -> None:
    """Layer-1 unit reads the input flag (even ids: h ~ 1, exit); later units never halt anyone."""
    backbone = model.backbone
    units = model.sites[0].units
    first = units[0]
    with torch.no_grad():
        backbone.embedding.weight[:, 0] = torch.tensor(
            [1.0 if i % 2 == 0 else -1.0 for i in range(backbone.embedding.num_embeddings)])
        first.hidden.weight.zero_()
        first.hidden.bias.zero_()
        first.hidden.weight[0, 0] = 1.0  # hidden unit 0 = flag of the layer-1 output
        first.out.weight.zero_()
        first.out.weight[0, 0] = 40.0
        first.out.bias.fill_(-10.0)
        for unit in units[1:]:
            unit.out.weight.zero_()
            unit.out.bias.fill_(-30.0)
        for linear in flag_preserving_linears(backbone):  # channel 0 keeps the flag
            linear.weight[0].zero_()
            if linear.bias is not None:
                linear.bias[0] = 0.0
        for block in backbone.blocks:
            if isinstance(block, ShiftMLPBlock):
                block.mix[0] = 0.0


def early_exit_backbones(backbone: dict, vocab: int) -> tuple[Backbone, Backbone]:
    """Two copies of one backbone: the synthetic position-wise stack or a registered one."""
    copies = []
    for _ in range(2):
        torch.manual_seed(0)
        if backbone["name"] == "bench_mlp_stack":
            copies.append(MLPStack(MLPStackConfig(**backbone), vocab_size=vocab))
        else:
            info = get_registry().get("backbone", backbone["name"])
            copies.append(info.cls(info.cls.config_class.model_validate(backbone), vocab_size=vocab))
    return copies[0], copies[1]


def early_exit_models(backbone: dict, vocab: int, device: torch.device) -> dict[str, PonderModel]:
    """The pair of part (b), in eval mode: "fixed" (`none`, depth scope) and "threshold",
    same weights, with threshold's halting units set by `force_half_exit`."""
    registry = get_registry()
    models = {}
    for body, (name, halting) in zip(early_exit_backbones(backbone, vocab),
                                     (("fixed", {"name": "none", "scope": "depth"}),
                                      ("threshold", {"name": "threshold", "threshold": 0.99})), strict=True):
        info = registry.get("halting", halting["name"])
        models[name] = PonderModel(body, info.cls, info.cls.config_class.model_validate(halting),
                                   vocab_size=vocab)
    force_half_exit(models["threshold"])
    models["fixed"].backbone.load_state_dict(models["threshold"].backbone.state_dict())
    for model in models.values():
        model.to(device).eval()
    return models


def early_exit_case(backbone: dict, batch: int, length: int, args, device) -> dict:
    vocab = 32
    n_layers = backbone["n_layers"]
    models = early_exit_models(backbone, vocab, device)
    ids = torch.randint(0, vocab, (batch, length), device=device)
    with torch.no_grad():
        stats = models["threshold"](ids).stats
    even = ids % 2 == 0
    assert bool((stats.layers[even] == 1).all()) and bool((stats.layers[~even] == n_layers).all())
    mean_layers = float(stats.layers.float().mean())

    timed = time_pair(inference_pass(models["fixed"], ids), inference_pass(models["threshold"], ids),
                      repeats=args.repeats, warmup=args.warmup, device=device)
    t_fixed, t_threshold = timed["first"], timed["second"]
    ideal = n_layers / mean_layers
    speedup = 1.0 / timed["ratio"]
    low, high = timed["ratio_ci"]
    return {"n_layers": n_layers, "d_model": backbone["d_model"], "tokens": batch * length,
            "exited_after_layer_1": float(even.float().mean()), "mean_layers": mean_layers,
            "fixed_ms": 1e3 * t_fixed, "threshold_ms": 1e3 * t_threshold,
            "speedup": speedup, "ideal": ideal, "efficiency": speedup / ideal,
            "ci": (1.0 / high / ideal, 1.0 / low / ideal)}


# --------------------------------------------------------------------------- main


#: (size, backbone, batch, length). "tiny" is seed 000's model size (GPT-NeoX hidden 128,
#: heads = layers, FFN 128; LSTM hidden 128); "micro" is below it and shown for scale.
OVERHEAD_CASES = [
    ("micro", {"name": "transformer", "d_model": 64, "n_layers": 2, "n_heads": 4, "ffn_size": 256}, 16, 64),
    ("micro", {"name": "lstm", "d_model": 64, "n_layers": 2}, 16, 64),
    ("tiny", {"name": "transformer", "d_model": 128, "n_layers": 2}, 16, 128),
    ("tiny", {"name": "lstm", "d_model": 128, "n_layers": 2}, 16, 128),
    ("small", {"name": "transformer", "d_model": 256, "n_layers": 2, "n_heads": 4, "ffn_size": 1024}, 16, 128),
    ("small", {"name": "lstm", "d_model": 256, "n_layers": 2}, 16, 128),
]


def overhead_table(args, device) -> None:
    if args.case is None:
        print(f"\n(a) overhead: graves forced to K={args.hops} hops / constant K hops (layer scope), "
              "target <= 1.05 from tiny up")
        print(f"{'size':<6}{'backbone':<12}{'d':>4}{'tokens':>7}  {'mode':<12}{'constant ms':>12}{'graves ms':>11}"
              f"{'ratio':>8}{'95% CI':>14}  verdict")
    for index in cases_to_run(args, "a", len(OVERHEAD_CASES)):
        size, backbone, batch, length = OVERHEAD_CASES[index]
        for row in overhead_case(backbone, args.hops, batch * args.scale, length, args, device):
            result = verdict(row["ratio"], row["ci"], lambda ratio: ratio <= 1.05)
            if size == "micro":
                result = f"({result}: below tiny)"
            print(f"{size:<6}{row['backbone']:<12}{backbone['d_model']:>4}{batch * args.scale * length:>7}  "
                  f"{row['mode']:<12}{row['constant_ms']:>12.2f}{row['graves_ms']:>11.2f}"
                  f"{row['ratio']:>8.3f}{row['ci'][0]:>8.3f}-{row['ci'][1]:.3f}  {result}")


#: (size, backbone, batch, length). The synthetic stack is the target. The other rows show real
#: layers whose token mixing still runs over halted tokens: GPT-NeoX's keys and values, and the
#: sequence mixer of the seq_icl stacks (S4D, RWKV), whose FFNs run for running tokens only, and
#: Mamba's input projection, convolution and scan (its output projection runs for running tokens).
EARLY_EXIT_CASES = [
    ("tiny", {"name": "bench_mlp_stack", "d_model": 128, "n_layers": 4}, 16, 128),
    ("tiny", {"name": "bench_mlp_stack", "d_model": 128, "n_layers": 8}, 16, 128),
    ("small", {"name": "bench_mlp_stack", "d_model": 256, "n_layers": 8}, 16, 128),
    ("tiny", {"name": "transformer", "d_model": 128, "n_layers": 8, "n_heads": 4, "ffn_size": 512}, 16, 128),
    ("small", {"name": "transformer", "d_model": 256, "n_layers": 8, "n_heads": 4, "ffn_size": 1024}, 16, 128),
    ("tiny", {"name": "s4d", "d_model": 128, "n_layers": 8}, 16, 128),
    ("tiny", {"name": "rwkv", "d_model": 128, "n_layers": 8}, 16, 128),
    ("tiny", {"name": "mamba", "d_model": 128, "n_layers": 8}, 16, 128),
]


#: What the informational rows of part (b) still compute for halted tokens.
EVERY_TOKEN_WORK = {"transformer": "K/V for halted tokens", "s4d": "mixer for all tokens",
                    "rwkv": "mixer for all tokens", "mamba": "scan for all tokens"}


def early_exit_table(args, device) -> None:
    if args.case is None:
        print("\n(b) early exit (inference): threshold vs fixed depth, half the tokens exit after layer 1,"
              " target efficiency >= 0.9")
        print(f"{'size':<6}{'backbone':<16}{'layers':>6}{'d':>5}{'tokens':>7}{'mean layers':>12}{'fixed ms':>10}"
              f"{'thresh ms':>10}{'speedup':>9}{'ideal':>7}{'effic.':>8}{'95% CI':>14}  verdict")
    for index in cases_to_run(args, "b", len(EARLY_EXIT_CASES)):
        size, backbone, batch, length = EARLY_EXIT_CASES[index]
        row = early_exit_case(backbone, batch * args.scale, length, args, device)
        result = verdict(row["efficiency"], row["ci"], lambda efficiency: efficiency >= 0.9)
        if backbone["name"] in EVERY_TOKEN_WORK:
            result = f"({result}: {EVERY_TOKEN_WORK[backbone['name']]})"
        print(f"{size:<6}{backbone['name']:<16}{row['n_layers']:>6}{row['d_model']:>5}{row['tokens']:>7}"
              f"{row['mean_layers']:>12.2f}{row['fixed_ms']:>10.2f}{row['threshold_ms']:>10.2f}"
              f"{row['speedup']:>9.2f}{row['ideal']:>7.2f}{row['efficiency']:>8.3f}"
              f"{row['ci'][0]:>8.3f}-{row['ci'][1]:.3f}  {result}")


def cases_to_run(args, part: str, count: int) -> list[int]:
    """The case indices this process times itself.

    By default every case runs in a fresh child process (`--only PART --case I`), so
    no case inherits the heap, caches or allocator state left by the ones before it
    (on the shared CPU, part (b) measured 5-10% lower after part (a) in the same
    process). The child prints its rows; this process prints them in order.
    """
    if args.case is not None or args.in_process:
        return [args.case] if args.case is not None else list(range(count))
    options = [f"--device={args.device}", f"--threads={args.threads}", f"--repeats={args.repeats}",
               f"--warmup={args.warmup}", f"--hops={args.hops}", f"--scale={args.scale}",
               f"--hop-policy={args.hop_policy}"]
    if args.default_allocator:
        options.append("--default-allocator")
    for index in range(count):
        child = [sys.executable, __file__, *options, f"--only={part}", f"--case={index}"]
        print(subprocess.run(child, check=True, capture_output=True, text=True).stdout, end="", flush=True)
    return []


def main(argv: list[str] | None = None) -> int:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--device", default="cpu", choices=["cpu", "cuda"])
    parser.add_argument("--threads", type=int, default=1, help="torch CPU threads")
    parser.add_argument("--repeats", type=int, default=31)
    parser.add_argument("--warmup", type=int, default=3)
    parser.add_argument("--hops", type=int, default=3, help="K for the overhead comparison")
    parser.add_argument("--scale", type=int, default=1, help="multiply batch sizes (e.g. 8 on a GPU)")
    parser.add_argument("--only", choices=["a", "b"], default=None, help="run one part only")
    parser.add_argument("--hop-policy", choices=["auto", "exact", "speculative"], default="auto",
                        help="when halting loops may queue a hop before reading the running count "
                             "(core/early_exit/policy.py); exact = one host sync per hop")
    parser.add_argument("--default-allocator", action="store_true",
                        help="keep glibc's default mmap/trim thresholds (noisier on a shared machine)")
    parser.add_argument("--in-process", action="store_true",
                        help="time every case in this process instead of one fresh process per case")
    parser.add_argument("--case", type=int, default=None, help=argparse.SUPPRESS)  # set for child processes
    args = parser.parse_args(argv)
    allocator = "glibc default" if args.default_allocator or not steady_allocator() else "glibc, no trim/mmap churn"
    torch.set_num_threads(args.threads)
    device = torch.device(args.device)
    use_clock(device, args.threads)
    name = torch.cuda.get_device_name(device) if device.type == "cuda" else platform.processor() or "cpu"
    if args.case is not None:  # a child process: rows only
        with hop_policy(args.hop_policy):
            (overhead_table if args.only == "a" else early_exit_table)(args, device)
        return 0
    print(f"halting benchmark on {device.type} ({name}), torch {torch.__version__}, "
          f"{args.threads} thread(s), {CLOCK['name']}, allocator {allocator}, hop policy {args.hop_policy};\n"
          f"medians of {args.repeats} alternating runs, ratios = median of per-pair ratios (95% CI), "
          f"{'all cases in one process' if args.in_process else 'one fresh process per case'}")

    with hop_policy(args.hop_policy):
        if args.only != "b":
            overhead_table(args, device)
        if args.only != "a":
            early_exit_table(args, device)
    return 0


if __name__ == "__main__":
    raise SystemExit(main())
