"""`ponderlab report RUN_DIR_OR_TUNE_DIR ... [--out DIR]`: tables and plots comparing runs.

Every folder below the given paths that holds spec.yaml and results.json is a
finished run (a single run dir, a folder of runs, or a Ray Tune experiment whose
trials contain run dirs). The report writes into `--out` (default `report/`):

  report.md / runs.csv      one row per run: task, backbone, halting, scope, params,
                            test exact match, token accuracy, mean hops, ponder cost,
                            seconds per training step (and eval_*.json results
                            of `ponderlab eval` in evals.csv and a second table)
  learning_curves.png       training task loss and validation token accuracy by step
  accuracy_vs_hops.png      test accuracy against mean hops per run (Pareto view)
  hops_by_position.png      mean hops per sequence position (test split)
  hop_heatmap_<task>.png    hops per example and position for adaptive-halting runs
  hop_histogram.png         share of tokens per hop count (test split)

The table needs only the run files (no plugins). Heatmaps need per-example hops:
taken from halting.json (`heatmap.hops`, the first test examples) when the run
stored them, else computed from the latest checkpoint on the first test examples
(that needs the run's plugins installed).
"""

from __future__ import annotations

import argparse
import csv
import json
import math
import re
import sys
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

from .errors import SpecError

#: Halting strategies whose hop count is fixed by configuration (no per-token decision).
FIXED_HALTING = frozenset({"none", "constant"})

#: (header, results.json key or attribute) of the runs table, in order.
TABLE_COLUMNS: tuple[tuple[str, str], ...] = (
    ("task", "task_label"),
    ("backbone", "backbone"),
    ("halting", "halting"),
    ("scope", "scope"),
    ("params", "model/parameters"),
    ("test exact match", "test/exact_match"),
    ("test token acc", "test/token_accuracy"),
    ("mean hops", "test/mean_hops"),
    ("ponder cost", "test/ponder_cost"),
    ("s/step", "time/seconds_per_step"),
    ("steps", "train/steps"),
    ("variant", "variant"),
    ("run", "name"),
)

#: halting.json keys of a split that may hold per-example hop matrices (besides heatmap.hops).
STORED_MATRIX_KEYS = ("example_hops", "hop_matrix")


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

    @property
    def task(self) -> str:
        return str(self.results.get("task") or self.spec.get("task", {}).get("name"))

    @property
    def backbone(self) -> str:
        return str(self.results.get("backbone") or self.spec.get("backbone", {}).get("name"))

    @property
    def halting(self) -> str:
        return str(self.results.get("halting") or self.spec.get("halting", {}).get("name"))

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
        return self.halting_profiles.get(split) or {}

    def curve(self, split: str, key: str) -> tuple[list[int], list[float]]:
        """(steps, values) of one metric from metrics.jsonl (finite values only)."""
        steps, values = [], []
        for record in self.metrics:
            value = record.get(key)
            if record.get("split") == split and isinstance(value, (int, float)) and math.isfinite(value):
                steps.append(int(record["step"]))
                values.append(float(value))
        return steps, values


# --------------------------------------------------------------------------- discovery
def _is_run_dir(path: Path) -> bool:
    return (path / "spec.yaml").is_file() and (path / "results.json").is_file()


def find_run_dirs(paths: list[str | Path]) -> tuple[list[Path], list[Path]]:
    """(finished run dirs, unfinished ones: spec.yaml without results.json) under `paths`."""
    finished: dict[Path, None] = {}
    unfinished: dict[Path, None] = {}
    for raw in paths:
        root = Path(raw)
        if not root.is_dir():
            raise SpecError(f"{root}: no such directory")
        for spec_file in sorted([root / "spec.yaml", *root.rglob("spec.yaml")]):
            if not spec_file.is_file():
                continue
            run = spec_file.parent.resolve()
            (finished if _is_run_dir(run) else unfinished)[run] = None
    return list(finished), list(unfinished)


def _read_json(path: Path, default: Any = None) -> Any:
    try:
        return json.loads(path.read_text())
    except (OSError, ValueError):
        return default


def _read_metrics(path: Path) -> list[dict[str, Any]]:
    records = []
    if not path.is_file():
        return records
    for line in path.read_text().splitlines():
        try:
            records.append(json.loads(line))
        except ValueError:
            continue  # a line cut short by a killed run
    return records


