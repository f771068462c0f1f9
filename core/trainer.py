"""The training loop: periodic logging, validation and checkpoints, then the test.

The step itself (autocast, NaN check, clipping, AdamW, warmup + cosine) is in
`training_step`, the checkpoint-resume glue in `trainer_checkpoints`; the step's
helpers are re-exported here, where they always were.
"""

from __future__ import annotations

import json
import math
import time
from collections.abc import Callable
from pathlib import Path
from typing import Any

import torch
from tqdm.auto import tqdm

from .config import TrainingConfig
from .curriculum import Curriculum
from .data import BatchPlan, TensorDataset
from .distributed.group import LocalGroup
from .interfaces import Task, TaskData
from .metrics import MetricAccumulator
from .model import PonderModel
from .trainer_checkpoints import TrainerCheckpoints
from .training_step import (
    autocast_for,
    evaluate_dataset,
    lr_factor,
    make_optimizer,
    optimisation_step,
    pick_device,
)

__all__ = ["Trainer", "autocast_for", "evaluate_dataset", "lr_factor", "make_optimizer", "optimisation_step",
           "pick_device"]


class Trainer(TrainerCheckpoints):
    """Trains a PonderModel on a task; owns the optimizer, schedule, logs and checkpoints."""

    def __init__(
        self,
        *,
        model: PonderModel,
        task: Task,
        data: TaskData,
        config: TrainingConfig,
        seed: int,
        run_dir: Path | None = None,
        device: torch.device | None = None,
        progress: bool = True,
        on_validation: Callable[[int, dict[str, float]], None] | None = None,
        group: LocalGroup | None = None,
    ):
        self.model = model
        self.task = task
        self.config = config
        self.seed = seed
        self.run_dir = run_dir
        self.device = device or pick_device(config.device)
        self.progress = progress
        self.on_validation = on_validation
        self.model.to(self.device)
        # One process (LocalGroup) or one of N data-parallel workers (see core/distributed).
        self.group = group or LocalGroup()
        self.train_model = self.group.wrap(model)
        self.data = data
        self.test_data = TensorDataset(data.test, task.slice_columns)
        self.step = 0
        self.elapsed = 0.0
        self._writer = None
        self.curriculum = None
        if config.curriculum is None:
            self.use_data(task, data)
            self.fresh_optimizer(config.steps)
        else:  # the first stage's data now: a bad length fails before any write
            self.curriculum = Curriculum(config.curriculum, model.backbone.segment_size)
            self.curriculum.enter(self)

    def use_data(self, task: Task, data: TaskData, first_step: int = 0) -> None:
        """Train and periodically validate on `data` (the spec's, or a curriculum stage's of
        `task`), its batch order starting at `first_step`."""
        slices = task.slice_columns
        self.train_data = TensorDataset(data.train, slices)
        self.val_data = TensorDataset(data.validation, slices)
        group_column = task.batch_group_column()
        group = list(data.train[group_column]) if group_column else None
        self.plan = BatchPlan(self.train_data, self.config.batch_size, self.seed, group, first_step=first_step)

    def fresh_optimizer(self, steps: int) -> None:
        """A new AdamW, and warmup + cosine over `steps` from now (the run, or a curriculum stage)."""
        self.optimizer = make_optimizer(self.model, self.config)
        schedule = self.config if steps == self.config.steps else self.config.model_copy(update={"steps": steps})
        self.scheduler = torch.optim.lr_scheduler.LambdaLR(self.optimizer, lambda step: lr_factor(step, schedule))

    # ------------------------------------------------------------------ paths
    @property
    def checkpoint_dir(self) -> Path | None:
        return self.run_dir / "checkpoints" if self.run_dir else None

    def _log(self, record: dict[str, Any]) -> None:
        if self.run_dir is None:
            return
        with open(self.run_dir / "metrics.jsonl", "a") as handle:
            handle.write(json.dumps(record) + "\n")
        writer = self._tensorboard()
        split = record.get("split", "train")
        for key, value in record.items():
            if key not in ("step", "split") and isinstance(value, (int, float)) and math.isfinite(value):
                writer.add_scalar(f"{split}/{key}", value, record["step"])
        writer.flush()

    def _tensorboard(self):
        if self._writer is None:
            from torch.utils.tensorboard import SummaryWriter

            self._writer = SummaryWriter(str(self.run_dir / "tensorboard"), purge_step=self.step + 1)
        return self._writer

    # ------------------------------------------------------------------ steps
    def train_step(self, batch: dict[str, torch.Tensor]) -> dict[str, float]:
        totals, grad_norm = optimisation_step(
            self.train_model, self.optimizer, batch, device=self.device, precision=self.config.precision,
            grad_clip=self.config.grad_clip, step=self.step + 1, checkpoint_dir=self.checkpoint_dir,
            group=self.group,
        )
        self.scheduler.step()
        return {
            "loss": float(totals.loss),
            "task_loss": totals.task_loss,
            "mean_hops": totals.mean_hops,
            "ponder_cost": totals.ponder_cost,
            "grad_norm": grad_norm,
            "lr": self.scheduler.get_last_lr()[0],
        }

    def evaluate(self, split: str, limit: int | None = None) -> MetricAccumulator:
        data = {"train": self.train_data, "validation": self.val_data, "test": self.test_data}[split]
        return evaluate_dataset(
            self.model,
            data,
            batch_size=self.config.eval_batch_size or self.config.batch_size,
            device=self.device,
            precision=self.config.precision,
            limit=limit,
            slice_columns=self.task.slice_columns,
        )

    # ------------------------------------------------------------------ loop
    def final_step(self) -> int:
        """The last step: `config.steps`, or where the curriculum's stages end."""
        return self.curriculum.final_step(self.step) if self.curriculum else self.config.steps

    def fit(self) -> dict[str, float]:
        """Train to `config.steps`, validating and checkpointing periodically; then test."""
        config = self.config
        checkpoint_every = config.checkpoint_every or config.eval_every
        # with progress off the bar is disabled: every call below does nothing
        bar = tqdm(total=config.steps, initial=self.step, desc="train", dynamic_ncols=True,
                   leave=False, disable=not self.progress)
        started = time.perf_counter() - self.elapsed
        running: dict[str, float] = {}
        while self.step < self.final_step():
            if self.curriculum is not None:
                self.curriculum.before_step(self)
            stage = self.curriculum.fields() if self.curriculum else {}
            metrics = self.train_step(self.plan.batch(self.step))
            self.step += 1
            for key, value in metrics.items():
                running[key] = running.get(key, 0.0) + value
            if self.step % config.log_every == 0 or self.step == self.final_step():
                count = self.step % config.log_every or config.log_every  # steps since the last log
                averaged = {k: v / count for k, v in running.items()}
                self._log({"step": self.step, "split": "train", **averaged, **stage})
                running = {}
                bar.set_postfix(loss=f"{averaged['loss']:.4f}", hops=f"{averaged['mean_hops']:.2f}")
            validation = None
            periodic = self.step % config.eval_every == 0 and self.step < self.final_step()
            if periodic and self.group.is_writer:
                validation = self.evaluate("validation", config.eval_max_examples).compute()
                self._log({"step": self.step, "split": "validation", **validation, **stage})
            if periodic and self.curriculum is not None:
                self.curriculum.after_validation(self, validation)
            self.elapsed = time.perf_counter() - started
            if self.step % checkpoint_every == 0 or self.step == self.final_step():
                self.save_checkpoint()
            if validation is not None and self.on_validation is not None and self.step < self.final_step():
                # After this step's checkpoint, so the callback can hand it on (Ray Tune trials). A
                # validation that ended the run (a curriculum's `until`) goes with the final results.
                self.on_validation(self.step, validation)
            bar.update(1)
        bar.close()
        self.elapsed = time.perf_counter() - started
        if self.curriculum is not None:
            self.curriculum.finish(self)
        return self.final_results() if self.group.is_writer else {}

    def final_results(self) -> dict[str, Any]:
        results: dict[str, Any] = {}
        profiles = {}
        for split in ("validation", "test"):
            accumulator = self.evaluate(split)
            metrics = accumulator.compute()
            profiles[split] = accumulator.halting_profile()
            if split == "validation" and self.on_validation is not None:
                self.on_validation(self.step, metrics)
            self._log({"step": self.step, "split": split, **metrics})
            results.update({f"{split}/{k}": v for k, v in metrics.items()})
            extra = self.task.extra_metrics(self.model, self.data.split(split), self.device)
            results.update({f"{split}/{k}": v for k, v in extra.items()})
        results["train/steps"] = self.step
        results["time/seconds"] = round(self.elapsed, 3)
        results["time/seconds_per_step"] = round(self.elapsed / max(self.step, 1), 5)
        results["model/parameters"] = sum(p.numel() for p in self.model.parameters())
        results["seed"] = self.seed
        self.halting_profiles = profiles
        if self._writer is not None:
            self._writer.close()
            self._writer = None
        return results
