"""Summary of the adaptive study from the run outputs: probe.md, calibration.md, table.md, summary.json.

    python examples/adaptive_study/summarize.py runs/adaptive_study --out docs/results/adaptive_study

Reads every runs/adaptive_study/{grid,probe}/<task>/<config>/seed<k>/results.json (and
cpu_seconds.json) and the calibration record docs/results/adaptive_study/calibration.json.
Per task and config: seeds, test token accuracy and exact match (mean and 95% t-interval
over seeds), compute = test mean layer applications per token (`test/mean_layers`, mean and
per seed), and two gaps to the fixed-depth frontier (`none` with 1..4 layers; positive = above
the fixed-depth curve):

- at matched compute: the config's mean accuracy minus the mean fixed-depth curve, linearly
  interpolated at the config's mean compute (no interval: a reading aid, not a test);
- robust to compute drift: per seed, the run's token accuracy minus the *same seed's*
  fixed-depth curve, linearly interpolated at *that run's own* test mean layers; then the
  mean and 95% t-interval of these per-seed gaps.

The knobs were calibrated on seed 0 only, so a learned halting strategy can spend a different
compute on another seed. A row is at matched compute when every seed's test mean layers is
within MATCHED of TARGET; the others are listed under the table and should be read only by
the per-seed gap.

When runs/adaptive_study/probe holds no runs (the study ran with `--no-probe`), probe.md is
kept as it is and the probe's CPU minutes are read from its last line (marked as not rerun).
"""

from __future__ import annotations

import argparse
import json
import math
import re
import statistics
from pathlib import Path

from run import CONFIGS, TARGET, TASKS  # the study's grid (run.py beside this file)

#: two-sided 95% Student t quantiles by degrees of freedom
T95 = {1: 12.706, 2: 4.303, 3: 3.182, 4: 2.776, 5: 2.571, 6: 2.447, 7: 2.365, 8: 2.306, 9: 2.262}
METRICS = (("token", "test/token_accuracy"), ("exact", "test/exact_match"), ("layers", "test/mean_layers"),
           ("hops", "test/mean_hops"))
#: a row is at matched compute when every seed's test mean layers is within this of TARGET
MATCHED = 0.25


def interval(values: list[float]) -> tuple[float, float | None]:
    """Mean and half-width of the 95% t-interval (None for one value)."""
    mean = statistics.fmean(values)
    if len(values) < 2:
        return mean, None
    return mean, T95.get(len(values) - 1, 1.96) * statistics.stdev(values) / math.sqrt(len(values))


def collect(root: Path) -> dict:
    groups: dict[tuple[str, str], list[dict]] = {}
    for path in sorted(root.glob("*/*/seed*/results.json"), key=lambda p: (p.parts[-4], p.parts[-3],
                                                                             int(p.parts[-2][4:]))):
        task, config = path.parts[-4], path.parts[-3]
        results = json.loads(path.read_text())
        cpu = path.parent / "cpu_seconds.json"
        record = json.loads(cpu.read_text()) if cpu.exists() else {}
        results["copied"] = "copied_from" in record  # CPU counted in the calibration
        results["cpu_seconds"] = None if not record else 0.0 if results["copied"] else record["cpu_seconds"]
        results["seed_dir"] = path.parent.name
        groups.setdefault((task, config), []).append(results)
    return groups


def frontier_at(points: list[tuple[float, float]], x: float) -> float | None:
    """Piecewise-linear interpolation of (layers, accuracy) points at x; None outside them."""
    points = sorted(points)
    for (x0, y0), (x1, y1) in zip(points, points[1:], strict=False):
        if x0 <= x <= x1:
            return y0 + (y1 - y0) * (x - x0) / (x1 - x0) if x1 > x0 else max(y0, y1)
    return None


