"""Measure seed 002's claims for threshold ACT across depth on the ResNet-BK backbone.

Seed 002 claims that at threshold 0.95 (lambda 0.01) a ResNet-BK language model
runs 1.3-1.6x faster than the fixed-depth model at inference, with an accuracy
within 2-5% of it (threshold 0.99: 1.1-1.3x; 0.8 with lambda 0.1: 1.5-2.0x).

What this script does, all on CPU with one thread:
1. trains `fixed_depth.yaml` (halting none), a shallower fixed-depth control
   (does depth matter on this task at all?) and `threshold.yaml` at each
   threshold, for each seed (runs whose results.json exists are reused);
2. reloads every final checkpoint and times teacher-forced inference over the
   test split (`torch.inference_mode`, models interleaved, `--repeats` rounds,
   median), as wall clock and as this thread's CPU time (the machine is shared,
   so wall clock is noisy; thread CPU time is what the model itself spent);
3. counts the layers actually executed per real token (`stats.layers`), and the
   layers each batch ran before every one of its tokens had exited;
4. prints a markdown table and writes summary.json.

    python examples/resnet_bk/measure.py --out-dir runs/resnet_bk \
        --thresholds 0.95 0.99 0.8 --seeds 0 --repeats 5
"""

from __future__ import annotations

import argparse
import json
import statistics
import time
from pathlib import Path

import torch

import ponderlab
from ponderlab.core.checkpoint import latest_checkpoint, load_checkpoint
from ponderlab.core.data import TensorDataset

HERE = Path(__file__).resolve().parent
METRICS = ("test/token_accuracy", "test/exact_match", "test/dfa_accuracy", "test/loss")


def plan_runs(args: argparse.Namespace) -> list[dict]:
    """(label, spec file, overrides) for every configuration and seed."""
    configs = [("fixed", HERE / "fixed_depth.yaml", [])]
    for depth in args.control_depths:
        configs.append((f"fixed {depth} layer(s)", HERE / "fixed_depth.yaml", [f"backbone.n_layers={depth}"]))
    for threshold in args.thresholds:
        overrides = [f"halting.threshold={threshold}", f"halting.time_penalty={args.time_penalty}"]
        configs.append((f"threshold {threshold}", HERE / "threshold.yaml", overrides))
    runs = []
    for seed in args.seeds:
        for label, spec, overrides in configs:
            slug = label.replace(" ", "_").replace("(", "").replace(")", "")
            runs.append({
                "label": label,
                "seed": seed,
                "spec": spec,
                "overrides": [*overrides, f"seed={seed}", *args.overrides],
                "run_dir": args.out_dir / f"{slug}_seed{seed}",
            })
    return runs


def train(run: dict) -> dict:
    results_file = run["run_dir"] / "results.json"
    if results_file.exists():
        return json.loads(results_file.read_text())
    started = time.perf_counter()
    results = ponderlab.run(str(run["spec"]), overrides=run["overrides"], output_dir=run["run_dir"])
    print(f"trained {run['label']} seed {run['seed']} in {time.perf_counter() - started:.0f} s", flush=True)
    return results


def load_trained(run_dir: Path, vocab_size: int) -> torch.nn.Module:
    spec = ponderlab.load_spec(run_dir / "spec.yaml")
    model = ponderlab.build_model(spec, vocab_size=vocab_size)
    state = load_checkpoint(latest_checkpoint(run_dir / "checkpoints"))
    model.load_state_dict(state["model"])
    return model.eval()


@torch.inference_mode()
def layer_counts(model: torch.nn.Module, batches: list[dict]) -> tuple[float, float]:
    """(mean layers per real token, mean over batches of the deepest position in the batch)."""
    total, tokens, batch_depths = 0.0, 0, []
    for batch in batches:
        layers = model(batch["input_ids"], mask=batch["mask"]).stats.layers  # (B, L)
        total += float(layers[batch["mask"]].sum())
        tokens += int(batch["mask"].sum())
        batch_depths.append(float(layers.max()))
    return total / tokens, statistics.mean(batch_depths)


