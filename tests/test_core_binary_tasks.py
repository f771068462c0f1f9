"""Seed 000's binary tasks: exact layouts and token ids, per-batch lengths, published-layout loading."""

from __future__ import annotations

import json

import numpy as np
import pytest

from ponderlab.core.data import BatchPlan, TensorDataset
from ponderlab.core.errors import SpecError
from ponderlab.core.interfaces import IGNORE_INDEX
from ponderlab.plugins.tasks.binary import (
    EOS,
    GEN,
    SEP,
    BinaryAddition,
    BinaryAdditionConfig,
    BinaryCopy,
    BinaryCopyConfig,
    BinaryReverse,
    BinaryReverseConfig,
    add_lsb_first,
)


def scored_targets(row):
    """The target tokens in order, read off the aligned labels."""
    return [t for t in row["labels"] if t != IGNORE_INDEX]


def test_copy_layout_and_alignment():
    data = BinaryCopy(BinaryCopyConfig(length=5, train_size=8, validation_size=4, test_size=4)).build(0)
    for row in data.train:
        ids = row["input_ids"]
        x = ids[1:6]
        assert ids == [EOS, *x, GEN, *x]
        assert scored_targets(row) == x
        # labels[t] is the token at t+1 for every scored position
        for t, label in enumerate(row["labels"]):
            if label != IGNORE_INDEX:
                assert ids[t + 1] == label
        assert row["labels"].index(x[0]) == 6  # first target predicted at the GEN position
        assert row["length"] == 5


def test_reverse_layout():
    data = BinaryReverse(BinaryReverseConfig(length=6, train_size=8, validation_size=4, test_size=4)).build(1)
    for row in data.test:
        x = row["input_ids"][1:7]
        assert row["input_ids"] == [EOS, *x, GEN, *x[::-1]]
        assert scored_targets(row) == x[::-1]


@pytest.mark.parametrize("a, b", [(0, 0), (5, 3), (15, 15), (9, 6), (12, 7)])
def test_addition_lsb_first_matches_integer_sum(a, b):
    n = 4
    bits = lambda v: [(v >> i) & 1 for i in range(n)]  # noqa: E731
    total = add_lsb_first(bits(a), bits(b))
    assert len(total) == n + 1
    assert sum(bit << i for i, bit in enumerate(total)) == a + b


def test_addition_layout_length_and_answer():
    n = 7
    data = BinaryAddition(BinaryAdditionConfig(length=n, train_size=16, validation_size=4, test_size=4)).build(2)
    for row in data.train:
        ids = row["input_ids"]
        assert len(ids) == 3 * n + 6
        x1, x2 = ids[2 : 2 + n], ids[4 + n : 4 + 2 * n]
        assert ids[:2] == [EOS, EOS] and ids[2 + n : 4 + n] == [SEP, SEP] and ids[4 + 2 * n] == GEN
        value = lambda bits: sum(b << i for i, b in enumerate(bits))  # noqa: E731
        assert value(scored_targets(row)) == value(x1) + value(x2)


def test_splits_are_deterministic_and_disjoint():
    config = BinaryCopyConfig(length=8, train_size=200, validation_size=50, test_size=50)
    a, b = BinaryCopy(config).build(7), BinaryCopy(config).build(7)
    assert a.train["input_ids"] == b.train["input_ids"] and a.test["input_ids"] == b.test["input_ids"]
    c = BinaryCopy(config).build(8)
    assert a.test["input_ids"] != c.test["input_ids"]
    test = {tuple(x) for x in a.test["input_ids"]}
    validation = {tuple(x) for x in a.validation["input_ids"]}
    train = {tuple(x) for x in a.train["input_ids"]}
    assert not (test & validation) and not (test & train) and not (validation & train)


def test_too_small_example_space_is_a_clear_error():
    with pytest.raises(SpecError, match="too small"):
        BinaryCopy(BinaryCopyConfig(length=3, train_size=10, validation_size=10, test_size=10)).build(0)


def test_sampled_lengths_give_one_length_per_batch():
    task = BinaryCopy(BinaryCopyConfig(length=9, min_length=3, train_size=400, validation_size=20, test_size=20))
    data = task.build(0)
    lengths = data.train["length"]
    assert set(lengths) == set(range(3, 10))
    assert task.batch_group_column() == "length"
    plan = BatchPlan(TensorDataset(data.train, ("length",)), batch_size=16, seed=0, group=lengths)
    seen = set()
    for step in range(60):
        batch = plan.batch(step)
        assert len(set(batch["length"].tolist())) == 1
        assert batch["mask"].all()  # no padding needed inside a batch
        seen.add(int(batch["length"][0]))
    assert len(seen) > 3
    # the order is a pure function of (seed, step)
    again = BatchPlan(TensorDataset(data.train, ("length",)), batch_size=16, seed=0, group=lengths)
    assert np.array_equal(again.indices(37), plan.indices(37))


def test_extrapolation_length_applies_to_validation_and_test_only():
    data = BinaryReverse(
        BinaryReverseConfig(length=6, test_length=10, train_size=20, validation_size=5, test_size=5)
    ).build(0)
    assert set(data.train["length"]) == {6}
    assert set(data.test["length"]) == {10} and set(data.validation["length"]) == {10}


def _write_split_files(folder, rows_by_split):
    folder.mkdir()
    for split, rows in rows_by_split.items():
        with open(folder / f"{split}.jsonl", "w") as handle:
            for row in rows:
                handle.write(json.dumps(row) + "\n")


def test_loads_local_copy_in_steeldream_binary_layout(tmp_path):
    rng = np.random.default_rng(0)
    rows = {s: [{"input_ids": rng.integers(0, 2, 40).tolist()} for _ in range(n)]
            for s, n in [("train", 12), ("validation", 4), ("test", 6)]}
    _write_split_files(tmp_path / "binary", rows)
    config = BinaryReverseConfig(length=10, source=str(tmp_path / "binary"), train_size=12,
                                 validation_size=4, test_size=6)
    data = BinaryReverse(config).build(0)
    assert len(data.train) == 12 and len(data.test) == 6
    for original, row in zip(rows["test"], data.test, strict=True):
        x = original["input_ids"][:10]
        assert row["input_ids"] == [EOS, *x, GEN, *x[::-1]]


def test_loads_local_copy_in_addition_binary_layout(tmp_path):
    rng = np.random.default_rng(1)
    rows = {s: [{"input_ids_0": rng.integers(0, 2, 40).tolist(), "input_ids_1": rng.integers(0, 2, 40).tolist()}
                for _ in range(5)] for s in ("train", "validation", "test")}
    _write_split_files(tmp_path / "addition", rows)
    config = BinaryAdditionConfig(length=40, source=str(tmp_path / "addition"), train_size=5,
                                  validation_size=5, test_size=5)
    data = BinaryAddition(config).build(0)
    for original, row in zip(rows["validation"], data.validation, strict=True):
        expected = add_lsb_first(original["input_ids_0"], original["input_ids_1"])
        assert scored_targets(row) == expected
        assert row["input_ids"][2:42] == original["input_ids_0"]


def test_missing_local_copy_is_a_clear_error(tmp_path):
    config = BinaryCopyConfig(source=str(tmp_path / "nowhere"))
    with pytest.raises(SpecError, match="cannot load dataset"):
        BinaryCopy(config).build(0)
