"""The public halting toolkit (`ponderlab.core.halting`) and the early-exit boundary."""

from __future__ import annotations

import ast
import importlib
from pathlib import Path
from typing import Literal

import pytest

import ponderlab.core
import ponderlab.core.early_exit as early_exit
import ponderlab.core.halting as toolkit
import ponderlab.plugins

# Through the imported packages, so that the checks also read the tree mutmut runs (mutants/src).
PLUGINS = Path(ponderlab.plugins.__file__).resolve().parent
CORE = Path(ponderlab.core.__file__).resolve().parent


@pytest.mark.parametrize(("old", "new", "names"), [
    ("ponderlab.plugins.halting.common", toolkit, ["HaltingUnit", "cumulative_halting_loop", "RunningTokens"]),
    ("ponderlab.core.rows", early_exit, ["gather_active", "scatter_active", "apply_to_active"]),
])
def test_old_import_paths_warn_and_give_the_same_objects(old, new, names):
    module = importlib.import_module(old)
    with pytest.warns(DeprecationWarning, match="is deprecated"):
        module = importlib.reload(module)
    for name in names:
        assert getattr(module, name) is getattr(new, name)


def test_built_in_strategies_import_only_from_the_toolkit():
    sources = {path.name: path.read_text() for path in (PLUGINS / "halting").glob("*.py")}
    offenders = [name for name, text in sources.items()
                 if name != "common.py" and ("from .common" in text or "halting.common" in text)]
    assert offenders == []


def test_act_config_rejects_a_cap_in_depth_scope_for_any_strategy():
    class MyConfig(toolkit.ACTConfig):
        name: Literal["my_act"] = "my_act"

    assert MyConfig(scope="depth").max_hops == 4  # the default is fine: the cap is the layers
    with pytest.raises(ValueError, match="max_hops does not apply in depth scope"):
        MyConfig(scope="depth", max_hops=3)


def imported_modules(path: Path) -> set[str]:
    """Modules a source file imports (relative ones resolved against ponderlab.core.*)."""
    package = "ponderlab." + ".".join(path.relative_to(CORE.parent).with_suffix("").parts[:-1])
    found = set()
    for node in ast.walk(ast.parse(path.read_text())):
        if isinstance(node, ast.ImportFrom):
            base = package.rsplit(".", node.level - 1)[0] if node.level else ""
            found.add(f"{base}.{node.module}".strip(".") if node.level else node.module)
        elif isinstance(node, ast.Import):
            found.update(alias.name for alias in node.names)
    return found


def test_segments_and_early_exit_do_not_import_the_model_or_the_toolkit():
    files = [CORE / "segments.py", *sorted((CORE / "early_exit").glob("*.py"))]
    for path in files:
        imported = imported_modules(path)
        assert not any(name.startswith(("ponderlab.core.model", "ponderlab.core.halting"))
                       for name in imported), (path.name, sorted(imported))
    assert "ponderlab.core.interfaces" in imported_modules(CORE / "segments.py")  # resolution works