def summarize(groups: dict) -> dict:
    rows = []
    for (task, config), runs in sorted(groups.items()):
        row = {"task": task, "config": config, "halting": runs[0]["halting"], "scope": runs[0]["scope"],
               "seeds": sorted(r["seed"] for r in runs), "params": runs[0]["model/parameters"],
               "cpu_seconds": sum(r["cpu_seconds"] or 0.0 for r in runs),
               "cpu_missing": sum(r["cpu_seconds"] is None for r in runs),
               "copied": sum(r["copied"] for r in runs)}
        for name, key in METRICS:
            values = [float(r[key]) for r in runs if isinstance(r.get(key), (int, float))]
            row[name], row[name + "_ci"] = interval(values) if values else (None, None)
            row[name + "_per_seed"] = values
        rows.append(row)
    for task in sorted({r["task"] for r in rows}):
        fixed = [r for r in rows if r["task"] == task and r["config"].startswith("none_L")]
        for row in (r for r in rows if r["task"] == task):
            for metric in ("token", "exact"):
                at = frontier_at([(f["layers"], f[metric]) for f in fixed], row["layers"]) if fixed else None
                row[metric + "_vs_frontier"] = None if at is None else row[metric] - at
            # per seed: the run against the same seed's fixed-depth curve at the run's own cost
            gaps = []
            for i, seed in enumerate(row["seeds"]):
                curve = [(f["layers_per_seed"][f["seeds"].index(seed)], f["token_per_seed"][f["seeds"].index(seed)])
                         for f in fixed if seed in f["seeds"]]
                at = frontier_at(curve, row["layers_per_seed"][i]) if len(curve) > 1 else None
                gaps.append(None if at is None else row["token_per_seed"][i] - at)
            row["token_vs_frontier_per_seed"] = gaps
            known = [g for g in gaps if g is not None]
            row["gap"], row["gap_ci"] = interval(known) if known else (None, None)
            row["gap_seeds"] = len(known)
            row["gap_above"] = sum(g > 0 for g in known)
            layers = row["layers_per_seed"]
            row["layers_min"], row["layers_max"] = (min(layers), max(layers)) if layers else (None, None)
            row["fixed_depth"] = row["config"].startswith("none_L")
            row["matched"] = None if row["fixed_depth"] or not layers else \
                all(abs(x - TARGET) <= MATCHED for x in layers)
    return {"rows": rows, "cpu_seconds_total": sum(r["cpu_seconds"] for r in rows),
            "runs": sum(len(r["seeds"]) for r in rows),
            "runs_without_cpu": sum(r["cpu_missing"] for r in rows)}


def cell(mean: float | None, ci: float | None, digits: int = 3) -> str:
    if mean is None:
        return "-"
    return f"{mean:.{digits}f}" + (f" ± {ci:.{digits}f}" if ci is not None else "")


def signed(value: float | None) -> str:
    return "-" if value is None else f"{value:+.3f}"


