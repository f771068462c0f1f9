"""Seed 000's comparison at CPU scale: every task x backbone x halting of grid.yaml, then a report.

Halting rows: none, constant, graves (Graves' ACT) and seed000_act (seed 000's own ACT).

    python examples/seed000/reproduce.py                      # all runs + report
    python examples/seed000/reproduce.py --backbones lstm,transformer --no-report
    python examples/seed000/reproduce.py --report-only        # re-draw tables and plots
    python examples/seed000/reproduce.py --print-specs        # show the composed specs

Runs go to `--runs` (default runs/seed000/<task>-<backbone>-<halting>), one after
another in this process with one torch thread each. A finished run (results.json
present) is skipped and a killed one resumed, so the command can be re-run. Then
`ponderlab eval` runs the grid's `evals` (longer inputs) on every finished run. The
report (`ponderlab report`, same as `ponderlab report runs/seed000 --out
docs/results/seed000`) goes to `--report`, with timings.json (wall and CPU seconds
per run; wall time depends on how busy the machine is, CPU time much less).
"""

from __future__ import annotations

import argparse
import copy
import json
import os
import platform
import time
from pathlib import Path

import yaml

HERE = Path(__file__).resolve().parent


def merge(base: dict, extra: dict) -> dict:
    """Recursive dict merge (extra wins), on a copy."""
    out = copy.deepcopy(base)
    for key, value in extra.items():
        if isinstance(value, dict) and isinstance(out.get(key), dict):
            out[key] = merge(out[key], value)
        else:
            out[key] = copy.deepcopy(value)
    return out


def compose(grid: dict, task: str, backbone: str, halting: str) -> dict:
    """The experiment spec of one grid point."""
    spec = copy.deepcopy(grid["base"])
    spec["name"] = f"{task}-{backbone}-{halting}"
    spec["task"] = copy.deepcopy(grid["tasks"][task])
    section = copy.deepcopy(grid["backbones"][backbone])
    if "n_layers" not in section and task in grid.get("layers", {}):
        section["n_layers"] = grid["layers"][task]
    tweaks = (grid.get("per_task_backbone") or {}).get(task, {}).get(backbone, {})
    spec["backbone"] = merge(section, tweaks)
    spec["halting"] = copy.deepcopy(grid["haltings"][halting])
    return spec


def selected(names: list[str], wanted: str | None, what: str) -> list[str]:
    if not wanted:
        return names
    chosen = [n.strip() for n in wanted.split(",") if n.strip()]
    unknown = [n for n in chosen if n not in names]
    if unknown:
        raise SystemExit(f"unknown {what}: {', '.join(unknown)} (grid has {', '.join(names)})")
    return chosen


def run_grid(grid: dict, points: list[tuple[str, str, str]], runs_dir: Path) -> dict[str, dict]:
    """Run every grid point not finished yet; returns wall and CPU seconds per run done now."""
    import torch

    import ponderlab

    torch.set_num_threads(1)
    timings = {}
    for index, (task, backbone, halting) in enumerate(points, 1):
        spec = compose(grid, task, backbone, halting)
        out = runs_dir / spec["name"]
        if (out / "results.json").exists():
            print(f"[{index}/{len(points)}] {spec['name']}: done already", flush=True)
            continue
        resume = (out / "spec.yaml").exists()
        started, cpu_started = time.perf_counter(), time.process_time()
        results = ponderlab.run(spec, output_dir=out, resume=resume)
        timing = {
            "wall_seconds": round(time.perf_counter() - started, 1),
            "cpu_seconds": round(time.process_time() - cpu_started, 1),
        }
        timings[spec["name"]] = timing
        print(
            f"[{index}/{len(points)}] {spec['name']}: exact {results['test/exact_match']:.3f} "
            f"token {results['test/token_accuracy']:.3f} hops {results['test/mean_hops']:.2f} "
            f"({timing['wall_seconds']:.0f} s wall, {timing['cpu_seconds']:.0f} s CPU)",
            flush=True,
        )
    return timings


def run_evals(grid: dict, points: list[tuple[str, str, str]], runs_dir: Path) -> None:
    """`ponderlab eval` of each finished run on the grid's generalisation settings (missing ones only)."""
    import torch

    from ponderlab.core.checkpoint import atomic_write_text
    from ponderlab.core.evaluation import evaluate_run, output_path

    torch.set_num_threads(1)
    for task, backbone, halting in points:
        run_dir = runs_dir / compose(grid, task, backbone, halting)["name"]
        for label, overrides in (grid.get("evals") or {}).get(task, {}).items():
            target = output_path(run_dir, "test", overrides, label)
            if not (run_dir / "results.json").exists() or target.exists():
                continue
            record = evaluate_run(run_dir, overrides=overrides, label=label, device="cpu")
            atomic_write_text(target, json.dumps(record, indent=1, sort_keys=True))
            print(f"eval {run_dir.name} {' '.join(overrides)}: exact "
                  f"{record['results']['test/exact_match']:.3f}", flush=True)


#: The summary's halting columns, in order, with their labels (the ACT rows also show mean hops).
SUMMARY_HALTINGS = {"none": "none", "constant": "constant", "graves": "graves", "seed000_act": "seed 000's ACT"}
ACT_HALTINGS = ("graves", "seed000_act")