@torch.inference_mode()
def time_pass(model: torch.nn.Module, batches: list[dict]) -> tuple[float, float]:
    """(wall seconds, thread CPU seconds) of one inference pass over the batches."""
    wall, cpu = time.perf_counter(), time.thread_time()
    for batch in batches:
        model(batch["input_ids"], mask=batch["mask"])
    return time.perf_counter() - wall, time.thread_time() - cpu


def measure_seed(runs: list[dict], args: argparse.Namespace) -> list[dict]:
    spec = ponderlab.load_spec(runs[0]["run_dir"] / "spec.yaml")
    task = ponderlab.build_task(spec)
    test = TensorDataset(task.build(spec.seed).test)
    rows = []
    for batch_size in args.batch_sizes:
        batches = list(test.sequential_batches(batch_size))
        models = [load_trained(run["run_dir"], task.vocab_size) for run in runs]
        for model in models:  # warm-up
            time_pass(model, batches[:2])
        timings = [[] for _ in models]
        for _ in range(args.repeats):
            for index, model in enumerate(models):
                timings[index].append(time_pass(model, batches))
        for run, model, samples in zip(runs, models, timings, strict=True):
            layers, batch_depth = layer_counts(model, batches)
            rows.append({
                "label": run["label"],
                "seed": run["seed"],
                "batch_size": batch_size,
                "wall_s": statistics.median(s[0] for s in samples),
                "cpu_s": statistics.median(s[1] for s in samples),
                "mean_layers": layers,
                "batch_depth": batch_depth,
                **{key: run["results"].get(key) for key in METRICS},
            })
    return rows


def add_ratios(rows: list[dict]) -> None:
    """Speedups and relative accuracy against the fixed-depth row of the same seed and batch size."""
    for row in rows:
        base = next(
            r for r in rows
            if r["label"] == "fixed" and r["seed"] == row["seed"] and r["batch_size"] == row["batch_size"]
        )
        row["wall_speedup"] = base["wall_s"] / row["wall_s"]
        row["cpu_speedup"] = base["cpu_s"] / row["cpu_s"]
        row["ideal_speedup"] = base["mean_layers"] / row["mean_layers"]
        for key in ("test/token_accuracy", "test/dfa_accuracy", "test/exact_match"):
            if row.get(key) is not None and base.get(key):
                row[f"{key}_rel"] = row[key] / base[key] - 1


def markdown(rows: list[dict]) -> str:
    header = (
        "| model | seed | batch | token acc | (vs fixed) | layers/token | batch depth "
        "| ideal speedup | CPU speedup | wall speedup |\n|---|---|---|---|---|---|---|---|---|---|"
    )
    lines = [header]
    for r in rows:
        rel = r.get("test/token_accuracy_rel")
        lines.append(
            f"| {r['label']} | {r['seed']} | {r['batch_size']} | {r['test/token_accuracy']:.4f} "
            f"| {'' if rel is None else f'{100 * rel:+.1f}%'} | {r['mean_layers']:.2f} | {r['batch_depth']:.2f} "
            f"| {r['ideal_speedup']:.2f}x | {r['cpu_speedup']:.2f}x | {r['wall_speedup']:.2f}x |"
        )
    return "\n".join(lines)


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--out-dir", type=Path, default=Path("runs/resnet_bk"))
    parser.add_argument("--thresholds", type=float, nargs="+", default=[0.95])
    parser.add_argument("--time-penalty", type=float, default=0.01, help="lambda for every threshold run")
    parser.add_argument("--control-depths", type=int, nargs="*", default=[1])
    parser.add_argument("--seeds", type=int, nargs="+", default=[0])
    parser.add_argument("--batch-sizes", type=int, nargs="+", default=[32, 1])
    parser.add_argument("--repeats", type=int, default=5)
    parser.add_argument("--overrides", nargs="*", default=[], help="extra dotted.key=value for every run")
    args = parser.parse_args()
    torch.set_num_threads(1)

    rows = []
    runs = plan_runs(args)
    for run in runs:
        run["results"] = train(run)
    for seed in args.seeds:
        rows.extend(measure_seed([r for r in runs if r["seed"] == seed], args))
    add_ratios(rows)
    args.out_dir.mkdir(parents=True, exist_ok=True)
    (args.out_dir / "summary.json").write_text(json.dumps(rows, indent=1))
    print(markdown(rows))


if __name__ == "__main__":
    main()