def table(summary: dict) -> str:
    lines = [
        "Generated by `examples/adaptive_study/summarize.py` from the run outputs; do not edit.",
        "Mean ± 95% t-interval over seeds. Compute = test mean layer applications per token.",
        "compute per seed: seed 0 (the calibration seed) first; matched = every seed within "
        f"{MATCHED} of {TARGET:g} layers/token (no = not at matched compute: read the row by the same-seed gap only).",
        "vs fixed depth (mean) = mean minus the fixed-depth (`none_L1..4`) mean accuracy, linearly "
        "interpolated at the row's mean compute (no interval: a reading aid, not a test).",
        "vs same-seed fixed depth = each run's token accuracy minus the same seed's fixed-depth curve, "
        "linearly interpolated at the run's own compute (per seed, then mean ± 95% t-interval over seeds and "
        "the number of seeds above the curve); robust to compute drift. '-' = outside 1..4 layers.",
        "",
        "| task | config | scope | seeds | params | compute (layers/token) | compute per seed | matched "
        "| test token acc | vs fixed depth (mean) | vs same-seed fixed depth, per seed | vs same-seed fixed depth "
        "| above | test exact match | exact vs fixed depth (mean) | CPU s |",
        "|---|---|---|---|---:|---:|---:|---|---:|---:|---:|---:|---:|---:|---:|---:|",
    ]
    rows = sorted(summary["rows"], key=lambda r: (r["task"], not r["config"].startswith("none_L"), r["config"]))
    for task in sorted({r["task"] for r in rows}):
        fixed = [r["token"] for r in rows if r["task"] == task and r["config"].startswith("none_L")]
        rising = all(b > a for a, b in zip(fixed, fixed[1:], strict=False))
        lines.insert(-3, f"{task}: the fixed-depth mean token accuracy "
                     f"({' / '.join(f'{v:.3f}' for v in fixed)} for 1..{len(fixed)} layers) "
                     f"{'rises with every layer' if rising else 'is not monotone in depth'}.")
    for r in rows:
        fixed_depth = r["fixed_depth"]
        per_seed_layers = "-" if fixed_depth else " / ".join(f"{x:.2f}" for x in r["layers_per_seed"])
        matched = "-" if r["matched"] is None else "yes" if r["matched"] else "**no**"
        per_seed_gap = "-" if fixed_depth else " / ".join(map(signed, r["token_vs_frontier_per_seed"]))
        gap = "-" if fixed_depth or r["gap"] is None else \
            f"{r['gap']:+.3f}" + (f" ± {r['gap_ci']:.3f}" if r["gap_ci"] is not None else "")
        above = "-" if fixed_depth else f"{r['gap_above']}/{r['gap_seeds']}"
        lines.append(
            f"| {r['task']} | {r['config']} | {r['scope']} | {','.join(map(str, r['seeds']))} | {r['params']:,} "
            f"| {cell(r['layers'], r['layers_ci'], 2)} | {per_seed_layers} | {matched} "
            f"| {cell(r['token'], r['token_ci'])} | {signed(r['token_vs_frontier'])} | {per_seed_gap} | {gap} "
            f"| {above} | {cell(r['exact'], r['exact_ci'])} | {signed(r['exact_vs_frontier'])} "
            f"| {r['cpu_seconds']:.0f} |")
    drift = [r for r in rows if r["matched"] is False]
    if drift:
        lines += ["", f"Not at matched compute (some seed's test mean layers more than {MATCHED} from {TARGET:g}; "
                  "read by the same-seed gap only): " + ", ".join(
                      f"{r['task']}/{r['config']} ({r['layers_min']:.2f}-{r['layers_max']:.2f})" for r in drift) + "."]
    outside = [f"{r['task']}/{r['config']} seed {s}" for r in rows for s, g in
               zip(r["seeds"], r["token_vs_frontier_per_seed"], strict=True) if g is None and not r["fixed_depth"]]
    if outside:
        lines += ["", "No same-seed gap (compute outside that seed's fixed-depth curve): " + ", ".join(outside) + "."]

    done = {(r["task"], r["config"]) for r in rows}
    missing = [f"{task}/{config}" for task in TASKS for config in CONFIGS if (task, config) not in done]
    if missing:
        lines += ["", "Not run yet: " + ", ".join(missing) + "."]
    short = [f"{r['task']}/{r['config']} ({len(r['seeds'])})" for r in rows if len(r["seeds"]) < 3]
    if short:
        lines += ["", "Fewer than 3 seeds (seeds run): " + ", ".join(short) + "."]
    lines += ["", f"{summary['runs']} runs, {summary['grid_cpu_seconds'] / 60:.1f} CPU minutes of training "
              "(user + system of the `ponderlab run` children, from cpu_seconds.json; "
              f"{summary['runs_without_cpu']} runs have no record and count 0).", ""]
    return "\n".join(lines)


def probe_table(root: Path) -> tuple[str, float]:
    """Fixed depth 1, 2, 4 on each candidate task, per seed: test token accuracy (and CPU s)."""
    groups = collect(root)
    lines = ["Generated by `examples/adaptive_study/summarize.py` from runs/adaptive_study/probe; do not edit.",
             "Fixed depth (`none`, 1 / 2 / 4 layers) on each candidate task: test token accuracy per seed "
             "(exact match in brackets where it differs), the 1-to-4-layer gap, and CPU seconds per run.", "",
             "| task | seed | 1 layer | 2 layers | 4 layers | gap 4 - 1 | CPU s (1 / 2 / 4 layers) |",
             "|---|---:|---:|---:|---:|---:|---:|"]
    cpu_total = 0.0
    for task in sorted({t for t, _ in groups}):
        seeds = sorted({r["seed"] for (t, _), runs in groups.items() if t == task for r in runs})
        for seed in seeds:
            cells, cpus, token = [], [], {}
            for config in ("none_L1", "none_L2", "none_L4"):
                run = next((r for r in groups.get((task, config), []) if r["seed"] == seed), None)
                if run is None:
                    cells.append("-")
                    cpus.append("-")
                    continue
                token[config] = run["test/token_accuracy"]
                exact = run["test/exact_match"]
                cells.append(f"{token[config]:.3f}" + ("" if abs(exact - token[config]) < 1e-9 else f" ({exact:.3f})"))
                cpus.append(f"{run['cpu_seconds']:.0f}" if run["cpu_seconds"] is not None else "n/m")
                cpu_total += run["cpu_seconds"] or 0.0
            gap = (f"{token['none_L4'] - token['none_L1']:+.3f}" if {"none_L1", "none_L4"} <= set(token) else "-")
            lines.append(f"| {task} | {seed} | {' | '.join(cells)} | {gap} | {' / '.join(cpus)} |")
    lines += ["", f"Probe: {cpu_total / 60:.1f} CPU minutes.", ""]
    return "\n".join(lines), cpu_total


