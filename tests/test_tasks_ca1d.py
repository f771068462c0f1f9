"""ca1d: rule application against a slow reference, seed 000's layout, shifts, published layout."""

from __future__ import annotations

import json

import numpy as np
import pytest

from ponderlab.core.errors import SpecError
from ponderlab.core.interfaces import IGNORE_INDEX
from ponderlab.plugins.tasks.binary import GEN, SEP
from ponderlab.plugins.tasks.ca1d import CA1D, CA1DConfig, random_trajectory, step, trajectory


def slow_step(cells: list[int], rule_bits: list[int], radius: int) -> list[int]:
    """Independent rule application: read each neighbourhood as a bit string, leftmost most significant."""
    width = len(cells)
    out = []
    for i in range(width):
        bits = "".join(str(cells[(i + j) % width]) for j in range(-radius, radius + 1))
        out.append(rule_bits[int(bits, 2)])
    return out


def decode(row: dict, width: int = 20) -> tuple[list[list[int]], list[int]]:
    """Context states and target state from a row's input_ids/labels."""
    ids = row["input_ids"]
    gen = ids.index(GEN)
    prompt = ids[:gen]
    states = [prompt[i + 1 : i + 1 + width] for i in range(0, len(prompt), width + 1)]
    assert all(prompt[i] == SEP for i in range(0, len(prompt), width + 1))
    target = [t for t in row["labels"] if t != IGNORE_INDEX]
    return states, target


def test_rule_30_hand_computed():
    rule = np.array([(30 >> k) & 1 for k in range(8)])
    states = trajectory(np.array([0, 0, 0, 1, 0, 0, 0]), rule, radius=1, steps=3)
    assert states.tolist() == [[0, 0, 0, 1, 0, 0, 0], [0, 0, 1, 1, 1, 0, 0], [0, 1, 1, 0, 0, 1, 0]]


def test_vectorised_step_matches_slow_reference():
    rng = np.random.default_rng(0)
    for radius in (1, 2, 3):
        for _ in range(20):
            rule = rng.integers(0, 2, size=2 ** (2 * radius + 1))
            cells = rng.integers(0, 2, size=int(rng.integers(2 * radius + 1, 25)))
            assert step(cells, rule, radius).tolist() == slow_step(cells.tolist(), rule.tolist(), radius)


def test_periodic_boundary_wraps():
    # radius 1, rule "copy the left neighbour" (index bit 2 = left cell): the state rotates right
    rule = np.array([(k >> 2) & 1 for k in range(8)])
    assert step(np.array([1, 0, 0, 0, 0]), rule, 1).tolist() == [0, 1, 0, 0, 0]
    assert step(np.array([0, 0, 0, 0, 1]), rule, 1).tolist() == [1, 0, 0, 0, 0]


def test_generated_rows_follow_their_rule():
    task = CA1D(CA1DConfig(shifts=[1, 2, 3, 4], train_size=30, validation_size=10, test_size=10))
    data = task.build(0)
    shifts = set()
    for row in data.train:
        assert len(row["input_ids"]) == 231  # 10 * 21 + 1 + 20, the final target cell is not an input
        assert sum(t != IGNORE_INDEX for t in row["labels"]) == 20
        states, target = decode(row)
        assert len(states) == 10 and all(len(s) == 20 for s in states)
        for before, after in zip(states, states[1:], strict=False):
            assert slow_step(before, row["rule"], 2) == after
        expected = states[-1]
        for _ in range(row["shift"]):
            expected = slow_step(expected, row["rule"], 2)
        assert target == expected
        shifts.add(row["shift"])
    assert shifts == {1, 2, 3, 4}


def test_target_is_scored_right_after_gen():
    task = CA1D(CA1DConfig(train_size=2, validation_size=2, test_size=2))
    row = task.build(1).test[0]
    gen = row["input_ids"].index(GEN)
    assert row["labels"][:gen] == [IGNORE_INDEX] * gen
    # labels[t] predicts input_ids[t + 1]: the target bits follow GEN in the sequence
    assert row["labels"][gen : gen + 19] == row["input_ids"][gen + 1 : gen + 20]


def test_test_shifts_extrapolate():
    task = CA1D(CA1DConfig(shifts=[1], test_shifts=[3, 4], train_size=20, validation_size=10, test_size=10))
    data = task.build(0)
    assert set(data.train["shift"]) == {1}
    assert set(data.validation["shift"]) | set(data.test["shift"]) <= {3, 4}


def test_config_rejects_shift_beyond_trajectory():
    with pytest.raises(ValueError, match="shift 11"):
        CA1DConfig(shifts=[11])
    with pytest.raises(ValueError, match="radius"):
        CA1DConfig(width=4, radius=2)


def write_published_copy(folder, n_rows: dict[str, int], seed: int = 5) -> dict[str, list[np.ndarray]]:
    """JSON lines in irodkin/1dCA_r2s20T20's layout: input_ids_0..input_ids_19, 20 cells each."""
    rng = np.random.default_rng(seed)
    written = {}
    for split, count in n_rows.items():
        trajectories = [random_trajectory(rng, 20, 2, 20)[1] for _ in range(count)]
        with open(folder / f"{split}.jsonl", "w") as handle:
            for states in trajectories:
                handle.write(json.dumps({f"input_ids_{i}": states[i].tolist() for i in range(20)}) + "\n")
        written[split] = trajectories
    return written


def test_published_layout_loads_local_copy(tmp_path):
    written = write_published_copy(tmp_path, {"train": 12, "validation": 5, "test": 6})
    task = CA1D(CA1DConfig(source=str(tmp_path), shifts=[2, 5], train_size=10, validation_size=5, test_size=6))
    data = task.build(0)
    assert (len(data.train), len(data.validation), len(data.test)) == (10, 5, 6)
    for split in ("train", "test"):
        for row, states in zip(data.split(split), written[split], strict=False):
            context, target = decode(row)
            assert context == states[:10].tolist()
            assert target == states[9 + row["shift"]].tolist()


def test_published_layout_missing_columns_is_a_clear_error(tmp_path):
    for split in ("train", "validation", "test"):
        (tmp_path / f"{split}.jsonl").write_text(json.dumps({"input_ids": [0, 1]}) + "\n")
    with pytest.raises(SpecError, match="input_ids_0"):
        CA1D(CA1DConfig(source=str(tmp_path))).build(0)
