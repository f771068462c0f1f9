"""Shared test setup. Helpers: keep fixtures in your own test files unless several areas need them."""

from __future__ import annotations

import pytest
import torch

from ponderlab.core.registry import get_registry, reset_registry


def pytest_configure(config):
    torch.set_num_threads(1)


def pytest_collection_modifyitems(config, items):
    if torch.cuda.is_available():
        return
    skip_gpu = pytest.mark.skip(reason="needs a CUDA device")
    for item in items:
        if "gpu" in item.keywords:
            item.add_marker(skip_gpu)


@pytest.fixture
def registry():
    """The process registry of installed plugins (rebuilt fresh for this test)."""
    reset_registry()
    yield get_registry()
    reset_registry()
