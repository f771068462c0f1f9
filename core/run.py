"""One experiment run: build task and model, prepare the run directory, train, write results."""

from __future__ import annotations

import json
import random
import time
from pathlib import Path
from typing import Any

import numpy as np
import torch

from . import checkpoint as ckpt
from .errors import CheckpointError, SpecError, StorageError, storage_full
from .halting_report import write_halting_artifacts
from .interfaces import Task, TaskData
from .model import PonderModel
from .registry import get_registry
from .run_lock import LOCK_NAME, RunDirLock, lock_holder
from .spec import SpecBase, load_spec, spec_to_yaml
from .trainer import Trainer, pick_device


def seed_everything(seed: int) -> None:
    random.seed(seed)
    np.random.seed(seed % (2**32))
    torch.manual_seed(seed)


def build_task(spec: SpecBase) -> Task:
    return get_registry().get("task", spec.task.name).cls(spec.task)


def build_model_from_spec(spec: SpecBase, vocab_size: int) -> PonderModel:
    registry = get_registry()
    backbone_cls = registry.get("backbone", spec.backbone.name).cls
    halting_cls = registry.get("halting", spec.halting.name).cls
    backbone = backbone_cls(spec.backbone, vocab_size=vocab_size)
    return PonderModel(backbone, halting_cls, spec.halting, vocab_size=vocab_size)


def default_run_dir(spec: SpecBase) -> Path:
    name = spec.name or f"{spec.task.name}-{spec.backbone.name}-{spec.halting.name}"
    return Path("runs") / f"{name}-{time.strftime('%Y%m%d-%H%M%S')}"


def _run_files(run_dir: Path) -> list[Path]:
    """What a run directory holds besides its lock file."""
    return [entry for entry in run_dir.iterdir() if entry.name != LOCK_NAME]


def prepare_run_dir(spec: SpecBase, output_dir: str | Path | None, resume: bool) -> Path:
    """Decide the run dir; refuse to overwrite a finished or started run unless resuming."""
    run_dir = Path(output_dir or spec.output_dir or default_run_dir(spec))
    if run_dir.exists() and not run_dir.is_dir():
        raise SpecError(f"output directory {run_dir} is a file, not a directory")
    holder = lock_holder(run_dir) if run_dir.is_dir() else None
    if holder is not None:
        raise SpecError(f"run directory {run_dir} is in use by {holder}")
    if resume:
        if not (run_dir / "spec.yaml").exists():
            raise SpecError(f"--resume: {run_dir} holds no run (no spec.yaml)")
        return run_dir
    if run_dir.exists() and _run_files(run_dir):
        raise SpecError(f"output directory {run_dir} is not empty (use --resume to continue it)")
    return run_dir


def resume_spec(run_dir: Path, spec: SpecBase | None) -> SpecBase:
    """The spec of a run being resumed; a given spec must match the saved one."""
    saved = load_spec(run_dir / "spec.yaml")
    placement = {"output_dir", "distributed"}  # where and on how many workers: free to change
    if spec is not None and spec.model_dump(exclude=placement) != saved.model_dump(exclude=placement):
        raise SpecError(f"--resume: the spec differs from the one saved in {run_dir / 'spec.yaml'}")
    return saved


def execute(
    spec: SpecBase,
    *,
    output_dir: str | Path | None = None,
    resume: bool = False,
    progress: bool = True,
    on_validation=None,
    task_data: TaskData | None = None,
) -> tuple[dict[str, Any], Path]:
    """Run an experiment end to end; returns (results, run_dir)."""
    run_dir = prepare_run_dir(spec, output_dir, resume)
    if resume:
        spec = resume_spec(run_dir, spec)
    if spec.training.num_threads:
        torch.set_num_threads(spec.training.num_threads)
    # Everything that can fail on bad input happens before the run dir is created.
    task = build_task(spec)
    data = task_data or task.build(spec.seed)
    seed_everything(spec.seed)
    model = build_model_from_spec(spec, task.vocab_size)
    device = pick_device(spec.training.device)

    trainer = Trainer(
        model=model,
        task=task,
        data=data,
        config=spec.training,
        seed=spec.seed,
        run_dir=run_dir,
        device=device,
        progress=progress,
        on_validation=on_validation,
    )
    with RunDirLock(run_dir):
        if resume:
            if not trainer.resume():
                raise CheckpointError(
                    f"--resume: {run_dir} has no checkpoint to continue from; "
                    "start the run afresh in a new output directory"
                )
        elif _run_files(run_dir):  # another process finished a run here since the check
            raise SpecError(f"output directory {run_dir} is not empty (use --resume to continue it)")
        else:
            write_spec(spec, run_dir)
        try:
            results = write_results(spec, trainer, trainer.fit(), device, run_dir)
        except OSError as exc:
            if not storage_full(exc):
                raise
            raise StorageError(out_of_room_message(exc, run_dir, spec.training.steps)) from None
    return results, run_dir


