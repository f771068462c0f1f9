"""How one training step's batch is split over workers and its numbers reduced.

Every worker draws the same global batch (the spec's batch_size, from the (seed, step)
batch order) and keeps its rank's rows. The loss is a mean over scored tokens (task loss)
plus a mean over real tokens (the halting regulariser); per-worker means are combined with
those token counts as weights, never as a plain mean of worker means, so N workers compute
the numbers one process would (to float rounding).
"""

from __future__ import annotations

from dataclasses import dataclass

import torch
from torch import Tensor, nn

from ..interfaces import IGNORE_INDEX


@dataclass
class StepTotals:
    """One step's numbers over the whole global batch.

    objective: the tensor to back-propagate on this worker (its share of the global loss,
    scaled so that DDP's gradient average equals the gradient of the global loss).
    """

    objective: Tensor
    loss: Tensor  # 0-dim, detached
    task_loss: float
    mean_hops: float
    ponder_cost: float


class LocalGroup:
    """One process holds the whole batch: no split, no communication."""

    rank = 0
    world_size = 1

    @property
    def is_writer(self) -> bool:
        """This worker logs, evaluates and writes checkpoints (rank 0)."""
        return self.rank == 0

    def wrap(self, model: nn.Module) -> nn.Module:
        return model

    def shard(self, batch: dict[str, Tensor]) -> dict[str, Tensor]:
        return batch

    def agree(self, flag: bool) -> bool:
        """Rank 0's `flag` on every worker (a decision only the evaluating rank can make)."""
        return flag

    def reduce_step(self, out, batch: dict[str, Tensor]) -> StepTotals:
        """out: the model's ModelOutput; batch on the model's device (no mask: every token is real)."""
        real = batch.get("mask", torch.ones_like(batch["input_ids"], dtype=torch.bool))  # (B, L)
        return StepTotals(
            objective=out.loss,
            loss=out.loss.detach(),
            task_loss=float(out.task_loss.detach()),
            mean_hops=float(out.stats.hops.detach()[real].float().mean()),
            ponder_cost=float(out.stats.ponder_cost.detach()[real].float().mean()),
        )


class TorchGroup(LocalGroup):
    """Rank `rank` of `world_size` workers in an initialised torch.distributed process group."""

    def __init__(self, rank: int, world_size: int, device: torch.device):
        self.rank = rank
        self.world_size = world_size
        self.device = device

    def wrap(self, model: nn.Module) -> nn.Module:
        """DDP; unused parameters are allowed (a halting unit may take no part in a step)."""
        from torch.nn.parallel import DistributedDataParallel

        device_ids = [self.device] if self.device.type == "cuda" else None
        return DistributedDataParallel(model, device_ids=device_ids, find_unused_parameters=True)

    def shard(self, batch: dict[str, Tensor]) -> dict[str, Tensor]:
        """This rank's contiguous rows of the global batch (first ranks take one more when uneven)."""
        return {key: value.tensor_split(self.world_size)[self.rank] for key, value in batch.items()}

    def agree(self, flag: bool) -> bool:
        import torch.distributed as dist

        value = torch.tensor([1.0 if flag else 0.0], device=self.device)
        dist.broadcast(value, src=0)
        return bool(value.item())

    def reduce_step(self, out, batch: dict[str, Tensor]) -> StepTotals:
        import torch.distributed as dist

        real = batch["mask"]  # (B, L) bool
        scored = (batch["labels"] != IGNORE_INDEX).sum()
        tokens = real.sum()
        task_loss = out.task_loss
        regularizer = out.stats.regularizer
        local = torch.stack([
            task_loss.detach().double() * scored,
            regularizer.detach().double() * tokens,
            scored.double(),
            tokens.double(),
            out.stats.hops.detach()[real].double().sum(),
            out.stats.ponder_cost.detach()[real].double().sum(),
        ])  # (6,) sums over this rank's rows
        dist.all_reduce(local)
        task_sum, regularizer_sum, all_scored, all_tokens, hops_sum, ponder_sum = local.unbind()
        all_scored, all_tokens = all_scored.clamp_min(1), all_tokens.clamp_min(1)
        # DDP averages gradients over the workers: scale each share by world_size.
        task_weight = (scored * self.world_size / all_scored).to(task_loss.dtype)
        regularizer_weight = (tokens * self.world_size / all_tokens).to(task_loss.dtype)
        return StepTotals(
            objective=task_loss * task_weight + regularizer * regularizer_weight,
            loss=(task_sum / all_scored + regularizer_sum / all_tokens).float(),
            task_loss=float(task_sum / all_scored),
            mean_hops=float(hops_sum / all_tokens),
            ponder_cost=float(ponder_sum / all_tokens),
        )
