"""Seed 000's comparison at a CPU scale where the baselines learn: search, grid with seeds, table.

    python examples/seed000/reproduce.py                       # search, every run, random arms, table
    python examples/seed000/reproduce.py --backbones transformer,lstm
    python examples/seed000/reproduce.py --cells mamba:graves,armt:seed000_act --tasks ca1,ca2
                                                               # chosen (backbone, halting) rows, in that order
    python examples/seed000/reproduce.py --report-only         # table from the finished runs
    python examples/seed000/reproduce.py --report-only --embed docs/results.md  # and into docs/results.md
    python examples/seed000/reproduce.py --print-specs         # the composed specs

Steps (each skipped when its output exists, so the same command resumes where it stopped):

1. `ponderlab tune examples/seed000/search_tune.yaml` (fixed depth, halting none): the
   settings search; its trials are listed in docs/results/seed000/search.md. grid.yaml holds
   the settings chosen from it (the search does not rewrite grid.yaml).
2. Every task x backbone x halting x seed of grid.yaml (`nice -n 10 ponderlab run`, `--nice`, one torch
   thread, `--jobs` at a time, seed-major so that every cell gets seed 0 before seed 1). With
   `--cells BACKBONE:HALTING,...` only those rows, pair by pair in the order given and cell by
   cell (every seed of one task before the next), each followed by its step 3; `--stop-at HH:MM`
   starts no run at or after that UTC time.
3. `random` at equal mean hops for each (task, backbone, ACT halting) whose test token
   accuracy differs from `none` (Welch p < 0.05 over seeds): mean_hops = that ACT row's mean
   test hops, same cap.
4. docs/results/seed000/table.md and table.json: test token accuracy and exact match, mean
   over seeds with 95% t-intervals, mean hops, CPU seconds; each halting minus none and each ACT
   row minus its random row (Welch); the CA reference predictors. `--embed docs/results.md`
   copies search.md and table.md into that file's seed000 section.

Runs go to runs/seed000/<task>-<backbone>-<halting>-s<seed>/ (raw, not committed).
"""

from __future__ import annotations

import argparse
import copy
import csv
import json
import math
import os
import subprocess
import threading
import time
from concurrent.futures import ThreadPoolExecutor
from pathlib import Path

import yaml

HERE = Path(__file__).resolve().parent
LOCK = threading.Lock()


def log(message: str) -> None:
    with LOCK:
        print(time.strftime("%H:%M:%S"), message, flush=True)


def merge(base: dict, extra: dict) -> dict:
    """Recursive dict merge (extra wins), on a copy."""
    out = copy.deepcopy(base)
    for key, value in extra.items():
        if isinstance(value, dict) and isinstance(out.get(key), dict):
            out[key] = merge(out[key], value)
        else:
            out[key] = copy.deepcopy(value)
    return out


def compose(grid: dict, task: str, backbone: str, halting: str, seed: int, extra_halting: dict | None = None) -> dict:
    """The experiment spec of one grid point (halting `random` takes its options from extra_halting)."""
    spec = copy.deepcopy(grid["base"])
    spec["name"] = f"{task}-{backbone}-{halting}-s{seed}"
    spec["seed"] = seed
    spec["task"] = copy.deepcopy(grid["tasks"][task])
    section = copy.deepcopy(grid["backbones"][backbone])
    if "n_layers" not in section and task in grid.get("layers", {}):
        section["n_layers"] = grid["layers"][task]
    tweaks = (grid.get("per_task_backbone") or {}).get(task, {}).get(backbone, {})
    spec["backbone"] = merge(section, tweaks)
    spec["halting"] = merge(grid["haltings"].get(halting, grid.get("random", {})), extra_halting or {})
    return spec


def selected(names: list[str], wanted: str | None, what: str) -> list[str]:
    if not wanted:
        return names
    chosen = [n.strip() for n in wanted.split(",") if n.strip()]
    unknown = [n for n in chosen if n not in names]
    if unknown:
        raise SystemExit(f"unknown {what}: {', '.join(unknown)} (grid has {', '.join(names)})")
    return chosen


