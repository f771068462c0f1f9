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
  accuracy_vs_layers.png    the same against mean layer applications per token
                            (`--pareto-x layers`; compute across scopes); with
                            `--pareto-seeds mean`, one point per configuration at
                            its mean over seeds, bars from lowest to highest seed
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
import math
import os
import shutil
import sys
import tempfile
from collections.abc import Callable
from pathlib import Path
from typing import Any

from .errors import PonderlabError, SpecError, StorageError, storage_full
from .run_records import RunRecord, collect_runs, label_runs, load_run

__all__ = ["RunRecord", "collect_runs", "label_runs", "load_run", "write_report"]

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


# --------------------------------------------------------------------------- tables
def format_cell(value: Any, key: str) -> str:
    if value is None or (isinstance(value, float) and not math.isfinite(value)):
        return "-"
    if isinstance(value, float):
        return f"{value:.4f}" if key == "time/seconds_per_step" else f"{value:.3f}"
    if isinstance(value, int) and key == "model/parameters":
        return f"{value:,}"
    return str(value)


def _columns(runs: list[RunRecord]) -> list[tuple[str, str]]:
    """Table columns; `variant` only when some run has one."""
    return [c for c in TABLE_COLUMNS if c[1] != "variant" or any(r.variant for r in runs)]


def markdown_table(columns: list[tuple[str, str]], rows: list, value: Callable[[Any, str], Any],
                   right: set[str] = frozenset()) -> str:
    """A Markdown table: a column per (header, key), the cell of a row `value(row, key)`;
    the columns whose key is in `right` are right-aligned."""
    lines = [
        "| " + " | ".join(h for h, _ in columns) + " |",
        "|" + "|".join("---:" if key in right else "---" for _, key in columns) + "|",
    ]
    for row in rows:
        cells = [format_cell(value(row, key), key).replace("|", "\\|") for _, key in columns]
        lines.append("| " + " | ".join(cells) + " |")
    return "\n".join(lines)


def runs_table_markdown(runs: list[RunRecord]) -> str:
    columns = _columns(runs)
    return markdown_table(columns, runs, RunRecord.value, {key for _, key in columns if "/" in key})


def display_path(path: Path) -> str:
    """`path` relative to the working directory when it lies below it, else absolute."""
    cwd = Path.cwd().resolve()
    return str(path.relative_to(cwd) if path.is_relative_to(cwd) else path)


def write_runs_csv(runs: list[RunRecord], path: Path) -> None:
    """The runs table with full-precision numbers (plus the run path, relative to the working dir)."""
    columns = _columns(runs)
    with open(path, "w", newline="") as handle:
        writer = csv.writer(handle)
        writer.writerow([h for h, _ in columns] + ["path"])
        for run in runs:
            row = [run.value(key) for _, key in columns]
            writer.writerow(["" if v is None else v for v in row] + [display_path(run.path)])


#: Metrics of an evaluation in its row, and the run's own test metrics shown beside them.
EVAL_METRICS = ("exact_match", "token_accuracy", "mean_hops")
TRAINED_METRICS = ("exact_match", "token_accuracy")


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
                    **{key: results.get(f"{split}/{key}") for key in EVAL_METRICS},
                    **{f"trained_{key}": run.results.get(f"test/{key}") for key in TRAINED_METRICS},
                    "path": display_path(run.path),
                }
            )
    return rows


#: (header, key) of the evaluations table.
EVAL_COLUMNS = (
    ("task", "task"), ("run", "run"), ("split", "split"), ("task overrides", "overrides"),
    ("exact match", "exact_match"), ("token acc", "token_accuracy"), ("mean hops", "mean_hops"),
    ("trained test exact match", "trained_exact_match"), ("trained test token acc", "trained_token_accuracy"),
)


def evals_table_markdown(rows: list[dict[str, Any]]) -> str:
    return markdown_table(EVAL_COLUMNS, rows, lambda row, key: row[key])


