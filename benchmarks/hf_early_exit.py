"""Early exit on a wrapped Hugging Face model: fixed depth against threshold exit, side by side.

A GPT-2-small-shaped model (`hf` backbone, config only, random weights: 12 layers,
width 768, 12 heads, GPT-2's vocabulary) runs a batch at inference with halting
`none` in depth scope (every token runs every layer) and with `threshold` in depth
scope, same weights. The threshold units are scripted so that tokens exit on a fixed
schedule: half the tokens exit after each of the `--exits` layers (of the tokens still
running), the rest run every layer. The token's exit layer is written in channel 0 of
its embedding, which the layers' output projections leave untouched.

Printed: the median time of each pass, layer applications per token, the speedup
fixed / threshold, and speedup / ideal, where ideal = n_layers / mean layers per
token (the stack alone); the LM head (the same for both passes) is timed on its own
and the ideal that counts it is printed too, then the one that also counts the key
and value projections halted tokens keep paying (running tokens attend to them). A
third pair times threshold exit with plain blocks that compute every token (what
`hf` did before `forward_rows`; `--no-dense` skips it). Timings alternate the two
passes of a pair (`--repeats` pairs; `halting.time_pair`), thread CPU time on one
CPU thread, wall time around synchronisation on a GPU.

    python benchmarks/hf_early_exit.py                      # CPU, one thread
    python benchmarks/hf_early_exit.py --device cuda --batch 32 --length 1024
"""

from __future__ import annotations

import argparse
import copy
import statistics
import sys
import tempfile
from pathlib import Path

import torch
from transformers import GPT2Config

sys.path.insert(0, str(Path(__file__).resolve().parent))
from timing import CLOCK, benchmark_device, inference_pass, sync, time_pair  # noqa: E402

import ponderlab  # noqa: E402
from ponderlab.core.early_exit import hop_policy  # noqa: E402
from ponderlab.core.model import PonderModel  # noqa: E402
from ponderlab.plugins.backbones.hf_block import HFBlock  # noqa: E402


def exit_layers(vocab: int, exits: list[int], n_layers: int) -> torch.Tensor:
    """(V,) the layer after which each token id exits: ids ending in i one-bits then a zero
    (half of the ids still running) exit after exits[i]; the rest run every layer."""
    layers = torch.full((vocab,), float(n_layers))
    ids = torch.arange(vocab)
    for index, layer in enumerate(exits):
        layers[ids % 2 ** (index + 1) == 2**index - 1] = float(layer)
    return layers


def script_exits(model: PonderModel, layers: torch.Tensor) -> None:
    """Channel 0 carries each token's exit layer e through the stack; the unit after layer n
    gives h ~ 1 where e <= n and h < 1e-8 elsewhere (logit 40 (n + 0.5 - e))."""
    backbone = model.backbone
    with torch.no_grad():
        backbone.embedding.weight[:, 0] = layers.to(backbone.embedding.weight.dtype)
        backbone.positions.weight[:, 0] = 0.0
        for block in backbone.blocks:  # Conv1D weights (D_in, D_out): output channel 0 is column 0
            for projection in (block.layer.attn.c_proj, block.layer.mlp.c_proj):
                projection.weight[:, 0] = 0.0
                projection.bias[0] = 0.0
        for n, unit in enumerate(model.sites[0].units, start=1):
            unit.hidden.weight.zero_()
            unit.hidden.bias.zero_()
            unit.hidden.weight[0, 0], unit.hidden.bias[0] = -1.0, n + 0.5  # relu(n + 0.5 - e)
            unit.hidden.weight[1, 0], unit.hidden.bias[1] = 1.0, -(n + 0.5)  # relu(e - n - 0.5)
            unit.out.weight.zero_()
            unit.out.weight[0, 0], unit.out.weight[0, 1] = 40.0, -40.0
            unit.out.bias.zero_()


def build_pair(args, device: torch.device) -> tuple[PonderModel, PonderModel]:
    """Fixed depth and threshold exit over the same GPT-2-shaped weights, in eval mode."""
    config = GPT2Config(n_layer=args.layers, n_embd=args.width, n_head=args.heads, n_positions=args.length,
                        vocab_size=args.vocab, resid_pdrop=0.0, embd_pdrop=0.0, attn_pdrop=0.0,
                        bos_token_id=0, eos_token_id=0)
    with tempfile.TemporaryDirectory(prefix="hf_early_exit_") as directory:
        config.save_pretrained(directory)  # the config only: `pretrained: false` initialises from it
        backbone = {"name": "hf", "model": directory, "pretrained": False}
        fixed = ponderlab.build_model(backbone=backbone, halting={"name": "none", "scope": "depth"},
                                      vocab_size=args.vocab, seed=0)
        threshold = ponderlab.build_model(backbone=backbone, halting={"name": "threshold", "threshold": 0.99},
                                          vocab_size=args.vocab, seed=0)
    script_exits(threshold, exit_layers(args.vocab, args.exits, args.layers))
    fixed.backbone.load_state_dict(threshold.backbone.state_dict())  # the same weights
    return fixed.to(device).eval(), threshold.to(device).eval()


