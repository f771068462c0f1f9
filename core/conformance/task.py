"""The task contracts: task data, split overlap, determinism, extra metrics."""

from __future__ import annotations

import math
from functools import cached_property

import torch

from ..interfaces import IGNORE_INDEX, TaskData
from ..model import PonderModel
from ..run import seed_everything
from .base import _fail
from .probes import ProbeBackbone, ProbeBackboneConfig, ProbeHalting, ProbeHaltingConfig


class TaskChecks:
    """Contracts of tasks (mixed into `Conformance`)."""

    @cached_property
    def _task_data(self) -> TaskData:
        """The splits built from seed 0 (built once per checker)."""
        return self.plugin(self.config).build(0)

    def _check_task_data(self) -> None:
        import datasets

        task = self.plugin(self.config)
        vocab = getattr(task, "vocab_size", None)
        if not isinstance(vocab, int) or vocab < 2:
            _fail(f"vocab_size is {vocab!r} (an int >= 2 is needed)")
        data = self._task_data
        if not isinstance(data, TaskData):
            _fail(f"build(seed) returned {type(data).__name__}, expected TaskData")
        for split in ("train", "validation", "test"):
            dataset = data.split(split)
            if not isinstance(dataset, datasets.Dataset):
                _fail(f"the {split} split is {type(dataset).__name__}, expected datasets.Dataset")
            if len(dataset) == 0:
                _fail(f"the {split} split is empty")
            for column in ("input_ids", "labels", *task.slice_columns):
                if column not in dataset.column_names:
                    _fail(f"the {split} split has no {column!r} column")
            for row_index, row in enumerate(dataset):
                _check_row(row, row_index, split, vocab, task.slice_columns)
        group = task.batch_group_column()
        if group is not None:
            if group not in data.train.column_names:
                _fail(f"batch_group_column() is {group!r}, which the train split lacks")
            if not all(isinstance(v, int) for v in data.train[group]):
                _fail(f"the batch group column {group!r} must hold ints")

    def _check_split_overlap(self) -> None:
        """No validation or test example occurs in train, and none occurs in both of them."""
        data = self._task_data
        seen = {"train": {tuple(ids) for ids in data.train["input_ids"]}}
        for split, earlier in (("validation", ("train",)), ("test", ("train", "validation"))):
            rows = [tuple(ids) for ids in data.split(split)["input_ids"]]
            for other in earlier:
                shared = [ids for ids in rows if ids in seen[other]]
                if shared:
                    _fail(
                        f"{len(shared)} of {len(rows)} {split} examples also appear in {other} "
                        f"(first: {list(shared[0])[:24]})"
                    )
            seen[split] = set(rows)

    def _check_task_determinism(self) -> None:
        first, second = self._task_data, self.plugin(self.config).build(0)
        for split in ("train", "validation", "test"):
            if first.split(split).to_dict() != second.split(split).to_dict():
                _fail(f"two builds with seed 0 give different {split} splits")

    def _check_extra_metrics(self) -> None:
        task = self.plugin(self.config)
        data = self._task_data
        seed_everything(0)
        backbone = ProbeBackbone(ProbeBackboneConfig(), vocab_size=task.vocab_size)
        model = PonderModel(backbone, ProbeHalting, ProbeHaltingConfig(), vocab_size=task.vocab_size)
        subset = data.test.select(range(min(4, len(data.test))))
        metrics = task.extra_metrics(model, subset, torch.device("cpu"))
        if not isinstance(metrics, dict):
            _fail(f"extra_metrics returned {type(metrics).__name__}, expected a dict")
        for key, value in metrics.items():
            if not isinstance(key, str) or not isinstance(value, (int, float)) or not math.isfinite(value):
                _fail(f"extra_metrics must map str to finite numbers (got {key!r}: {value!r})")



def _check_row(row: dict, index: int, split: str, vocab: int, slice_columns: tuple[str, ...]) -> None:
    where = f"{split} example {index}"
    ids, labels = row["input_ids"], row["labels"]
    if not isinstance(ids, list) or not isinstance(labels, list):
        _fail(f"{where}: input_ids and labels must be lists of ints")
    if len(ids) == 0 or len(ids) != len(labels):
        _fail(f"{where}: input_ids ({len(ids)}) and labels ({len(labels)}) must be non-empty and equally long")
    if not all(isinstance(t, int) and 0 <= t < vocab for t in ids):
        _fail(f"{where}: input_ids must be ints in [0, vocab_size={vocab})")
    if not all(isinstance(t, int) and (t == IGNORE_INDEX or 0 <= t < vocab) for t in labels):
        _fail(f"{where}: labels must be ints in [0, vocab_size={vocab}) or {IGNORE_INDEX}")
    if all(t == IGNORE_INDEX for t in labels):
        _fail(f"{where}: no position is scored (every label is {IGNORE_INDEX})")
    for column in slice_columns:
        if not isinstance(row[column], int):
            _fail(f"{where}: slice column {column!r} must hold ints (got {row[column]!r})")