def load_run(path: Path) -> RunRecord:
    """Read a finished run dir (spec.yaml, results.json, halting.json, metrics.jsonl, eval_*.json)."""
    import yaml

    try:
        spec = yaml.safe_load((path / "spec.yaml").read_text()) or {}
    except (OSError, yaml.YAMLError) as exc:
        raise SpecError(f"{path / 'spec.yaml'}: cannot read ({exc})") from None
    results = _read_json(path / "results.json")
    if not isinstance(results, dict):
        raise SpecError(f"{path / 'results.json'}: not a JSON object")
    evals = []
    for eval_file in sorted(path.glob("eval_*.json")):
        record = _read_json(eval_file)
        if isinstance(record, dict) and "results" in record:
            evals.append({**record, "file": eval_file.name})
    return RunRecord(
        path=path,
        spec=spec,
        results=results,
        halting_profiles=_read_json(path / "halting.json", {}) or {},
        metrics=_read_metrics(path / "metrics.jsonl"),
        evals=evals,
    )


def _flatten(data: Any, prefix: str = "") -> dict[str, Any]:
    if isinstance(data, dict):
        out: dict[str, Any] = {}
        for key, value in data.items():
            out.update(_flatten(value, f"{prefix}{key}."))
        return out
    return {prefix[:-1]: json.dumps(data) if isinstance(data, list) else data}


def _differing(flat_specs: list[dict[str, Any]], keys: list[str] | None = None) -> list[str]:
    """Keys whose values are not the same in every spec."""
    every = sorted({k for flat in flat_specs for k in flat}) if keys is None else keys
    return [k for k in every if len({repr(flat.get(k)) for flat in flat_specs}) > 1]


def _short(key: str) -> str:
    return key.split(".", 1)[1] if "." in key else key


def label_runs(runs: list[RunRecord]) -> None:
    """Give each run a name (path relative to the common root), task label and variant.

    The task label adds the task options that differ between runs of the same task
    (`ca1d shift=2`); the variant lists any other spec values that differ between
    runs sharing task, backbone, halting and scope (a tune sweep's hyperparameters).
    """
    if not runs:
        return
    import os

    root = Path(os.path.commonpath([str(r.path) for r in runs]))
    for run in runs:
        relative = run.path.relative_to(root) if run.path != root else Path(run.path.name)
        run.name = str(relative) if str(relative) != "." else run.path.name
    ignored = {"output_dir", "name"}
    flat = {id(r): {k: v for k, v in _flatten(r.spec).items() if k not in ignored} for r in runs}

    by_task: dict[str, list[RunRecord]] = {}
    for run in runs:
        by_task.setdefault(run.task, []).append(run)
    for task, group in by_task.items():
        task_keys = sorted({k for r in group for k in flat[id(r)] if k.startswith("task.") and k != "task.name"})
        changing = _differing([flat[id(r)] for r in group], task_keys)
        for run in group:
            extra = " ".join(f"{_short(k)}={flat[id(run)].get(k)}" for k in changing)
            run.task_label = f"{task} {extra}".strip()

    by_setting: dict[tuple, list[RunRecord]] = {}
    for run in runs:
        by_setting.setdefault((run.task_label, run.backbone, run.halting, run.scope), []).append(run)
    for group in by_setting.values():
        if len(group) < 2:
            continue
        keys = sorted(set().union(*(flat[id(r)] for r in group)))
        keys = [k for k in keys if not k.startswith("task.")]
        changing = _differing([flat[id(r)] for r in group], keys)
        for run in group:
            run.variant = " ".join(f"{k}={flat[id(run)].get(k)}" for k in changing) or run.name


def collect_runs(paths: list[str | Path]) -> tuple[list[RunRecord], list[Path]]:
    """Finished runs under `paths`, labelled and sorted; plus unfinished run dirs."""
    finished, unfinished = find_run_dirs(paths)
    runs = [load_run(p) for p in finished]
    label_runs(runs)
    runs.sort(key=lambda r: (r.task_label, r.backbone, r.halting_rank, r.variant, r.name))
    return runs, unfinished


# --------------------------------------------------------------------------- tables
def format_cell(value: Any, key: str) -> str:
    if value is None:
        return "-"
    if isinstance(value, float):
        if not math.isfinite(value):
            return "-"
        if key == "time/seconds_per_step":
            return f"{value:.4f}"
        return f"{value:.3f}"
    if isinstance(value, int) and key == "model/parameters":
        return f"{value:,}"
    return str(value)


def _columns(runs: list[RunRecord]) -> list[tuple[str, str]]:
    """Table columns; `variant` only when some run has one."""
    return [c for c in TABLE_COLUMNS if c[1] != "variant" or any(r.variant for r in runs)]


