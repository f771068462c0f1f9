"""The Python API: the same operations as the CLI, as functions.

    import ponderlab
    model = ponderlab.build_model(
        backbone={"name": "lstm", "d_model": 64, "n_layers": 2},
        halting={"name": "graves", "max_hops": 4, "epsilon": 0.1},
        vocab_size=128,
    )
    out = model(input_ids)                   # out.logits (B, L, V), out.stats.hops (B, L)
    metrics = ponderlab.train_step(model, optimizer, input_ids, labels)
    results = ponderlab.run("spec.yaml", overrides=["training.steps=200"])
"""

from __future__ import annotations

from pathlib import Path
from typing import Any

import torch

from .data import TensorDataset
from .interfaces import Task
from .model import PonderModel
from .registry import get_registry
from .run import build_model_from_spec, launch
from .run import build_task as _build_task_from_spec
from .spec import SpecBase, apply_overrides, load_spec, read_spec_file, resolve_spec, validate_spec
from .training_step import evaluate_dataset, pick_device


def _config(kind: str, value: Any):
    if hasattr(value, "model_dump"):
        return value
    if isinstance(value, str):
        value = {"name": value}
    return get_registry().get(kind, value["name"]).cls.config_class.model_validate(value)


def build_model(
    spec: SpecBase | dict | str | Path | None = None,
    *,
    backbone: dict | str | None = None,
    halting: dict | str | None = None,
    vocab_size: int | None = None,
    seed: int | None = None,
) -> PonderModel:
    """A PonderModel from a spec (object, dict or YAML path) or from keyword sections.

    With keyword sections only, `vocab_size` is required and no task is built.
    """
    if spec is not None:
        spec = resolve_spec(spec)
        torch.manual_seed(spec.seed if seed is None else seed)
        size = vocab_size or _build_task_from_spec(spec).vocab_size
        return build_model_from_spec(spec, size)
    if backbone is None or vocab_size is None:
        raise ValueError("build_model needs a spec, or backbone=... and vocab_size=...")
    if seed is not None:
        torch.manual_seed(seed)
    registry = get_registry()
    backbone_config = _config("backbone", backbone)
    halting_config = _config("halting", halting or {"name": "none"})
    backbone_module = registry.get("backbone", backbone_config.name).cls(backbone_config, vocab_size=vocab_size)
    halting_cls = registry.get("halting", halting_config.name).cls
    scope = getattr(halting_config, "scope", None)
    if scope is not None and scope not in halting_cls.supported_scopes:
        raise ValueError(f"halting {halting_config.name!r} does not support scope {scope!r}")
    return PonderModel(backbone_module, halting_cls, halting_config, vocab_size=vocab_size)


def build_task(spec: SpecBase | dict | str | Path | None = None, **task: Any) -> Task:
    """A Task from a spec, or from task options (`build_task(name="binary_copy", length=8)`)."""
    if spec is not None:
        return _build_task_from_spec(resolve_spec(spec))
    config = _config("task", task)
    return get_registry().get("task", config.name).cls(config)


def train_step(
    model: PonderModel,
    optimizer: torch.optim.Optimizer,
    input_ids: torch.Tensor,
    labels: torch.Tensor,
    mask: torch.Tensor | None = None,
    grad_clip: float | None = 1.0,
) -> dict[str, float]:
    """One optimisation step (the Trainer's: autocast, NaN check, clipping); returns loss,
    task loss and mean hops per token."""
    from .training_step import optimisation_step

    device = next(model.parameters()).device
    batch = {"input_ids": input_ids, "labels": labels}
    if mask is not None:
        batch["mask"] = mask
    totals, _ = optimisation_step(model, optimizer, batch, device=device, precision="auto",
                                  grad_clip=grad_clip, step=0)
    return {"loss": float(totals.loss), "task_loss": totals.task_loss, "mean_hops": totals.mean_hops}


def evaluate(model: PonderModel, task: Task, split: str = "test", seed: int = 0, batch_size: int = 64) -> dict:
    """Teacher-forced metrics of `model` on a task split."""
    data = task.build(seed).split(split)
    device = next(model.parameters()).device
    return evaluate_dataset(
        model, TensorDataset(data, task.slice_columns), batch_size=batch_size,
        device=device, slice_columns=task.slice_columns,
    ).compute()


def run(
    spec: SpecBase | dict | str | Path | None = None,
    overrides: list[str] | None = None,
    *,
    output_dir: str | Path | None = None,
    resume: bool = False,
    progress: bool = False,
) -> dict[str, Any]:
    """Run an experiment; returns the dict written to results.json."""
    if isinstance(spec, (str, Path)) or spec is None:
        resolved = load_spec(spec, overrides)
    else:
        data = spec.model_dump(mode="json") if isinstance(spec, SpecBase) else dict(spec)
        resolved = validate_spec(apply_overrides(data, list(overrides or [])))
    # N workers run on Ray Train (docs/scale.md)
    results, _ = launch(resolved, output_dir=output_dir, resume=resume, progress=progress)
    return results


__all__ = ["build_model", "build_task", "evaluate", "load_spec", "pick_device", "read_spec_file", "run", "train_step"]
