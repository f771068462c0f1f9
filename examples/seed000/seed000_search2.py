"""Seed 000 study, the second settings search (issue 30 item 3) and the cells beyond the grid.

grid.yaml's `search2` lists `ponderlab tune` specs (ARMT and Mamba at two learning rates, the
transformer at more steps, ARMT's memory) that ran at the grid's sizes, fixed depth, seed 0.
Each trial is set beside the grid's seed-0 `none` row of the same task and backbone; a trial
whose test token accuracy beats that row by `follow_up_margin` or more gets `follow_up_seeds`
as ordinary runs (fixed depth), so that it is compared with the grid's row over 3 seeds.
grid.yaml's `extra` holds cells outside the grid: CA shift 3 (against copying the last state), and
cells at a named setting (`extra.settings`: the transformer's addition at lr 1e-3, 12000 steps) with
the grid's haltings against `none` at that setting. search2.md is written from what finished.
"""

from __future__ import annotations

import csv
import json
import math
from pathlib import Path

import yaml
from seed000_queue import compose, merge, run_points, run_search
from seed000_tables import HERE, copy_baseline, differs, fmt, interval, log, welch

from ponderlab.core.spec import dotted_items

SKIP = {"name", "seed", "output_dir"}


def grid_key(grid: dict, trial_spec: dict) -> tuple[str, str] | None:
    """(task, backbone) of grid.yaml that a trial's spec is a variant of (None if none matches)."""
    task = next((k for k, options in grid["tasks"].items()
                 if all(trial_spec["task"].get(o) == v for o, v in options.items())), None)
    backbone = next((k for k, options in grid["backbones"].items()
                     if options["name"] == trial_spec["backbone"]["name"]), None)
    return (task, backbone) if task and backbone else None


def setting(grid: dict, trial_spec: dict) -> dict[str, object]:
    """What a trial changes against the grid's spec of the same (task, backbone, none): the dotted keys
    of that spec whose values differ in the trial (empty: the grid's own setting)."""
    key = grid_key(grid, trial_spec)
    if key is None:
        return {}
    base = dotted_items(compose(grid, key[0], key[1], "none", 0))
    trial = dotted_items(trial_spec)
    return {k: trial.get(k) for k, v in base.items() if k.split(".")[0] not in SKIP and trial.get(k) != v}


def label(changes: dict[str, object]) -> str:
    """`training.lr=0.001, backbone.memory_size=8` as a short tag for run names: lr0.001-memory_size8."""
    return "-".join(f"{k.rsplit('.', 1)[-1]}{v}" for k, v in changes.items()) or "grid"


def trials(grid: dict) -> list[dict]:
    """Every finished trial of the search2 specs: search, trial id, spec, results, curve, setting."""
    out = []
    for name in grid.get("search2", {}).get("specs", []):
        tune = yaml.safe_load((HERE / name).read_text())
        storage = Path(tune["tune"]["storage_path"]) / tune["name"]
        table = storage / "results.csv"
        if not table.exists():
            continue
        for row in csv.DictReader(table.open()):
            run = storage / row["run_dir"]
            if row.get("status") != "completed" or not (run / "results.json").exists():
                continue
            spec = yaml.safe_load((run / "spec.yaml").read_text())
            curve = {}
            for line in (run / "metrics.jsonl").read_text().splitlines():
                record = json.loads(line)
                if record.get("split") == "validation":
                    curve[int(record["step"])] = record["token_accuracy"]
            out.append({"search": tune["name"], "trial": row["trial"], "spec": spec, "key": grid_key(grid, spec),
                        "setting": setting(grid, spec), "results": json.loads((run / "results.json").read_text()),
                        "curve": curve, "time_s": float(row.get("time_s") or 0.0)})
    return out


def grid_row(runs: Path, task: str, backbone: str, seed: int | None = None) -> dict[int, dict]:
    """The grid's `none` results of (task, backbone) by seed (only `seed` when given)."""
    found = {}
    for path in runs.glob(f"{task}-{backbone}-none-s*/results.json"):
        s = int(path.parent.name.rsplit("-s", 1)[1])
        if seed is None or s == seed:
            found[s] = json.loads(path.read_text())
    return found