def parse_cells(grid: dict, text: str) -> list[tuple[str, str]]:
    """`--cells backbone:halting,...` as (backbone, halting) pairs, checked against the grid."""
    pairs = []
    for item in [c.strip() for c in text.split(",") if c.strip()]:
        backbone, sep, halting = item.partition(":")
        if not sep or not backbone or not halting:
            raise SystemExit(f"--cells: '{item}' is not BACKBONE:HALTING")
        selected(list(grid["backbones"]), backbone, "backbone")
        selected(list(grid["haltings"]), halting, "halting")
        pairs.append((backbone, halting))
    if not pairs:
        raise SystemExit("--cells: no BACKBONE:HALTING pair given")
    return pairs


def grid_points(grid: dict, tasks: list[str], backbones: list[str], haltings: list[str], seeds: list[int],
                runs: Path) -> list[tuple[dict, Path]]:
    """The whole selection, seed-major within each backbone group (every cell gets seed 0 before seed 1)."""
    points = []
    for group in grid.get("backbone_groups", [backbones]):
        for seed in seeds:
            for task in tasks:
                for backbone in [b for b in group if b in backbones]:
                    for halting in haltings:
                        spec = compose(grid, task, backbone, halting, seed)
                        points.append((spec, runs / spec["name"]))
    return points


def cell_points(grid: dict, pairs: list[tuple[str, str]], tasks: list[str], seeds: list[int],
                runs: Path) -> list[tuple[tuple[str, str], list[tuple[dict, Path]]]]:
    """`--cells`: per (backbone, halting) pair in the order given, its runs cell by cell (task, then
    every seed), so that a stopped queue leaves whole cells (all seeds) rather than partial ones."""
    out = []
    for backbone, halting in pairs:
        points = []
        for task in tasks:
            for seed in seeds:
                spec = compose(grid, task, backbone, halting, seed)
                points.append((spec, runs / spec["name"]))
        out.append(((backbone, halting), points))
    return out


NICE = 10  # niceness of every child (--nice)
STOP_AT: str | None = None  # "HH:MM" UTC (--stop-at): no run is started at or after it


def past_stop(now: time.struct_time | None = None) -> bool:
    if not STOP_AT:
        return False
    now = now or time.gmtime()
    return time.strftime("%H:%M", now) >= STOP_AT


def run_cli(args: list[str], logfile: Path) -> dict:
    """`nice -n NICE ponderlab ...`; wall and CPU seconds of the child (os.wait4)."""
    started = time.perf_counter()
    logfile.parent.mkdir(parents=True, exist_ok=True)
    with open(logfile, "a") as handle:
        proc = subprocess.Popen(["nice", "-n", str(NICE), "ponderlab", *args], stdout=handle, stderr=subprocess.STDOUT)
        _, status, usage = os.wait4(proc.pid, 0)
    code = os.waitstatus_to_exitcode(status)
    if code != 0:
        raise RuntimeError(f"ponderlab {' '.join(args)} failed ({code}); see {logfile}")
    return {"wall_seconds": round(time.perf_counter() - started, 1),
            "cpu_seconds": round(usage.ru_utime + usage.ru_stime, 1)}


def train(spec: dict, out: Path) -> None:
    if (out / "results.json").exists():
        return
    if past_stop():
        log(f"{spec['name']}: not started (--stop-at {STOP_AT} UTC)")
        return
    spec_file = out.parent / f"{out.name}.yaml"
    out.parent.mkdir(parents=True, exist_ok=True)
    spec_file.write_text(yaml.safe_dump(spec, sort_keys=False))
    args = ["run", str(spec_file), "--output-dir", str(out), "--no-progress"]
    if (out / "spec.yaml").exists():
        args.append("--resume")
    timing = run_cli(args, out.parent / f"{out.name}.log")
    (out / "timing.json").write_text(json.dumps(timing))
    r = json.loads((out / "results.json").read_text())
    log(f"{spec['name']}: token {r['test/token_accuracy']:.3f} exact {r['test/exact_match']:.3f} "
        f"hops {r['test/mean_hops']:.2f} ({timing['cpu_seconds']:.0f} CPU s, {timing['wall_seconds']:.0f} s wall)")


