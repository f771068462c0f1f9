"""The training loop: AdamW, warmup + cosine, clipping, periodic validation, checkpoints, resume."""

from __future__ import annotations

import contextlib
import json
import math
import sys
import time
from collections.abc import Callable
from pathlib import Path
from typing import Any

import torch
from torch import nn

from . import checkpoint as ckpt
from .config import TrainingConfig
from .curriculum import Curriculum
from .data import BatchPlan, TensorDataset
from .distributed.group import LocalGroup, StepTotals
from .errors import CheckpointError, NonFiniteLossError
from .interfaces import Task, TaskData
from .metrics import MetricAccumulator
from .model import PonderModel
from .run_records import metric_lines


def pick_device(choice: str = "auto") -> torch.device:
    if choice == "cuda" or (choice == "auto" and torch.cuda.is_available()):
        return torch.device("cuda")
    return torch.device("cpu")


def autocast_for(device: torch.device, precision: str):
    """bf16 autocast on CUDA (precision auto/bf16), nothing on CPU unless bf16 is asked for."""
    use_bf16 = precision == "bf16" or (precision == "auto" and device.type == "cuda")
    if use_bf16:
        return torch.autocast(device.type, dtype=torch.bfloat16)
    return contextlib.nullcontext()


def lr_factor(step: int, config: TrainingConfig) -> float:
    """Linear warmup to 1, then cosine decay to min_lr_ratio at the last step."""
    if config.warmup_steps and step < config.warmup_steps:
        return (step + 1) / config.warmup_steps
    span = max(1, config.steps - config.warmup_steps)
    progress = min(1.0, (step - config.warmup_steps) / span)
    cosine = 0.5 * (1 + math.cos(math.pi * progress))
    return config.min_lr_ratio + (1 - config.min_lr_ratio) * cosine


def make_optimizer(model: nn.Module, config: TrainingConfig) -> torch.optim.Optimizer:
    """AdamW with weight decay on matrices only (not on biases, norms, halting biases);
    the groups a backbone declares (`Backbone.optimizer_groups`) keep their own options."""
    declare = getattr(getattr(model, "backbone", None), "optimizer_groups", None)
    own = declare(lr=config.lr, weight_decay=config.weight_decay) if declare else []
    claimed = {id(param) for group in own for param in group["params"]}
    decay, no_decay = [], []
    for param in model.parameters():
        if param.requires_grad and id(param) not in claimed:
            (decay if param.dim() >= 2 else no_decay).append(param)
    groups = [
        {"params": decay, "weight_decay": config.weight_decay},
        {"params": no_decay, "weight_decay": 0.0},
        *own,
    ]
    return torch.optim.AdamW(groups, lr=config.lr, betas=config.betas)


@torch.no_grad()
def evaluate_dataset(
    model: PonderModel,
    data: TensorDataset,
    *,
    batch_size: int,
    device: torch.device,
    precision: str = "auto",
    limit: int | None = None,
    slice_columns: tuple[str, ...] = (),
) -> MetricAccumulator:
    """Teacher-forced evaluation on the scored positions of a split."""
    was_training = model.training
    model.eval()
    accumulator = MetricAccumulator(slice_columns)
    for batch in data.sequential_batches(batch_size, limit):
        batch = {k: v.to(device) for k, v in batch.items()}
        with autocast_for(device, precision):
            out = model(batch["input_ids"], mask=batch["mask"])
        accumulator.update(out.logits, batch["labels"], out.stats, batch["mask"], batch)
    model.train(was_training)
    return accumulator


def optimisation_step(
    model: nn.Module,
    optimizer: torch.optim.Optimizer,
    batch: dict[str, torch.Tensor],
    *,
    device: torch.device,
    precision: str,
    grad_clip: float | None,
    step: int,
    checkpoint_dir: Path | None = None,
    group: LocalGroup | None = None,
) -> tuple[StepTotals, float]:
    """Forward under autocast, NaN check, backward, clipping, optimizer step: (totals, grad norm).

    The one training step, used by `Trainer.train_step` (one process, or one of N
    data-parallel workers through `group`) and `ponderlab.train_step`. `model` is what runs
    the forward pass (the PonderModel, or its DDP wrapper); `group` takes this worker's rows
    of the global batch and reduces the step's numbers over every worker.
    """
    group = group or LocalGroup()
    model.train()
    batch = {k: v.to(device) for k, v in group.shard(batch).items()}
    with autocast_for(device, precision):
        out = model(batch["input_ids"], labels=batch["labels"], mask=batch.get("mask"))
    totals = group.reduce_step(out, batch)  # over the whole global batch
    if not torch.isfinite(totals.loss):
        raise NonFiniteLossError(f"non-finite loss ({float(totals.loss)}) at step {step}; {ckpt.last_good(checkpoint_dir)}")
    optimizer.zero_grad(set_to_none=True)
    totals.objective.backward()
    grad_norm = float("nan")
    if grad_clip:
        grad_norm = float(torch.nn.utils.clip_grad_norm_(model.parameters(), grad_clip))
    optimizer.step()
    return totals, grad_norm