def follow_ups(grid: dict, runs: Path, runs2: Path) -> list[tuple[dict, dict, list[tuple[dict, Path]]]]:
    """(trial, its setting, runs of follow_up_seeds) for each trial that beats the grid's seed-0 none row
    by follow_up_margin test token accuracy or more."""
    config = grid.get("search2", {})
    margin, seeds = config.get("follow_up_margin", math.inf), config.get("follow_up_seeds", [])
    out = []
    for trial in trials(grid):
        if trial["key"] is None or not trial["setting"]:
            continue
        task, backbone = trial["key"]
        base = grid_row(runs, task, backbone, 0).get(0)
        if base is None or trial["results"]["test/token_accuracy"] - base["test/token_accuracy"] < margin:
            continue
        points = []
        for seed in seeds:
            spec = compose(grid, task, backbone, "none", seed)
            for dotted, value in trial["setting"].items():
                section = spec
                *path, last = dotted.split(".")
                for part in path:
                    section = section.setdefault(part, {})
                section[last] = value
            spec["name"] = f"{task}-{backbone}-none-{label(trial['setting'])}-s{seed}"
            points.append((spec, runs2 / spec["name"]))
        out.append((trial, trial["setting"], points))
    return out


def extra_grid(grid: dict) -> dict:
    """grid.yaml with `extra.tasks` and `extra.layers` added (for compose and the copy baseline)."""
    extra = grid.get("extra", {})
    return merge(grid, {"tasks": extra.get("tasks", {}), "layers": extra.get("layers", {})})


def cell_setting(grid: dict, cell: list) -> dict:
    """The setting overrides of an `extra` cell: its 4th entry names one of `extra.settings` (none: {})."""
    if len(cell) < 4:
        return {}
    settings = grid.get("extra", {}).get("settings", {})
    if cell[3] not in settings:
        raise SystemExit(f"grid.yaml extra cell {cell}: setting '{cell[3]}' is not in extra.settings ({', '.join(settings)})")
    return settings[cell[3]]


def cell_stem(grid: dict, cell: list, halting: str | None = None) -> str:
    """Run name without -s<seed>: task-backbone-halting, then the setting's label (as the follow-ups')."""
    task, backbone = cell[0], cell[1]
    changes = dotted_items(cell_setting(grid, cell))
    return "-".join([task, backbone, halting or cell[2]] + ([label(changes)] if changes else []))


def trial_rows(grid: dict, task: str, backbone: str, changes: dict) -> dict[int, dict]:
    """Search2 trials (fixed depth) of (task, backbone) at exactly this setting, by seed."""
    return {int(t["spec"]["seed"]): t["results"] for t in trials(grid)
            if t["key"] == (task, backbone) and t["setting"] == changes}


def setting_rows(grid: dict, runs2: Path, cell: list, halting: str | None = None) -> dict[int, dict]:
    """Finished runs of a cell (halting as given, or the cell's), by seed; at a setting, the `none` row
    also counts the search2 trial at that setting (its seed 0)."""
    halting = halting or cell[2]
    rows = dict(collect2(runs2).get(cell_stem(grid, cell, halting), {}))
    changes = dotted_items(cell_setting(grid, cell))
    if halting == "none" and changes:
        for seed, result in trial_rows(grid, cell[0], cell[1], changes).items():
            rows.setdefault(seed, {**result, "timing": {}})
    return rows


