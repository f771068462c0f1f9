"""The results of a search: one row per trial (CSV and Markdown) and best.yaml."""

from __future__ import annotations

import csv
import io
import math
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

import yaml

from ponderlab.core.checkpoint import atomic_write_text
from ponderlab.core.spec import PLUGIN_SECTIONS, validate_spec

from .dims import apply_point, format_value
from .spec import TuneSpec

COMPLETED_KEY = "trial/completed"  # set in a trial's final report
STANDARD_METRICS = (
    "validation/exact_match",
    "validation/token_accuracy",
    "test/exact_match",
    "test/token_accuracy",
    "test/mean_hops",
    "test/ponder_cost",
)


@dataclass
class TrialRow:
    trial_id: str
    status: str  # completed | stopped (by the scheduler) | error | unfinished
    spec: dict  # the trial's experiment spec (plugin names)
    params: dict[str, Any]  # column -> searched value
    metrics: dict[str, Any]  # the last reported result
    failures: int = 0
    error: str | None = None

    def metric(self, key: str) -> float | None:
        value = self.metrics.get(key)
        return float(value) if isinstance(value, (int, float)) and math.isfinite(value) else None


@dataclass
class ResultTable:
    metric: str
    mode: str
    param_columns: list[str]
    metric_columns: list[str]
    rows: list[TrialRow] = field(default_factory=list)

    @property
    def best(self) -> TrialRow | None:
        """The best completed trial (else the best trial that reported the metric)."""
        scored = [row for row in self.rows if row.metric(self.metric) is not None]
        completed = [row for row in scored if row.status == "completed"]
        return (completed or scored or [None])[0]

    @property
    def columns(self) -> list[str]:
        return ["trial", "status", *self.param_columns, *self.metric_columns,
                "step", "time_s", "failures", "run_dir", "error"]

    def record(self, row: TrialRow) -> dict[str, Any]:
        values = {"trial": row.trial_id, "status": row.status, **row.params}
        for key in self.metric_columns:
            values[key] = row.metrics.get(key)
        values["step"] = row.metrics.get("step")
        seconds = row.metrics.get("time/seconds", row.metrics.get("time_total_s"))
        values["time_s"] = round(seconds, 1) if isinstance(seconds, (int, float)) else None
        values["failures"] = row.failures
        values["run_dir"] = f"runs/{row.trial_id}"
        values["error"] = row.error
        return values


def _error_line(trial) -> str | None:
    path = getattr(trial, "error_file", None)
    if not path or not Path(path).exists():
        return "error (no error file)" if str(getattr(trial, "status", "")) == "ERROR" else None
    lines = [line.strip() for line in Path(path).read_text(errors="replace").splitlines() if line.strip()]
    # The exception line is the last line of the traceback that is not a Ray frame hint.
    for line in reversed(lines):
        if not line.startswith(("File ", "^", "~")):
            return line[:200]
    return lines[-1][:200] if lines else None


def _status(trial) -> str:
    status = str(trial.status)
    if status == "ERROR":
        return "error"
    if status == "TERMINATED":
        return "completed" if trial.last_result.get(COMPLETED_KEY) else "stopped"
    return "unfinished"


def param_columns(tspec: TuneSpec) -> list[str]:
    """Plugin columns (task, backbone, halting) first, then every other searched key."""
    return [*PLUGIN_SECTIONS, *(d.key for d in tspec.dims if d.key not in PLUGIN_SECTIONS)]


def _params(tspec: TuneSpec, spec: dict, config: dict) -> dict[str, Any]:
    params: dict[str, Any] = {}
    searched = {d.key: d for d in tspec.dims}
    for section in PLUGIN_SECTIONS:
        dim = searched.get(section)
        if dim is not None and section in config:
            value = dim.value(config[section])
            params[section] = format_value({"name": spec[section].get("name"), **value}) if isinstance(value, dict) else format_value(value)
        else:
            params[section] = (spec.get(section) or {}).get("name")
    for dim in tspec.dims:
        if dim.key in PLUGIN_SECTIONS:
            continue
        params[dim.key] = dim.value(config[dim.key]) if dim.key in config else None
    return params