def dense_twin(model: PonderModel) -> PonderModel:
    """A copy of `model` whose blocks compute every token (plain `HFBlock`s, as before
    `forward_rows`): the core keeps halted tokens' states."""
    twin = copy.deepcopy(model)
    for block in twin.backbone.blocks:
        block.__class__ = HFBlock
    return twin


def head_time(model: PonderModel, ids: torch.Tensor, repeats: int, device: torch.device) -> float:
    """Median time of the final norm and LM head on every token (the part both passes share)."""
    with torch.no_grad():
        hidden = model.backbone.embed(ids)
        times = []
        for _ in range(repeats):
            sync(device)
            start = CLOCK["fn"]()
            model.head(model.backbone.finalize(hidden))
            sync(device)
            times.append(CLOCK["fn"]() - start)
    return statistics.median(times)


def keys_values_ideal(counts: list[int]) -> float:
    """The ideal speedup of the layers when halted tokens still pay their key and value
    projections (2 D^2 of the 12 D^2 weights a GPT-2 layer applies per token; the rest:
    queries and output 2 D^2, MLP 8 D^2), as running tokens attend to them."""
    tokens = counts[0]
    running = sum(counts)
    halted = tokens * len(counts) - running
    return tokens * len(counts) / (running + halted * 2 / 12)


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    parser.add_argument("--device", default="cpu")
    parser.add_argument("--layers", type=int, default=12)
    parser.add_argument("--width", type=int, default=768)
    parser.add_argument("--heads", type=int, default=12)
    parser.add_argument("--vocab", type=int, default=50257)
    parser.add_argument("--batch", type=int, default=4)
    parser.add_argument("--length", type=int, default=256)
    parser.add_argument("--exits", type=int, nargs="+", default=[3, 6, 9],
                        help="layers after which half of the still-running tokens exit")
    parser.add_argument("--repeats", type=int, default=5)
    parser.add_argument("--warmup", type=int, default=1)
    parser.add_argument("--hop-policy", default="auto", choices=["auto", "exact", "speculative"])
    parser.add_argument("--no-dense", action="store_true",
                        help="skip the third pair: threshold with blocks that compute every token")
    args = parser.parse_args()
    device = benchmark_device(args.device)
    torch.manual_seed(0)
    fixed, threshold = build_pair(args, device)
    ids = torch.randint(0, args.vocab, (args.batch, args.length), device=device)
    with torch.no_grad(), hop_policy(args.hop_policy):
        layers = threshold(ids).stats.layers  # (B, L) layers each token ran
        timed = time_pair(inference_pass(fixed, ids), inference_pass(threshold, ids), repeats=args.repeats,
                          warmup=args.warmup, device=device)
        dense = None if args.no_dense else time_pair(
            inference_pass(fixed, ids), inference_pass(dense_twin(threshold), ids), repeats=args.repeats,
            warmup=args.warmup, device=device)
    head = head_time(fixed, ids, args.repeats, device)
    counts = [int((layers >= n).sum()) for n in range(1, args.layers + 1)]  # tokens running per layer
    mean_layers = float(layers.float().mean())
    ideal = args.layers / mean_layers
    speedup = 1.0 / timed["ratio"]
    share = head / timed["first"]  # of the fixed-depth pass
    ideal_with_head = 1.0 / ((1.0 - share) / ideal + share)
    ideal_with_keys = 1.0 / ((1.0 - share) / keys_values_ideal(counts) + share)
    low, high = (1.0 / r for r in reversed(timed["ratio_ci"]))
    print(f"hf early exit: GPT-2 layout, {args.layers} layers, width {args.width}, {args.heads} heads, "
          f"vocab {args.vocab}; batch {args.batch} x length {args.length}; device {device}, "
          f"clock {CLOCK['name']}, torch {torch.__version__}, threads {torch.get_num_threads()}, "
          f"hop policy {args.hop_policy}, {args.repeats} pairs after {args.warmup} warm-up")
    print(f"exits after layers {args.exits}; tokens running per layer: {counts}")
    print(f"fixed depth          {1e3 * timed['first']:10.1f} ms   layers/token {args.layers:.2f}")
    print(f"threshold exit       {1e3 * timed['second']:10.1f} ms   layers/token {mean_layers:.2f}")
    if dense is not None:
        print(f"threshold, dense     {1e3 * dense['second']:10.1f} ms   layers/token {mean_layers:.2f}   "
              f"(blocks compute every token: speedup {1.0 / dense['ratio']:.2f}, fixed depth "
              f"{1e3 * dense['first']:.1f} ms in its pairs)")
    print(f"LM head + final norm {1e3 * head:10.1f} ms   ({100 * share:.1f}% of fixed depth, in both)")
    print(f"speedup {speedup:.2f} (95% CI {low:.2f}-{high:.2f}); ideal (layers only) {ideal:.2f}: "
          f"speedup / ideal {speedup / ideal:.2f}; ideal counting the head {ideal_with_head:.2f}: "
          f"speedup / ideal {speedup / ideal_with_head:.2f}")
    print(f"ideal counting the head and the halted tokens' keys and values {ideal_with_keys:.2f}: "
          f"speedup / ideal {speedup / ideal_with_keys:.2f}")


if __name__ == "__main__":
    main()
