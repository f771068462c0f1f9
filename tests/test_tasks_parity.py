"""parity (Graves): encoding, answers against a slow decode, count slices and extrapolation split."""

from __future__ import annotations

import pytest

from ponderlab.core.interfaces import IGNORE_INDEX
from ponderlab.plugins.tasks.parity import EVEN, ODD, QUERY, Parity, ParityConfig, parity_example


def test_hand_encoded_example():
    row = parity_example([1, -1, 0, 1])
    assert row["input_ids"] == [1, 2, 0, 1, QUERY, EVEN]  # two +1 entries: even
    assert row["labels"] == [IGNORE_INDEX] * 4 + [EVEN, IGNORE_INDEX]
    assert row["count"] == 3
    assert parity_example([0, -1, 1, 0])["labels"][4] == ODD


def test_answers_match_slow_decode():
    data = Parity(ParityConfig(size=16, train_size=200, validation_size=20, test_size=20)).build(0)
    decode = {0: 0, 1: 1, 2: -1}
    counts = set()
    for row in data.train:
        vector = [decode[t] for t in row["input_ids"][:16]]
        assert row["input_ids"][16] == QUERY and len(row["input_ids"]) == 18
        plus = sum(1 for v in vector if v == 1)
        assert row["labels"][16] == (ODD if plus % 2 else EVEN)
        assert row["count"] == sum(1 for v in vector if v != 0)
        assert 1 <= row["count"] <= 16
        counts.add(row["count"])
    assert len(counts) > 10  # c ~ U[1, size]
    assert {r["labels"][16] for r in data.train} == {EVEN, ODD}


def test_pondernet_extrapolation_split():
    cfg = ParityConfig(size=96, max_count=48, test_min_count=49, train_size=100, validation_size=20, test_size=30)
    data = Parity(cfg).build(0)
    assert max(data.train["count"]) <= 48 and min(data.train["count"]) >= 1
    assert min(data.test["count"]) >= 49 and max(data.test["count"]) <= 96
    assert min(data.validation["count"]) >= 49


@pytest.mark.parametrize(
    "bad",
    [dict(size=8, max_count=9), dict(size=8, min_count=5, max_count=4), dict(size=8, test_min_count=9)],
)
def test_config_rejects_impossible_counts(bad):
    with pytest.raises(ValueError, match="count range"):
        ParityConfig(**bad)
