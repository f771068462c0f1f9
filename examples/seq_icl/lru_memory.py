"""How long LRU's memory is after training: |lambda| of every recurrence channel, per layer.

    python examples/seq_icl/lru_memory.py RUN_DIR [RUN_DIR ...]

LRU's recurrence x_t = lambda x_{t-1} + ... forgets at |lambda| = exp(-exp(nu_log)) per token
(ring init: |lambda| in [0.9, 0.999]). A RUN_DIR is a `ponderlab run` output directory (its
latest checkpoint is read) or a follow-up's folder in runs/seq_icl/tried/ (every run in it).
Printed per run and layer: the quartiles of |lambda|, the share of channels above 0.9, and the
median memory length 1 / (1 - |lambda|) in tokens.
"""

from __future__ import annotations

import argparse
import sys
from pathlib import Path

import torch

from ponderlab.core.checkpoint import latest_checkpoint, load_checkpoint
from ponderlab.core.errors import CheckpointError

INIT_FLOOR = 0.9  # the ring init's smallest radius (r_min)


def recurrence_radii(model_state: dict[str, torch.Tensor]) -> dict[str, torch.Tensor]:
    """|lambda| = exp(-exp(nu_log)) of each layer's channels, keyed by the layer's parameter prefix."""
    return {key.removesuffix(".nu_log"): torch.exp(-torch.exp(value.double()))
            for key, value in model_state.items() if key.endswith(".nu_log")}


def run_dirs(path: Path) -> list[Path]:
    """The run itself, or every run of a follow-up folder (its `runs/<trial>/`)."""
    return [path] if (path / "checkpoints").is_dir() else sorted(p for p in (path / "runs").glob("*") if p.is_dir())


def describe(run_dir: Path) -> list[str]:
    checkpoint = latest_checkpoint(run_dir / "checkpoints")
    if checkpoint is None:
        return [f"{run_dir.name}: no checkpoint yet"]
    state = load_checkpoint(checkpoint)["model"]
    lines = []
    for layer, radius in recurrence_radii(state).items():
        q1, median, q3 = torch.quantile(radius, torch.tensor([0.25, 0.5, 0.75], dtype=radius.dtype)).tolist()
        above = float((radius > INIT_FLOOR).double().mean())
        memory = 1 / (1 - median)
        lines.append(f"{run_dir.name} {checkpoint.stem} {layer}: |lambda| quartiles {q1:.3f} {median:.3f} {q3:.3f}, "
                     f"{100 * above:.0f}% above {INIT_FLOOR}, median memory {memory:.1f} tokens")
    return lines


def main(argv: list[str] | None = None) -> int:
    parser = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    parser.add_argument("paths", nargs="+", type=Path)
    args = parser.parse_args(argv)
    try:
        for path in args.paths:
            for run_dir in run_dirs(path):
                print("\n".join(describe(run_dir)))
    except CheckpointError as error:
        print(f"lru_memory: {error}", file=sys.stderr)
        return 2
    return 0


if __name__ == "__main__":
    raise SystemExit(main())
