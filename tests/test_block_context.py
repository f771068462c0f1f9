"""BlockContext names the hop index `hop`; `step` is its deprecated old name, read or passed."""

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
    assert "step" not in {f.name for f in dataclasses.fields(dataclasses.replace(context, hop=1))}


def test_step_is_accepted_as_the_hop_with_a_deprecation_warning():
    with pytest.warns(DeprecationWarning, match="pass hop"):
        context = BlockContext(layer=2, step=3)
    assert context.hop == 3 and context.layer == 2
    with pytest.raises(TypeError, match="give hop only"):
        BlockContext(hop=1, step=1)
