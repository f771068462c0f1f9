"""The contracts ponderlab relies on, checked by ponderlab.testing (run: pytest)."""

from ponderlab_example.confidence import ConfidenceExit
from ponderlab_example.gru import GRUBackbone
from ponderlab_example.majority import Majority

from ponderlab.testing import BackboneContract, HaltingContract, TaskContract


class TestGRUBackbone(BackboneContract):
    plugin = GRUBackbone
    config = {"d_model": 16, "n_layers": 2}


class TestConfidenceExit(HaltingContract):
    plugin = ConfidenceExit
    config = {"max_hops": 3}


class TestMajority(TaskContract):
    plugin = Majority
    config = {"length": 9, "train_size": 64, "validation_size": 16, "test_size": 16}