def run_points(points: list[tuple[dict, Path]], jobs: int) -> None:
    with ThreadPoolExecutor(max_workers=jobs) as pool:
        futures = [pool.submit(train, spec, out) for spec, out in points]
        for future in futures:
            try:
                future.result()
            except Exception as error:  # keep going; report it
                log(f"error: {error}")


# ------------------------------------------------------------------------- search


def finished(table: Path) -> bool:
    """A search's results.csv with every trial finished (an interrupted one lists unfinished rows)."""
    return table.exists() and all(r.get("status") != "unfinished" for r in csv.DictReader(table.open()))


def search(grid: dict, runs: Path, report: Path) -> None:
    spec_path = HERE / grid["search"]
    spec = yaml.safe_load(spec_path.read_text())
    storage = Path(spec["tune"]["storage_path"]) / spec["name"]
    table = storage / "results.csv"
    timing_file = runs / "search_timing.json"
    if not finished(table):  # never run, or interrupted (results.csv then has unfinished rows)
        args = ["tune", str(spec_path)] + (["--resume"] if storage.exists() else [])
        log(f"search: ponderlab {' '.join(args)}")
        timing_file.parent.mkdir(parents=True, exist_ok=True)
        before = json.loads(timing_file.read_text()) if timing_file.exists() else {}
        timing = run_cli(args, runs / "search.log")
        timing_file.write_text(json.dumps({k: round(v + before.get(k, 0.0), 1) for k, v in timing.items()}))
    search_table(grid, runs, report)


def search_table(grid: dict, runs: Path, report: Path) -> None:
    """docs/results/seed000/search.md from the search's results.csv (nothing if it has not run)."""
    spec = yaml.safe_load((HERE / grid["search"]).read_text())
    table = Path(spec["tune"]["storage_path"]) / spec["name"] / "results.csv"
    if not table.exists():
        return
    timing_file = runs / "search_timing.json"
    rows = list(csv.DictReader(table.open()))
    timing = json.loads(timing_file.read_text()) if timing_file.exists() else {}
    keys = ["task", "backbone", "training.lr", "validation/token_accuracy", "test/token_accuracy",
            "test/exact_match", "time_s"]
    keys = [k for k in keys if rows and k in rows[0]]
    lines = [f"# Seed 000 settings search (`ponderlab tune examples/seed000/{grid['search']}`)", "",
             f"Generated by examples/seed000/reproduce.py from {table}. Budget: {len(rows)} trials, "
             f"{sum(float(r.get('time_s') or 0) for r in rows):.0f} s wall summed over trials "
             f"({timing.get('wall_seconds', 'n/a')} s wall for the search, 2 trials at a time, on the shared "
             "2-core machine; CPU time not measured: Ray's workers are not children of the command).", "",
             "| " + " | ".join(keys) + " |", "|" + "---|" * len(keys)]
    def cell(row: dict, key: str) -> str:
        value = row.get(key, "")
        if key == "task":
            return value.split(", train_size")[0] + ")"
        if "/" in key and value:
            return f"{float(value):.3f}"
        return value

    for row in rows:
        lines.append("| " + " | ".join(cell(row, k) for k in keys) + " |")
    report.mkdir(parents=True, exist_ok=True)
    (report / "search.md").write_text("\n".join(lines) + "\n")
    log(f"search: {len(rows)} trials -> {report / 'search.md'}")


# ------------------------------------------------------------------------- table


def interval(values: list[float]) -> tuple[float, float]:
    """Mean and half-width of the 95% t-interval (nan below 2 values)."""
    import numpy as np
    from scipy import stats

    x = np.asarray(values, dtype=float)
    if len(x) == 0:
        return math.nan, math.nan
    if len(x) < 2:
        return float(x.mean()), math.nan
    return float(x.mean()), float(stats.t.ppf(0.975, len(x) - 1) * x.std(ddof=1) / math.sqrt(len(x)))


def fmt(mean: float, half: float, digits: int = 3, signed: bool = False) -> str:
    if math.isnan(mean):
        return "-"
    sign = "+" if signed else ""
    return f"{mean:{sign}.{digits}f}" if math.isnan(half) else f"{mean:{sign}.{digits}f} ± {half:.{digits}f}"


