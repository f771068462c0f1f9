"""Finished runs as a report reads them: discovery, loading and labelling (no plugins needed).

A run directory is finished when it holds spec.yaml and results.json. Damaged files of
one run never abort the others: `collect_runs` skips a run it cannot read and says why.
"""

from __future__ import annotations

import json
import math
import os
from collections.abc import Callable, Iterable
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

from .errors import SpecError
from .spec import dotted_items

#: Halting strategies whose hop count is fixed by configuration (no per-token decision).
FIXED_HALTING = frozenset({"none", "constant"})

@dataclass
class RunRecord:
    """One finished run as read from its directory (no plugins needed)."""

    path: Path
    spec: dict[str, Any]
    results: dict[str, Any]
    halting_profiles: dict[str, Any] = field(default_factory=dict)
    metrics: list[dict[str, Any]] = field(default_factory=list)
    evals: list[dict[str, Any]] = field(default_factory=list)
    name: str = ""
    task_label: str = ""
    variant: str = ""

    def _plugin(self, section: str) -> str:
        """The plugin of a spec section as results.json names it, else as spec.yaml does."""
        return str(self.results.get(section) or self.spec.get(section, {}).get("name"))

    task = property(lambda self: self._plugin("task"))
    backbone = property(lambda self: self._plugin("backbone"))
    halting = property(lambda self: self._plugin("halting"))

    @property
    def scope(self) -> str:
        scope = self.results.get("scope", self.spec.get("halting", {}).get("scope"))
        return "-" if scope is None else str(scope)

    @property
    def halting_key(self) -> str:
        """Halting name with its scope, e.g. `graves/layer` (`none` alone)."""
        return self.halting if self.halting == "none" else f"{self.halting}/{self.scope}"

    @property
    def label(self) -> str:
        """Short label inside one task: backbone + halting (+ variant)."""
        text = f"{self.backbone} {self.halting_key}"
        return f"{text} [{self.variant}]" if self.variant else text

    @property
    def halting_rank(self) -> tuple:
        """Sort key: no halting, then fixed depth, then the rest by name and scope."""
        return ({"none": 0, "constant": 1}.get(self.halting, 2), self.halting, self.scope)

    @property
    def adaptive(self) -> bool:
        return self.halting not in FIXED_HALTING

    def value(self, key: str) -> Any:
        if key in ("task_label", "backbone", "halting", "scope", "variant", "name"):
            return getattr(self, key)
        return self.results.get(key)

    def profile(self, split: str = "test") -> dict[str, Any]:
        profile = self.halting_profiles.get(split)
        return profile if isinstance(profile, dict) else {}

    def curve(self, split: str, key: str) -> tuple[list[int], list[float]]:
        """(steps, values) of one metric from metrics.jsonl (finite values only)."""
        steps, values = [], []
        for record in self.metrics:
            value = record.get(key)
            if record.get("split") == split and is_finite_number(value):
                steps.append(int(record["step"]))
                values.append(float(value))
        return steps, values


def is_finite_number(value: Any) -> bool:
    return isinstance(value, (int, float)) and math.isfinite(value)


def group_by(items: Iterable, key: Callable[[Any], Any]) -> dict[Any, list]:
    """`items` grouped by `key(item)`, groups and their members in first-seen order."""
    groups: dict[Any, list] = {}
    for item in items:
        groups.setdefault(key(item), []).append(item)
    return groups


# --------------------------------------------------------------------------- discovery
def find_run_dirs(paths: list[str | Path]) -> tuple[list[Path], list[Path]]:
    """(finished run dirs, unfinished ones: spec.yaml without results.json) under `paths`."""
    finished: dict[Path, None] = {}
    unfinished: dict[Path, None] = {}
    for raw in paths:
        root = Path(raw)
        if not root.is_dir():
            raise SpecError(f"{root}: no such directory")
        for spec_file in sorted(root.rglob("spec.yaml")):  # the root's own spec.yaml too
            if not spec_file.is_file():
                continue
            run = spec_file.parent.resolve()
            (finished if (run / "results.json").is_file() else unfinished)[run] = None
    return list(finished), list(unfinished)


def _read_json(path: Path, default: Any = None) -> Any:
    try:
        return json.loads(path.read_text())
    except (OSError, ValueError):
        return default


