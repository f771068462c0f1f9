"""Seed 000 study, the second settings search's trials: each finished trial of grid.yaml's `search2`
specs, the (task, backbone) of the grid it is a variant of, and what it changes against the grid's spec.

Used by seed000_search2.py (follow-ups, search2.md) and seed000_extra.py (a cell's `none` row at a
setting counts the trial at that setting).
"""

from __future__ import annotations

import csv
import json
from pathlib import Path

import yaml
from seed000_queue import compose
from seed000_tables import HERE

from ponderlab.core.run_records import metric_lines
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
            curve = validation_curve(run / "metrics.jsonl", "token_accuracy")
            out.append({"search": tune["name"], "trial": row["trial"], "spec": spec, "key": grid_key(grid, spec),
                        "setting": setting(grid, spec), "results": json.loads((run / "results.json").read_text()),
                        "curve": curve, "time_s": float(row.get("time_s") or 0.0)})
    return out



def trial_rows(grid: dict, task: str, backbone: str, changes: dict) -> dict[int, dict]:
    """Search2 trials (fixed depth) of (task, backbone) at exactly this setting, by seed."""
    return {int(t["spec"]["seed"]): t["results"] for t in trials(grid)
            if t["key"] == (task, backbone) and t["setting"] == changes}


def validation_curve(metrics: Path, key: str) -> dict[int, float]:
    """{step: value} of one metric at each validation of a run's metrics.jsonl (none if it is missing)."""
    return {record["step"]: float(record[key]) for _, record in metric_lines(metrics)
            if record.get("split") == "validation" and key in record}