def runs_table_markdown(runs: list[RunRecord]) -> str:
    columns = _columns(runs)
    numeric = {key for _, key in columns if "/" in key}
    lines = [
        "| " + " | ".join(h for h, _ in columns) + " |",
        "|" + "|".join("---:" if key in numeric else "---" for _, key in columns) + "|",
    ]
    for run in runs:
        cells = [format_cell(run.value(key), key).replace("|", "\\|") for _, key in columns]
        lines.append("| " + " | ".join(cells) + " |")
    return "\n".join(lines)


def display_path(path: Path) -> str:
    """`path` relative to the working directory when it lies below it, else absolute."""
    try:
        return str(path.relative_to(Path.cwd().resolve()))
    except ValueError:
        return str(path)


def write_runs_csv(runs: list[RunRecord], path: Path) -> None:
    """The runs table with full-precision numbers (plus the run path, relative to the working dir)."""
    columns = _columns(runs)
    with open(path, "w", newline="") as handle:
        writer = csv.writer(handle)
        writer.writerow([h for h, _ in columns] + ["path"])
        for run in runs:
            row = [run.value(key) for _, key in columns]
            writer.writerow(["" if v is None else v for v in row] + [display_path(run.path)])


def eval_rows(runs: list[RunRecord]) -> list[dict[str, Any]]:
    """One row per eval_*.json next to a run: its metrics beside the run's own test metrics."""
    rows = []
    for run in runs:
        for record in run.evals:
            split = record.get("split", "test")
            results = record.get("results", {})
            rows.append(
                {
                    "task": run.task_label,
                    "run": run.label,
                    "file": record["file"],
                    "split": split,
                    "overrides": " ".join(record.get("overrides") or []) or "(none)",
                    "exact_match": results.get(f"{split}/exact_match"),
                    "token_accuracy": results.get(f"{split}/token_accuracy"),
                    "mean_hops": results.get(f"{split}/mean_hops"),
                    "trained_exact_match": run.results.get("test/exact_match"),
                    "trained_token_accuracy": run.results.get("test/token_accuracy"),
                    "path": display_path(run.path),
                }
            )
    return rows


def evals_table_markdown(rows: list[dict[str, Any]]) -> str:
    headers = [
        ("task", "task"), ("run", "run"), ("split", "split"), ("task overrides", "overrides"),
        ("exact match", "exact_match"), ("token acc", "token_accuracy"), ("mean hops", "mean_hops"),
        ("trained test exact match", "trained_exact_match"), ("trained test token acc", "trained_token_accuracy"),
    ]
    lines = ["| " + " | ".join(h for h, _ in headers) + " |", "|" + "|".join("---" for _ in headers) + "|"]
    for row in rows:
        lines.append("| " + " | ".join(format_cell(row[k], k).replace("|", "\\|") for _, k in headers) + " |")
    return "\n".join(lines)


# --------------------------------------------------------------------------- heatmaps
def stored_hop_matrix(run: RunRecord, split: str = "test"):
    """Per-example hops (N, L) from halting.json when the run stored them, else None."""
    import numpy as np

    heatmap = run.halting_profiles.get("heatmap") if split == "test" else None
    candidates = [heatmap.get("hops") if isinstance(heatmap, dict) else None]
    profile = run.profile(split)
    candidates += [profile.get(key) for key in STORED_MATRIX_KEYS]
    for rows in candidates:
        if isinstance(rows, list) and rows and isinstance(rows[0], list):
            width = max(len(r) for r in rows)
            matrix = np.full((len(rows), width), np.nan)
            for i, row in enumerate(rows):
                matrix[i, : len(row)] = [np.nan if v is None else v for v in row]
            return matrix
    return None


def hop_matrices(runs: list[RunRecord], examples: int) -> tuple[dict[int, Any], list[str]]:
    """{id(run): (matrix, scored or None)} for adaptive runs; plus warnings for skipped runs."""
    from .errors import PonderlabError
    from .evaluation import run_hop_matrix, scored_mask

    matrices: dict[int, Any] = {}
    warnings = []
    for run in runs:
        if not run.adaptive:
            continue
        stored = stored_hop_matrix(run)
        if stored is not None:
            stored = stored[:examples]
            try:  # where the targets are: needs the task plugin, not the checkpoint
                scored = scored_mask(run.path, "test", len(stored))
                scored = scored if scored.shape == stored.shape else None
            except PonderlabError:
                scored = None
            matrices[id(run)] = (stored, scored)
            continue
        try:
            matrices[id(run)] = run_hop_matrix(run.path, "test", examples)
        except PonderlabError as exc:
            warnings.append(f"no hop heatmap for {run.name}: {exc}")
    return matrices, warnings