def collect(runs: Path) -> dict[tuple[str, str, str], dict[int, dict]]:
    cells: dict[tuple[str, str, str], dict[int, dict]] = {}
    for results in runs.glob("*/results.json"):
        name = results.parent.name
        stem, seed = name.rsplit("-s", 1)
        task, backbone, halting = stem.split("-", 2)
        record = json.loads(results.read_text())
        timing_file = results.parent / "timing.json"
        record["timing"] = json.loads(timing_file.read_text()) if timing_file.exists() else {}
        cells.setdefault((task, backbone, halting), {})[int(seed)] = record
    return cells


def differs(a: list[float], b: list[float]) -> bool:
    from scipy import stats

    if len(a) < 2 or len(b) < 2:
        return False
    p = stats.ttest_ind(a, b, equal_var=False).pvalue
    return bool(p < 0.05)


def random_points(grid: dict, runs: Path, tasks, backbones, seeds, acts=None) -> list[tuple[dict, Path]]:
    """`random` at the ACT row's mean hops wherever that ACT row's token accuracy differs from none
    (only the ACT haltings in `acts`, when given)."""
    cells = collect(runs)
    points = []
    for task in tasks:
        for backbone in backbones:
            none = [r["test/token_accuracy"] for r in cells.get((task, backbone, "none"), {}).values()]
            for act in grid.get("act_haltings", []):
                if acts is not None and act not in acts:
                    continue
                rows = cells.get((task, backbone, act), {})
                acc = [r["test/token_accuracy"] for r in rows.values()]
                if not differs(acc, none):
                    continue
                hops = sum(r["test/mean_hops"] for r in rows.values()) / len(rows)
                cap = grid["haltings"][act]["max_hops"]
                label = f"random_{act}"
                for seed in seeds:
                    spec = compose(grid, task, backbone, label, seed,
                                   {"max_hops": cap, "mean_hops": round(min(max(hops, 1.0), cap), 4)})
                    points.append((spec, runs / spec["name"]))
    return points


def welch(a: list[float], b: list[float]) -> tuple[float, float, float]:
    """Mean of a minus mean of b, half-width of its 95% Welch interval and Welch's p (nan below 2 each)."""
    import numpy as np
    from scipy import stats

    x, y = np.asarray(a, dtype=float), np.asarray(b, dtype=float)
    diff = float(x.mean() - y.mean())
    if len(x) < 2 or len(y) < 2:
        return diff, math.nan, math.nan
    vx, vy = x.var(ddof=1) / len(x), y.var(ddof=1) / len(y)
    se = math.sqrt(vx + vy)
    if se == 0:
        return diff, 0.0, math.nan
    df = (vx + vy) ** 2 / (vx**2 / (len(x) - 1) + vy**2 / (len(y) - 1))
    p = float(stats.ttest_ind(x, y, equal_var=False).pvalue)
    return diff, float(stats.t.ppf(0.975, df) * se), p


def copy_baseline(grid: dict, task: str, seeds: list[int]) -> dict[int, dict[str, float]]:
    """Copy-last-state and rule-from-context scores on each seed's test split (CA tasks only)."""
    import importlib.util

    spec = importlib.util.spec_from_file_location("seed000_baselines", HERE / "baselines.py")
    module = importlib.util.module_from_spec(spec)
    spec.loader.exec_module(module)
    return {seed: module.ca_baselines(grid["tasks"][task], seed) for seed in seeds}


