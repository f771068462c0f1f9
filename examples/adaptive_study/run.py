"""The adaptive-computation study: every halting strategy at matched compute, two tasks, 3 seeds (5 fixed-depth).

    python examples/adaptive_study/run.py                 # probe, calibration, grid, report (resumable)
    python examples/adaptive_study/run.py --probe         # only the task probe (fixed depth 1, 2, 4)
    python examples/adaptive_study/run.py --calibrate     # only the compute calibration (seed 0)
    python examples/adaptive_study/run.py --seeds 3 4 --configs none_L1 none_L2 none_L3 none_L4 graves
    python examples/adaptive_study/run.py --report-only   # summary, tables and plot from what ran

Runs go to runs/adaptive_study/{probe,calibration,grid}/<task>/<config>/...; a run with
results.json is skipped, a run killed midway is continued with `--resume`. The grid goes
seed-major (every config at seed 0, then seed 1, ...), so an interrupted study has whole
seeds. The CPU seconds of each run (user + system of the child) are stored beside it in
cpu_seconds.json.

Matched compute. The unit is one layer application per token (results.json
`*/mean_layers`), the target TARGET = 2 layers per token with at most 4. The fixed-depth
frontier is `none` with 1-4 layers. Knobs set from their math: constant 2 hops; random a
geometric depth with mean 2 (cap 4); layerskip exits after layer 2; mixture_of_depths
routes every layer at capacity 1/2 (4 x 1/2 = 2); mixture_of_recursions' capacities
1, 1/2, 1/4, 1/4 sum to 2; pondernet's prior lambda_p = 0.34 has mean 2.0 truncated at 4
hops; recurrent_depth trains with r = Poisson(e^tau) + 1 at r_bar = 1 (mean 2). Learned
knobs and inference thresholds are calibrated (CALIBRATE): a search on seed 0 moves one
knob until the *validation* mean layers is within TOLERANCE of TARGET (training-time knobs:
one training run per trial; inference-only knobs: one training run, then `ponderlab eval
RUN halting.<knob>=value --split validation` per trial). The chosen values go to
docs/results/adaptive_study/calibration.json and the grid uses them for every seed. A
calibration trial whose spec equals a grid run's (seed 0) is copied there instead of rerun.
"""

from __future__ import annotations

import argparse
import json
import math
import os
import resource
import shutil
import subprocess
import sys
import time
from dataclasses import dataclass
from pathlib import Path

HERE = Path(__file__).parent
#: the study's tasks (chosen by the probe: accuracy rises clearly with fixed depth)
TASKS = {"parity5": HERE / "parity5.yaml", "addition5": HERE / "addition5.yaml"}
#: candidate tasks of the probe (`--probe`): fixed depth 1, 2, 4 at seeds 0 and 1
PROBE_TASKS = {path.stem: path for path in sorted((HERE / "probe").glob("*.yaml"))}
PROBE_CONFIGS = ["none_L1", "none_L2", "none_L4"]

TARGET = 2.0  # layer applications per token
TOLERANCE = 0.1  # calibration stops within this of TARGET on seed 0's validation split

DEPTH = {"halting.scope": "depth"}
CORE = {"halting.scope": "model", "backbone.n_layers": 1}

