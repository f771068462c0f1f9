"""associative_recall, induction_head (seq_icl) and mqar (zoology): structure and scoring."""

from __future__ import annotations

import numpy as np
import pytest

from ponderlab.core.interfaces import IGNORE_INDEX
from ponderlab.plugins.tasks.icl import (
    MQAR,
    AssociativeRecall,
    AssociativeRecallConfig,
    InductionHead,
    InductionHeadConfig,
    MQARConfig,
    mqar_example,
    power_law,
)

V = 20
ARROW = V - 2


def full_sequence(row: dict) -> list[int]:
    """input_ids plus the final answer (the last label)."""
    return row["input_ids"] + [row["labels"][-1]]


@pytest.fixture(scope="module")
def ar_data():
    return AssociativeRecall(AssociativeRecallConfig(train_size=200, validation_size=50, test_size=50)).build(0)


@pytest.fixture(scope="module")
def ih_data():
    return InductionHead(InductionHeadConfig(train_size=200, validation_size=50, test_size=50)).build(0)


def test_associative_recall_structure(ar_data):
    keys, values = set(range(9)), set(range(9, 18))
    for row in ar_data.train:
        sequence = full_sequence(row)
        assert len(sequence) == 40 + 3 and row["length"] == 40
        pairs, tail = sequence[:40], sequence[40:]
        mapping: dict[int, int] = {}
        for k, v in zip(pairs[0::2], pairs[1::2], strict=True):
            assert k in keys and v in values
            assert mapping.setdefault(k, v) == v, "a key keeps one value inside a sequence"
        arrow, query, answer = tail
        assert arrow == ARROW
        assert query in mapping, "the query key always appeared earlier"
        assert answer == mapping[query]


def test_associative_recall_draws_fresh_maps(ar_data):
    maps = set()
    for row in ar_data.train:
        pairs = row["input_ids"][:40]
        maps.add(tuple(sorted(dict(zip(pairs[0::2], pairs[1::2], strict=True)).items())))
    assert len(maps) > 150


def test_train_scores_all_positions_test_only_the_last(ar_data, ih_data):
    for data in (ar_data, ih_data):
        for row in data.train:
            assert row["labels"] == full_sequence(row)[1:]
        for split in ("validation", "test"):
            for row in data.split(split):
                assert row["labels"][:-1] == [IGNORE_INDEX] * (len(row["labels"]) - 1)
                assert row["labels"][-1] == full_sequence(row)[-1]


def test_induction_head_structure(ih_data):
    for row in ih_data.train:
        sequence = full_sequence(row)
        assert len(sequence) == 30 + 2 and row["length"] == 30
        arrows = [i for i, t in enumerate(sequence) if t == ARROW]
        assert len(arrows) == 2 and arrows[1] == 30
        assert arrows[0] < 30 - 2
        assert sequence[-1] == sequence[arrows[0] + 1]
        assert all(0 <= t < V - 2 for i, t in enumerate(sequence) if i not in arrows)


def test_induction_head_answers_are_spread_over_symbols(ih_data):
    answers = [row["labels"][-1] for row in ih_data.test]
    assert len(set(answers)) > 10  # 18 symbols, chance 1/18


def test_test_seq_len_extrapolates():
    data = AssociativeRecall(
        AssociativeRecallConfig(seq_len=20, test_seq_len=60, train_size=30, validation_size=10, test_size=10)
    ).build(0)
    assert set(data.train["length"]) == {20} and {len(r) for r in data.train["input_ids"]} == {22}
    assert set(data.test["length"]) == {60} and {len(r) for r in data.test["input_ids"]} == {62}


# --------------------------------------------------------------------------- mqar


def test_power_law_matches_formula():
    p = power_law(10, 0.5)
    assert p.sum() == pytest.approx(1.0)
    assert p[0] / p[3] == pytest.approx((1 / 4) ** (0.5 - 1))  # p(g) ~ g^(a-1)
    assert np.allclose(power_law(5, 1.0), 0.2)  # a = 1 is uniform


def test_mqar_rows_against_slow_reading():
    rng = np.random.default_rng(0)
    for _ in range(50):
        row = mqar_example(rng, 128, seq_len=64, pairs=8, power_a=0.01, random_non_queries=False)
        ids, labels = row["input_ids"], row["labels"]
        assert len(ids) == 64 and len(labels) == 64
        keys, values = ids[0:16:2], ids[1:16:2]
        assert len(set(keys)) == 8 and len(set(values)) == 8
        assert all(1 <= k < 64 for k in keys) and all(64 <= v < 128 for v in values)
        scored = [t for t, y in enumerate(labels) if y != IGNORE_INDEX]
        assert len(scored) == 8
        assert sorted(ids[t] for t in scored) == sorted(keys), "every key is queried once"
        for t in scored:
            assert t >= 16 and (t - 16) % 2 == 0
            assert labels[t] == values[keys.index(ids[t])]
        assert all(ids[t] == 0 for t in range(16, 64) if t not in scored)


def test_mqar_power_law_prefers_short_gaps():
    def mean_gap(power_a):
        rng = np.random.default_rng(1)
        gaps = []
        for _ in range(300):
            row = mqar_example(rng, 512, seq_len=256, pairs=4, power_a=power_a, random_non_queries=False)
            gaps += [(t - 8) // 2 for t, y in enumerate(row["labels"]) if y != IGNORE_INDEX]
        return np.mean(gaps)

    assert mean_gap(0.01) < 0.6 * mean_gap(1.0)


def test_mqar_random_non_queries_fill_the_gaps():
    row = mqar_example(np.random.default_rng(0), 512, seq_len=64, pairs=4, power_a=0.01, random_non_queries=True)
    assert sum(t == 0 for t in row["input_ids"]) < 5


def test_mqar_fills_non_queries_with_random_tokens_by_default_like_zoology():
    assert MQARConfig().random_non_queries is True
    data = MQAR(MQARConfig(vocab_size=512, train_size=20, validation_size=5, test_size=5)).build(0)
    for row in data.test:
        scored = {t for t, y in enumerate(row["labels"]) if y != IGNORE_INDEX}
        gaps = [row["input_ids"][t] for t in range(8, 64) if t not in scored]
        assert len(set(gaps)) > 20, "the 52 non-query positions hold random tokens, not the filler 0"
    plain = MQAR(MQARConfig(vocab_size=512, random_non_queries=False, train_size=5, validation_size=5, test_size=5))
    row = plain.build(0).test[0]
    assert all(row["input_ids"][t] == 0 for t in range(8, 64) if row["labels"][t] == IGNORE_INDEX)


def test_mqar_settings_and_extrapolation():
    cfg = MQARConfig(
        vocab_size=256, settings=[(32, 2), (64, 4)], test_settings=[(128, 8)], train_size=80, validation_size=10, test_size=10
    )
    task = MQAR(cfg)
    data = task.build(0)
    assert set(zip(data.train["length"], data.train["pairs"], strict=True)) == {(32, 2), (64, 4)}
    assert set(data.test["length"]) == {128} and set(data.test["pairs"]) == {8}
    assert task.batch_group_column() == "length"


@pytest.mark.parametrize(
    "bad, match",
    [
        (dict(settings=[(63, 4)]), "even"),
        (dict(settings=[(64, 17)]), "pairs"),
        (dict(vocab_size=16, settings=[(64, 8)]), "keys"),
    ],
)
def test_mqar_config_errors(bad, match):
    with pytest.raises(ValueError, match=match):
        MQARConfig(**bad)
