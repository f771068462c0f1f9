"""`parity`: Graves' parity task (Graves 2016, "Adaptive Computation Time", arXiv 1603.08983).

A vector of `size` entries (default 64) has a random number c of entries set to
+1 or -1 (random positions, random signs), the rest 0; the target is the parity
of the number of +1 entries. Graves draws c ~ U[1, size]. PonderNet's
extrapolation setting (arXiv 2107.05407): size 96, train on c in 1..48
(`max_count: 48`), test on c in 49..96 (`test_min_count: 49`).

Token encoding (6 ids, no tokenizer): the vector is read one entry per token,
0 -> 0, +1 -> 1, -1 -> 2, then QUERY=3; the answer is EVEN=4 or ODD=5, predicted
at the QUERY position and the only scored token (exact match = token accuracy =
parity accuracy). Length size + 1 inputs (+ the answer token).

Metrics per `count` (the number of non-zero entries). With `test_min_count` /
`test_max_count` set, validation and test draw c from that range (training keeps
`min_count`..`max_count`). Defaults 20000 / 500 / 1000 examples.
"""

from __future__ import annotations

from typing import ClassVar, Literal

import numpy as np
from pydantic import Field, model_validator

from ponderlab.core.config import TaskConfig
from ponderlab.core.hookspecs import hookimpl
from ponderlab.core.interfaces import Task, TaskData
from ponderlab.core.tasks import disjoint_splits, lm_example, split_sizes

ZERO, PLUS, MINUS, QUERY, EVEN, ODD = 0, 1, 2, 3, 4, 5
VOCAB_SIZE = 6
ENTRY_TOKEN = {0: ZERO, 1: PLUS, -1: MINUS}


class ParityConfig(TaskConfig):
    name: Literal["parity"] = "parity"
    size: int = Field(64, ge=1, description="Vector length.")
    min_count: int = Field(1, ge=0, description="Fewest non-zero entries in training vectors.")
    max_count: int | None = Field(None, ge=0, description="Most non-zero entries in training (default: size).")
    test_min_count: int | None = Field(None, ge=0, description="Extrapolation: fewest non-zero at validation/test.")
    test_max_count: int | None = Field(None, ge=0, description="Extrapolation: most non-zero at validation/test.")
    train_size: int = Field(20000, ge=1)
    validation_size: int = Field(500, ge=1)
    test_size: int = Field(1000, ge=1)

    def count_range(self, split: str) -> tuple[int, int]:
        """Inclusive range of non-zero counts for a split."""
        low, high = self.min_count, self.size if self.max_count is None else self.max_count
        if split != "train" and (self.test_min_count is not None or self.test_max_count is not None):
            low = self.test_min_count if self.test_min_count is not None else low
            high = self.test_max_count if self.test_max_count is not None else self.size
        return low, high

    @model_validator(mode="after")
    def _ranges(self):
        for split in ("train", "test"):
            low, high = self.count_range(split)
            if not 0 <= low <= high <= self.size:
                raise ValueError(f"{split} count range {low}..{high} must lie within 0..size ({self.size})")
        return self


def parity_vector(rng: np.random.Generator, size: int, count: int) -> list[int]:
    """`count` entries of +-1 at random positions, the rest 0."""
    vector = np.zeros(size, dtype=np.int64)
    positions = rng.choice(size, size=count, replace=False)
    vector[positions] = rng.choice([-1, 1], size=count)
    return vector.tolist()


def parity_example(vector: list[int]) -> dict:
    """Tokens of the entries, QUERY, then EVEN/ODD for the parity of the +1 count."""
    answer = ODD if sum(1 for v in vector if v == 1) % 2 else EVEN
    row = lm_example([*(ENTRY_TOKEN[v] for v in vector), QUERY], [answer])
    row["count"] = sum(1 for v in vector if v != 0)
    return row


class Parity(Task):
    config_class = ParityConfig
    vocab_size = VOCAB_SIZE
    slice_columns: ClassVar[tuple[str, ...]] = ("count",)

    def build(self, seed: int) -> TaskData:
        cfg = self.config

        def make(rng: np.random.Generator, split: str) -> dict:
            low, high = cfg.count_range(split)
            return parity_example(parity_vector(rng, cfg.size, int(rng.integers(low, high + 1))))

        return disjoint_splits(make, split_sizes(cfg), seed)


@hookimpl
def ponderlab_register_tasks(register):
    register(Parity)
