"""BlockContext names the hop index `hop`; `step` is a deprecated read-only alias."""

import dataclasses

import pytest

from ponderlab.core.interfaces import BlockContext


def test_step_reads_the_hop_with_a_deprecation_warning():
    context = BlockContext(layer=1, hop=3)
    with pytest.warns(DeprecationWarning, match="BlockContext.hop"):
        assert context.step == 3


def test_step_is_read_only_and_not_a_field():
    assert "step" not in {f.name for f in dataclasses.fields(BlockContext)}
    context = BlockContext()
    with pytest.raises(AttributeError):
        context.step = 2
    with pytest.raises(TypeError):
        BlockContext(step=1)