def setting_random(grid: dict, runs2: Path, cell: list, seeds: list[int]) -> list[tuple[dict, Path]]:
    """A `random` cell at a setting: random at each ACT row's mean test hops (same setting, same cap)
    where that ACT row's token accuracy differs from `none` at the setting (Welch p < 0.05)."""
    full = extra_grid(grid)
    none = [r["test/token_accuracy"] for r in setting_rows(grid, runs2, cell, "none").values()]
    points = []
    for act in grid.get("act_haltings", []):
        rows = setting_rows(grid, runs2, cell, act)
        if not differs([r["test/token_accuracy"] for r in rows.values()], none):
            continue
        cap = grid["haltings"][act]["max_hops"]
        hops = round(min(max(sum(r["test/mean_hops"] for r in rows.values()) / len(rows), 1.0), cap), 4)
        for seed in seeds:
            spec = merge(compose(full, cell[0], cell[1], f"random_{act}", seed, {"max_hops": cap, "mean_hops": hops}),
                         cell_setting(grid, cell))
            spec["name"] = f"{cell_stem(grid, cell, f'random_{act}')}-s{seed}"
            points.append((spec, runs2 / spec["name"]))
    return points


def extra_points(grid: dict, runs2: Path, seeds: list[int], cells: list | None = None) -> list[tuple[dict, Path]]:
    """The runs of `extra` cells (all of them, or those given), in order: [task, backbone, halting] at the
    grid's settings, or [task, backbone, halting, setting] with `extra.settings[setting]` merged in. A
    `none` seed that a search2 trial at that setting already ran is not run again; a `random` cell is
    the rule of setting_random (computed from the runs finished so far)."""
    full = extra_grid(grid)
    points = []
    for cell in grid.get("extra", {}).get("cells", []) if cells is None else cells:
        task, backbone, halting = cell[:3]
        if halting == "random":
            points += setting_random(grid, runs2, cell, seeds)
            continue
        changes = cell_setting(grid, cell)
        done = trial_rows(grid, task, backbone, dotted_items(changes)) if halting == "none" and changes else {}
        for seed in seeds:
            if seed in done:
                continue
            spec = merge(compose(full, task, backbone, halting, seed), changes)
            spec["name"] = f"{cell_stem(grid, cell)}-s{seed}"
            points.append((spec, runs2 / spec["name"]))
    return points


def run(grid: dict, runs: Path, runs2: Path, seeds: list[int], jobs: int, extra: bool = True) -> None:
    """Step 4: the search2 specs in order, then the follow-ups; step 5: the extra cells."""
    for name in grid.get("search2", {}).get("specs", []):
        run_search(HERE / name, runs2, timing_name="search2_timing.json", log_name="search2.log", label="search2")
    for trial, changes, points in follow_ups(grid, runs, runs2):
        log(f"search2: {trial['search']} {trial['trial']} ({label(changes)}) beats the grid's seed 0: seeds "
            + ", ".join(str(spec["seed"]) for spec, _ in points))
        run_points(points, jobs)
    if extra:  # cell by cell, so that a `random` cell sees the ACT rows finished before it
        for cell in grid.get("extra", {}).get("cells", []):
            run_points(extra_points(grid, runs2, seeds, [cell]), jobs)


def collect2(runs2: Path) -> dict[str, dict[int, dict]]:
    """Finished follow-up and extra runs by name stem (without -s<seed>)."""
    out: dict[str, dict[int, dict]] = {}
    for path in runs2.glob("*/results.json"):
        stem, seed = path.parent.name.rsplit("-s", 1)
        record = json.loads(path.read_text())
        timing = path.parent / "timing.json"
        record["timing"] = json.loads(timing.read_text()) if timing.exists() else {}
        out.setdefault(stem, {})[int(seed)] = record
    return out


def values(rows: dict[int, dict], key: str) -> list[float]:
    return [rows[s][key] for s in sorted(rows)]


