"""`ponderlab new-plugin`: the generated package is complete; bad names are refused.

Installing the generated packages, running their tests and finding them in
`ponderlab plugins` is tests/test_plugin_kit_install.py.
"""

from __future__ import annotations

from pathlib import Path

import pytest

from ponderlab.core import scaffold
from ponderlab.core.cli import main as cli_main

KINDS = ("backbone", "halting", "task")


def plugin_name(kind: str) -> str:
    return f"scaffolded_{kind}"


@pytest.fixture(scope="module")
def generated(tmp_path_factory) -> Path:
    root = tmp_path_factory.mktemp("scaffold")
    for kind in KINDS:
        assert cli_main(["new-plugin", kind, plugin_name(kind), "--dir", str(root)]) == 0
    return root


@pytest.mark.parametrize("kind", KINDS)
def test_new_plugin_writes_a_complete_package(generated, kind):
    name = plugin_name(kind)
    package = generated / f"ponderlab-scaffolded-{kind}"
    files = sorted(str(p.relative_to(package)) for p in package.rglob("*") if p.is_file())
    assert files == sorted(
        ["README.md", "pyproject.toml", "spec.yaml", f"ponderlab_{name}/__init__.py", f"tests/test_{name}.py"]
    )
    pyproject = (package / "pyproject.toml").read_text()
    assert "[project.entry-points.ponderlab]" in pyproject
    assert f'"{kind}.{name}" = "ponderlab_{name}"' in pyproject
    module = (package / f"ponderlab_{name}" / "__init__.py").read_text()
    assert f'name: Literal["{name}"] = "{name}"' in module
    assert "$" not in module, "an unfilled template field"
    compile(module, f"ponderlab_{name}/__init__.py", "exec")
    test = (package / "tests" / f"test_{name}.py").read_text()
    contract = {"backbone": "BackboneContract", "halting": "HaltingContract", "task": "TaskContract"}[kind]
    assert f"from ponderlab.testing import {contract}" in test
    spec = (package / "spec.yaml").read_text()
    assert f"{kind}:\n  name: {name}\n" in spec


def test_bad_names_and_existing_folders_are_refused(generated, capsys):
    assert cli_main(["new-plugin", "task", "My-Task", "--dir", str(generated)]) == 2
    assert "lower-case letters" in capsys.readouterr().err
    assert cli_main(["new-plugin", "task", "scaffolded_task", "--dir", str(generated)]) == 2
    assert "already exists" in capsys.readouterr().err
    assert cli_main(["new-plugin", "backbone", "lstm", "--dir", str(generated)]) == 2
    assert "already installed" in capsys.readouterr().err
    assert not (generated / "ponderlab-lstm").exists()


def test_requirement_pins_the_minor_release():
    assert scaffold.ponderlab_requirement() == "ponderlab>=0.1,<0.2"