def comparisons(grid: dict, cells: dict, tasks: list[str], backbones: list[str], haltings: list[str]) -> list[str]:
    """Each halting against none (Welch), and each CA none row against copying the last state (paired by seed)."""
    lines = ["## Against none (Welch, over seeds)", "",
             "Difference of means (row minus none) with the half-width of its 95% Welch interval; p: Welch's "
             "t-test on token accuracy. Few seeds: read p as a screen, not a test.", "",
             "| task | backbone | halting | seeds | Δ token accuracy | p | Δ exact match | mean hops |",
             "|---|---|---|---:|---:|---:|---:|---:|"]
    for task in tasks:
        for backbone in backbones:
            none = cells.get((task, backbone, "none"), {})
            if len(none) < 2:
                continue
            for halting in haltings:
                rows = cells.get((task, backbone, halting), {})
                if halting == "none" or not rows:
                    continue
                tok = welch([r["test/token_accuracy"] for r in rows.values()],
                            [r["test/token_accuracy"] for r in none.values()])
                ex = welch([r["test/exact_match"] for r in rows.values()],
                           [r["test/exact_match"] for r in none.values()])
                hops = sum(r["test/mean_hops"] for r in rows.values()) / len(rows)
                p = "-" if math.isnan(tok[2]) else f"{tok[2]:.3f}"
                lines.append(f"| {task} | {backbone} | {halting} | {len(rows)} | {fmt(tok[0], tok[1], signed=True)} | "
                             f"{p} | {fmt(ex[0], ex[1], signed=True)} | {hops:.2f} |")
    pairs = [(t, b, a) for t in tasks for b in backbones for a in grid.get("act_haltings", [])
             if cells.get((t, b, a)) and cells.get((t, b, f"random_{a}"))]
    if pairs:
        lines += ["", "## Learned halting against random at equal mean hops (Welch, over seeds)", "",
                  "ACT row minus its `random_X` row (two-point random halting at the ACT row's mean test hops, "
                  "same cap): what the learned halting adds beyond the same amount of extra compute.", "",
                  "| task | backbone | halting | seeds (ACT / random) | Δ token accuracy | p | Δ exact match |",
                  "|---|---|---|---:|---:|---:|---:|"]
        for task, backbone, act in pairs:
            a, r = cells[(task, backbone, act)], cells[(task, backbone, f"random_{act}")]
            tok = welch([x["test/token_accuracy"] for x in a.values()], [x["test/token_accuracy"] for x in r.values()])
            ex = welch([x["test/exact_match"] for x in a.values()], [x["test/exact_match"] for x in r.values()])
            p = "-" if math.isnan(tok[2]) else f"{tok[2]:.3f}"
            lines.append(f"| {task} | {backbone} | {act} | {len(a)} / {len(r)} | {fmt(tok[0], tok[1], signed=True)} | "
                         f"{p} | {fmt(ex[0], ex[1], signed=True)} |")
    lines += ["", "## Fixed depth against copying the last state (CA, paired by seed)", "",
              "Row `none` minus the copy-last-state predictor on the same seed's test split: mean over seeds ± "
              "half-width of the 95% t-interval. Near zero or below: the model has not learned the rule beyond "
              "copying, and its ACT rows are no finding about ACT.", "",
              "| task | backbone | seeds | Δ token accuracy | Δ exact match | rule from context (token / exact) |",
              "|---|---|---:|---:|---:|---:|"]
    for task in tasks:
        if grid["tasks"][task].get("name") != "ca1d":
            continue
        seeds = sorted({s for b in backbones for s in cells.get((task, b, "none"), {})})
        if not seeds:
            continue
        base = copy_baseline(grid, task, seeds)
        rule_tok = sum(base[s]["rule/token_accuracy"] for s in seeds) / len(seeds)
        rule_ex = sum(base[s]["rule/exact_match"] for s in seeds) / len(seeds)
        for backbone in backbones:
            rows = cells.get((task, backbone, "none"), {})
            if not rows:
                continue
            tok = interval([rows[s]["test/token_accuracy"] - base[s]["copy/token_accuracy"] for s in sorted(rows)])
            ex = interval([rows[s]["test/exact_match"] - base[s]["copy/exact_match"] for s in sorted(rows)])
            lines.append(f"| {task} | {backbone} | {len(rows)} | {fmt(*tok, signed=True)} | {fmt(*ex, signed=True)} | "
                         f"{rule_tok:.3f} / {rule_ex:.3f} |")
    return lines + [""]