def write_search2(grid: dict, runs: Path, runs2: Path, report: Path) -> None:
    """docs/results/seed000/search2.md (nothing when no search2 trial has finished)."""
    found = trials(grid)
    if not found:
        return
    lines = ["# Seed 000: second settings search and cells beyond the grid", "",
             "Generated by examples/seed000/reproduce.py from runs/tune/seed000-search2-*/ and "
             f"{runs2}/; do not edit by hand. Specs: "
             + ", ".join(f"`examples/seed000/{n}`" for n in grid["search2"]["specs"])
             + ". Fixed depth (halting none), seed 0 per trial, the grid's sizes unless the setting says "
             "otherwise. Grid s0: the grid's `none` run of the same task and backbone on seed 0 "
             "(lr 3e-3, 1500 steps); Δ: trial minus grid s0, test token accuracy (one seed each: a screen).", "",
             "## Trials", "",
             "| search | task | backbone | setting (vs grid) | val token | test token | test exact | grid s0 token / exact "
             "| Δ token | wall s |", "|---|---|---|---|---:|---:|---:|---:|---:|---:|"]
    for t in found:
        r = t["results"]
        task, backbone = t["key"] or ("?", t["spec"]["backbone"]["name"])
        base = grid_row(runs, task, backbone, 0).get(0)
        ref = f"{base['test/token_accuracy']:.3f} / {base['test/exact_match']:.3f}" if base else "-"
        delta = f"{r['test/token_accuracy'] - base['test/token_accuracy']:+.3f}" if base else "-"
        changes = ", ".join(f"{k}={v}" for k, v in t["setting"].items()) or "grid's own"
        lines.append(f"| {t['search'].removeprefix('seed000-')} | {task} | {backbone} | {changes} | "
                     f"{r['validation/token_accuracy']:.3f} | {r['test/token_accuracy']:.3f} | "
                     f"{r['test/exact_match']:.3f} | {ref} | {delta} | {t['time_s']:.0f} |")
    steps = sorted({s for t in found for s in t["curve"]})
    lines += ["", "## Learning curves (validation token accuracy at each evaluation, seed 0)", "",
              "| search | task | backbone | setting | " + " | ".join(str(s) for s in steps) + " |",
              "|---|---|---|---|" + "---:|" * len(steps)]
    for t in found:
        task, backbone = t["key"] or ("?", t["spec"]["backbone"]["name"])
        changes = ", ".join(f"{k}={v}" for k, v in t["setting"].items()) or "grid's own"
        lines.append(f"| {t['search'].removeprefix('seed000-')} | {task} | {backbone} | {changes} | "
                     + " | ".join(f"{t['curve'][s]:.3f}" if s in t["curve"] else "" for s in steps) + " |")
    done = collect2(runs2)
    lines += ["", "## Settings that beat the grid's seed 0, over 3 seeds", "",
              f"Rule: a trial at least {grid['search2'].get('follow_up_margin')} test token accuracy above grid s0 "
              f"gets seeds {grid['search2'].get('follow_up_seeds')} as runs (fixed depth); seed 0 is the trial. "
              "Against the grid's row (seeds 0, 1, 2): difference of means with the half-width of its 95% Welch "
              "interval, Welch's p on token accuracy.", "",
              "| task | backbone | setting | seeds | token accuracy | exact match | grid row token / exact | "
              "Δ token | p | Δ exact |", "|---|---|---|---:|---:|---:|---:|---:|---:|---:|"]
    cpu = 0.0
    rows_written = 0
    for trial, changes, points in follow_ups(grid, runs, runs2):
        task, backbone = trial["key"]
        stem = points[0][1].name.rsplit("-s", 1)[0] if points else None
        rows = {0: trial["results"], **done.get(stem, {})}
        cpu += sum(r["timing"].get("cpu_seconds", 0.0) for r in done.get(stem, {}).values())
        ref = grid_row(runs, task, backbone)
        tok = welch(values(rows, "test/token_accuracy"), values(ref, "test/token_accuracy"))
        ex = welch(values(rows, "test/exact_match"), values(ref, "test/exact_match"))
        p = "-" if math.isnan(tok[2]) else f"{tok[2]:.3f}"
        lines.append(f"| {task} | {backbone} | {', '.join(f'{k}={v}' for k, v in changes.items())} | {len(rows)} | "
                     f"{fmt(*interval(values(rows, 'test/token_accuracy')))} | "
                     f"{fmt(*interval(values(rows, 'test/exact_match')))} | "
                     f"{fmt(*interval(values(ref, 'test/token_accuracy')))} / "
                     f"{fmt(*interval(values(ref, 'test/exact_match')))} | {fmt(tok[0], tok[1], signed=True)} | {p} | "
                     f"{fmt(ex[0], ex[1], signed=True)} |")
        rows_written += 1
    if not rows_written:
        lines.append("| (no trial beat the grid's seed 0 by the margin) | | | | | | | | | |")
    full = extra_grid(grid)
    all_cells = grid.get("extra", {}).get("cells", [])
    cells = [c for c in all_cells if len(c) == 3 and c[2] != "random"]  # at the grid's settings
    if cells:
        lines += ["", "## Beyond the grid (the grid's settings and haltings)", "",
                  "Mean over seeds ± half-width of the 95% t-interval; minus copying the last state on the same "
                  "seed's test split (paired by seed).", "",
                  "| task | backbone | halting | seeds | token accuracy | exact match | copy last state (token / exact) "
                  "| Δ token vs copy | Δ exact vs copy | rule from context (token / exact) | CPU s/run |",
                  "|---|---|---|---:|---:|---:|---:|---:|---:|---:|---:|"]
        for task, backbone, halting in cells:
            rows = done.get(f"{task}-{backbone}-{halting}", {})
            if not rows:
                lines.append(f"| {task} | {backbone} | {halting} | 0 | not run | | | | | | |")
                continue
            seeds = sorted(rows)
            base = copy_baseline(full, task, seeds)
            copy_tok = interval([base[s]["copy/token_accuracy"] for s in seeds])
            copy_ex = interval([base[s]["copy/exact_match"] for s in seeds])
            rule = (sum(base[s]["rule/token_accuracy"] for s in seeds) / len(seeds),
                    sum(base[s]["rule/exact_match"] for s in seeds) / len(seeds))
            d_tok = interval([rows[s]["test/token_accuracy"] - base[s]["copy/token_accuracy"] for s in seeds])
            d_ex = interval([rows[s]["test/exact_match"] - base[s]["copy/exact_match"] for s in seeds])
            run_cpu = [rows[s]["timing"].get("cpu_seconds", 0.0) for s in seeds]
            cpu += sum(run_cpu)
            lines.append(f"| {task} | {backbone} | {halting} | {len(seeds)} | "
                         f"{fmt(*interval(values(rows, 'test/token_accuracy')))} | "
                         f"{fmt(*interval(values(rows, 'test/exact_match')))} | {fmt(*copy_tok)} / {fmt(*copy_ex)} | "
                         f"{fmt(*d_tok, signed=True)} | {fmt(*d_ex, signed=True)} | {rule[0]:.3f} / {rule[1]:.3f} | "
                         f"{sum(run_cpu) / len(run_cpu):.0f} |")
    against = [(t, b, h) for t, b, h in cells if h != "none" and done.get(f"{t}-{b}-{h}") and done.get(f"{t}-{b}-none")]
    if against:
        lines += ["", "Against none (Welch, over seeds): row minus the fixed-depth row of the same task and backbone.", "",
                  "| task | backbone | halting | seeds | Δ token accuracy | p | Δ exact match | mean hops |",
                  "|---|---|---|---:|---:|---:|---:|---:|"]
        for task, backbone, halting in against:
            rows, none = done[f"{task}-{backbone}-{halting}"], done[f"{task}-{backbone}-none"]
            tok = welch(values(rows, "test/token_accuracy"), values(none, "test/token_accuracy"))
            ex = welch(values(rows, "test/exact_match"), values(none, "test/exact_match"))
            p = "-" if math.isnan(tok[2]) else f"{tok[2]:.3f}"
            hops = sum(values(rows, "test/mean_hops")) / len(rows)
            lines.append(f"| {task} | {backbone} | {halting} | {len(rows)} | {fmt(tok[0], tok[1], signed=True)} | {p} | "
                         f"{fmt(ex[0], ex[1], signed=True)} | {hops:.2f} |")
    setting_lines, setting_cpu = setting_table(grid, runs2, [c for c in all_cells if len(c) > 3])
    lines += setting_lines
    cpu += setting_cpu
    wall = sum(t["time_s"] for t in found)
    lines += ["", f"Budget: {len(found)} search trials finished, {wall:.0f} s wall summed over trials ({wall / 60:.1f} "
              "min; one trial at a time, CPU time not measured: Ray's workers are not children of the command); "
              f"follow-up and beyond-the-grid runs {cpu / 60:.1f} CPU minutes."]
    report.mkdir(parents=True, exist_ok=True)
    (report / "search2.md").write_text("\n".join(lines) + "\n")
    log(f"search2: {len(found)} trials -> {report / 'search2.md'}")