#: config -> overrides. `none_L<k>` is the fixed-depth frontier; the rest spend ~TARGET layers/token.
CONFIGS: dict[str, dict[str, object]] = {
    **{f"none_L{k}": {"halting.name": "none", **DEPTH, "backbone.n_layers": k} for k in (1, 2, 3, 4)},
    "constant": {"halting.name": "constant", **DEPTH, "halting.hops": 2},
    # geometric: the two-point default at a whole mean (2.0) is `constant` again
    "random": {"halting.name": "random", **DEPTH, "halting.mean_hops": 2.0, "halting.distribution": "geometric"},
    "graves": {"halting.name": "graves", **DEPTH},
    "threshold": {"halting.name": "threshold", **DEPTH},
    "pondernet": {"halting.name": "pondernet", **DEPTH, "halting.lambda_p": 0.34},
    "calm": {"halting.name": "calm", **DEPTH},
    "layerskip": {"halting.name": "layerskip", **DEPTH, "halting.exit_layer": 2},
    "mixture_of_depths": {"halting.name": "mixture_of_depths", **DEPTH, "halting.capacity": 0.5,
                          "halting.route_every": 1},
    "ut": {"halting.name": "ut", **CORE, "halting.max_hops": 4},
    "seed000_act": {"halting.name": "seed000_act", **CORE, "halting.max_hops": 4},
    "recurrent_depth": {"halting.name": "recurrent_depth", **CORE, "halting.max_hops": 4,
                        "halting.mean_recurrence": 1.0, "halting.backprop_hops": 4},
    "mixture_of_recursions": {"halting.name": "mixture_of_recursions", **CORE, "halting.recursions": 4,
                              "halting.capacities": "[1.0,0.5,0.25,0.25]"},
}


@dataclass(frozen=True)
class Knob:
    """One knob searched on seed 0: `key` starts at `start`; `sign` is +1 when a larger value spends
    more compute; `scale` (log / logit / linear) is the axis on which the search steps and
    interpolates; `inference` knobs are tried by re-evaluating one trained run."""

    key: str
    start: float
    sign: int
    scale: str = "log"
    inference: bool = False
    trials: int = 4


CALIBRATE: dict[str, Knob] = {
    "graves": Knob("halting.time_penalty", 0.01, -1),
    "ut": Knob("halting.time_penalty", 0.01, -1),
    "threshold": Knob("halting.time_penalty", 0.01, -1),
    "seed000_act": Knob("halting.time_penalty", 0.001, -1),
    "pondernet": Knob("halting.lambda_p", 0.34, -1, "logit"),
    "calm": Knob("halting.threshold", 0.9, +1, "logit", inference=True, trials=8),
    "recurrent_depth": Knob("halting.exit_threshold", 5e-4, -1, "log", inference=True, trials=8),
}


def cpu_seconds() -> float:
    usage = resource.getrusage(resource.RUSAGE_CHILDREN)
    return usage.ru_utime + usage.ru_stime


def fmt(value: float) -> str:
    return f"{value:.4g}"


def calibration_file(docs: Path) -> Path:
    return docs / "calibration.json"


def read_json(path: Path) -> dict:
    """A JSON file another worker may be rewriting: retry a torn read."""
    for _ in range(20):
        try:
            return json.loads(path.read_text())
        except (json.JSONDecodeError, FileNotFoundError):
            time.sleep(0.5)
    return json.loads(path.read_text())


def config_overrides(task: str, config: str, docs: Path) -> dict[str, object]:
    """The config's overrides with its calibrated knob (if any) for this task."""
    overrides = dict(CONFIGS[config])
    if config in CALIBRATE:
        path = calibration_file(docs)
        chosen = read_json(path).get(task, {}).get(config) if path.exists() else None
        if chosen is None:
            raise SystemExit(f"{task}/{config}: no calibrated {CALIBRATE[config].key} in {path}; "
                             "run `python examples/adaptive_study/run.py --calibrate` first")
        overrides[CALIBRATE[config].key] = fmt(chosen["value"])
    return overrides


def claim(out: Path) -> bool:
    """Take `out` for this process (several workers may share a study): False when a live process holds it."""
    lock = out.with_name(out.name + ".lock")
    out.parent.mkdir(parents=True, exist_ok=True)
    try:
        lock.mkdir()
    except FileExistsError:
        try:
            os.kill(int((lock / "pid").read_text()), 0)
            return False
        except (OSError, ValueError):  # a stale lock: its process is gone
            pass
    (lock / "pid").write_text(str(os.getpid()))
    return True


def release(out: Path) -> None:
    shutil.rmtree(out.with_name(out.name + ".lock"), ignore_errors=True)


def train(spec: Path, overrides: dict[str, object], seed: int, out: Path) -> dict:
    """`ponderlab run` into `out` (skipped when finished or held by another worker, resumed when
    killed); its record."""
    if (out / "results.json").exists():
        return {"status": "done before"}
    if not claim(out):
        return {"status": "running in another worker"}
    try:
        return _train(spec, overrides, seed, out)
    finally:
        release(out)