def write_table(grid: dict, runs: Path, report: Path) -> None:
    cells = collect(runs)
    tasks = list(grid["tasks"])
    backbones = list(grid["backbones"])
    haltings = list(grid["haltings"]) + [f"random_{a}" for a in grid.get("act_haltings", [])]
    baselines = report / "baselines.md"
    lines = ["# Seed 000 at CPU scale: test accuracy over seeds", "",
             "Generated by `python examples/seed000/reproduce.py` from runs/seed000/; do not edit by hand. "
             "Mean over seeds ± half-width of the 95% t-interval (none with one seed). Token accuracy is "
             "per target bit/cell (chance 0.5); exact match is the whole target. `random_X`: random halting "
             "(two-point) at the mean test hops of ACT row X, run only where X's token accuracy differs "
             "from none (Welch p < 0.05). CPU s/run: user + system seconds of the run's process; n/m: not "
             "measured (a run that finished after its launcher was stopped).", ""]
    if baselines.exists():
        lines += ["CA reference predictors on the same test split (`examples/seed000/baselines.py`):", "",
                  baselines.read_text().strip(), ""]
    out_json = {}
    total_cpu, total_wall, n = 0.0, 0.0, 0
    for task in tasks:
        lines += [f"## {task}", "", "| backbone | halting | seeds | token accuracy | exact match | mean hops | CPU s/run |",
                  "|---|---|---:|---:|---:|---:|---:|"]
        for backbone in backbones:
            for halting in haltings:
                rows = cells.get((task, backbone, halting), {})
                if not rows:
                    continue
                tok = interval([r["test/token_accuracy"] for r in rows.values()])
                ex = interval([r["test/exact_match"] for r in rows.values()])
                hops = sum(r["test/mean_hops"] for r in rows.values()) / len(rows)
                cpu = [r["timing"].get("cpu_seconds", math.nan) for r in rows.values()]
                total_cpu += sum(c for c in cpu if not math.isnan(c))
                total_wall += sum(r["timing"].get("wall_seconds", 0.0) for r in rows.values())
                n += len(rows)
                known = [c for c in cpu if not math.isnan(c)]
                cpu_cell = (f"{sum(known) / len(known):.0f}" if known else "n/m") + (
                    f" ({len(cpu) - len(known)} n/m)" if known and len(known) < len(cpu) else "")
                lines.append(f"| {backbone} | {halting} | {len(rows)} | {fmt(*tok)} | {fmt(*ex)} | {hops:.2f} | "
                             f"{cpu_cell} |")
                out_json[f"{task}/{backbone}/{halting}"] = {
                    "seeds": sorted(rows), "token_accuracy": [rows[s]["test/token_accuracy"] for s in sorted(rows)],
                    "exact_match": [rows[s]["test/exact_match"] for s in sorted(rows)],
                    "mean_hops": [rows[s]["test/mean_hops"] for s in sorted(rows)], "cpu_seconds": cpu}
        lines.append("")
    lines += comparisons(grid, cells, tasks, backbones, haltings)
    planned = len(grid["tasks"]) * len(grid["backbones"]) * len(grid["haltings"]) * len(grid["seeds"])
    missing = [f"{t}/{b}" for t in tasks for b in backbones
               if not any((t, b, h) in cells for h in grid["haltings"])]
    search_timing = runs / "search_timing.json"
    st = json.loads(search_timing.read_text()) if search_timing.exists() else {}
    lines += [f"Budget: {n} runs finished ({planned} planned in the main grid, plus random rows), "
              f"{total_cpu / 60:.1f} CPU minutes of training ({total_wall / 60:.1f} min wall summed over runs, "
              "inflated by other jobs on the shared 2-core machine); settings search "
              f"{st.get('wall_seconds', 'n/a')} s wall (search.md).",
              "Not run (no finished run for any halting): " + (", ".join(missing) if missing else "none") + "."]
    report.mkdir(parents=True, exist_ok=True)
    (report / "table.md").write_text("\n".join(lines) + "\n")
    (report / "table.json").write_text(json.dumps({"cells": out_json, "cpu_seconds": round(total_cpu, 1),
                                                   "wall_seconds": round(total_wall, 1), "runs": n},
                                                  indent=1, sort_keys=True))
    log(f"wrote {report / 'table.md'} ({n} runs)")


EMBED_START = "### Search (generated: search.md)"
EMBED_END = "<!-- end: seed000 -->"


