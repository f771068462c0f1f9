"""Where threshold ACT's early-exit time goes: A/B of threshold against variants of itself.

Part (b) of `halting.py` divides threshold's measured speedup over fixed depth by
the ideal n_layers / mean layers executed. This script times the threshold model
against variants with one piece of its work removed, alternating the two
(`--repeats` pairs, thread CPU time on one CPU thread, as in `halting.py`), on the
tiny 8-layer row of part (b) by default. A ratio variant/threshold below 1 is the
share of the threshold pass that piece costs. With `fixed` among the variants, the
script ends with the efficiency (speedup over fixed depth / ideal) of threshold
and the one each variant would reach.

  same             an identical copy (the noise floor of one A/B)
  free_halting     the halting probabilities threshold's units computed for this
                   batch, returned from a cache: the same exits and weights, no
                   halting MLP
  execution_only   the same blocks with the same running tokens (every token in
                   layer 1, the ones threshold keeps in layers 2..n), on packed
                   rows as threshold's inference: no halting MLP, no bookkeeping,
                   no weighted sum; each token's last state goes to the head
  fixed            fixed depth (part (b)'s speedup, inverted)

    python benchmarks/early_exit_ablation.py
    python benchmarks/early_exit_ablation.py --layers 4 --variants same execution_only
"""

from __future__ import annotations

import argparse
import copy
import sys
from pathlib import Path

import torch
from torch import Tensor

sys.path.insert(0, str(Path(__file__).resolve().parent))
from halting import early_exit_models  # noqa: E402
from timing import inference_pass, single_thread_cpu, time_pair  # noqa: E402

from ponderlab.core.early_exit import PackedHops, active_rows  # noqa: E402
from ponderlab.core.model import PonderModel  # noqa: E402

VARIANTS = ("same", "free_halting", "execution_only", "fixed")


def cache_halting(model: PonderModel, ids: Tensor) -> None:
    """Make the model's strategy return the halting probabilities it computes on `ids`."""
    strategy = model.sites[0]
    computed: dict[int, Tensor] = {}

    def recording(n: int, state: Tensor, active: Tensor | None) -> Tensor:
        computed[n] = strategy.units[n](state, active)  # (B, L)
        return computed[n]

    strategy.halting_probability = recording
    with torch.no_grad():
        model(ids)
    strategy.halting_probability = lambda step, state, active: computed[step]


def execution_only_pass(model: PonderModel, ids: Tensor, layer_masks: list[Tensor | None]):
    """A callable running the blocks on the given running tokens per layer, then the head;
    it returns the logits (B, L, V). Hops on packed rows, as threshold's inference
    (`PackedHops.rows`), with the running tokens' rows of each layer known in advance."""
    layer_rows = [None if active is None else active_rows(active) for active in layer_masks]
    previous_rows = [None, *layer_rows[:-1]]
    changed = [rows is not None and (before is None or not torch.equal(rows, before))
               for before, rows in zip(previous_rows, layer_rows, strict=True)]  # the running set shrank

    def run() -> Tensor:
        with torch.no_grad():
            hops = PackedHops(model.backbone.blocks, model.backbone.embed(ids))
            width = hops.hidden.shape[-1]
            states = None
            for index, rows in enumerate(layer_rows):
                if changed[index]:  # (K, D): the latest states of the tokens that go on
                    states = hops.hidden.reshape(-1, width).index_select(0, rows)
                states = hops.rows(index, rows, states)
            hidden = hops.hidden.view(-1, width)
            if layer_rows[-1] is not None:  # the last layer's states are not written back
                hidden.index_copy_(0, layer_rows[-1], states)
            return model.head(model.backbone.finalize(hidden.view_as(hops.hidden)))
    return run


def threshold_logits(threshold: PonderModel, ids: Tensor) -> Tensor:
    with torch.no_grad():
        return threshold(ids).logits  # (B, L, V)


def main(argv: list[str] | None = None) -> int:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--layers", type=int, default=8)
    parser.add_argument("--d-model", type=int, default=128)
    parser.add_argument("--repeats", type=int, default=61)
    parser.add_argument("--warmup", type=int, default=3)
    parser.add_argument("--variants", nargs="+", choices=VARIANTS, default=list(VARIANTS))
    args = parser.parse_args(argv)
    device = single_thread_cpu()

    vocab, batch, length = 32, 16, 128
    backbone = {"name": "bench_mlp_stack", "d_model": args.d_model, "n_layers": args.layers}
    models = early_exit_models(backbone, vocab, device)
    threshold = models["threshold"]
    ids = torch.randint(0, vocab, (batch, length))
    with torch.no_grad():
        layers = threshold(ids).stats.layers  # (B, L) layers executed per token
    ideal = args.layers / float(layers.float().mean())
    layer_masks = [None] + [layers > index for index in range(1, args.layers)]  # running in layer index+1

    print(f"threshold (depth scope, position-wise stack, {args.layers} layers, d={args.d_model}, "
          f"{batch * length} tokens, ideal speedup {ideal:.2f}) inference vs a variant; "
          f"thread CPU time, one thread, {args.repeats} alternating pairs")
    print(f"{'variant':<16}{'threshold ms':>13}{'variant ms':>11}{'variant/threshold':>19}{'95% CI':>16}")
    ratios = {}
    for variant in args.variants:
        # A variant that claims threshold's computation must give its logits before it is timed.
        if variant == "fixed":
            run = inference_pass(models["fixed"], ids)
        elif variant == "execution_only":
            run = execution_only_pass(threshold, ids, layer_masks)
            # equal up to the halting weights below 1 (about 1e-13 where a token continues)
            torch.testing.assert_close(run(), threshold_logits(threshold, ids), rtol=1e-4, atol=1e-4)
        else:
            other = copy.deepcopy(threshold)
            if variant == "free_halting":
                cache_halting(other, ids)
            torch.testing.assert_close(threshold_logits(other, ids), threshold_logits(threshold, ids),
                                       rtol=0, atol=0)
            run = inference_pass(other, ids)
        timed = time_pair(inference_pass(threshold, ids), run, repeats=args.repeats,
                          warmup=args.warmup, device=device)
        ratios[variant] = timed["ratio"]
        low, high = timed["ratio_ci"]
        print(f"{variant:<16}{1e3 * timed['first']:>13.1f}{1e3 * timed['second']:>11.1f}"
              f"{timed['ratio']:>19.4f}{low:>9.3f}-{high:.3f}", flush=True)
    if "fixed" in ratios:
        speedup = ratios["fixed"]  # fixed time / threshold time
        print(f"efficiency (speedup over fixed depth / ideal): threshold {speedup / ideal:.3f}" + "".join(
            f", {variant} {speedup / ratio / ideal:.3f}" for variant, ratio in ratios.items() if variant != "fixed"))
    return 0


if __name__ == "__main__":
    raise SystemExit(main())
