"""`ponderlab tune` as a user runs it (a subprocess, no Ray in the test process): a failed trial
keeps its row in the table, max_concurrent_trials is honoured, and --resume never unpickles
state that another user could have written."""

from __future__ import annotations

import csv
import json
import os
import pickle
import subprocess
import sys
import tempfile
from pathlib import Path

import pytest
import yaml

from ponderlab.tune.spec import load_tune_spec

REPO = Path(__file__).resolve().parents[1]

SEARCH = """\
name: NAME
seed: 0
task: {name: binary_copy, length: 8, train_size: 128, validation_size: 16, test_size: 16}
backbone: {name: lstm, d_model: 16, n_layers: 1}
halting: {name: none}
training: {steps: 20, batch_size: 16, eval_every: 10, warmup_steps: 2, log_every: 10, num_threads: 1}
search:
  training.lr: {grid: [0.01, .inf]}     # the second trial crashes (non-finite loss)
tune: {storage_path: STORAGE, verbose: 0, metric: validation/loss, max_concurrent_trials: 1}
"""


def tune_cli(*args, timeout: float = 600) -> subprocess.CompletedProcess:
    return subprocess.run(
        [sys.executable, "-m", "ponderlab.core.cli", "tune", *map(str, args)], cwd=REPO,
        capture_output=True, text=True, timeout=timeout,
    )


def write_search(directory: Path, name: str) -> Path:
    path = directory / f"{name}.yaml"
    path.write_text(SEARCH.replace("NAME", name).replace("STORAGE", str(directory / "store")))
    return path


@pytest.mark.slow
def test_failed_trial_keeps_its_row_and_trials_run_one_at_a_time():
    directory = Path(tempfile.mkdtemp(prefix="pltf", dir="/tmp"))  # Ray's socket paths stay short
    result = tune_cli(write_search(directory, "fails"))
    experiment = directory / "store" / "fails"
    assert (experiment / "results.csv").exists(), result.stdout[-3000:] + result.stderr[-3000:]
    with open(experiment / "results.csv") as handle:
        rows = {row["training.lr"]: row for row in csv.DictReader(handle)}
    assert rows["0.01"]["status"] == "completed"
    assert rows["inf"]["status"] == "error" and "non-finite loss" in rows["inf"]["error"]
    assert "non-finite loss" in (experiment / "results.md").read_text()
    assert yaml.safe_load((experiment / "best.yaml").read_text())["training"]["lr"] == 0.01
    assert result.returncode == 0, result.stderr[-3000:]

    # tune.max_concurrent_trials: 1 -> each trial starts after the other one's run has ended.
    spans = []
    for row in rows.values():
        run_dir = experiment / "runs" / row["trial"]
        (attempt,) = [json.loads(line) for line in Path(f"{run_dir}.attempts.jsonl").read_text().splitlines()]
        last_write = max(p.stat().st_mtime for p in run_dir.rglob("*") if p.is_file())
        spans.append((attempt["time"], last_write))
    (first_start, first_end), (second_start, _) = sorted(spans)
    assert first_end <= second_start, spans


class PlantedCode:
    """A pickle that, when loaded, creates the folder `marker` (standing in for any command)."""

    def __init__(self, marker: Path):
        self.marker = marker

    def __reduce__(self):
        return (os.mkdir, (str(self.marker),))


@pytest.mark.parametrize("writable", ["tuner.pkl", "experiment dir"])
def test_resume_refuses_state_that_others_can_write(tmp_path, writable):
    search = write_search(tmp_path, "planted")
    experiment = tmp_path / "store" / "planted"
    experiment.mkdir(parents=True)
    # The search spec saved exactly as `ponderlab tune` saves it, so only the pickle is foreign.
    (experiment / "tune_spec.yaml").write_text(yaml.safe_dump(load_tune_spec(search).raw, sort_keys=False))
    marker = tmp_path / "code-ran"
    (experiment / "tuner.pkl").write_bytes(pickle.dumps(PlantedCode(marker)))
    target = experiment / "tuner.pkl" if writable == "tuner.pkl" else experiment
    target.chmod(target.stat().st_mode | 0o022)

    result = tune_cli(experiment, "--resume", timeout=300)
    assert result.returncode == 2, result.stderr[-3000:]
    errors = [line for line in result.stderr.splitlines() if line.strip()]
    assert len(errors) == 1 and errors[0].startswith("error: --resume: "), result.stderr[-3000:]
    assert str(target) in errors[0] and "writable by other users" in errors[0]
    assert not marker.exists()
    assert sorted(p.name for p in experiment.iterdir()) == ["tune_spec.yaml", "tuner.pkl"]
