"""Seed 000 study, the cells beyond the grid (grid.yaml `extra`): CA shift 3, and cells at a named setting
(`extra.settings`: the transformer's addition at lr 1e-3, 12000 steps) with the grid's haltings against
`none` at that setting, their `random` rows (the rule of seed000_queue.random_row) and per-setting seeds
(`extra.seeds`); search2.md's tables of the cells at a setting.

Used by seed000_search2.py (steps 4-5 and search2.md).
"""

from __future__ import annotations

import json
import math
from pathlib import Path

from seed000_queue import compose, merge, random_row
from seed000_tables import fmt, interval, welch
from seed000_trials import label, trial_rows, validation_curve

from ponderlab.core.spec import dotted_items


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


def split_setting(setting: dict) -> tuple[dict, dict]:
    """A setting's overrides as (its training setting: everything but `halting`, its `halting` part)."""
    return {k: v for k, v in setting.items() if k != "halting"}, dict(setting.get("halting") or {})


def shares_training_setting(halting: str) -> bool:
    """Rows that take a setting's overrides less its `halting` part: `none` (the training setting's own
    row) and `random`/`random_X` (random's options, at the hops of ACT row X)."""
    return halting in ("none", "random") or halting.startswith("random_")


def row_setting(grid: dict, cell: list, halting: str | None = None) -> dict:
    """The overrides that a row of an `extra` cell runs at (halting: the row's, default the cell's): the
    cell's whole setting, or for `none` and `random` rows the setting less its `halting` part."""
    setting = cell_setting(grid, cell)
    return split_setting(setting)[0] if shares_training_setting(halting or cell[2]) else setting


def check_halting_overrides(grid: dict, cell: list) -> None:
    """A cell at a setting with a `halting` part: every field there must be an option of the cell's
    halting (its plugin's config), and `none` cannot take one (it is its training setting's row); else
    one message naming the setting. `random` cells take no halting overrides (row_setting)."""
    if len(cell) < 4 or cell[2] == "random":
        return
    fields = split_setting(cell_setting(grid, cell))[1]
    if not fields:
        return
    where = f"grid.yaml extra.settings.{cell[3]} (cell {cell})"
    section = grid["haltings"].get(cell[2])
    if section is None:
        raise SystemExit(f"{where}: halting '{cell[2]}' is not in grid.yaml haltings")
    from ponderlab.core.registry import get_registry

    known = set(get_registry().get("halting", section["name"]).cls.config_class.model_fields) - {"name"}
    unknown = [f for f in fields if f not in known]
    if unknown:
        hint = (" (`none` at a setting is the row of its training setting, the setting less its `halting` part: "
                "name the none cell at that setting)" if cell[2] == "none" else "")
        raise SystemExit(f"{where}: halting override {', '.join(unknown)} is not an option of halting '{cell[2]}' "
                         f"({section['name']}: {', '.join(sorted(known)) or 'no options'}){hint}")


def check_cells(grid: dict) -> None:
    """check_halting_overrides for every `extra` cell (before anything runs or is tabulated)."""
    for cell in grid.get("extra", {}).get("cells", []):
        check_halting_overrides(grid, cell)


def named_row_setting(grid: dict, cell: list, halting: str) -> dict:
    """The overrides in a row's run name: `none` at its training setting (row_setting), every other row
    (`random_X` included: the control of X at that setting) at the cell's whole setting."""
    return row_setting(grid, cell, halting) if halting == "none" else cell_setting(grid, cell)


def stem_at(task: str, backbone: str, halting: str, setting: dict) -> str:
    """Run name without -s<seed> of a row at the given overrides (label as the follow-ups')."""
    changes = dotted_items(setting)
    return "-".join([task, backbone, halting] + ([label(changes)] if changes else []))


def cell_stem(grid: dict, cell: list, halting: str | None = None) -> str:
    """Run name without -s<seed>: task-backbone-halting, then the setting's label (as the follow-ups');
    `none` at a setting with a `halting` part is its training setting's row (row_setting), and a
    `random_X` row keeps the whole label (it is the control of X at that setting)."""
    halting = halting or cell[2]
    return stem_at(cell[0], cell[1], halting, named_row_setting(grid, cell, halting))