def _train(spec: Path, overrides: dict[str, object], seed: int, out: Path) -> dict:
    command = ["ponderlab", "run", str(spec), f"seed={seed}", *[f"{k}={v}" for k, v in overrides.items()],
               "--output-dir", str(out), "--no-progress"]
    if (out / "checkpoints").exists():
        command.append("--resume")
    elif out.exists():  # killed before its first checkpoint: nothing to resume, start again
        shutil.rmtree(out)
    before, start = cpu_seconds(), time.time()
    result = subprocess.run(command, capture_output=True, text=True)
    spent = {"cpu_seconds": round(cpu_seconds() - before, 2), "wall_seconds": round(time.time() - start, 2),
             "resumed": "--resume" in command}
    if result.returncode != 0:
        return {"status": "FAILED: " + (result.stderr.strip().splitlines() or ["?"])[-1]}
    (out / "cpu_seconds.json").write_text(json.dumps(spent) + "\n")
    return {"status": f"ran ({spent['cpu_seconds']:.0f} CPU s)", **spent}


def evaluate(run: Path, key: str, value: float, out: Path) -> tuple[dict, float]:
    """`ponderlab eval RUN key=value --split validation` (cached in `out`); (results, CPU s)."""
    sidecar = out.with_suffix(".cpu_seconds")
    if out.exists():  # CPU of an earlier evaluation: its record, else the evaluation's own seconds
        record = json.loads(out.read_text())
        return record["results"], float(sidecar.read_text()) if sidecar.exists() else record["seconds"]
    before = cpu_seconds()
    command = ["ponderlab", "eval", str(run), f"{key}={fmt(value)}", "--split", "validation", "--out", str(out)]
    result = subprocess.run(command, capture_output=True, text=True)
    if result.returncode != 0:
        raise SystemExit(f"{' '.join(command)}: " + (result.stderr.strip().splitlines() or ["?"])[-1])
    spent = cpu_seconds() - before
    sidecar.write_text(f"{spent:.2f}\n")
    return json.loads(out.read_text())["results"], spent


# ----------------------------------------------------------------------------- calibration

def to_axis(value: float, scale: str) -> float:
    if scale == "log":
        return math.log(value)
    if scale == "logit":
        return math.log(value / (1 - value))
    return value


def from_axis(u: float, scale: str) -> float:
    if scale == "log":
        return math.exp(u)
    if scale == "logit":
        return 1 / (1 + math.exp(-u))
    return u


def next_value(knob: Knob, trials: list[tuple[float, float]]) -> float:
    """The next knob value: interpolate (on the knob's axis) between the nearest trials on either
    side of TARGET (bisect if that repeats a trial), else step 1.5 (log: x4.5; logit: about x4.5
    in odds) past the trial closest to TARGET."""
    points = [(to_axis(value, knob.scale), layers) for value, layers in trials]
    above = [p for p in points if p[1] > TARGET]
    below = [p for p in points if p[1] < TARGET]
    if above and below:  # the bracketing pair closest together on the axis
        (ua, ma), (ub, mb) = min(((a, b) for a in above for b in below), key=lambda ab: abs(ab[0][0] - ab[1][0]))
        u = ua + (ub - ua) * (ma - TARGET) / (ma - mb)
        if any(abs(u - p[0]) < 0.05 for p in points):  # no new point (noisy, non-monotone): bisect
            u = (ua + ub) / 2
        return from_axis(u, knob.scale)
    u, layers = min(points, key=lambda p: abs(p[1] - TARGET))
    direction = knob.sign * (1 if layers < TARGET else -1)
    return from_axis(u + 1.5 * direction, knob.scale)