# --------------------------------------------------------------------------- report
def write_report(
    paths: list[str | Path],
    out: str | Path = "report",
    *,
    heatmap_examples: int = 32,
    plots: bool = True,
) -> dict[str, Any]:
    """Write report.md, runs.csv, evals.csv and the PNG plots; returns what was written."""
    from . import plots as plotting

    runs, unfinished = collect_runs(paths)
    if not runs:
        where = ", ".join(str(p) for p in paths)
        raise SpecError(f"no finished runs (spec.yaml + results.json) under {where}")
    out = Path(out)
    out.mkdir(parents=True, exist_ok=True)
    write_runs_csv(runs, out / "runs.csv")
    written = {"runs": runs, "unfinished": unfinished, "files": [out / "runs.csv"], "warnings": []}
    evals = eval_rows(runs)
    if evals:
        with open(out / "evals.csv", "w", newline="") as handle:
            writer = csv.DictWriter(handle, fieldnames=list(evals[0]))
            writer.writeheader()
            writer.writerows(evals)
        written["files"].append(out / "evals.csv")

    figures: list[tuple[str, Path]] = []
    if plots:
        figures += plotting.plot_learning_curves(runs, out / "learning_curves.png")
        figures += plotting.plot_accuracy_vs_hops(runs, out / "accuracy_vs_hops.png")
        figures += plotting.plot_hops_by_position(runs, out / "hops_by_position.png")
        figures += plotting.plot_hop_histogram(runs, out / "hop_histogram.png")
        if heatmap_examples > 0:
            matrices, warnings = hop_matrices(runs, heatmap_examples)
            written["warnings"] += warnings
            figures += plotting.plot_hop_heatmaps(runs, matrices, out)
    written["files"] += [path for _, path in figures]

    (out / "report.md").write_text(render_markdown(runs, evals, figures, unfinished, out))
    written["files"].insert(0, out / "report.md")
    return written


def render_markdown(
    runs: list[RunRecord],
    evals: list[dict[str, Any]],
    figures: list[tuple[str, Path]],
    unfinished: list[Path],
    out: Path,
) -> str:
    lines = [
        "# ponderlab report",
        "",
        f"{len(runs)} finished run(s)."
        + (f" {len(unfinished)} unfinished run dir(s) skipped." if unfinished else ""),
        "",
        "Columns: test metrics from each run's results.json. *Mean hops* is ponder steps per token "
        "at one ponder site, averaged over sites (1 = no pondering); *ponder cost* is N + R summed "
        "over sites (0 for fixed-depth halting); *s/step* is training wall time per optimizer step "
        "including periodic validation.",
        "",
        "## Runs",
        "",
        runs_table_markdown(runs),
        "",
    ]
    if evals:
        lines += [
            "## Evaluations (`ponderlab eval`)",
            "",
            evals_table_markdown(evals),
            "",
        ]
    if figures:
        lines += ["## Plots", ""]
        for title, path in figures:
            lines += [f"### {title}", "", f"![{title}]({path.relative_to(out).as_posix()})", ""]
    return "\n".join(lines)


# --------------------------------------------------------------------------- CLI
def add_arguments(parser: argparse.ArgumentParser) -> None:
    parser.description = "Compare finished runs: Markdown/CSV table and PNG plots."
    parser.add_argument("paths", nargs="+", help="run directories or folders holding them (e.g. a tune dir)")
    parser.add_argument("--out", default="report", help="output folder (default ./report)")
    parser.add_argument(
        "--heatmap-examples",
        type=int,
        default=32,
        help="test examples per hop heatmap (0: no heatmaps, which skips loading checkpoints)",
    )
    parser.add_argument("--no-plots", action="store_true", help="tables only")


def main(args: argparse.Namespace) -> int:
    written = write_report(
        args.paths, args.out, heatmap_examples=args.heatmap_examples, plots=not args.no_plots
    )
    runs = written["runs"]
    print(runs_table_markdown(runs))
    for warning in written["warnings"]:
        print(f"warning: {warning}", file=sys.stderr)
    if written["unfinished"]:
        print(f"skipped {len(written['unfinished'])} unfinished run dir(s) (no results.json)", file=sys.stderr)
    print(f"wrote {len(written['files'])} file(s) to {Path(args.out)}:")
    for path in written["files"]:
        print(f"  {path}")
    return 0


_SAFE = re.compile(r"[^A-Za-z0-9.-]+")


def safe_name(text: str) -> str:
    """A file-name-safe version of a label: `ca1d shifts=[1]` -> `ca1d_shifts_1`."""
    return _SAFE.sub("_", re.sub(r"[\[\]'\"]", "", text)).strip("_") or "run"