def summary_table(runs, metric: str = "test/token_accuracy") -> str:
    """Markdown pivot: one row per task, one column per backbone, `none / constant / graves /
    seed 000's ACT (mean hops of the ACT rows)`; "-" for a run not there."""
    cells: dict[tuple[str, str], dict[str, object]] = {}
    for run in runs:
        cells.setdefault((run.task_label, run.backbone), {})[run.halting] = run
    tasks = list(dict.fromkeys(r.task_label for r in runs))
    backbones = list(dict.fromkeys(r.backbone for r in sorted(runs, key=lambda r: r.backbone)))
    lines = ["| task | " + " | ".join(backbones) + " |", "|---|" + "---|" * len(backbones)]
    for task in tasks:
        row = []
        for backbone in backbones:
            by_halting = cells.get((task, backbone), {})
            if not by_halting:
                row.append("-")
                continue
            numbers = " / ".join(
                f"{by_halting[h].results[metric]:.3f}" if h in by_halting else "-" for h in SUMMARY_HALTINGS
            )
            hops = ", ".join(f"{by_halting[h].results['test/mean_hops']:.2f}" if h in by_halting else "-"
                             for h in ACT_HALTINGS)
            row.append(f"{numbers} ({hops})")
        lines.append(f"| {task} | " + " | ".join(row) + " |")
    return "\n".join(lines) + "\n"


def summary_header(what: str) -> str:
    columns = " / ".join(SUMMARY_HALTINGS.values())
    acts = ", ".join(SUMMARY_HALTINGS[h] for h in ACT_HALTINGS)
    return f"{what}, {columns} (mean hops of {acts}):\n\n"


def main() -> int:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--grid", default=str(HERE / "grid.yaml"), help="grid file (default: next to this script)")
    parser.add_argument("--runs", default="runs/seed000", help="folder for the run directories")
    parser.add_argument("--report", default="docs/results/seed000", help="folder for the report")
    parser.add_argument("--tasks", help="comma-separated subset of the grid's tasks")
    parser.add_argument("--backbones", help="comma-separated subset of the grid's backbones")
    parser.add_argument("--haltings", help="comma-separated subset of the grid's haltings")
    parser.add_argument("--print-specs", action="store_true", help="print the composed specs and exit")
    parser.add_argument("--no-report", action="store_true", help="only train (no evals, no report)")
    parser.add_argument("--report-only", action="store_true", help="no training: missing evals, then the report")
    args = parser.parse_args()

    grid = yaml.safe_load(Path(args.grid).read_text())
    tasks = selected(list(grid["tasks"]), args.tasks, "task")
    backbones = selected(list(grid["backbones"]), args.backbones, "backbone")
    haltings = selected(list(grid["haltings"]), args.haltings, "halting")
    points = [(t, b, h) for t in tasks for b in backbones for h in haltings]
    if args.print_specs:
        for point in points:
            print("---")
            print(yaml.safe_dump(compose(grid, *point), sort_keys=False), end="")
        return 0

    runs_dir = Path(args.runs)
    report_dir = Path(args.report)
    if not args.report_only:
        started = time.perf_counter()
        timings = run_grid(grid, points, runs_dir)
        print(f"{len(timings)} run(s) in {time.perf_counter() - started:.0f} s", flush=True)
        log = runs_dir / "timings.json"
        previous = json.loads(log.read_text()) if log.exists() else {}
        previous = {k: v if isinstance(v, dict) else {"wall_seconds": v} for k, v in previous.items()}
        log.parent.mkdir(parents=True, exist_ok=True)
        log.write_text(json.dumps({**previous, **timings}, indent=1, sort_keys=True))
    if args.no_report:
        return 0
    run_evals(grid, points, runs_dir)

    from ponderlab.core.report import write_report

    written = write_report([runs_dir], report_dir, heatmap_examples=24)
    timings_file = runs_dir / "timings.json"
    timings = json.loads(timings_file.read_text()) if timings_file.exists() else {}
    import torch

    timings = {k: v if isinstance(v, dict) else {"wall_seconds": v} for k, v in timings.items()}

    def total(key: str) -> dict:
        values = [t[key] for t in timings.values() if key in t]
        return {"seconds": round(sum(values), 1), "runs": len(values)}

    (report_dir / "timings.json").write_text(json.dumps({
        "machine": f"{platform.machine()}, {os.cpu_count()} CPUs (shared), torch {torch.__version__}, "
        "1 thread per run",
        "total_wall": total("wall_seconds"),
        "total_cpu": total("cpu_seconds"),
        "runs": timings,
    }, indent=1, sort_keys=True))
    (report_dir / "summary.md").write_text(
        summary_header("Test token accuracy")
        + summary_table(written["runs"])
        + "\n"
        + summary_header("Test exact match")
        + summary_table(written["runs"], "test/exact_match")
    )
    for warning in written["warnings"]:
        print(f"warning: {warning}")
    print(f"report: {report_dir / 'report.md'} ({len(written['runs'])} runs)")
    return 0


if __name__ == "__main__":
    raise SystemExit(main())
