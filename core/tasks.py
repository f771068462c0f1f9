"""Helpers for task plugins: seeded generators, LM example layouts, disjoint splits, loaders.

    from ponderlab.core.tasks import disjoint_splits, lm_example, rng_for

The public import path for built-in and third-party tasks (`ponderlab.plugins.tasks.common`
is a deprecated alias that warns).
"""

from __future__ import annotations

from collections.abc import Callable
from pathlib import Path

import datasets
import numpy as np

from ponderlab.core.errors import SpecError
from ponderlab.core.interfaces import IGNORE_INDEX, TaskData

SPLITS = ("train", "validation", "test")


def rng_for(seed: int, *keys: int | str) -> np.random.Generator:
    """An independent, reproducible generator for (seed, keys...)."""
    material = [seed] + [k if isinstance(k, int) else int.from_bytes(k.encode(), "little") % (2**32) for k in keys]
    return np.random.default_rng(np.random.SeedSequence(material))


def lm_example(prompt: list[int], target: list[int]) -> dict:
    """input_ids = prompt + target; labels score the target tokens, aligned to their predictors.

    labels[t] is the token to predict at position t, so target token i is scored at
    position len(prompt) - 1 + i.
    """
    input_ids = list(prompt) + list(target)
    labels = [IGNORE_INDEX] * len(input_ids)
    for i, token in enumerate(target):
        labels[len(prompt) - 1 + i] = int(token)
    return {"input_ids": [int(t) for t in input_ids], "labels": labels}


def next_token_example(sequence: list[int], scored: str | list[int] = "all") -> dict:
    """Language-model layout: input_ids = sequence[:-1], labels[t] = sequence[t + 1].

    `scored` is "all" (every next token), "last" (only the final token) or a list of
    positions t of input_ids whose next token is scored; the rest get -100.
    """
    sequence = [int(t) for t in sequence]
    targets = sequence[1:]
    if scored == "all":
        scored = range(len(targets))
    elif scored == "last":
        scored = range(len(targets))[-1:]
    labels = [IGNORE_INDEX] * len(targets)
    for t in scored:
        labels[t] = targets[t]
    return {"input_ids": sequence[:-1], "labels": labels}


def split_sizes(config) -> dict[str, int]:
    """{"train": ..., "validation": ..., "test": ...} from a config's *_size fields."""
    return {split: int(getattr(config, f"{split}_size")) for split in SPLITS}


def disjoint_splits(
    make_example: Callable[[np.random.Generator, str], dict],
    sizes: dict[str, int],
    seed: int,
    key: Callable[[dict], tuple] = lambda ex: tuple(ex["input_ids"]),
    max_attempts_factor: int = 20,
) -> TaskData:
    """Generate test, then validation, then train examples, never repeating a key across splits.

    Duplicates inside the train split are allowed (they are ordinary resampling),
    but no validation or test example ever appears in another split.
    """
    taken: set[tuple] = set()
    built = {}
    for split in ("test", "validation", "train"):
        rng = rng_for(seed, split)
        rows: list[dict] = []
        attempts = 0
        limit = max_attempts_factor * max(sizes[split], 1)
        while len(rows) < sizes[split]:
            attempts += 1
            if attempts > limit:
                raise SpecError(
                    f"could not draw {sizes[split]} {split} examples disjoint from the other splits; "
                    "the task's example space is too small for these split sizes"
                )
            example = make_example(rng, split)
            if key(example) not in taken:
                rows.append(example)
        taken |= {key(row) for row in rows}
        built[split] = datasets.Dataset.from_list(rows)
    return TaskData(train=built["train"], validation=built["validation"], test=built["test"])


def load_published(source: str, hub_id: str) -> datasets.DatasetDict:
    """Load a published dataset: `hub` -> the hub id, else a local copy (save_to_disk dir or data files)."""
    target = hub_id if source == "hub" else source
    try:
        if source != "hub" and Path(source).is_dir() and (Path(source) / "dataset_dict.json").exists():
            loaded = datasets.load_from_disk(source)
        else:
            loaded = datasets.load_dataset(target)
    except Exception as exc:  # network, missing files, bad layout
        raise SpecError(f"cannot load dataset {target!r}: {type(exc).__name__}: {exc}", path="task.source") from None
    missing = [s for s in SPLITS if s not in loaded and not (s == "validation" and "valid" in loaded)]
    if missing:
        raise SpecError(f"dataset {target!r} has no split(s) {missing}", path="task.source")
    return loaded


def published_splits(
    source: str,
    hub_id: str,
    sizes: dict[str, int],
    seed: int,
    make_row: Callable[[dict, np.random.Generator, str], dict],
    columns: tuple[str, ...] | list[str] = (),
) -> TaskData:
    """Rows from a published dataset (`load_published`): the first `sizes[split]` records per split.

    `make_row(record, rng, split)` turns one record into a row; `rng` is seeded by
    (seed, "published", split). A split that lacks one of `columns` is a SpecError;
    a published `valid` split stands for `validation`.
    """
    loaded = load_published(source, hub_id)
    built = {}
    for split in SPLITS:
        records = loaded[split] if split in loaded else loaded["valid"]
        missing = [c for c in columns if c not in records.column_names]
        if missing:
            raise SpecError(
                f"{split} split lacks column(s) {missing[:3]}{'...' if len(missing) > 3 else ''} "
                f"(expected {', '.join(columns[:3])}{', ...' if len(columns) > 3 else ''})",
                path="task.source",
            )
        records = records.select(range(min(sizes[split], len(records))))
        rng = rng_for(seed, "published", split)
        rows = [make_row(record, rng, split) for record in records]
        built[split] = datasets.Dataset.from_list(rows)
    return TaskData(**built)


__all__ = [
    "SPLITS",
    "disjoint_splits",
    "lm_example",
    "load_published",
    "next_token_example",
    "published_splits",
    "rng_for",
    "split_sizes",
]
