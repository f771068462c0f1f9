"""Seed 000 study, the queue: compose each grid point's spec, select rows, run them (`ponderlab run`),
the settings search (`ponderlab tune`), the `random` rows' rule, and the --stop-at deadline.

Used by reproduce.py (the command); the tables are written by seed000_tables.py.
"""

from __future__ import annotations

import copy
import csv
import json
import os
import re
import subprocess
import time
from concurrent.futures import ThreadPoolExecutor
from datetime import datetime, timedelta, timezone
from pathlib import Path

import yaml
from seed000_tables import HERE, act_differs, collect, log


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
DRY_RUN = False  # --dry-run: train() and run_search() say what they would start, and start nothing
PRINT_SPECS = False  # with DRY_RUN (--dry-run --print-specs): also print each pending run's spec
STOP_AT: str | None = None  # "HH:MM" UTC as given to --stop-at (for messages)
DEADLINE: float | None = None  # epoch seconds: no run is started at or after it (set_stop_at)


def stop_deadline(stop_at: str, now: float) -> float:
    """The next occurrence of `stop_at` ("HH:MM", UTC) at or after `now` (epoch seconds): today's
    when it is still ahead (or exactly now), else tomorrow's. Computed once, when the queue starts,
    so that a stop time past midnight (started 23:50, --stop-at 00:10) is 20 minutes away, not
    already passed."""
    try:
        hours, minutes = (int(part) for part in stop_at.split(":"))
        if not (0 <= hours < 24 and 0 <= minutes < 60) or len(stop_at.split(":")[1]) != 2:
            raise ValueError
    except ValueError:
        raise SystemExit(f"--stop-at: '{stop_at}' is not a UTC time HH:MM") from None
    today = datetime.fromtimestamp(now, tz=timezone.utc)
    at = today.replace(hour=hours, minute=minutes, second=0, microsecond=0)
    if at.timestamp() < now:
        at += timedelta(days=1)
    return at.timestamp()


def set_stop_at(stop_at: str | None, now: float | None = None) -> None:
    """--stop-at: fix the deadline once, from the time the command starts (None: no deadline)."""
    global STOP_AT, DEADLINE
    STOP_AT = stop_at
    DEADLINE = None if stop_at is None else stop_deadline(stop_at, time.time() if now is None else now)
    if DEADLINE is not None:
        when = datetime.fromtimestamp(DEADLINE, tz=timezone.utc).strftime("%Y-%m-%d %H:%M")
        log(f"--stop-at {stop_at}: no run starts at or after {when} UTC")


def past_stop(now: float | None = None) -> bool:
    """Whether the deadline has come (`now`: epoch seconds, default the clock)."""
    if DEADLINE is None:
        return False
    return (time.time() if now is None else now) >= DEADLINE


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
        log(f"{spec['name']}: not started (--stop-at {STOP_AT} UTC has come)")
        return
    if DRY_RUN:
        print(f"would run: {out}" + (" (--resume)" if (out / "spec.yaml").exists() else ""), flush=True)
        if PRINT_SPECS:
            print("---\n" + yaml.safe_dump(spec, sort_keys=False), end="", flush=True)
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


def run_search(spec_path: Path, runs: Path, timing_name: str = "search_timing.json",
               log_name: str = "search.log", label: str = "search") -> Path:
    """`ponderlab tune SPEC` unless its results.csv lists every trial finished (`--resume` when
    interrupted); wall and CPU seconds of the command are added up in runs/<timing_name>. Returns
    the search's experiment directory."""
    spec = yaml.safe_load(spec_path.read_text())
    storage = Path(spec["tune"]["storage_path"]) / spec["name"]
    timing_file = runs / timing_name
    if not finished(storage / "results.csv"):  # never run, or interrupted (then unfinished rows)
        if past_stop():
            log(f"{label}: {spec_path.name} not started (--stop-at {STOP_AT} UTC has come)")
            return storage
        args = ["tune", str(spec_path)] + (["--resume"] if storage.exists() else [])
        if DRY_RUN:
            print(f"would run: ponderlab {' '.join(args)}", flush=True)
            return storage
        log(f"{label}: ponderlab {' '.join(args)}")
        timing_file.parent.mkdir(parents=True, exist_ok=True)
        before = json.loads(timing_file.read_text()) if timing_file.exists() else {}
        timing = run_cli(args, runs / log_name)
        before = {**before, **{k: round(v + before.get(k, 0.0), 1) for k, v in timing.items()}}
        timing_file.write_text(json.dumps(before))
    return storage


def search(grid: dict, runs: Path) -> None:
    """Step 1: the first settings search (grid.yaml's `search`); its table is search_table's."""
    run_search(HERE / grid["search"], runs)


def pinned_hops(runs: Path, stem: str) -> float | None:
    """mean_hops of a `random` row already started in `runs` (read from its runs' spec files, lowest
    seed first), else None."""
    pattern = re.compile(re.escape(stem) + r"-s(\d+)\.yaml")
    found = sorted((int(m.group(1)), path) for path in runs.glob(f"{stem}-s*.yaml")
                   if (m := pattern.fullmatch(path.name)))
    for _, path in found:
        hops = (yaml.safe_load(path.read_text()).get("halting") or {}).get("mean_hops")
        if hops is not None:
            return float(hops)
    return None


def random_row(act: list[dict], none: list[dict], cap: float, runs: Path, stem: str) -> float | None:
    """The `random` rule for one ACT row, grid and `extra` cells alike: the mean_hops of its `random` row
    (named `stem` in `runs`), or None when it gets none. A row is triggered where the ACT row differs
    from none (act_differs: Welch p < 0.05 in test token accuracy or in test exact match) and runs at
    the ACT row's mean test hops over its finished seeds, within [1, cap]. A row already started keeps
    the hops of its first runs and is completed to the cell's seeds even if the rule, over more seeds,
    no longer triggers: every seed of one `random` row runs at the same hops."""
    pinned = pinned_hops(runs, stem)
    if pinned is not None:
        return pinned
    if not act or not act_differs(act, none):
        return None
    return round(min(max(sum(r["test/mean_hops"] for r in act) / len(act), 1.0), cap), 4)


def random_points(grid: dict, runs: Path, tasks, backbones, seeds, acts=None) -> list[tuple[dict, Path]]:
    """`random` at the ACT row's mean hops wherever that ACT row differs from none (random_row's rule;
    only the ACT haltings in `acts`, when given)."""
    cells = collect(runs)
    points = []
    for task in tasks:
        for backbone in backbones:
            none = list(cells.get((task, backbone, "none"), {}).values())
            for act in grid.get("act_haltings", []):
                if acts is not None and act not in acts:
                    continue
                label = f"random_{act}"
                cap = grid["haltings"][act]["max_hops"]
                hops = random_row(list(cells.get((task, backbone, act), {}).values()), none, cap, runs,
                                  f"{task}-{backbone}-{label}")
                if hops is None:
                    continue
                for seed in seeds:
                    spec = compose(grid, task, backbone, label, seed, {"max_hops": cap, "mean_hops": hops})
                    points.append((spec, runs / spec["name"]))
    return points