def rows_at(grid: dict, runs2: Path, task: str, backbone: str, halting: str, setting: dict) -> dict[int, dict]:
    """Finished runs of a row at the given overrides, by seed; `none` also counts the search2 trial at
    that setting (its seed 0)."""
    rows = dict(collect2(runs2).get(stem_at(task, backbone, halting, setting), {}))
    changes = dotted_items(setting)
    if halting == "none" and changes:
        for seed, result in trial_rows(grid, task, backbone, changes).items():
            rows.setdefault(seed, {**result, "timing": {}})
    return rows


def setting_rows(grid: dict, runs2: Path, cell: list, halting: str | None = None) -> dict[int, dict]:
    """Finished runs of a cell (halting as given, or the cell's), by seed; at a setting, the `none` row
    also counts the search2 trial at that setting (its seed 0), and at a setting with a `halting` part
    it is the training setting's `none` row."""
    halting = halting or cell[2]
    return rows_at(grid, runs2, cell[0], cell[1], halting, named_row_setting(grid, cell, halting))


def cell_seeds(grid: dict, cell: list, seeds: list[int], per_setting: bool = True) -> list[int]:
    """The seeds of an `extra` cell: `seeds` (the grid's, or --seeds), except that a cell at a setting
    listed in `extra.seeds` runs that setting's seeds (per_setting False, as when --seeds is given on the
    command line: `seeds` for every cell)."""
    chosen = grid.get("extra", {}).get("seeds") or {}
    unknown = [name for name in chosen if name not in grid.get("extra", {}).get("settings", {})]
    if unknown:
        raise SystemExit(f"grid.yaml extra.seeds: {', '.join(unknown)} not in extra.settings")
    if per_setting and len(cell) > 3 and cell[3] in chosen:
        return [int(s) for s in chosen[cell[3]]]
    return list(seeds)


def extra_batches(grid: dict, seeds: list[int], per_setting: bool = True) -> list[tuple[list, list[int]]]:
    """The order in which step 5 runs the `extra` cells, as (cell, seeds) batches: first every cell in
    order over `seeds` (cell by cell, so that a `random` cell sees the ACT rows finished before it);
    then the further seeds of a setting in `extra.seeds`, seed-major within each group of haltings of
    `extra.seed_order[setting]` (group by group; the cells not named there form a last group), so that
    a queue stopped early leaves the arms of a group with n differing by one at most. A setting in
    `extra.cell_major` runs cell by cell over all of its seeds instead (its `random` cell is then decided
    on the ACT row's every seed). Checks every cell's halting overrides first (check_cells)."""
    cells = grid.get("extra", {}).get("cells", [])
    check_cells(grid)
    whole = list(grid.get("extra", {}).get("cell_major") or [])
    unknown = [name for name in whole if name not in grid.get("extra", {}).get("settings", {})]
    if unknown:
        raise SystemExit(f"grid.yaml extra.cell_major: {', '.join(unknown)} not in extra.settings")
    if not per_setting:
        return [(cell, list(seeds)) for cell in cells]
    batches = [(cell, cell_seeds(grid, cell, seeds) if len(cell) > 3 and cell[3] in whole else list(seeds))
               for cell in cells]
    order = grid.get("extra", {}).get("seed_order") or {}
    for name in dict.fromkeys(c[3] for c in cells if len(c) > 3 and c[3] not in whole):
        at = [c for c in cells if len(c) > 3 and c[3] == name]
        more = [s for s in cell_seeds(grid, at[0], seeds) if s not in seeds]
        named = [list(group) for group in order.get(name, [])]
        rest = [c[2] for c in at if not any(c[2] in group for group in named)]
        for group in named + ([rest] if rest else []):
            for seed in more:
                batches += [(c, [seed]) for c in at if c[2] in group]
    return batches


