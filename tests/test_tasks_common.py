"""Properties every new task must have: registered, deterministic, disjoint splits, valid ids."""

from __future__ import annotations

import pytest
import torch

from ponderlab.core.config import TrainingConfig
from ponderlab.core.errors import SpecError
from ponderlab.core.interfaces import IGNORE_INDEX
from ponderlab.core.model import PonderModel
from ponderlab.core.registry import get_registry, reset_registry
from ponderlab.core.spec import validate_spec
from ponderlab.core.tasks import next_token_example
from ponderlab.core.trainer import Trainer
from ponderlab.plugins.backbones.lstm import LSTMBackbone, LSTMConfig
from ponderlab.plugins.halting.none import NoHalting, NoHaltingConfig
from ponderlab.plugins.tasks.babi import Babi
from ponderlab.plugins.tasks.ca1d import CA1D
from ponderlab.plugins.tasks.dfa import RegBench
from ponderlab.plugins.tasks.icl import MQAR, AssociativeRecall, InductionHead
from ponderlab.plugins.tasks.parity import Parity

TINY = {
    "ca1d": dict(train_size=40, validation_size=10, test_size=10, shifts=[1, 2, 3, 4]),
    "associative_recall": dict(train_size=60, validation_size=20, test_size=20),
    "induction_head": dict(train_size=60, validation_size=20, test_size=20),
    "mqar": dict(vocab_size=64, settings=[(32, 4), (64, 8)], train_size=60, validation_size=20, test_size=20),
    "dfa": dict(train_size=20, validation_size=8, test_size=8, min_strings=2, max_strings=4, max_string_length=8),
    "babi": dict(qa="qa2", lengths=[0, 60], train_size=60, validation_size=20, test_size=20),
    "parity": dict(size=12, train_size=60, validation_size=20, test_size=20),
}


TASK_CLASSES = {
    "ca1d": CA1D,
    "associative_recall": AssociativeRecall,
    "induction_head": InductionHead,
    "mqar": MQAR,
    "dfa": RegBench,
    "babi": Babi,
    "parity": Parity,
}
#: only these entry points are loaded here (importing every backbone is slow on a shared CPU)
PLUGINS = "task.ca1d,task.icl,task.dfa,task.babi,task.parity,backbone.lstm,halting.none"


def make_task(name: str, **overrides):
    cls = TASK_CLASSES[name]
    return cls(cls.config_class(**{**TINY[name], **overrides}))


@pytest.fixture
def task_registry(monkeypatch):
    monkeypatch.setenv("PONDERLAB_PLUGINS", PLUGINS)
    reset_registry()
    yield get_registry()
    reset_registry()


def test_entry_points_register_every_task(task_registry):
    assert not task_registry.errors
    for name, cls in TASK_CLASSES.items():
        assert task_registry.get("task", name).cls is cls


def rows(dataset) -> list[tuple]:
    return [(*r["input_ids"], "|", *r["labels"]) for r in dataset]


@pytest.mark.parametrize("name", sorted(TINY))
def test_registered_deterministic_and_seed_dependent(name):
    first = make_task(name).build(3)
    again = make_task(name).build(3)
    other = make_task(name).build(4)
    for split in ("train", "validation", "test"):
        assert rows(first.split(split)) == rows(again.split(split))
    assert rows(first.test) != rows(other.test)


@pytest.mark.parametrize("name", sorted(TINY))
def test_splits_never_overlap(name):
    data = make_task(name).build(0)
    seen = {split: {tuple(r["input_ids"]) for r in data.split(split)} for split in ("train", "validation", "test")}
    assert not seen["train"] & seen["validation"]
    assert not seen["train"] & seen["test"]
    assert not seen["validation"] & seen["test"]


@pytest.mark.parametrize("name", sorted(TINY))
def test_ids_within_vocabulary_and_labels_aligned(name):
    task = make_task(name)
    data = task.build(0)
    for split in ("train", "validation", "test"):
        dataset = data.split(split)
        for column in task.slice_columns:
            assert column in dataset.column_names
        for row in dataset:
            assert len(row["labels"]) == len(row["input_ids"])
            assert all(0 <= t < task.vocab_size for t in row["input_ids"])
            scored = [t for t in row["labels"] if t != IGNORE_INDEX]
            assert scored, "every row scores at least one position"
            assert all(0 <= t < task.vocab_size for t in scored)
            for column in task.slice_columns:
                assert isinstance(row[column], int)


def test_next_token_example_layouts():
    sequence = [5, 6, 7, 8]
    assert next_token_example(sequence, "all") == {"input_ids": [5, 6, 7], "labels": [6, 7, 8]}
    assert next_token_example(sequence, "last") == {"input_ids": [5, 6, 7], "labels": [-100, -100, 8]}
    assert next_token_example(sequence, [0, 2]) == {"input_ids": [5, 6, 7], "labels": [6, -100, 8]}


def test_specs_validate_through_the_assembled_spec_model(task_registry):
    """YAML-shaped task sections (lists for tuples) pass the core's spec validation; bad ones name the key."""
    spec = validate_spec(
        {
            "task": {"name": "mqar", "settings": [[64, 4], [128, 8]], "test_settings": [[256, 16]]},
            "backbone": {"name": "lstm"},
            "halting": {"name": "none"},
        },
        registry=task_registry,
    )
    assert spec.task.settings == [(64, 4), (128, 8)]
    with pytest.raises(SpecError, match="task"):
        validate_spec(
            {"task": {"name": "ca1d", "shifts": [12]}, "backbone": {"name": "lstm"}, "halting": {"name": "none"}},
            registry=task_registry,
        )


def test_dfa_trains_through_the_trainer_with_slices_and_dfa_accuracy():
    """A real (tiny) training run: slice metrics and Task.extra_metrics reach the results."""
    torch.manual_seed(0)
    task = make_task("dfa")
    data = task.build(0)
    backbone = LSTMBackbone(LSTMConfig(d_model=16, n_layers=1), vocab_size=task.vocab_size)
    model = PonderModel(backbone, NoHalting, NoHaltingConfig(), vocab_size=task.vocab_size)
    config = TrainingConfig(steps=3, batch_size=8, eval_every=2, warmup_steps=1, device="cpu")
    results = Trainer(model=model, task=task, data=data, config=config, seed=0, progress=False).fit()
    assert results["train/steps"] == 3
    assert 0.0 <= results["test/exact_match"] <= 1.0
    assert any(k.startswith("test/states=") and k.endswith("/token_accuracy") for k in results)
    assert 0.0 <= results["test/dfa_accuracy"] <= 1.0
    assert 0.0 <= results["validation/dfa_accuracy"] <= 1.0
    assert any(k.startswith("test/states=") and k.endswith("/dfa_accuracy") for k in results)