class Trainer:
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

    # ------------------------------------------------------------------ checkpoints
    def state_dict(self) -> dict[str, Any]:
        state = {
            "model": self.model.state_dict(),
            "optimizer": self.optimizer.state_dict(),
            "scheduler": self.scheduler.state_dict(),
            "step": self.step,
            "elapsed": self.elapsed,
            "torch_rng": torch.get_rng_state(),
        }
        if self.curriculum is not None:
            state["curriculum"] = self.curriculum.state_dict()
        if torch.cuda.is_available():
            state["cuda_rng"] = torch.cuda.get_rng_state_all()
        return state

    def save_checkpoint(self) -> Path | None:
        if self.checkpoint_dir is None:
            return None
        bad = [name for name, p in self.model.named_parameters() if not torch.isfinite(p).all()]
        if bad:  # never let a broken state replace the last good checkpoint
            raise NonFiniteLossError(
                f"non-finite parameters after step {self.step} ({', '.join(bad[:3])}"
                f"{', ...' if len(bad) > 3 else ''}); {ckpt.last_good(self.checkpoint_dir)}"
            )
        path = ckpt.checkpoint_path(self.checkpoint_dir, self.step)
        ckpt.save_checkpoint(self.state_dict(), path)
        ckpt.rotate_checkpoints(self.checkpoint_dir, self.config.keep_checkpoints)
        return path

    def load_state(self, state: dict[str, Any], source: str = "checkpoint") -> None:
        if not isinstance(state, dict):
            raise CheckpointError(f"{source}: not a ponderlab checkpoint (holds a {type(state).__name__})")
        try:
            self.model.load_state_dict(state["model"])
            if self.curriculum is not None:  # the stage's optimizer and schedule, then their states
                self.curriculum.load_state_dict(state["curriculum"], self)
            self.optimizer.load_state_dict(state["optimizer"])
            self.scheduler.load_state_dict(state["scheduler"])
            self.step = int(state["step"])
            self.elapsed = float(state.get("elapsed", 0.0))
            torch.set_rng_state(state["torch_rng"])
            if "cuda_rng" in state and torch.cuda.is_available():
                torch.cuda.set_rng_state_all(state["cuda_rng"])
        except (KeyError, RuntimeError, ValueError, TypeError) as exc:
            raise CheckpointError(f"{source}: does not match this model ({type(exc).__name__}: {exc})") from None

    def resume(self) -> bool:
        """Continue from the newest intact checkpoint in the run dir; False when there is none.

        A damaged newer checkpoint (cut short by a crash or a full disk) is reported on
        stderr and the one before it is used; none intact is a CheckpointError.
        """
        if self.checkpoint_dir is None:
            return False
        found = ckpt.list_checkpoints(self.checkpoint_dir)
        damaged = []
        for _, path in reversed(found):
            try:
                self.load_state(ckpt.load_checkpoint(path, self.device), str(path))
            except CheckpointError as exc:
                damaged.append(str(exc).strip().splitlines()[0])
                continue
            for reason in damaged:
                print(f"warning: skipped a damaged checkpoint: {reason}; resuming from {path}", file=sys.stderr)
            self._truncate_metrics()
            return True
        if damaged:
            raise CheckpointError(f"no intact checkpoint to resume from: {'; '.join(damaged)}")
        return False

    def _truncate_metrics(self) -> None:
        """Drop metrics.jsonl records the resumed run will write again (and lines cut short).

        Kept: records up to the checkpoint's step, except a finished run's final validation
        and test records, which `final_results` writes anew.
        """
        metrics_file = self.run_dir / "metrics.jsonl"
        if not metrics_file.exists():
            return
        finished = self.step >= self.final_step()

        def rewritten(record: dict[str, Any]) -> bool:
            final = finished and record["step"] == self.step and record.get("split") in ("validation", "test")
            return record["step"] > self.step or final

        kept = [line for line, record in metric_lines(metrics_file) if not rewritten(record)]
        ckpt.atomic_write_text(metrics_file, "".join(line + "\n" for line in kept))

    # ------------------------------------------------------------------ loop
    def final_step(self) -> int:
        """The last step: `config.steps`, or where the curriculum's stages end."""
        return self.curriculum.final_step(self.step) if self.curriculum else self.config.steps

    def fit(self) -> dict[str, float]:
        """Train to `config.steps`, validating and checkpointing periodically; then test."""
        config = self.config
        checkpoint_every = config.checkpoint_every or config.eval_every
        bar = None
        if self.progress:
            from tqdm.auto import tqdm

            bar = tqdm(total=config.steps, initial=self.step, desc="train", dynamic_ncols=True, leave=False)
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
                count = config.log_every if self.step % config.log_every == 0 else self.step % config.log_every
                averaged = {k: v / count for k, v in running.items()}
                self._log({"step": self.step, "split": "train", **averaged, **stage})
                running = {}
                if bar is not None:
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
            if bar is not None:
                bar.update(1)
        if bar is not None:
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
