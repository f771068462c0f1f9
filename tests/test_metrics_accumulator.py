"""The metric accumulator on a hand-counted batch: scored positions, padding, slices, halting stats."""

from __future__ import annotations

import math

import pytest
import torch

from ponderlab.core.interfaces import IGNORE_INDEX, HaltingStats
from ponderlab.core.metrics import MetricAccumulator

X = IGNORE_INDEX  # an unscored position (prompt or padding)
PAD_HOPS = 9.0  # hop values at padding, which every statistic must ignore
LOGIT = 2.0  # the predicted class gets this logit, every other class 0
VOCAB = 3

# Four sequences of length 5; `mask` marks real tokens, `labels` X where unscored.
#   row 0: 5 real, 3 scored, all 3 right                  -> exact
#   row 1: 4 real, 2 scored, 1 right (position 2 wrong)   -> not exact
#   row 2: 3 real, 1 scored, right                        -> exact
#   row 3: 2 real, nothing scored                         -> not a sequence for exact match
# Scored 6, right 5: token accuracy 5/6 (real tokens: 14). Exact match 2 of 3 sequences.
MASK = [[1, 1, 1, 1, 1], [1, 1, 1, 1, 0], [1, 1, 1, 0, 0], [1, 1, 0, 0, 0]]
LABELS = [[X, X, 1, 2, 0], [X, 2, 2, X, X], [X, X, 1, X, X], [X, X, X, X, X]]
PREDICTIONS = [[0, 0, 1, 2, 0], [1, 2, 0, 1, 1], [2, 2, 1, 0, 0], [1, 1, 1, 1, 1]]
# Hops per token (1.5: a mean over two sites; the histogram rounds it half to even, to 2).
HOPS = [[1, 2, 3, 1, 2], [2, 1.5, 1, 4, PAD_HOPS], [1, 1, 3, PAD_HOPS, PAD_HOPS],
        [3, 1, PAD_HOPS, PAD_HOPS, PAD_HOPS]]
LENGTH_SLICE = [5, 4, 5, 2]  # a slice column: rows 0 and 2 share a value
SLICES = ("absent", "length")  # a slice column the batch lacks is skipped


def batch_tensors(rows: slice = slice(None), length: int = 5) -> tuple:
    """(logits, labels, stats, mask, batch) of the hand-counted batch, some rows and positions."""
    predictions = torch.tensor(PREDICTIONS)[rows, :length]
    logits = LOGIT * torch.nn.functional.one_hot(predictions, VOCAB).double()
    hops = torch.tensor(HOPS, dtype=torch.float64)[rows, :length]
    stats = HaltingStats(hops=hops, layers=2 * hops, ponder_cost=hops + 0.5,
                         remainder=torch.full_like(hops, 0.5).masked_fill(hops == PAD_HOPS, 7.0))
    mask = torch.tensor(MASK, dtype=torch.bool)[rows, :length]
    batch = {"length": torch.tensor(LENGTH_SLICE)[rows]}
    return logits, torch.tensor(LABELS)[rows, :length], stats, mask, batch


def cross_entropy(right: bool) -> float:
    """-log softmax of the label under logits (LOGIT at the prediction, 0 elsewhere)."""
    log_normaliser = math.log(math.exp(LOGIT) + VOCAB - 1)
    return log_normaliser - (LOGIT if right else 0.0)


EXPECTED = {
    "loss": (5 * cross_entropy(True) + cross_entropy(False)) / 6,
    "token_accuracy": 5 / 6,
    "exact_match": 2 / 3,
    "mean_hops": 26.5 / 14,  # rows: 9 + 8.5 + 5 + 4 over 14 real tokens
    "max_hops": 4.0,
    "mean_layers": 53 / 14,
    "ponder_cost": (26.5 + 0.5 * 14) / 14,
    "remainder": 0.5,
    "examples": 3.0,
    "length=2/exact_match": math.nan,  # no scored position: no sequence, no token
    "length=2/token_accuracy": math.nan,
    "length=4/exact_match": 0.0,
    "length=4/token_accuracy": 1 / 2,
    "length=5/exact_match": 1.0,
    "length=5/token_accuracy": 4 / 4,
}
PROFILE = {
    "position_mean_hops": [7 / 4, 5.5 / 4, 2.333333, 2.5, 2.0],  # rounded to 6 digits (7 / 3)
    "hop_histogram": {"1": 6, "2": 4, "3": 3, "4": 1},
}


def assert_expected(accumulator: MetricAccumulator) -> None:
    computed = accumulator.compute()
    assert sorted(computed) == sorted(EXPECTED)
    for key, value in EXPECTED.items():
        assert computed[key] == pytest.approx(value, nan_ok=True), key
    assert accumulator.halting_profile() == PROFILE


def test_hand_counted_batch():
    accumulator = MetricAccumulator(slice_columns=SLICES)
    accumulator.update(*batch_tensors())
    assert_expected(accumulator)


def test_batches_of_different_lengths_add_up_to_the_whole_batch():
    """A shorter batch first, then a longer one: per-position sums grow to the longer length."""
    accumulator = MetricAccumulator(slice_columns=SLICES)
    accumulator.update(*batch_tensors(slice(2, 4), length=3))  # rows 2, 3 have no real token after 3
    accumulator.update(*batch_tensors(slice(0, 2)))
    assert_expected(accumulator)


def test_empty_accumulator_reports_nan_not_zero():
    computed = MetricAccumulator().compute()
    for key in ("loss", "token_accuracy", "exact_match", "mean_hops"):
        assert math.isnan(computed[key]), key
    assert computed["max_hops"] == 0.0 and computed["examples"] == 0.0
    assert MetricAccumulator().halting_profile() == {"position_mean_hops": [], "hop_histogram": {}}
