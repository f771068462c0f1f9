"""Kill-and-resume of a real `ponderlab run` subprocess, shared by the resume tests: an
uninterrupted run, the same run SIGKILLed after a checkpoint, `--resume`, and the comparison."""

from __future__ import annotations

import json
import os
import signal
import subprocess
import sys
import time
from pathlib import Path

import yaml

from ponderlab.core import checkpoint as ckpt

CLI = [sys.executable, "-m", "ponderlab.core.cli", "run"]
ENV = {**os.environ, "PYTHONUNBUFFERED": "1"}


def run_to_end(spec_path: Path, run_dir: Path) -> None:
    finished = subprocess.run(CLI + [str(spec_path), "--output-dir", str(run_dir), "--no-progress"],
                              env=ENV, capture_output=True, text=True)
    assert finished.returncode == 0, finished.stderr


def kill_after_checkpoint(spec_path: Path, run_dir: Path, step: int) -> None:
    """Start the run and SIGKILL it as soon as its step-`step` checkpoint exists."""
    process = subprocess.Popen(CLI + [str(spec_path), "--output-dir", str(run_dir), "--no-progress"],
                               env=ENV, stdout=subprocess.DEVNULL, stderr=subprocess.DEVNULL)
    target = ckpt.checkpoint_path(run_dir / "checkpoints", step)
    deadline = time.time() + 300
    while not target.exists() and time.time() < deadline and process.poll() is None:
        time.sleep(0.02)
    process.send_signal(signal.SIGKILL)
    process.wait()
    assert target.exists(), f"the run never wrote its step-{step} checkpoint"
    assert not (run_dir / "results.json").exists(), "the run finished before it could be killed"


def assert_resume_reproduces_the_uninterrupted_run(spec: dict, tmp_path: Path, kill_at: int) -> None:
    """Every logged record and every result (timings aside) of the killed and resumed run equal,
    exactly, those of the uninterrupted run."""
    spec_path = tmp_path / "spec.yaml"
    spec_path.write_text(yaml.safe_dump(spec))
    reference_dir, killed_dir = tmp_path / "reference", tmp_path / "killed"
    run_to_end(spec_path, reference_dir)
    kill_after_checkpoint(spec_path, killed_dir, kill_at)
    assert ckpt.list_checkpoints(killed_dir / "checkpoints")[-1][0] < spec["training"]["steps"]
    resumed = subprocess.run(CLI + ["--resume", "--output-dir", str(killed_dir), "--no-progress"],
                             env=ENV, capture_output=True, text=True)
    assert resumed.returncode == 0, resumed.stderr

    expected = json.loads((reference_dir / "results.json").read_text())
    actual = json.loads((killed_dir / "results.json").read_text())
    assert sorted(actual) == sorted(expected)
    for key, value in expected.items():
        if not key.startswith("time/"):
            assert json.dumps(actual[key]) == json.dumps(value), f"{key}: {actual[key]} != {value}"  # exact
    logged = (killed_dir / "metrics.jsonl").read_text().splitlines()
    assert logged == (reference_dir / "metrics.jsonl").read_text().splitlines()
