"""Batches from task datasets: padding collate and a deterministic, resumable batch order."""

from __future__ import annotations

from collections import defaultdict

import datasets
import numpy as np
import torch
from torch.nn.utils.rnn import pad_sequence

from .interfaces import IGNORE_INDEX


class TensorDataset:
    """A task split held as Python lists for fast batching (columns: input_ids, labels, slices)."""

    def __init__(self, dataset: datasets.Dataset, slice_columns: tuple[str, ...] = ()):
        self.input_ids: list[list[int]] = dataset["input_ids"]
        self.labels: list[list[int]] = dataset["labels"]
        self.slices = {c: list(dataset[c]) for c in slice_columns if c in dataset.column_names}

    def __len__(self) -> int:
        return len(self.input_ids)

    def batch(self, indices: list[int] | np.ndarray, pad_id: int = 0) -> dict[str, torch.Tensor]:
        """Right-padded batch: input_ids/labels (B, L) long, mask (B, L) bool, slices (B,) long."""
        rows = [int(i) for i in indices]
        input_ids = [torch.tensor(self.input_ids[i], dtype=torch.long) for i in rows]
        labels = [torch.tensor(self.labels[i], dtype=torch.long) for i in rows]
        lengths = torch.tensor([len(ids) for ids in input_ids])
        out = {
            "input_ids": pad_sequence(input_ids, batch_first=True, padding_value=pad_id),
            "labels": pad_sequence(labels, batch_first=True, padding_value=IGNORE_INDEX),
            "mask": torch.arange(int(lengths.max())) < lengths[:, None],
        }
        for column, values in self.slices.items():
            out[column] = torch.tensor([values[i] for i in rows], dtype=torch.long)
        return out

    def sequential_batches(self, batch_size: int, limit: int | None = None):
        total = len(self) if limit is None else min(limit, len(self))
        for start in range(0, total, batch_size):
            yield self.batch(range(start, min(start + batch_size, total)))


class BatchPlan:
    """Which training examples form batch number `step`, deterministic from the seed.

    Each epoch is a fresh permutation drawn from (seed, epoch); epoch 0 starts at
    `first_step` (a curriculum stage's first step, else 0). With a group
    column, batches hold examples sharing that column's value; the batches of an
    epoch are shuffled together. A resumed run asks for the same steps and gets
    the same batches.
    """

    def __init__(
        self, data: TensorDataset, batch_size: int, seed: int, group: list[int] | None = None, first_step: int = 0
    ):
        self.data = data
        self.batch_size = batch_size
        self.seed = seed
        self.group = group
        self.first_step = first_step  # the training step that gets epoch 0's first batch
        self._epoch = -1
        self._batches: list[np.ndarray] = []

    def _epoch_batches(self, epoch: int) -> list[np.ndarray]:
        rng = np.random.default_rng([self.seed, epoch])
        order = rng.permutation(len(self.data))
        if self.group is None:
            usable = len(order) - len(order) % self.batch_size or len(order)
            return [order[i : i + self.batch_size] for i in range(0, usable, self.batch_size)]
        buckets: dict[int, list[int]] = defaultdict(list)
        for index in order:
            buckets[self.group[index]].append(int(index))
        batches = [
            np.array(members[i : i + self.batch_size])
            for _, members in sorted(buckets.items())
            for i in range(0, len(members), self.batch_size)
        ]
        permutation = rng.permutation(len(batches))
        return [batches[i] for i in permutation]

    def indices(self, step: int) -> np.ndarray:
        """Indices of the batch used at training step `step` (0-based)."""
        per_epoch = len(self._epoch_batches(0)) if self._epoch < 0 else len(self._batches)
        epoch, position = divmod(step - self.first_step, per_epoch)
        if epoch != self._epoch:
            self._batches = self._epoch_batches(epoch)
            self._epoch = epoch
        return self._batches[position % len(self._batches)]

    def batch(self, step: int) -> dict[str, torch.Tensor]:
        return self.data.batch(self.indices(step))