# --------------------------------------------------------------------------- heatmaps
def stored_hop_matrix(run: RunRecord):
    """Per-example test hops (N, L) from halting.json (`heatmap.hops`) when the run stored them,
    else None."""
    from .evaluation import padded_rows

    heatmap = run.halting_profiles.get("heatmap")
    rows = heatmap.get("hops") if isinstance(heatmap, dict) else None
    if not (isinstance(rows, list) and rows and isinstance(rows[0], list)):
        return None
    return padded_rows([[float("nan") if v is None else v for v in row] for row in rows])


def hop_matrices(runs: list[RunRecord], examples: int) -> tuple[dict[int, Any], list[str]]:
    """{id(run): (matrix, scored or None)} for adaptive runs; plus warnings for skipped runs."""
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
    pareto_x: tuple[str, ...] = ("hops",),
    pareto_seeds: str = "each",
) -> dict[str, Any]:
    """Write report.md, runs.csv, evals.csv and the PNG plots; returns what was written.

    The files are written into a hidden folder beside `out` and moved into `out` only once
    all of them are complete: a failure (a full disk) leaves no partial report. Runs whose
    spec.yaml or results.json is damaged are skipped with a warning.
    """
    unreadable: list[str] = []
    runs, unfinished = collect_runs(paths, unreadable)
    if not runs:
        where = ", ".join(str(p) for p in paths)
        skipped = f" ({len(unreadable)} unreadable: {'; '.join(unreadable)})" if unreadable else ""
        raise SpecError(f"no finished runs (spec.yaml + results.json) under {where}{skipped}")
    out = Path(out)
    if out.exists() and not out.is_dir():
        raise SpecError(f"--out {out}: is a file, not a folder")
    out.parent.mkdir(parents=True, exist_ok=True)
    staging = Path(tempfile.mkdtemp(prefix=f".{out.name}.", suffix=".tmp", dir=out.parent))
    try:
        written = _write_files(runs, unfinished, staging, heatmap_examples=heatmap_examples, plots=plots,
                               pareto_x=pareto_x, pareto_seeds=pareto_seeds)
    except BaseException as exc:
        shutil.rmtree(staging, ignore_errors=True)
        if storage_full(exc):
            raise StorageError(
                f"cannot write the report in {out.parent}: {exc.strerror}; nothing was written to {out}"
            ) from None
        raise
    out.mkdir(exist_ok=True)
    for path in sorted(staging.iterdir()):
        os.replace(path, out / path.name)
    staging.rmdir()
    written["files"] = [out / path.relative_to(staging) for path in written["files"]]
    written["warnings"] = [f"skipped a run: {reason}" for reason in unreadable] + written["warnings"]
    return written


def _write_files(
    runs: list[RunRecord], unfinished: list[Path], out: Path, *, heatmap_examples: int, plots: bool,
    pareto_x: tuple[str, ...], pareto_seeds: str,
) -> dict[str, Any]:
    from . import plots as plotting

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
        for axis in pareto_x:
            figures += plotting.plot_accuracy_vs_hops(runs, out / f"accuracy_vs_{axis}.png", x_axis=axis,
                                                      seeds=pareto_seeds)
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
    parser.add_argument(
        "--pareto-x",
        nargs="+",
        choices=["hops", "layers"],
        default=["hops"],
        help="x axes of the Pareto view: hops (accuracy_vs_hops.png) and/or layers "
        "(accuracy_vs_layers.png: mean layer applications per token)",
    )
    parser.add_argument(
        "--pareto-seeds",
        choices=["each", "mean"],
        default="each",
        help="Pareto view: a point per run (each), or per configuration at its mean over the runs "
        "that differ only in seed, with bars from the lowest to the highest seed (mean)",
    )


def main(args: argparse.Namespace) -> int:
    written = write_report(
        args.paths, args.out, heatmap_examples=args.heatmap_examples, plots=not args.no_plots,
        pareto_x=tuple(dict.fromkeys(args.pareto_x)), pareto_seeds=args.pareto_seeds,
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