def calibration_table(calibration: dict) -> tuple[str, float]:
    lines = ["Generated by `examples/adaptive_study/summarize.py` from calibration.json; do not edit.",
             "Compute calibration on seed 0: each trial's knob value and the validation mean layer "
             "applications per token (target 2.0, stop within 0.1); the chosen value (closest) is used for every "
             "seed. Inference-only knobs were searched by re-evaluating one trained run "
             "(`ponderlab eval RUN halting.<knob>=value --split validation`).", "",
             "| task | config | knob | trials: value -> validation layers/token (token accuracy) | chosen | CPU s |",
             "|---|---|---|---|---:|---:|"]
    cpu_total = 0.0
    for task, configs in sorted(calibration.items()):
        for config, record in sorted(configs.items()):
            trials = "; ".join(f"{t['value']:.4g} -> " + (f"run failed ({t['failed'].split(': ', 1)[-1]})"
                                                           if "failed" in t else
                                                           f"{t['validation_mean_layers']:.2f} "
                                                           f"({t['validation_token_accuracy']:.3f})")
                               for t in record["trials"])
            kind = " (inference only)" if record["inference_only"] else ""
            lines.append(f"| {task} | {config} | `{record['key']}`{kind} | {trials} | {record['value']:.4g} "
                         f"| {record['cpu_seconds']:.0f} |")
            cpu_total += record["cpu_seconds"]
    lines += ["", f"Calibration: {cpu_total / 60:.1f} CPU minutes (a trial equal to the grid's seed-0 run is "
              "copied into the grid, not rerun; its CPU counts here, not in the grid).", ""]
    return "\n".join(lines), cpu_total


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.split("\n")[0])
    parser.add_argument("root", type=Path, nargs="?", default=Path("runs/adaptive_study"))
    parser.add_argument("--out", type=Path, default=Path("docs/results/adaptive_study"))
    args = parser.parse_args()
    args.out.mkdir(parents=True, exist_ok=True)
    summary = summarize(collect(args.root / "grid"))
    summary["probe_rerun"] = (args.root / "probe").is_dir() and bool(collect(args.root / "probe"))
    if summary["probe_rerun"]:
        probe, summary["probe_cpu_seconds"] = probe_table(args.root / "probe")
    else:  # --no-probe: keep the committed probe and its CPU
        kept = (args.out / "probe.md").read_text() if (args.out / "probe.md").exists() else ""
        minutes = re.search(r"Probe: ([0-9.]+) CPU minutes", kept)
        probe, summary["probe_cpu_seconds"] = kept, float(minutes.group(1)) * 60 if minutes else 0.0
    path = args.out / "calibration.json"
    calibration, summary["calibration_cpu_seconds"] = calibration_table(json.loads(path.read_text())
                                                                        if path.exists() else {})
    copied = sum(r["copied"] for r in summary["rows"])
    summary["grid_cpu_seconds"] = summary["cpu_seconds_total"]
    summary["cpu_seconds_total"] = summary["grid_cpu_seconds"] + summary["probe_cpu_seconds"] + \
        summary["calibration_cpu_seconds"]
    (args.out / "summary.json").write_text(json.dumps(summary, indent=1) + "\n")
    if summary["probe_rerun"]:
        (args.out / "probe.md").write_text(probe)
    (args.out / "calibration.md").write_text(calibration)
    text = table(summary)
    kept = "" if summary["probe_rerun"] else " [the earlier study's, not rerun: probe.md kept as committed]"
    text += (f"\nAll of the study: {summary['cpu_seconds_total'] / 60:.1f} CPU minutes (probe "
             f"{summary['probe_cpu_seconds'] / 60:.1f}{kept}, calibration "
             f"{summary['calibration_cpu_seconds'] / 60:.1f}, grid {summary['grid_cpu_seconds'] / 60:.1f}; "
             f"{copied} grid runs copied from the calibration).\n")
    (args.out / "table.md").write_text(text)
    print(probe, calibration, text, sep="\n")


if __name__ == "__main__":
    main()