def setting_random(grid: dict, runs2: Path, cell: list, seeds: list[int]) -> list[tuple[dict, Path]]:
    """A `random` cell at a setting: random at each ACT row's mean test hops (same cap; the setting less
    its `halting` part, which belongs to the ACT row: row_setting)
    where that ACT row differs from `none` at the setting (seed000_queue.random_row: Welch p < 0.05 in
    token accuracy or exact match; a row already started keeps its hops and gets every seed)."""
    full = extra_grid(grid)
    none = list(setting_rows(grid, runs2, cell, "none").values())
    points = []
    for act in grid.get("act_haltings", []):
        cap = grid["haltings"][act]["max_hops"]
        stem = cell_stem(grid, cell, f"random_{act}")
        hops = random_row(list(setting_rows(grid, runs2, cell, act).values()), none, cap, runs2, stem)
        if hops is None:
            continue
        for seed in seeds:
            spec = merge(compose(full, cell[0], cell[1], f"random_{act}", seed, {"max_hops": cap, "mean_hops": hops}),
                         row_setting(grid, cell, "random"))
            spec["name"] = f"{stem}-s{seed}"
            points.append((spec, runs2 / spec["name"]))
    return points


def extra_points(grid: dict, runs2: Path, seeds: list[int], cells: list | None = None,
                 per_setting: bool = True) -> list[tuple[dict, Path]]:
    """The runs of `extra` cells (all of them, or those given), in order: [task, backbone, halting] at the
    grid's settings, or [task, backbone, halting, setting] with `extra.settings[setting]` merged in, each
    over cell_seeds (a setting in `extra.seeds` has its own). A `none` seed that a search2 trial at that
    setting already ran is not run again; a `random` cell is the rule of setting_random (computed from
    the runs finished so far)."""
    full = extra_grid(grid)
    points = []
    for cell in grid.get("extra", {}).get("cells", []) if cells is None else cells:
        task, backbone, halting = cell[:3]
        own = cell_seeds(grid, cell, seeds, per_setting)
        if halting == "random":
            points += setting_random(grid, runs2, cell, own)
            continue
        check_halting_overrides(grid, cell)
        changes = row_setting(grid, cell)
        done = trial_rows(grid, task, backbone, dotted_items(changes)) if halting == "none" and changes else {}
        for seed in own:
            if seed in done:
                continue
            spec = merge(compose(full, task, backbone, halting, seed), changes)
            spec["name"] = f"{cell_stem(grid, cell)}-s{seed}"
            points.append((spec, runs2 / spec["name"]))
    return points


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