def launch(spec: SpecBase, **options: Any) -> tuple[dict[str, Any], Path]:
    """`execute`, or `run_distributed` on Ray Train workers when the spec asks for several
    (docs/scale.md); `options` are `execute`'s keywords. Returns (results, run_dir)."""
    from .distributed.placement import runs_distributed

    if runs_distributed(spec):
        from .distributed.launch import run_distributed

        return run_distributed(spec, **options)
    return execute(spec, **options)


def write_spec(spec: SpecBase, run_dir: Path) -> None:
    """What a new run dir holds first: spec.yaml (naming the run dir) and the seed."""
    resolved = spec.model_copy(update={"output_dir": str(run_dir)})
    ckpt.atomic_write_text(run_dir / "spec.yaml", spec_to_yaml(resolved))
    ckpt.atomic_write_text(run_dir / "seed", f"{spec.seed}\n")


def write_results(
    spec: SpecBase, trainer: Trainer, results: dict[str, Any], device: torch.device, run_dir: Path
) -> dict[str, Any]:
    """Label the final results, write results.json and the halting artifacts; return them."""
    results = {
        "task": spec.task.name,
        "backbone": spec.backbone.name,
        "halting": spec.halting.name,
        "scope": getattr(spec.halting, "scope", None),
        "device": str(device),
        **results,
    }
    write_halting_artifacts(run_dir, trainer, results)  # halting.json + halting_hops.png
    ckpt.atomic_write_text(run_dir / "results.json", json.dumps(results, indent=2, sort_keys=True))
    return results


def out_of_room_message(exc: OSError, run_dir: Path, steps: int) -> str:
    """What could not be written, and what of the run is kept."""
    what = exc.filename or f"a file in {run_dir}"
    found = ckpt.list_checkpoints(run_dir / "checkpoints")
    if found:
        step, path = found[-1]
        kept = f"kept: checkpoint {path} (step {step} of {steps}); free space, then run again with --resume"
    else:
        kept = "no checkpoint was saved"
    return f"cannot write {what}: {exc.strerror or exc}; {kept}"


#: The summary table's metric columns: heading -> results key after "<split>/".
SUMMARY_COLUMNS = {
    "loss": "loss",
    "token acc": "token_accuracy",
    "exact match": "exact_match",
    "mean hops": "mean_hops",
    "max hops": "max_hops",
    "ponder cost": "ponder_cost",
}


def format_summary(results: dict[str, Any], run_dir: Path | None = None) -> str:
    """A readable table of the final metrics."""
    table = [["split", *SUMMARY_COLUMNS]]
    for split in ("validation", "test"):
        values = [results.get(f"{split}/{key}") for key in SUMMARY_COLUMNS.values()]
        table.append([split, *("-" if value is None else f"{value:.4f}" for value in values)])
    widths = [max(len(cell) for cell in column) for column in zip(*table, strict=True)]
    lines = ["  ".join(cell.ljust(w) for cell, w in zip(row, widths, strict=True)) for row in table]
    out = [
        f"{results.get('task')} / {results.get('backbone')} / {results.get('halting')}"
        f" (scope {results.get('scope')})",
        lines[0],
        "-" * len(lines[0]),
        *lines[1:],
    ]
    steps = results.get("train/steps", 0)
    seconds = results.get("time/seconds", 0.0)
    out.append(
        f"time {seconds:.1f} s for {steps} steps ({1000 * seconds / max(steps, 1):.1f} ms/step), "
        f"{results.get('model/parameters', 0):,} parameters on {results.get('device')}"
    )
    if run_dir is not None:
        out.append(f"run directory: {run_dir}")
    return "\n".join(out)