def build_table(tspec: TuneSpec, trials: list) -> ResultTable:
    """Rows from Ray Tune's trials, sorted by the metric (missing values last)."""
    options = tspec.options
    metric_columns = list(dict.fromkeys([options.metric, *STANDARD_METRICS, *options.columns]))
    table = ResultTable(
        metric=options.metric, mode=options.resolved_mode,
        param_columns=param_columns(tspec), metric_columns=metric_columns,
    )
    for trial in trials:
        config = {d.key: trial.config[d.key] for d in tspec.dims if d.key in trial.config}
        spec = apply_point(tspec.base, tspec.dims, config) if len(config) == len(tspec.dims) else dict(tspec.base)
        table.rows.append(TrialRow(
            trial_id=trial.trial_id,
            status=_status(trial),
            spec=spec,
            params=_params(tspec, spec, config),
            metrics=dict(trial.last_result or {}),
            failures=int(trial.run_metadata.num_failures),
            error=_error_line(trial) if str(trial.status) == "ERROR" else None,
        ))
    sign = -1.0 if table.mode == "max" else 1.0
    table.rows.sort(key=lambda row: (
        row.metric(table.metric) is None,
        sign * (row.metric(table.metric) or 0.0),
        row.trial_id,
    ))
    return table


def _cell(value: Any, markdown: bool) -> str:
    if value is None:
        return "" if not markdown else "-"
    if isinstance(value, float):
        if markdown:
            return f"{value:.4g}"
        return repr(value)
    if isinstance(value, dict | list):
        return format_value(value)
    text = str(value)
    return text.replace("|", "\\|") if markdown else text


def to_csv(table: ResultTable) -> str:
    buffer = io.StringIO()
    writer = csv.writer(buffer, lineterminator="\n")
    writer.writerow(table.columns)
    for row in table.rows:
        record = table.record(row)
        writer.writerow([_cell(record.get(c), markdown=False) for c in table.columns])
    return buffer.getvalue()


def to_markdown(table: ResultTable, limit: int | None = None) -> str:
    columns = [c for c in table.columns if c != "error" or any(r.error for r in table.rows)]
    lines = ["| " + " | ".join(columns) + " |", "|" + "|".join("---" for _ in columns) + "|"]
    for row in table.rows[:limit]:
        record = table.record(row)
        lines.append("| " + " | ".join(_cell(record.get(c), markdown=True) for c in columns) + " |")
    return "\n".join(lines) + "\n"


def best_spec_yaml(tspec: TuneSpec, row: TrialRow, metric: str) -> str:
    """A runnable spec of a trial: `ponderlab run best.yaml` trains it again."""
    spec = validate_spec(dict(row.spec))
    spec = spec.model_copy(update={"name": f"{tspec.name}-{row.trial_id}", "output_dir": None})
    value = row.metric(metric)
    header = (
        f"# Best trial {row.trial_id} of search {tspec.name!r}: {metric} = {value} ({row.status}).\n"
        f"# Reproduce it: ponderlab run best.yaml\n"
    )
    body = spec.model_dump(mode="json", exclude={"output_dir"})
    return header + yaml.safe_dump(body, sort_keys=False)


def write_outputs(tspec: TuneSpec, table: ResultTable) -> dict[str, Path]:
    directory = tspec.experiment_dir
    outputs = {"csv": directory / "results.csv", "markdown": directory / "results.md"}
    atomic_write_text(outputs["csv"], to_csv(table))
    title = f"# Search {tspec.name}\n\nSorted by {table.metric} ({table.mode}); one row per trial.\n\n"
    atomic_write_text(outputs["markdown"], title + to_markdown(table))
    best = table.best
    if best is not None:
        outputs["best"] = directory / "best.yaml"
        atomic_write_text(outputs["best"], best_spec_yaml(tspec, best, table.metric))
    return outputs