def setting_table(grid: dict, runs2: Path, cells: list) -> tuple[list[str], float]:
    """search2.md's section on `extra` cells at a setting (e.g. the transformer's addition at lr 1e-3 and
    12000 steps): each halting row against `none` at the same setting (Welch over seeds, n per row), mean
    test hops, CPU seconds; then each ACT row against its `random` row; with the CPU seconds of these runs."""
    if not cells:
        return [], 0.0
    for cell in cells:
        check_halting_overrides(grid, cell)
    lines = ["", "## Halting at a searched setting (beyond the grid's settings)", "",
             "Each row's runs use the grid's spec of that task, backbone and halting with the setting merged in. "
             "`none` at the setting: where a search2 trial ran at that setting it is seed 0 and seeds 1 and 2 are "
             "its follow-ups; other seeds are ordinary runs. seeds: n, the runs in the row. Mean over seeds ± half-width of the 95% "
             "t-interval; Δ: row minus `none` at the same setting, difference of means ± half-width of its 95% "
             "Welch interval, Welch's p on token accuracy (p) and on exact match (p exact). `random_X`: random "
             "depth at row X's mean test hops (two-point, same cap), run where X differs from none (p < 0.05 "
             "on token accuracy or on exact match); its hops are fixed by its first runs.", "",
             "| task | backbone | setting | halting | seeds | token accuracy | exact match | mean test hops | "
             "Δ token vs none | p | Δ exact vs none | p exact | CPU s/run |",
             "|---|---|---|---|---:|---:|---:|---:|---:|---:|---:|---:|---:|"]
    cpu = 0.0
    pairs = []
    for cell in cells:
        task, backbone, halting, name = cell[:4]
        changes = ", ".join(f"{k}={v}" for k, v in dotted_items(cell_setting(grid, cell)).items())
        none = setting_rows(grid, runs2, cell, "none")
        names = [f"random_{a}" for a in grid.get("act_haltings", [])] if halting == "random" else [halting]
        for h in names:
            rows = setting_rows(grid, runs2, cell, h)
            if not rows:
                if halting != "random":
                    lines.append(f"| {task} | {backbone} | {name}: {changes} | {h} | 0 | not run | | | | | | | |")
                continue
            if h.startswith("random_"):
                pairs.append((cell, h.removeprefix("random_"), f"{name}: {changes}"))
            run_cpu = [rows[s]["timing"].get("cpu_seconds") for s in sorted(rows) if rows[s]["timing"]]
            cpu += sum(run_cpu) if h != "none" else 0.0  # none's follow-ups are counted above
            hops = sum(values(rows, "test/mean_hops")) / len(rows)
            if h == "none":
                delta = "| | | |"
            else:
                delta = compare(rows, none)
            lines.append(f"| {task} | {backbone} | {name}: {changes} | {h} | {len(rows)} | "
                         f"{fmt(*interval(values(rows, 'test/token_accuracy')))} | "
                         f"{fmt(*interval(values(rows, 'test/exact_match')))} | {hops:.2f} | {delta} "
                         + (f"{sum(run_cpu) / len(run_cpu):.0f} |" if run_cpu else "- |"))
    if pairs:
        lines += ["", "## Learned halting against random at equal mean hops, at a searched setting", "",
                  "ACT row minus its `random_X` row at the same setting: difference of means ± half-width of its 95% "
                  "Welch interval, Welch's p on token accuracy (p) and on exact match (p exact); n: seeds in each "
                  "arm. Mean test hops of each arm: the random row runs at the ACT row's mean hops when it was "
                  "first run. Paired: the same seed has the same data and test split in both arms, so the "
                  "per-seed differences (seeds in both arms, their number in brackets) with a 95% t-interval are "
                  "a second reading; Welch's is the table's test.", "",
                  "| task | backbone | setting | halting | seeds (ACT / random) | mean test hops (ACT / random) | "
                  "Δ token accuracy | p | Δ exact match | p exact | paired Δ token | paired Δ exact |",
                  "|---|---|---|---|---:|---:|---:|---:|---:|---:|---:|---:|"]
        for cell, act, shown in pairs:
            a, r = setting_rows(grid, runs2, cell, act), setting_rows(grid, runs2, cell, f"random_{act}")
            if not a:
                continue
            hops = (sum(values(a, "test/mean_hops")) / len(a), sum(values(r, "test/mean_hops")) / len(r))
            both = sorted(set(a) & set(r))
            paired = [fmt(*interval([a[s][k] - r[s][k] for s in both]), signed=True) + f" ({len(both)})"
                      for k in ("test/token_accuracy", "test/exact_match")]
            lines.append(f"| {cell[0]} | {cell[1]} | {shown} | {act} | {len(a)} / {len(r)} | "
                         f"{hops[0]:.2f} / {hops[1]:.2f} | {compare(a, r)} {paired[0]} | {paired[1]} |")
    return lines, cpu


def compare(rows: dict[int, dict], other: dict[int, dict]) -> str:
    """`Δ token | p | Δ exact | p exact |` of rows minus other (Welch over seeds)."""
    tok = welch(values(rows, "test/token_accuracy"), values(other, "test/token_accuracy"))
    ex = welch(values(rows, "test/exact_match"), values(other, "test/exact_match"))
    p_tok = "-" if math.isnan(tok[2]) else f"{tok[2]:.3f}"
    p_ex = "-" if math.isnan(ex[2]) else f"{ex[2]:.3f}"
    return f"{fmt(tok[0], tok[1], signed=True)} | {p_tok} | {fmt(ex[0], ex[1], signed=True)} | {p_ex} |"


