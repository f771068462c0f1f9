"""`majority`: the majority bit of a bit string (MAJORITY, Hahn 2020, arXiv 1906.06755).

Tokens: bits 0 and 1, BOS=2, QUERY=3. Layout: BOS x_1 ... x_n QUERY answer,
where the answer (0 or 1) is predicted at the QUERY position and is the only
scored token, so exact match = accuracy. n is odd, so there are no ties.
Metrics are reported per `margin` = |#ones - #zeros| (margin 1 is the hardest).

Defaults: length 15, 4000 / 200 / 400 examples. Splits never share a string.
"""

from __future__ import annotations

from typing import ClassVar, Literal

import numpy as np
from pydantic import Field, field_validator

from ponderlab.core.config import TaskConfig
from ponderlab.core.hookspecs import hookimpl
from ponderlab.core.interfaces import Task, TaskData
from ponderlab.core.tasks import disjoint_splits, lm_example

BOS, QUERY = 2, 3


class MajorityConfig(TaskConfig):
    name: Literal["majority"] = "majority"
    length: int = Field(15, ge=1, description="Bits per string (odd).")
    train_size: int = Field(4000, ge=1)
    validation_size: int = Field(200, ge=1)
    test_size: int = Field(400, ge=1)

    @field_validator("length")
    @classmethod
    def _odd(cls, length: int) -> int:
        if length % 2 == 0:
            raise ValueError(f"length must be odd so that there is no tie (got {length})")
        return length


class Majority(Task):
    config_class = MajorityConfig
    vocab_size = 4
    slice_columns: ClassVar[tuple[str, ...]] = ("margin",)

    def build(self, seed: int) -> TaskData:
        cfg = self.config
        sizes = {"train": cfg.train_size, "validation": cfg.validation_size, "test": cfg.test_size}

        def make(rng: np.random.Generator, split: str) -> dict:
            bits = rng.integers(0, 2, size=cfg.length).tolist()
            ones = sum(bits)
            example = lm_example([BOS, *bits, QUERY], [int(2 * ones > cfg.length)])
            example["margin"] = abs(2 * ones - cfg.length)
            return example

        return disjoint_splits(make, sizes, seed)


@hookimpl
def ponderlab_register_tasks(register):
    register(Majority)
