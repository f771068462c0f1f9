"""The adaptive-computation study: every halting strategy, two tasks, three seeds, one report.

    python examples/adaptive_study/run.py                      # everything (resumable)
    python examples/adaptive_study/run.py --seeds 0 --steps 100 --tasks parity   # smallest

Each run goes to runs/adaptive_study/<task>/<strategy>/seed<k>; a run with results.json is
skipped, a run killed midway is continued with `--resume`. At the end `ponderlab report`
writes the tables and the accuracy-vs-compute Pareto plot (accuracy_vs_hops.png) to
runs/adaptive_study/report.

Matched compute: every strategy may spend at most 4 layer applications per token.
Depth-scope strategies exit early in a 4-layer stack; shared-core strategies (ut,
recurrent_depth, and mixture_of_recursions when installed) iterate a 1-layer core at most
4 times, so for all of them "hops" are layer applications, the x axis of the plot.
constant and random spend 2. Learned strategies spend what their settings make them
spend (not tuned to a common budget); the plot puts each at its measured cost.
"""

from __future__ import annotations

import argparse
import subprocess
import sys
from pathlib import Path

from ponderlab.core.registry import get_registry

HERE = Path(__file__).parent
TASKS = {"parity": HERE / "parity.yaml", "addition": HERE / "addition.yaml"}

#: strategy -> halting overrides (and backbone ones); unknown strategies run with defaults
STRATEGIES: dict[str, dict[str, object]] = {
    "none": {"halting.scope": "depth"},
    "constant": {"halting.scope": "depth", "halting.steps": 2},
    "random": {"halting.scope": "depth", "halting.mean_hops": 2.0},
    "graves": {"halting.scope": "depth", "halting.time_penalty": 0.01},
    "threshold": {"halting.scope": "depth", "halting.threshold": 0.95},
    "pondernet": {"halting.scope": "depth", "halting.inference": "most_likely"},
    "calm": {"halting.scope": "depth", "halting.threshold": 0.9},
    "layerskip": {"halting.scope": "depth", "halting.confidence": "softmax", "halting.threshold": 0.9,
                  "halting.curriculum_steps": 300},
    "ut": {"halting.scope": "model", "halting.max_steps": 4, "backbone.n_layers": 1},
    "recurrent_depth": {"halting.scope": "model", "halting.max_steps": 4, "halting.mean_recurrence": 2.0,
                        "halting.backprop_steps": 4, "backbone.n_layers": 1},
    "mixture_of_recursions": {"backbone.n_layers": 1},
}


def run_one(task: str, strategy: str, seed: int, steps: int | None, root: Path) -> str:
    out = root / task / strategy / f"seed{seed}"
    if (out / "results.json").exists():
        return "done before"
    overrides = [f"halting.name={strategy}", f"seed={seed}"]
    overrides += [f"{key}={value}" for key, value in STRATEGIES.get(strategy, {}).items()]
    if steps is not None:
        overrides += [f"training.steps={steps}", f"training.eval_every={steps}"]
    command = ["ponderlab", "run", str(TASKS[task]), *overrides, "--output-dir", str(out), "--no-progress"]
    if (out / "checkpoints").exists():
        command.append("--resume")
    result = subprocess.run(command, capture_output=True, text=True)
    if result.returncode != 0:
        return "FAILED: " + (result.stderr.strip().splitlines() or ["?"])[-1]
    return "ran"


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.split("\n")[0])
    parser.add_argument("--tasks", nargs="+", default=list(TASKS), choices=list(TASKS))
    parser.add_argument("--seeds", nargs="+", type=int, default=[0, 1, 2])
    parser.add_argument("--strategies", nargs="+", default=None, help="default: every registered one")
    parser.add_argument("--steps", type=int, default=None, help="override training.steps")
    parser.add_argument("--root", type=Path, default=Path("runs/adaptive_study"))
    args = parser.parse_args()
    registered = sorted(i.name for i in get_registry().all() if i.kind == "halting")
    strategies = args.strategies or registered
    for task in args.tasks:
        for strategy in strategies:
            for seed in args.seeds:
                status = run_one(task, strategy, seed, args.steps, args.root)
                print(f"{task:<9} {strategy:<22} seed {seed}: {status}", flush=True)
    report = ["ponderlab", "report", str(args.root), "--out", str(args.root / "report"),
              "--heatmap-examples", "0"]
    sys.exit(subprocess.run(report).returncode)


if __name__ == "__main__":
    main()