def override_table(grid: dict, runs2: Path, cells: list) -> list[str]:
    """search2.md's section on rows at a setting with a `halting` part (e.g. trained_tau0: seed000_act at
    time penalty 0): each against every row of its training setting (the setting less its `halting` part),
    the same halting first (the row that the override changes), then none, the grid's other haltings and
    the `random_X` rows (Welch over seeds)."""
    found = []
    for cell in cells:
        if len(cell) < 4 or shares_training_setting(cell[2]):
            continue
        training, fields = split_setting(cell_setting(grid, cell))
        rows = setting_rows(grid, runs2, cell)
        if fields and rows:
            found.append((cell, training, fields, rows))
    if not found:
        return []
    lines = ["", "## A setting's halting overrides against its training setting", "",
             "A row at a setting with a `halting` part against each row of its training setting (the same "
             "overrides less the `halting` part; each seed has the same data and test split in every row): the "
             "same halting first (what the override changes), then none, the grid's other haltings and the "
             "`random_X` rows. Row minus the other: difference of means ± half-width of its 95% Welch interval, "
             "Welch's p on token accuracy (p) and on exact match (p exact).", "",
             "| task | backbone | row: setting | halting override | against, at the training setting | "
             "seeds (row / against) | mean test hops (row / against) | Δ token accuracy | p | Δ exact match | "
             "p exact |", "|---|---|---|---|---|---:|---:|---:|---:|---:|---:|"]
    for cell, training, fields, rows in found:
        task, backbone, halting = cell[:3]
        others = [halting, "none"] + [h for h in grid["haltings"] if h not in (halting, "none")]
        others += [f"random_{a}" for a in grid.get("act_haltings", [])]
        shown = ", ".join(f"{k}={v}" for k, v in fields.items())
        for other in others:
            base = rows_at(grid, runs2, task, backbone, other, training)
            if not base:
                continue
            hops = (sum(values(rows, "test/mean_hops")) / len(rows), sum(values(base, "test/mean_hops")) / len(base))
            lines.append(f"| {task} | {backbone} | {halting}: {cell[3]} | {shown} | {other} | {len(rows)} / "
                         f"{len(base)} | {hops[0]:.2f} / {hops[1]:.2f} | {compare(rows, base)}")
    curves = [(f"{c[2]}: {c[3]}", cell_stem(grid, c), sorted(r)) for c, _, _, r in found]
    named = {json.dumps(v, sort_keys=True): k for k, v in grid.get("extra", {}).get("settings", {}).items()}
    curves += [(f"{c[2]}: {named.get(json.dumps(t, sort_keys=True), 'training setting')}", stem_at(c[0], c[1], c[2], t), sorted(rows_at(grid, runs2, c[0], c[1], c[2], t)))
               for c, t, _, _ in found]
    curves = [curve for curve in curves if curve[2]]  # a row with no finished seed has no curve
    read = {name: hops_curve(runs2, stem, seeds) for name, stem, seeds in curves}
    steps = sorted({step for curve in read.values() for step in curve})
    shown_steps = [step for step in steps if step in (500, 1000, 2000, 4000, 8000) or step == steps[-1]]
    if shown_steps:
        lines += ["", "Validation mean hops during training (mean over the row's seeds, from each run's metrics.jsonl):", "",
                  "| row | seeds | " + " | ".join(f"step {step}" for step in shown_steps) + " |",
                  "|---|---:|" + "---:|" * len(shown_steps)]
        for name, _, seeds in curves:
            lines.append(f"| {name} | {len(seeds)} | "
                         + " | ".join(f"{read[name][st]:.2f}" if st in read[name] else "" for st in shown_steps) + " |")
    return lines


def hops_curve(runs2: Path, stem: str, seeds: list[int]) -> dict[int, float]:
    """Validation mean hops at each evaluation step, mean over the seeds whose metrics.jsonl has that step."""
    by_step: dict[int, list[float]] = {}
    for seed in seeds:
        for step, hops in validation_curve(runs2 / f"{stem}-s{seed}" / "metrics.jsonl", "mean_hops").items():
            by_step.setdefault(step, []).append(hops)
    return {step: sum(v) / len(v) for step, v in sorted(by_step.items())}