def setting_table(grid: dict, runs2: Path, cells: list) -> tuple[list[str], float]:
    """search2.md's section on `extra` cells at a setting (e.g. the transformer's addition at lr 1e-3 and
    12000 steps): each halting row against `none` at the same setting (Welch over seeds), mean test hops,
    CPU seconds; with the CPU seconds of these runs."""
    if not cells:
        return [], 0.0
    lines = ["", "## Halting at a searched setting (beyond the grid's settings)", "",
             "Each row's runs use the grid's spec of that task, backbone and halting with the setting merged in. "
             "`none` at the setting: seed 0 is the search2 trial at that setting, seeds 1 and 2 its follow-ups. "
             "Mean over seeds ± half-width of the 95% t-interval; Δ: row minus `none` at the same setting, "
             "difference of means ± half-width of its 95% Welch interval, Welch's p on token accuracy. "
             "`random_X`: random depth at row X's mean test hops (two-point, same cap), run only where X differs "
             "from none (p < 0.05).", "",
             "| task | backbone | setting | halting | seeds | token accuracy | exact match | mean test hops | "
             "Δ token vs none | p | Δ exact vs none | CPU s/run |",
             "|---|---|---|---|---:|---:|---:|---:|---:|---:|---:|---:|"]
    cpu = 0.0
    for cell in cells:
        task, backbone, halting, name = cell[:4]
        changes = ", ".join(f"{k}={v}" for k, v in dotted_items(cell_setting(grid, cell)).items())
        none = setting_rows(grid, runs2, cell, "none")
        names = [f"random_{a}" for a in grid.get("act_haltings", [])] if halting == "random" else [halting]
        for h in names:
            rows = setting_rows(grid, runs2, cell, h)
            if not rows:
                if halting != "random":
                    lines.append(f"| {task} | {backbone} | {name}: {changes} | {h} | 0 | not run | | | | | | |")
                continue
            run_cpu = [rows[s]["timing"].get("cpu_seconds") for s in sorted(rows) if rows[s]["timing"]]
            cpu += sum(run_cpu) if h != "none" else 0.0  # none's follow-ups are counted above
            hops = sum(values(rows, "test/mean_hops")) / len(rows)
            if h == "none":
                delta = "| | |"
            else:
                tok = welch(values(rows, "test/token_accuracy"), values(none, "test/token_accuracy"))
                ex = welch(values(rows, "test/exact_match"), values(none, "test/exact_match"))
                p = "-" if math.isnan(tok[2]) else f"{tok[2]:.3f}"
                delta = f"{fmt(tok[0], tok[1], signed=True)} | {p} | {fmt(ex[0], ex[1], signed=True)} |"
            lines.append(f"| {task} | {backbone} | {name}: {changes} | {h} | {len(rows)} | "
                         f"{fmt(*interval(values(rows, 'test/token_accuracy')))} | "
                         f"{fmt(*interval(values(rows, 'test/exact_match')))} | {hops:.2f} | {delta} "
                         + (f"{sum(run_cpu) / len(run_cpu):.0f} |" if run_cpu else "- |"))
    return lines, cpu
