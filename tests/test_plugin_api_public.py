"""The public API for plugin authors lives under `ponderlab.*` names that are not built-in
plugins' modules; the old documented paths still work for one release and warn."""

from __future__ import annotations

import importlib
from pathlib import Path

import pytest

import ponderlab.core.tasks as task_helpers

ROOT = Path(__file__).resolve().parents[1]
#: What docs/plugins.md tells plugin authors to import.
PUBLIC = ["ponderlab.core.halting", "ponderlab.core.early_exit", "ponderlab.core.tasks", "ponderlab.testing",
          "ponderlab.core.hookspecs", "ponderlab.core.config", "ponderlab.core.interfaces"]


def test_task_helpers_old_path_warns_and_gives_the_same_objects():
    module = importlib.import_module("ponderlab.plugins.tasks.common")
    with pytest.warns(DeprecationWarning, match="ponderlab.plugins.tasks.common is deprecated"):
        module = importlib.reload(module)
    for name in ("disjoint_splits", "lm_example", "next_token_example", "rng_for", "load_published"):
        assert getattr(module, name) is getattr(task_helpers, name)


def test_built_in_tasks_import_only_the_public_helpers():
    offenders = [path.name for path in (ROOT / "plugins" / "tasks").glob("*.py")
                 if path.name != "common.py" and ".common import" in path.read_text()]
    assert offenders == []


@pytest.mark.parametrize("name", PUBLIC)
def test_public_modules_are_not_built_in_plugins(name):
    module = importlib.import_module(name)
    assert not module.__name__.startswith("ponderlab.plugins")
    exported = getattr(module, "__all__", None)
    if name in ("ponderlab.core.halting", "ponderlab.core.early_exit", "ponderlab.core.tasks", "ponderlab.testing"):
        assert exported, f"{name} has no __all__"
        for item in exported:
            assert hasattr(module, item), f"{name}.__all__ names {item}, which it lacks"


def test_the_docs_point_plugin_authors_at_public_modules_only():
    for doc in (ROOT / "docs" / "plugins.md", ROOT / "README.md"):
        text = doc.read_text()
        for internal, public in (("ponderlab.plugins.tasks.common", "ponderlab.core.tasks"),
                                 ("ponderlab.plugins.halting.common", "ponderlab.core.halting")):
            for line in text.splitlines():
                if internal in line:  # only as a deprecated alias, or in the table naming its successor
                    assert "deprecated" in line or public in line, f"{doc.name} points at {internal}: {line}"