def embed(report: Path, results_md: Path) -> None:
    """Copy search.md and table.md (their `## ` headings as `#### `) into the seed000 section of results_md.

    Replaces everything from the line EMBED_START to the line EMBED_END, so the generated tables in
    docs/results.md are the script's output, never hand edits.
    """
    text = results_md.read_text()
    start, end = text.find(EMBED_START), text.find(EMBED_END)
    if start < 0 or end < start:
        raise SystemExit(f"{results_md}: no '{EMBED_START}' ... '{EMBED_END}' block to replace")

    def body(name: str) -> list[str]:
        lines = (report / name).read_text().strip().splitlines()[1:]  # drop the file's own title
        return [("##" + line) if line.startswith("## ") else line for line in lines]

    block = [EMBED_START, *body("search.md"), "", "### Grid (generated: table.md)", *body("table.md"), ""]
    results_md.write_text(text[:start] + "\n".join(block).replace("\n\n\n", "\n\n") + text[end:])
    log(f"embedded {report / 'search.md'} and {report / 'table.md'} into {results_md}")


def main() -> int:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--grid", default=str(HERE / "grid.yaml"))
    parser.add_argument("--runs", default="runs/seed000")
    parser.add_argument("--report", default="docs/results/seed000")
    parser.add_argument("--tasks")
    parser.add_argument("--backbones")
    parser.add_argument("--haltings")
    parser.add_argument("--cells", metavar="BACKBONE:HALTING,...",
                        help="run only these (backbone, halting) rows, pair by pair in the order given, each "
                             "over --tasks cell by cell (all seeds of one task before the next), with its "
                             "`random` row right after it where the rule triggers one (instead of "
                             "--backbones x --haltings)")
    parser.add_argument("--stop-at", metavar="HH:MM",
                        help="start no run at or after this UTC time (finished runs and the table are kept)")
    parser.add_argument("--seeds", help="comma-separated seeds (default: grid.yaml's)")
    parser.add_argument("--jobs", type=int, default=2, help="training processes at once (1 thread each)")
    parser.add_argument("--nice", type=int, default=10, help="niceness of each training process (default 10)")
    parser.add_argument("--no-search", action="store_true", help="skip step 1")
    parser.add_argument("--no-random", action="store_true", help="skip step 3")
    parser.add_argument("--print-specs", action="store_true")
    parser.add_argument("--report-only", action="store_true")
    parser.add_argument("--embed", metavar="RESULTS_MD",
                        help="also copy the generated search.md and table.md into this file's seed000 section")
    args = parser.parse_args()

    global NICE, STOP_AT
    NICE = args.nice
    STOP_AT = args.stop_at
    grid = yaml.safe_load(Path(args.grid).read_text())
    tasks = selected(list(grid["tasks"]), args.tasks, "task")
    backbones = selected(list(grid["backbones"]), args.backbones, "backbone")
    haltings = selected(list(grid["haltings"]), args.haltings, "halting")
    seeds = [int(s) for s in args.seeds.split(",")] if args.seeds else list(grid["seeds"])
    runs, report = Path(args.runs), Path(args.report)
    if args.cells:
        if args.backbones or args.haltings:
            raise SystemExit("--cells replaces --backbones and --haltings; give one or the other")
        batches = cell_points(grid, parse_cells(grid, args.cells), tasks, seeds, runs)
    else:
        batches = [(None, grid_points(grid, tasks, backbones, haltings, seeds, runs))]
    if args.print_specs:
        for _, points in batches:
            for spec, _ in points:
                print("---")
                print(yaml.safe_dump(spec, sort_keys=False), end="")
        return 0
    if not args.report_only:
        if not args.no_search:
            search(grid, runs, report)
        started = time.perf_counter()
        for pair, points in batches:
            run_points(points, args.jobs)
            if pair is not None and not args.no_random and pair[1] in grid.get("act_haltings", []):
                run_points(random_points(grid, runs, tasks, [pair[0]], seeds, acts=[pair[1]]), args.jobs)
        if args.cells is None and not args.no_random:
            run_points(random_points(grid, runs, tasks, backbones, seeds), args.jobs)
        log(f"grid done in {time.perf_counter() - started:.0f} s wall")
    search_table(grid, runs, report)
    write_table(grid, runs, report)
    if args.embed:
        embed(report, Path(args.embed))
    return 0


if __name__ == "__main__":
    raise SystemExit(main())