def metric_lines(path: Path) -> list[tuple[str, dict[str, Any]]]:
    """(line, record) of each metrics.jsonl line holding an object with an int `step`; lines
    cut short by a killed run or a full disk are skipped."""
    found = []
    for line in path.read_text(errors="replace").splitlines() if path.is_file() else []:
        try:
            record = json.loads(line)
        except ValueError:
            continue
        if isinstance(record, dict) and isinstance(record.get("step"), int):
            found.append((line, record))
    return found


def load_run(path: Path) -> RunRecord:
    """Read a finished run dir (spec.yaml, results.json, halting.json, metrics.jsonl, eval_*.json).

    SpecError when spec.yaml or results.json cannot be read as a mapping; optional files
    that are damaged are read as empty.
    """
    import yaml

    try:
        spec = yaml.safe_load((path / "spec.yaml").read_text())
    except (OSError, ValueError, yaml.YAMLError) as exc:
        raise SpecError(f"{path / 'spec.yaml'}: cannot read ({type(exc).__name__})") from None
    if not isinstance(spec, dict):
        raise SpecError(f"{path / 'spec.yaml'}: not a YAML mapping")
    results = _read_json(path / "results.json")
    if not isinstance(results, dict):
        raise SpecError(f"{path / 'results.json'}: not a JSON object")
    evals = []
    for eval_file in sorted(path.glob("eval_*.json")):
        record = _read_json(eval_file)
        if isinstance(record, dict) and isinstance(record.get("results"), dict):
            evals.append({**record, "file": eval_file.name})
    profiles = _read_json(path / "halting.json", {})
    return RunRecord(
        path=path,
        spec=spec,
        results=results,
        halting_profiles=profiles if isinstance(profiles, dict) else {},
        metrics=[record for _, record in metric_lines(path / "metrics.jsonl")],
        evals=evals,
    )


def _differing(flat_specs: list[dict[str, Any]], keys: list[str]) -> list[str]:
    """Keys whose values are not the same in every spec."""
    return [k for k in keys if len({repr(flat.get(k)) for flat in flat_specs}) > 1]


def label_runs(runs: list[RunRecord]) -> None:
    """Give each run a name (path relative to the common root), task label and variant.

    The task label adds the task options that differ between runs of the same task
    (`ca1d shift=2`); the variant lists any other spec values that differ between
    runs sharing task, backbone, halting and scope (a tune sweep's hyperparameters).
    """
    if not runs:
        return
    root = Path(os.path.commonpath([str(r.path) for r in runs]))
    for run in runs:  # a single run is named by its folder
        run.name = str(run.path.relative_to(root)) if run.path != root else run.path.name
    ignored = {"output_dir", "name"}
    flat = {id(r): {k: json.dumps(v) if isinstance(v, list) else v for k, v in dotted_items(r.spec).items()
                    if k not in ignored} for r in runs}

    for task, group in group_by(runs, lambda r: r.task).items():
        task_keys = sorted({k for r in group for k in flat[id(r)] if k.startswith("task.") and k != "task.name"})
        changing = _differing([flat[id(r)] for r in group], task_keys)
        for run in group:
            extra = " ".join(f"{k.removeprefix('task.')}={flat[id(run)].get(k)}" for k in changing)
            run.task_label = f"{task} {extra}".strip()

    settings = group_by(runs, lambda r: (r.task_label, r.backbone, r.halting, r.scope))
    for group in settings.values():
        if len(group) < 2:
            continue
        keys = sorted(set().union(*(flat[id(r)] for r in group)))
        keys = [k for k in keys if not k.startswith("task.")]
        changing = _differing([flat[id(r)] for r in group], keys)
        for run in group:
            run.variant = " ".join(f"{k}={flat[id(run)].get(k)}" for k in changing) or run.name


def collect_runs(
    paths: list[str | Path], unreadable: list[str] | None = None
) -> tuple[list[RunRecord], list[Path]]:
    """Finished runs under `paths`, labelled and sorted; plus unfinished run dirs.

    A run whose spec.yaml or results.json is damaged raises SpecError, or, when an
    `unreadable` list is given, is left out and described there.
    """
    finished, unfinished = find_run_dirs(paths)
    runs = []
    for path in finished:
        try:
            runs.append(load_run(path))
        except SpecError as exc:
            if unreadable is None:
                raise
            unreadable.append(str(exc))
    label_runs(runs)
    runs.sort(key=lambda r: (r.task_label, r.backbone, r.halting_rank, r.variant, r.name))
    return runs, unfinished
