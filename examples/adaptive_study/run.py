"""The adaptive-computation study: every halting strategy at matched compute, two tasks, three seeds.

    python examples/adaptive_study/run.py                         # everything (resumable)
    python examples/adaptive_study/run.py --tasks addition --seeds 0   # a part
    python examples/adaptive_study/run.py --report-only           # summary, table and plot

Each run goes to runs/adaptive_study/<task>/<config>/seed<k>; a run with results.json is
skipped, a run killed midway is continued with `--resume`. Runs go seed-major (every config
at seed 0, then seed 1, ...), so an interrupted study has whole seeds. The CPU seconds of
each run (user + system of the child) are stored beside it in cpu_seconds.json.

Matched compute. The unit is one layer application per token (results.json
`test/mean_layers`). The fixed-depth frontier is `none` with 1, 2, 3 and 4 layers. Every
other strategy is set to spend about 2 layer applications per token with at most 4:
depth-scope strategies work in a 4-layer stack (constant runs 2 layers, random a
geometric number with mean 2 and cap 4, layerskip exits at layer 2, mixture_of_depths routes half the tokens through each
block, graves / threshold / pondernet / calm learn or choose their exits with the knobs
below); shared-core strategies (ut, seed000_act, recurrent_depth, mixture_of_recursions)
iterate a 1-layer core at most 4 times (mean recurrence 2, capacities summing to 2). The
learned strategies only *aim* at 2: the table and plot put each run at its measured cost.
"""

from __future__ import annotations

import argparse
import json
import resource
import subprocess
import sys
import time
from pathlib import Path

HERE = Path(__file__).parent
TASKS = {"addition": HERE / "addition.yaml", "parity": HERE / "parity.yaml"}

DEPTH = {"halting.scope": "depth"}
CORE = {"halting.scope": "model", "backbone.n_layers": 1}

#: config -> overrides. `none_L<k>` is the fixed-depth frontier; the rest aim at ~2 layers/token.
CONFIGS: dict[str, dict[str, object]] = {
    **{f"none_L{k}": {"halting.name": "none", **DEPTH, "backbone.n_layers": k} for k in (1, 2, 3, 4)},
    "constant": {"halting.name": "constant", **DEPTH, "halting.steps": 2},
    # geometric: the two-point default at a whole mean (2.0) is `constant` again
    "random": {"halting.name": "random", **DEPTH, "halting.mean_hops": 2.0, "halting.distribution": "geometric"},
    "graves": {"halting.name": "graves", **DEPTH, "halting.time_penalty": 0.01},
    "threshold": {"halting.name": "threshold", **DEPTH, "halting.threshold": 0.95},
    "pondernet": {"halting.name": "pondernet", **DEPTH, "halting.lambda_p": 0.5,
                  "halting.inference": "most_likely"},
    "calm": {"halting.name": "calm", **DEPTH, "halting.threshold": 0.8},
    "layerskip": {"halting.name": "layerskip", **DEPTH, "halting.exit_layer": 2, "halting.confidence": "none",
                  "halting.curriculum_steps": 300},
    "mixture_of_depths": {"halting.name": "mixture_of_depths", **DEPTH, "halting.capacity": 0.5},
    "ut": {"halting.name": "ut", **CORE, "halting.max_steps": 4},
    "seed000_act": {"halting.name": "seed000_act", **CORE, "halting.max_steps": 4},
    "recurrent_depth": {"halting.name": "recurrent_depth", **CORE, "halting.max_steps": 4,
                        "halting.mean_recurrence": 2.0, "halting.backprop_steps": 4},
    "mixture_of_recursions": {"halting.name": "mixture_of_recursions", **CORE, "halting.recursions": 4,
                              "halting.capacities": "[1.0,0.5,0.25,0.25]"},
}


def cpu_seconds() -> float:
    usage = resource.getrusage(resource.RUSAGE_CHILDREN)
    return usage.ru_utime + usage.ru_stime


def run_one(task: str, config: str, seed: int, root: Path) -> str:
    out = root / task / config / f"seed{seed}"
    if (out / "results.json").exists():
        return "done before"
    overrides = [f"seed={seed}"] + [f"{key}={value}" for key, value in CONFIGS[config].items()]
    command = ["ponderlab", "run", str(TASKS[task]), *overrides, "--output-dir", str(out), "--no-progress"]
    if (out / "checkpoints").exists():
        command.append("--resume")
    before, start = cpu_seconds(), time.time()
    result = subprocess.run(command, capture_output=True, text=True)
    spent = {"cpu_seconds": round(cpu_seconds() - before, 2), "wall_seconds": round(time.time() - start, 2),
             "resumed": "--resume" in command}
    if result.returncode != 0:
        return "FAILED: " + (result.stderr.strip().splitlines() or ["?"])[-1]
    (out / "cpu_seconds.json").write_text(json.dumps(spent) + "\n")
    return f"ran ({spent['cpu_seconds']:.0f} CPU s)"


def report(root: Path, docs: Path) -> int:
    """summarize.py (table, summary JSON) and `ponderlab report` (the Pareto plot)."""
    code = subprocess.run([sys.executable, str(HERE / "summarize.py"), str(root), "--out", str(docs)]).returncode
    command = ["ponderlab", "report", str(root), "--out", str(root / "report"), "--heatmap-examples", "0",
               "--pareto-x", "layers", "hops", "--pareto-seeds", "mean"]
    code = code or subprocess.run(command).returncode
    if code == 0:
        for name in ("accuracy_vs_layers.png", "accuracy_vs_hops.png", "runs.csv"):
            (docs / name).write_bytes((root / "report" / name).read_bytes())
    return code


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.split("\n")[0])
    parser.add_argument("--tasks", nargs="+", default=list(TASKS), choices=list(TASKS))
    parser.add_argument("--seeds", nargs="+", type=int, default=[0, 1, 2])
    parser.add_argument("--configs", nargs="+", default=list(CONFIGS), choices=list(CONFIGS))
    parser.add_argument("--root", type=Path, default=Path("runs/adaptive_study"))
    parser.add_argument("--docs", type=Path, default=Path("docs/results/adaptive_study"))
    parser.add_argument("--no-report", action="store_true", help="runs only")
    parser.add_argument("--report-only", action="store_true", help="no runs, only the summary and plot")
    args = parser.parse_args()
    if not args.report_only:
        for seed in args.seeds:
            for task in args.tasks:
                for config in args.configs:
                    status = run_one(task, config, seed, args.root)
                    print(f"{task:<9} {config:<22} seed {seed}: {status}", flush=True)
    sys.exit(0 if args.no_report else report(args.root, args.docs))


if __name__ == "__main__":
    main()
