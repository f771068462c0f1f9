"""Behaviour specific to the example plugins."""

import pytest
from ponderlab_example.majority import BOS, QUERY, Majority, MajorityConfig

from ponderlab.core.errors import SpecError
from ponderlab.core.interfaces import IGNORE_INDEX
from ponderlab.core.spec import validate_spec


def test_answer_is_the_majority_bit_scored_at_the_query():
    data = Majority(MajorityConfig(length=5, train_size=8, validation_size=4, test_size=4)).build(0)
    for row in data.train:
        ids, labels = row["input_ids"], row["labels"]
        bits = ids[1:6]
        assert ids[0] == BOS and ids[6] == QUERY
        assert labels[6] == int(sum(bits) >= 3) == ids[7]
        assert [t for i, t in enumerate(labels) if i != 6] == [IGNORE_INDEX] * 7
        assert row["margin"] == abs(2 * sum(bits) - 5)


def test_even_length_is_rejected_with_its_path():
    spec = {"task": {"name": "majority", "length": 4}, "backbone": {"name": "gru"}}
    with pytest.raises(SpecError, match=r"task\.length: .*odd"):
        validate_spec(spec)
