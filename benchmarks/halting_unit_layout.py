"""Does the halting unit need a shortcut for an LSTM's permuted state? A/B in one process.

graves forced to 3 hops (layer scope, 2 LSTM layers, batch 16 x length 128, one thread),
inference forwards alternating between the halting unit as it is (`self.linear(state)`,
which copies a permuted state) and the removed `rowwise_linear` shortcut (kept here for
the comparison); thread CPU time, 40 timed pairs after 4 warm-up pairs.

    python benchmarks/halting_unit_layout.py
"""

import statistics
import sys
import time
from pathlib import Path

import torch
import torch.nn.functional as F

sys.path.insert(0, str(Path(__file__).parent))
from timing import registry_model  # noqa: E402

from ponderlab.core.halting import units  # noqa: E402


def rowwise_linear(state, weight, bias):  # the removed helper, as it was
    leading = state.dim() - 1
    if not state.is_contiguous() and leading > 1:
        order = sorted(range(leading), key=lambda d: -state.stride(d))
        permuted = state.permute(*order, leading)
        if permuted.is_contiguous():
            logits = F.linear(permuted, weight, bias).squeeze(-1)
            return logits.permute(*(order.index(d) for d in range(leading)))
    return F.linear(state, weight, bias).squeeze(-1)


def shortcut_forward(self, state, active=None):
    logits = rowwise_linear(state, self.linear.weight, self.linear.bias)
    return torch.sigmoid(logits.to(units.accumulation_dtype(state)))


def main() -> None:
    torch.set_num_threads(1)
    forwards = {"shortcut": shortcut_forward, "now": units.HaltingUnit.forward}
    for d in (128, 256):
        model = registry_model({"name": "lstm", "d_model": d, "n_layers": 2},
                               {"name": "graves", "max_hops": 3, "halting_bias_init": -30.0}, 32,
                               torch.device("cpu")).eval()
        ids = torch.randint(0, 32, (16, 128))
        times = {"shortcut": [], "now": []}
        with torch.no_grad():
            for i in range(44):
                for name in ("shortcut", "now") if i % 2 else ("now", "shortcut"):
                    units.HaltingUnit.forward = forwards[name]
                    start = time.thread_time()
                    model(ids)
                    if i >= 4:
                        times[name].append(time.thread_time() - start)
        units.HaltingUnit.forward = forwards["now"]
        ratios = sorted(n / o for n, o in zip(times["now"], times["shortcut"], strict=True))
        quarter = len(ratios) // 4
        print(f"d {d}: shortcut {1e3 * statistics.median(times['shortcut']):.2f} ms, "
              f"now {1e3 * statistics.median(times['now']):.2f} ms, median now/shortcut "
              f"{statistics.median(ratios):.4f} (IQR {ratios[quarter]:.4f}-{ratios[-quarter - 1]:.4f})")


if __name__ == "__main__":
    main()
