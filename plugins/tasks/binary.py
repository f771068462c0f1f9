"""`binary_copy`, `binary_reverse`, `binary_addition`: seed 000's algorithmic tasks.

Vocabulary (128 ids, no tokenizer): bits 0 and 1 are tokens 0 and 1, SEP=100,
GEN=101, EOS=102; padding uses 0 and is never scored.

Layouts (the target follows GEN and is the only scored part):
  copy      EOS X GEN X                       length 2n+2
  reverse   EOS X GEN reverse(X)              length 2n+2
  addition  EOS EOS X1 SEP SEP X2 GEN Y        length 3n+6, Y = X1 + X2 with n+1 digits;
            all numbers least-significant bit first.

`length` fixes n; with `min_length` set, n ~ U[min_length, length] and every
batch holds a single n (batches are grouped by the `length` column). Seed 000's
addition runs drew n from 5..40 per batch, in evaluation too: `length: 40,
min_length: 5` (docs/tasks.md).
`source` loads the published datasets instead (`hub`: steeldream/binary or
steeldream/addition_binary; or a local copy with the same columns: `input_ids`,
or `input_ids_0`/`input_ids_1`, lists of bits).
"""

from __future__ import annotations

from typing import ClassVar, Literal

import numpy as np
from pydantic import Field, model_validator

from ponderlab.core.config import TaskConfig
from ponderlab.core.hookspecs import hookimpl
from ponderlab.core.interfaces import Task, TaskData
from ponderlab.core.tasks import disjoint_splits, lm_example, published_splits, split_sizes

SEP, GEN, EOS = 100, 101, 102
VOCAB_SIZE = 128


class BinaryConfig(TaskConfig):
    length: int = Field(40, ge=1, description="Number of bits n (the maximum when min_length is set).")
    min_length: int | None = Field(None, ge=1, description="Sample n ~ U[min_length, length] per batch.")
    test_length: int | None = Field(
        None, ge=1, description="Extrapolation: n for validation/test (default: as training)."
    )
    train_size: int = Field(20000, ge=1)
    validation_size: int = Field(500, ge=1)
    test_size: int = Field(1000, ge=1)
    source: str = Field(
        "generate", description="generate | hub | path to a local copy of the published dataset."
    )

    @model_validator(mode="after")
    def _lengths(self):
        if self.min_length is not None and self.min_length > self.length:
            raise ValueError(f"min_length {self.min_length} is greater than length {self.length}")
        return self


class BinaryCopyConfig(BinaryConfig):
    name: Literal["binary_copy"] = "binary_copy"


class BinaryReverseConfig(BinaryConfig):
    name: Literal["binary_reverse"] = "binary_reverse"


class BinaryAdditionConfig(BinaryConfig):
    name: Literal["binary_addition"] = "binary_addition"


def add_lsb_first(x1: list[int], x2: list[int]) -> list[int]:
    """Sum of two n-bit numbers given least-significant bit first, as n+1 bits LSB first."""
    out, carry = [], 0
    for a, b in zip(x1, x2, strict=True):
        total = a + b + carry
        out.append(total % 2)
        carry = total // 2
    return out + [carry]


class _BinaryTask(Task):
    vocab_size = VOCAB_SIZE
    slice_columns: ClassVar[tuple[str, ...]] = ("length",)
    hub_id: ClassVar[str] = "steeldream/binary"
    #: the published dataset's column of each operand (one list of bits per operand)
    columns: ClassVar[tuple[str, ...]] = ("input_ids",)

    def layout(self, operands: list[list[int]]) -> dict:
        raise NotImplementedError

    def batch_group_column(self) -> str | None:
        return "length" if self.config.min_length is not None else None

    def _length(self, rng: np.random.Generator, split: str) -> int:
        cfg = self.config
        if split != "train" and cfg.test_length is not None:
            return cfg.test_length
        if cfg.min_length is None:
            return cfg.length
        return int(rng.integers(cfg.min_length, cfg.length + 1))

    def _example(self, operands: list[list[int]]) -> dict:
        row = self.layout(operands)
        row["length"] = len(operands[0])
        return row

    def build(self, seed: int) -> TaskData:
        cfg = self.config
        sizes = split_sizes(cfg)
        if cfg.source != "generate":

            def make_row(record: dict, rng: np.random.Generator, split: str) -> dict:
                n = self._length(rng, split)
                operands = [[int(b) for b in record[column][:n]] for column in self.columns]
                return self._example(operands)

            return published_splits(cfg.source, self.hub_id, sizes, seed, make_row, self.columns)

        def make(rng: np.random.Generator, split: str) -> dict:
            n = self._length(rng, split)
            return self._example([rng.integers(0, 2, size=n).tolist() for _ in self.columns])

        return disjoint_splits(make, sizes, seed)


class BinaryCopy(_BinaryTask):
    config_class = BinaryCopyConfig

    def layout(self, operands):
        (x,) = operands
        return lm_example([EOS, *x, GEN], x)


class BinaryReverse(_BinaryTask):
    config_class = BinaryReverseConfig

    def layout(self, operands):
        (x,) = operands
        return lm_example([EOS, *x, GEN], x[::-1])


def longest_carry_run(x1: list[int], x2: list[int]) -> int:
    """Longest run of consecutive bit positions whose carry-in is 1 (carry-out included); 0 if none."""
    longest = run = carry = 0
    for a, b in zip(x1, x2, strict=True):
        carry = (a + b + carry) // 2  # carry into the next position
        run = run + 1 if carry else 0
        longest = max(longest, run)
    return longest


class BinaryAddition(_BinaryTask):
    """Slice columns: `length` and `carry` (the longest carry chain, see longest_carry_run)."""

    config_class = BinaryAdditionConfig
    hub_id = "steeldream/addition_binary"
    columns = ("input_ids_0", "input_ids_1")
    slice_columns: ClassVar[tuple[str, ...]] = ("length", "carry")

    def _example(self, operands: list[list[int]]) -> dict:
        row = super()._example(operands)
        row["carry"] = longest_carry_run(*operands)
        return row

    def layout(self, operands):
        x1, x2 = operands
        return lm_example([EOS, EOS, *x1, SEP, SEP, *x2, GEN], add_lsb_first(x1, x2))


@hookimpl
def ponderlab_register_tasks(register):
    register(BinaryCopy)
    register(BinaryReverse)
    register(BinaryAddition)