def calibrate_one(task: str, config: str, root: Path) -> dict:
    knob = CALIBRATE[config]
    base = {k: v for k, v in CONFIGS[config].items() if k != knob.key}
    folder = root / task / config
    trials: list[tuple[float, float]] = []
    records, cpu = [], 0.0
    value = knob.start
    if knob.inference:  # one training run at the start value, then evaluations
        run = folder / "trained"
        record = train(TASKS[task], {**base, knob.key: fmt(knob.start)}, 0, run)
        if record["status"].startswith("FAILED"):
            raise SystemExit(f"calibration {task}/{config}: {record['status']}")
        spent = run / "cpu_seconds.json"
        cpu += json.loads(spent.read_text())["cpu_seconds"] if spent.exists() else 0.0
    for _ in range(knob.trials):
        value = float(fmt(value))
        if knob.inference:
            results, spent = evaluate(run, knob.key, value, folder / f"eval_{knob.key}={fmt(value)}.json")
            cpu += spent
            layers = results["validation/mean_layers"]
        else:
            out = folder / f"{knob.key}={fmt(value)}" / "seed0"
            crashed = (out.parent / "failed.txt").exists()
            record = {"status": "failed before"} if crashed else train(TASKS[task], {**base, knob.key: fmt(value)}, 0, out)
            if crashed or record["status"].startswith("FAILED") or not (out / "results.json").exists():
                # a run that crashes at this knob value ends the search: keep the best finished trial
                failed = (out.parent / "failed.txt")
                if record["status"].startswith("FAILED"):
                    failed.write_text(record["status"] + "\n")
                status = failed.read_text().strip() if failed.exists() else record["status"]
                records.append({"value": value, "failed": status})
                print(f"calibrate {task:<8} {config:<16} {knob.key}={fmt(value)}: {status}", flush=True)
                break
            cpu += record.get("cpu_seconds", 0.0)
            results = json.loads((out / "results.json").read_text())
            layers = results["validation/mean_layers"]
        trials.append((value, layers))
        records.append({"value": value, "validation_mean_layers": round(layers, 4),
                        "validation_token_accuracy": round(results["validation/token_accuracy"], 4)})
        print(f"calibrate {task:<8} {config:<16} {knob.key}={fmt(value)}: validation {layers:.3f} layers/token",
              flush=True)
        if abs(layers - TARGET) <= TOLERANCE:
            break
        value = next_value(knob, trials)
    best = min((r for r in records if "failed" not in r), key=lambda r: abs(r["validation_mean_layers"] - TARGET))
    if not knob.inference:  # CPU of runs done before (resumed calibration) from their records
        cpu = 0.0
        for r in records:
            if "failed" in r:
                continue
            spent = folder / f"{knob.key}={fmt(r['value'])}" / "seed0" / "cpu_seconds.json"
            cpu += json.loads(spent.read_text())["cpu_seconds"] if spent.exists() else 0.0
    return {"key": knob.key, "value": best["value"], "validation_mean_layers": best["validation_mean_layers"],
            "inference_only": knob.inference, "trials": records, "cpu_seconds": round(cpu, 1)}


def calibrate(root: Path, docs: Path, tasks: list[str], configs: list[str]) -> None:
    path = calibration_file(docs)
    for task in tasks:
        for config in (c for c in configs if c in CALIBRATE):
            if not claim(root / task / config):
                print(f"calibrate {task:<8} {config:<16} in another worker", flush=True)
                continue
            try:
                record = calibrate_one(task, config, root)
            finally:
                release(root / task / config)
            docs.mkdir(parents=True, exist_ok=True)
            while not claim(path):  # parallel workers: one read-modify-write at a time
                time.sleep(0.5)
            try:
                done = read_json(path) if path.exists() else {}
                done.setdefault(task, {})[config] = record
                temporary = path.with_suffix(".tmp")
                temporary.write_text(json.dumps(done, indent=1) + "\n")
                os.replace(temporary, path)
            finally:
                release(path)


# ----------------------------------------------------------------------------- grid

