"""The one training step and what it needs: the device, bf16 autocast, warmup + cosine,
AdamW's parameter groups, and teacher-forced evaluation of a split."""

from __future__ import annotations

import contextlib
import math
from pathlib import Path

import torch
from torch import nn

from . import checkpoint as ckpt
from .config import TrainingConfig
from .data import TensorDataset
from .distributed.group import LocalGroup, StepTotals
from .errors import NonFiniteLossError
from .metrics import MetricAccumulator
from .model import PonderModel


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
    """Linear warmup to 1, then cosine (or `schedule: linear`, linear) decay to min_lr_ratio at
    the last step."""
    if config.warmup_steps and step < config.warmup_steps:
        return (step + 1) / config.warmup_steps
    span = max(1, config.steps - config.warmup_steps)
    progress = min(1.0, (step - config.warmup_steps) / span)
    left = 1 - progress if config.schedule == "linear" else 0.5 * (1 + math.cos(math.pi * progress))
    return config.min_lr_ratio + (1 - config.min_lr_ratio) * left


def make_optimizer(model: nn.Module, config: TrainingConfig) -> torch.optim.Optimizer:
    """AdamW with weight decay on matrices only (not on biases, norms, halting biases; on
    every parameter with `decay_vectors`); the groups a backbone declares
    (`Backbone.optimizer_groups`) keep their own options."""
    declare = getattr(getattr(model, "backbone", None), "optimizer_groups", None)
    own = declare(lr=config.lr, weight_decay=config.weight_decay) if declare else []
    claimed = {id(param) for group in own for param in group["params"]}
    decay, no_decay = [], []
    for param in model.parameters():
        if param.requires_grad and id(param) not in claimed:
            (decay if param.dim() >= 2 or config.decay_vectors else no_decay).append(param)
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
