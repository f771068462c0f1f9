"""Throughput of one run by worker count: the same spec and global batch, one process vs N workers.

Rows: the plain process (no Ray), then Ray Train with each `--workers` count (CPU workers on
gloo; with `--gpus-per-worker` on NCCL). Columns: the training loop's seconds per step (from
results.json: no Ray start, no data build, no final evaluation), examples per second, the
speedup over the plain process, and the wall time of the whole command including Ray's start.
The global batch is the same in every row, so N workers each compute batch_size / N rows: on a
CPU the speedup shows what the split gains and what the gradient all-reduce and the per-step
statistics all-reduce cost. A short plain run first compiles what compiles on first use (the
fused ACT kernel); then each repeat runs every row once, in turn, and the table shows medians.
The machine's load average is printed with the table: on a shared machine the numbers move
with it.

    python benchmarks/distributed.py                          # CPU: plain, 1 and 2 workers
    python benchmarks/distributed.py --workers 1 2 4 8 --gpus-per-worker 1 --batch-size 256 --d-model 512
"""

from __future__ import annotations

import argparse
import os
import shutil
import statistics
import tempfile
import time
from pathlib import Path

os.environ.setdefault("RAY_ENABLE_WINDOWS_OR_OSX_CLUSTER", "0")  # a local Ray on loopback


def bench_spec(args: argparse.Namespace, workers: int) -> dict:
    return {
        "seed": 0,
        "task": {"name": "binary_copy", "length": args.length, "train_size": 4096, "validation_size": 64,
                 "test_size": 64},
        "backbone": {"name": "transformer", "d_model": args.d_model, "n_layers": 2, "n_heads": 4,
                     "ffn_size": 2 * args.d_model},
        "halting": {"name": "graves", "scope": "layer", "max_hops": 3, "epsilon": 0.1},
        "training": {"steps": args.steps, "batch_size": args.batch_size, "warmup_steps": 1,
                     "eval_every": 10 * args.steps, "log_every": args.steps, "num_threads": args.threads,
                     "device": "cuda" if args.gpus_per_worker else "cpu"},
        "distributed": {"workers": workers, "gpus_per_worker": args.gpus_per_worker,
                        "cpus_per_worker": args.threads},
    }


def measure(args: argparse.Namespace, workers: int | None, root: Path, label: str) -> dict:
    """One run; workers None = the plain process."""
    from ponderlab.core.distributed.launch import run_distributed
    from ponderlab.core.run import execute
    from ponderlab.core.spec import resolve_spec

    spec = resolve_spec(bench_spec(args, workers or 1))
    started = time.perf_counter()
    if workers is None:
        results, _ = execute(spec, output_dir=root / f"plain-{label}", progress=False)
    else:
        results, _ = run_distributed(spec, output_dir=root / f"workers{workers}-{label}")
    wall = time.perf_counter() - started
    per_step = results["time/seconds_per_step"]
    return {"per_step": per_step, "examples": args.batch_size / per_step, "wall": wall}


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--workers", type=int, nargs="+", default=[1, 2])
    parser.add_argument("--gpus-per-worker", type=float, default=0)
    parser.add_argument("--threads", type=int, default=1, help="torch threads (and Ray CPUs) per worker")
    parser.add_argument("--steps", type=int, default=40)
    parser.add_argument("--batch-size", type=int, default=64)
    parser.add_argument("--length", type=int, default=32, help="binary_copy length (sequence 2L+2)")
    parser.add_argument("--d-model", type=int, default=64)
    parser.add_argument("--repeats", type=int, default=2)
    args = parser.parse_args()

    import ray

    root = Path(tempfile.mkdtemp(prefix="pldb", dir="/tmp"))
    ray.init(include_dashboard=False, logging_level="WARNING", _temp_dir=str(root / "ray"))
    placements: list[int | None] = [None, *args.workers]
    runs: dict[int | None, list[dict]] = {placement: [] for placement in placements}
    try:
        measure(argparse.Namespace(**{**vars(args), "steps": 2}), None, root, "warmup")
        for repeat in range(args.repeats):
            for placement in placements:
                runs[placement].append(measure(args, placement, root, str(repeat)))
    finally:
        ray.shutdown()
        shutil.rmtree(root, ignore_errors=True)
    rows = [
        ("plain process" if placement is None else f"{placement} worker(s)",
         {key: statistics.median(run[key] for run in runs[placement]) for key in ("per_step", "examples", "wall")})
        for placement in placements
    ]
    base = rows[0][1]["per_step"]
    device = f"{args.gpus_per_worker:g} GPU(s) per worker" if args.gpus_per_worker else "CPU, gloo"
    print(f"global batch {args.batch_size}, {args.steps} steps, d_model {args.d_model}, {device}, "
          f"{args.threads} thread(s) per worker, medians of {args.repeats}; {os.cpu_count()} CPUs, load average "
          f"{' '.join(f'{x:.1f}' for x in os.getloadavg())}")
    print("| run | ms/step | examples/s | speedup | wall s (with start) |")
    print("|---|---:|---:|---:|---:|")
    for name, row in rows:
        print(f"| {name} | {1000 * row['per_step']:.1f} | {row['examples']:.0f} | "
              f"{base / row['per_step']:.2f} | {row['wall']:.1f} |")


if __name__ == "__main__":
    main()