def run_one(task: str, config: str, seed: int, root: Path, docs: Path, calibration_root: Path) -> str:
    out = root / task / config / f"seed{seed}"
    if (out / "results.json").exists():
        return "done before"
    try:
        overrides = config_overrides(task, config, docs)
    except SystemExit as missing:  # another worker is still calibrating it: a later pass runs it
        return f"skipped ({missing})"
    knob = CALIBRATE.get(config)
    if seed == 0 and knob is not None and not knob.inference:  # the calibration ran this very spec
        twin = calibration_root / task / config / f"{knob.key}={overrides[knob.key]}" / "seed0"
        if (twin / "results.json").exists() and not out.exists():
            shutil.copytree(twin, out)
            spent = json.loads((out / "cpu_seconds.json").read_text())
            (out / "cpu_seconds.json").write_text(json.dumps({**spent, "copied_from": str(twin)}) + "\n")
            return f"copied from the calibration ({twin})"
    return train(TASKS[task], overrides, seed, out)["status"]


def report(root: Path, docs: Path) -> int:
    """summarize.py (tables, summary JSON) and `ponderlab report` (the Pareto plot)."""
    code = subprocess.run([sys.executable, str(HERE / "summarize.py"), str(root), "--out", str(docs)]).returncode
    command = ["ponderlab", "report", str(root / "grid"), "--out", str(root / "report"), "--heatmap-examples", "0",
               "--pareto-x", "layers", "hops", "--pareto-seeds", "mean"]
    code = code or subprocess.run(command).returncode
    if code == 0:
        for name in ("accuracy_vs_layers.png", "accuracy_vs_hops.png", "runs.csv"):
            (docs / name).write_bytes((root / "report" / name).read_bytes())
    return code


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.split("\n")[0])
    parser.add_argument("--tasks", nargs="+", choices=[*TASKS, *PROBE_TASKS],
                        help="default: the study's tasks (with --probe: every probe/*.yaml)")
    parser.add_argument("--seeds", nargs="+", type=int, default=[0, 1, 2])
    parser.add_argument("--probe-seeds", nargs="+", type=int, default=[0, 1])
    parser.add_argument("--configs", nargs="+", default=list(CONFIGS), choices=list(CONFIGS))
    parser.add_argument("--root", type=Path, default=Path("runs/adaptive_study"))
    parser.add_argument("--docs", type=Path, default=Path("docs/results/adaptive_study"))
    parser.add_argument("--probe", action="store_true", help="only the task probe")
    parser.add_argument("--calibrate", action="store_true", help="only the compute calibration")
    parser.add_argument("--no-probe", action="store_true", help="skip the probe")
    parser.add_argument("--no-report", action="store_true", help="runs only")
    parser.add_argument("--worker", help="k/n: one of n parallel workers (run locks keep them apart)")
    parser.add_argument("--report-only", action="store_true", help="no runs, only the summary and plot")
    args = parser.parse_args()
    if not args.report_only and not args.calibrate and (args.probe or not args.no_probe):
        for seed in args.probe_seeds:
            for task in (args.tasks if args.probe and args.tasks else PROBE_TASKS):
                for config in PROBE_CONFIGS:
                    record = train(PROBE_TASKS[task], CONFIGS[config], seed, args.root / "probe" / task / config
                                   / f"seed{seed}")
                    print(f"probe {task:<9} {config:<8} seed {seed}: {record['status']}", flush=True)
        if args.probe:
            sys.exit(0)
    tasks = [t for t in (args.tasks or TASKS) if t in TASKS]
    if not args.report_only:
        calibrate(args.root / "calibration", args.docs, tasks[::-1] if args.worker and
                  int(args.worker.split("/")[0]) % 2 else tasks, args.configs)
        if args.calibrate:
            sys.exit(0)
        items = [(seed, task, config) for seed in args.seeds for task in tasks for config in args.configs]
        if args.worker:  # worker k of n starts k/n of the way through the list (and wraps around)
            k, n = map(int, args.worker.split("/"))
            start = k * len(items) // n
            items = items[start:] + items[:start]
        for seed, task, config in items:
            status = run_one(task, config, seed, args.root / "grid", args.docs, args.root / "calibration")
            print(f"{task:<9} {config:<22} seed {seed}: {status}", flush=True)
    sys.exit(0 if args.no_report else report(args.root, args.docs))


if __name__ == "__main__":
    main()
