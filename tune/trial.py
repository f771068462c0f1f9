"""One trial of a search: a normal ponderlab run that reports every validation to Ray Tune.

The trial receives plain data only (the base spec with plugin NAMES, the searched
dimensions, its sampled values), so each Ray worker rediscovers the plugins through
its own entry points. Its run directory is `<experiment>/runs/<trial_id>/`, the same
contents as `ponderlab run` writes. Each periodic validation is reported with the
checkpoint of that step, so a scheduler can stop the trial there and Ray can resume
it from there (after a crash, or on `ponderlab tune --resume`). A spec with
`distributed.workers > 1` (or GPU workers) makes the trial an N-worker run
(distributed_trial.py): same run directory, reports from rank 0.
"""

from __future__ import annotations

import json
import logging
import os
import shutil
import socket
import tempfile
import time
from pathlib import Path
from typing import Any

import ray.tune

from ponderlab.core import checkpoint as ckpt
from ponderlab.core.distributed.placement import runs_distributed
from ponderlab.core.spec import SpecBase, validate_spec

from .dims import SearchDim, apply_point
from .distributed_trial import run_distributed_trial
from .results import COMPLETED_KEY


def trial_run_dir(experiment_dir: str | Path, trial_id: str) -> Path:
    return Path(experiment_dir) / "runs" / trial_id


def attempts_path(experiment_dir: str | Path, trial_id: str) -> Path:
    """One JSON line per start of the trial (first start, retries after a crash, resumes)."""
    return Path(experiment_dir) / "runs" / f"{trial_id}.attempts.jsonl"


def numeric(metrics: dict[str, Any]) -> dict[str, float]:
    return {k: v for k, v in metrics.items() if isinstance(v, (int, float)) and not isinstance(v, bool)}


def restore_run_dir(run_dir: Path, spec: SpecBase, checkpoint_dir: Path | None) -> int:
    """Prepare `run_dir` to continue from a reported checkpoint; returns its step (0: start afresh).

    Checkpoints the run wrote after the reported one are dropped (Ray resumes from what it
    recorded), and the trainer's resume then truncates metrics.jsonl to that step.
    """
    found = ckpt.list_checkpoints(checkpoint_dir) if checkpoint_dir is not None else []
    if not found:
        if run_dir.exists():
            shutil.rmtree(run_dir)
        return 0
    step, source = found[-1]
    directory = run_dir / "checkpoints"
    for other_step, other in ckpt.list_checkpoints(directory):
        if other_step > step:
            other.unlink()
    target = ckpt.checkpoint_path(directory, step)
    if not target.exists():
        directory.mkdir(parents=True, exist_ok=True)
        ckpt.atomic_write_bytes(target, source.read_bytes())
    if not (run_dir / "spec.yaml").exists():  # the run dir was lost; rebuild what `execute` writes
        from ponderlab.core.run import write_spec

        write_spec(spec, run_dir)
    return step


class Reporter:
    """Hands each validation (and the final results) to Ray Tune with that step's checkpoint."""

    def __init__(self, run_dir: Path, final_step: int):
        self.run_dir = run_dir
        self.final_step = final_step

    def on_validation(self, step: int, metrics: dict[str, float]) -> None:
        if step >= self.final_step:
            return  # the final validation is reported with the test results
        self.report({f"validation/{k}": v for k, v in numeric(metrics).items()}, step)

    def report(self, metrics: dict[str, float], step: int) -> None:
        payload = {"step": step, **metrics}
        path = ckpt.checkpoint_path(self.run_dir / "checkpoints", step)
        if not path.exists():  # checkpoint_every differs from eval_every: metrics only
            ray.tune.report(payload)
            return
        with tempfile.TemporaryDirectory(prefix=f".{self.run_dir.name}-", dir=self.run_dir.parent) as staging:
            staged = Path(staging) / path.name
            try:
                os.link(path, staged)
            except OSError:
                shutil.copyfile(path, staged)
            ray.tune.report(payload, checkpoint=ray.tune.Checkpoint.from_directory(staging))


def trial_main(config: dict[str, Any], *, plan: dict[str, Any]) -> None:
    """The Ray Tune function trainable of `ponderlab tune`."""
    import torch

    from ponderlab.core.run import execute

    logging.getLogger("ray.train._internal.storage").setLevel(logging.WARNING)  # a line per checkpoint
    dims = [SearchDim.from_plain(d) for d in plan["dims"]]
    data = apply_point(plan["base"], dims, config)
    spec = validate_spec(data)  # this worker's registry: plugins found by name
    if spec.training.num_threads is None:
        torch.set_num_threads(max(1, int(plan.get("cpus", 1))))
    trial_id = ray.tune.get_context().get_trial_id()
    run_dir = trial_run_dir(plan["experiment_dir"], trial_id)
    run_dir.parent.mkdir(parents=True, exist_ok=True)

    checkpoint = ray.tune.get_checkpoint()
    if checkpoint is not None:
        with checkpoint.as_directory() as directory:
            start = restore_run_dir(run_dir, spec, Path(directory))
    else:
        start = restore_run_dir(run_dir, spec, None)
    with open(attempts_path(plan["experiment_dir"], trial_id), "a") as handle:
        record = {"start_step": start, "time": time.time(), "host": socket.gethostname(), "pid": os.getpid()}
        handle.write(json.dumps(record) + "\n")

    reporter = Reporter(run_dir, spec.training.steps)
    if runs_distributed(spec):  # the trial is an N-worker run: it drives a TorchTrainer
        results = run_distributed_trial(spec, run_dir, start > 0, reporter)
    else:
        results, _ = execute(
            spec, output_dir=run_dir, resume=start > 0, progress=False, on_validation=reporter.on_validation
        )
    reporter.report({**numeric(results), COMPLETED_KEY: 1}, int(results["train/steps"]))
