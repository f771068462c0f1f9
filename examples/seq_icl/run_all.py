"""Run every seq_icl spec in this folder and print our test accuracy beside seq_icl's.

    python examples/seq_icl/run_all.py [--output-dir runs/seq_icl] [--only GLOB ...] [--rerun] [--table-only]

Specs are named `<task>_<backbone>.yaml` (task and backbone are read from the
spec itself). Each runs as `ponderlab run SPEC --output-dir OUT/<stem> --no-progress`;
a spec whose run directory already holds results.json is not rerun (delete it or
pass --rerun), so adding a spec for a new backbone only runs that one. The
table is Markdown, ready for docs/results.md; accuracy is test exact match
(the final token right) in percent.
"""

from __future__ import annotations

import argparse
import fnmatch
import json
import resource
import subprocess
import sys
import time
from pathlib import Path

import yaml

HERE = Path(__file__).resolve().parent

#: seq_icl README, test accuracy (%), 2 layers d=32, 400 epochs (GPU).
REFERENCE = {
    "associative_recall": {
        "transformer": 100.0, "s4d": 32.4, "h3": 98.2, "gilr": 50.2, "lru": 11.6, "lstm": 36.2, "rwkv": 30.0,
    },
    "induction_head": {
        "transformer": 97.2, "s4d": 8.8, "h3": 100.0, "gilr": 6.2, "lru": 4.8, "lstm": 4.8, "rwkv": 6.0,
    },
}
CHANCE = {"associative_recall": 100 / 9, "induction_head": 100 / 18}


def children_cpu_seconds() -> float:
    usage = resource.getrusage(resource.RUSAGE_CHILDREN)
    return usage.ru_utime + usage.ru_stime


def run_spec(spec: Path, run_dir: Path) -> None:
    """`ponderlab run` in a child process; records its CPU seconds next to results.json."""
    command = ["ponderlab", "run", str(spec), "--output-dir", str(run_dir), "--no-progress"]
    print("$", " ".join(command), flush=True)
    cpu_before, started = children_cpu_seconds(), time.perf_counter()
    subprocess.run(command, check=True)
    timing = {"cpu_seconds": children_cpu_seconds() - cpu_before, "wall_seconds": time.perf_counter() - started}
    (run_dir / "process_time.json").write_text(json.dumps(timing, indent=1))


def table_row(spec: Path, run_dir: Path) -> str:
    config = yaml.safe_load(spec.read_text())
    task, backbone = config["task"]["name"], config["backbone"]["name"]
    results = json.loads((run_dir / "results.json").read_text())
    timing_file = run_dir / "process_time.json"
    cpu = json.loads(timing_file.read_text())["cpu_seconds"] if timing_file.exists() else float("nan")
    reference = REFERENCE.get(task, {}).get(backbone)
    return (
        f"| {task} | {backbone} | {results['train/steps']} | {100 * results['test/exact_match']:.1f} | "
        f"{'-' if reference is None else f'{reference:.1f}'} | {CHANCE.get(task, float('nan')):.1f} | "
        f"{cpu:.0f} | {results['time/seconds']:.0f} | `{spec.relative_to(HERE.parent.parent)}` |"
    )


def main(argv: list[str] | None = None) -> int:
    parser = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    parser.add_argument("--output-dir", default="runs/seq_icl", help="Parent folder of the run directories.")
    parser.add_argument(
        "--only", action="append", help="Glob on spec file names, e.g. '*_lstm.yaml' (repeatable; default: all)."
    )
    parser.add_argument("--rerun", action="store_true", help="Run again even when results.json exists.")
    parser.add_argument("--table-only", action="store_true", help="Only print the table of finished runs.")
    args = parser.parse_args(argv)

    patterns = args.only or ["*"]
    specs = [s for s in sorted(HERE.glob("*.yaml")) if any(fnmatch.fnmatch(s.name, p) for p in patterns)]
    if not specs:
        print(f"no spec matches {patterns} in {HERE}", file=sys.stderr)
        return 2
    rows = []
    for spec in specs:
        run_dir = Path(args.output_dir) / spec.stem
        done = (run_dir / "results.json").exists()
        if not args.table_only and (args.rerun or not done):
            if run_dir.exists() and args.rerun:
                import shutil

                shutil.rmtree(run_dir)
            run_spec(spec, run_dir)
            done = True
        if done:
            rows.append(table_row(spec, run_dir))
    print()
    print("| task | backbone | steps | ours: test acc (%) | seq_icl (%) | chance (%) | CPU s | wall s | spec |")
    print("|---|---|---|---|---|---|---|---|---|")
    print("\n".join(rows))
    return 0


if __name__ == "__main__":
    raise SystemExit(main())
