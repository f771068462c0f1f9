"""Where Graves ACT's overhead goes: A/B of graves against variants of itself.

Part (a) of `halting.py` compares graves forced to K hops with `constant`. This
script times graves against a copy of itself with one piece of its work removed,
alternating the two (`--repeats` pairs, thread CPU time on one CPU thread, as in
`halting.py`), on the tiny LSTM row of part (a) by default: a train step, or a
forward pass without autograd with `--mode inference`. A ratio below 1 is the
share of the pass that piece costs. The variants change what is computed, so they
are for timing only:

  same              an identical copy (the noise floor of one A/B)
  no_halting_grad   h computed as usual but detached: no gradient through the halting
                    unit, the weights, the remainder and the ponder cost
  unit_input_detached  the unit reads a detached state: no gradient from h into the state
  bias_only_unit    h = sigmoid(bias) for every token: no unit matmul, forward or backward,
                    while the bookkeeping keeps its gradient (through the bias); at inference
                    the rest of the gap to `constant` is the weighted sum and the small ops
  constant          `constant` with the same K (part (a)'s ratio, inverted)

    python benchmarks/halting_ablation.py                    # every variant, tiny LSTM
    python benchmarks/halting_ablation.py --backbone transformer --variants same constant
    python benchmarks/halting_ablation.py --mode inference --variants same bias_only_unit constant
"""

from __future__ import annotations

import argparse
import copy
import sys
from pathlib import Path

import torch

sys.path.insert(0, str(Path(__file__).resolve().parent))
from timing import (  # noqa: E402
    inference_pass,
    registry_model,
    single_thread_cpu,
    time_pair,
    train_pass,
)

VARIANTS = ("same", "no_halting_grad", "unit_input_detached", "bias_only_unit", "constant")


def override_halting(model, variant: str) -> None:
    """Replace each site's halting probability by the variant's (instance attributes only)."""
    for site in model.sites:
        unit = site.units[0]
        if variant == "no_halting_grad":
            site.halting_probability = lambda step, state, active, u=unit: u(state, active).detach()
        elif variant == "unit_input_detached":
            site.halting_probability = lambda step, state, active, u=unit: u(state.detach(), active)
        elif variant == "bias_only_unit":
            site.halting_probability = (
                lambda step, state, active, u=unit: torch.sigmoid(u.linear.bias).expand(state.shape[:-1])
            )


def main(argv: list[str] | None = None) -> int:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--backbone", choices=["lstm", "transformer"], default="lstm")
    parser.add_argument("--d-model", type=int, default=128)
    parser.add_argument("--hops", type=int, default=3)
    parser.add_argument("--repeats", type=int, default=101)
    parser.add_argument("--warmup", type=int, default=3)
    parser.add_argument("--mode", choices=["train", "inference"], default="train")
    parser.add_argument("--variants", nargs="+", choices=VARIANTS, default=list(VARIANTS))
    args = parser.parse_args(argv)
    device = single_thread_cpu()

    backbone = {"name": args.backbone, "d_model": args.d_model, "n_layers": 2}
    vocab, batch, length = 32, 16, 128
    graves = registry_model(
        backbone, {"name": "graves", "max_hops": args.hops, "halting_bias_init": -30.0, "time_penalty": 0.01},
        vocab, device,
    )
    ids = torch.randint(0, vocab, (batch, length))
    labels = torch.randint(0, vocab, (batch, length))
    training = args.mode == "train"

    def timed_pass(model):
        model.train(training)
        if training:
            return train_pass(model, ids, labels)
        return inference_pass(model, ids)

    print(f"graves (K={args.hops}, layer scope, {args.backbone} d={args.d_model}, {batch * length} tokens) "
          f"{'train step' if training else 'inference'} vs a variant; thread CPU time, one thread, {args.repeats} alternating pairs")
    print(f"{'variant':<22}{'graves ms':>10}{'variant ms':>11}{'variant/graves':>16}{'95% CI':>16}")
    for variant in args.variants:
        if variant == "constant":
            other = registry_model(backbone, {"name": "constant", "hops": args.hops}, vocab, device)
            other.backbone.load_state_dict(graves.backbone.state_dict())
        else:
            other = copy.deepcopy(graves)
            override_halting(other, variant)
        timed = time_pair(timed_pass(graves), timed_pass(other), repeats=args.repeats,
                          warmup=args.warmup, device=device)
        low, high = timed["ratio_ci"]
        print(f"{variant:<22}{1e3 * timed['first']:>10.1f}{1e3 * timed['second']:>11.1f}"
              f"{timed['ratio']:>16.4f}{low:>9.3f}-{high:.3f}", flush=True)
    return 0


if __name__ == "__main__":
    raise SystemExit(main())
