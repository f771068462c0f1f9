"""Cumulative halting when the running sum lands exactly on the threshold: the token halts there.

N = min{n : sum_{m<=n} h_m >= threshold}. With every halting unit at zero weight and bias 0,
h = sigmoid(0) = 0.5 exactly for every token and hop, so:
  `threshold` with threshold 1.0: c_1 = 0.5 < 1, c_2 = 1.0 = threshold -> N = 2, R = 1 - 0.5;
  `graves` with epsilon 0.5 (threshold 0.5): c_1 = 0.5 = threshold  -> N = 1, R = 1.
Halting only once the sum goes PAST the threshold (`<=` for "still running") gives one hop more.
Every loop path is reached through public switches only: built-in strategies and backbones built
by name, training (autograd) or inference, layer/model/depth scope, and depth-scope inference
on packed rows (a transformer at inference) or dense hops (an LSTM, whose blocks have no packed
form).
"""

from __future__ import annotations

import pytest
import torch

import ponderlab
from ponderlab.plugins.halting.reference import cumulative_act_token

VOCAB, LENGTH, N_LAYERS = 7, 5, 4

# (halting section, sites, N, R) at the boundary; n_layers = 4 leaves room for more hops.
BOUNDARY_CASES = {
    "threshold-depth": ({"name": "threshold", "threshold": 1.0, "halting_bias_init": 0.0}, 1, 2, 0.5),
    "graves-depth": ({"name": "graves", "scope": "depth", "epsilon": 0.5, "halting_bias_init": 0.0},
                     1, 1, 1.0),
    "graves-layer": ({"name": "graves", "scope": "layer", "max_hops": 3, "epsilon": 0.5,
                      "halting_bias_init": 0.0}, N_LAYERS, 1, 1.0),
    "graves-model": ({"name": "graves", "scope": "model", "max_hops": 3, "epsilon": 0.5,
                      "halting_bias_init": 0.0}, 1, 1, 1.0),
}
BACKBONES = {
    "transformer": {"name": "transformer", "d_model": 8, "n_layers": N_LAYERS, "n_heads": 2},
    "lstm": {"name": "lstm", "d_model": 8, "n_layers": N_LAYERS},
}


def count_block_calls(model: torch.nn.Module) -> list[int]:
    """Calls per block: dense (`forward`) or on a subset of tokens (`forward_rows`)."""
    calls = [0] * len(model.backbone.blocks)
    for index, block in enumerate(model.backbone.blocks):
        block.register_forward_pre_hook(lambda *_, _i=index: calls.__setitem__(_i, calls[_i] + 1))
        rows = getattr(block, "forward_rows", None)
        if rows is not None:

            def counted(*args, _i=index, _rows=rows, **kwargs):
                calls[_i] += 1
                return _rows(*args, **kwargs)

            block.forward_rows = counted
    return calls


@pytest.mark.parametrize("padded", [False, True], ids=["unpadded", "padded"])
@pytest.mark.parametrize("mode", ["training", "inference"])
@pytest.mark.parametrize("backbone", sorted(BACKBONES))
@pytest.mark.parametrize("case", sorted(BOUNDARY_CASES))
def test_running_sum_exactly_at_the_threshold_halts(case, backbone, mode, padded):
    halting, sites, hops, remainder = BOUNDARY_CASES[case]
    model = ponderlab.build_model(backbone=BACKBONES[backbone], halting=halting, vocab_size=VOCAB, seed=0)
    calls = count_block_calls(model)
    ids = torch.arange(2 * LENGTH).remainder(VOCAB).view(2, LENGTH)
    mask = torch.ones(2, LENGTH, dtype=torch.bool)
    if padded:
        mask[1, 3:] = False
    with torch.set_grad_enabled(mode == "training"):
        out = model.train(mode == "training")(ids, mask=mask)

    real = mask
    stats = out.stats
    assert stats.hops[real].tolist() == [float(hops)] * int(real.sum())
    assert stats.remainder[real].tolist() == [remainder] * int(real.sum())
    assert stats.ponder_cost[real].tolist() == [sites * (hops + remainder)] * int(real.sum())
    if padded:  # padding halts after its first hop with weight 1
        assert stats.hops[~real].tolist() == [1.0] * int((~real).sum())
    scope = halting.get("scope", "depth")
    packed = scope == "depth" and mode == "inference" and backbone == "transformer"
    if scope == "depth":  # layers past the exit never run; dense and subset hops run each earlier one once
        assert calls[hops:] == [0] * (N_LAYERS - hops)
        if not packed:
            assert calls[:hops] == [1] * hops


def test_per_token_reference_halts_exactly_at_the_threshold():
    """The per-token reference (the tests' oracle): c_2 = 0.5 + 0.5 = 1.0 halts at hop 2."""
    out = cumulative_act_token(torch.ones(3), lambda step, state: state * 2, lambda step, state: 0.5,
                               n_hops=4, threshold=1.0)
    assert out["hops"] == 2 and out["weights"] == [0.5, 0.5] and out["remainder"] == 0.5
    torch.testing.assert_close(out["output"], torch.full((3,), 0.5 * 2 + 0.5 * 4))
