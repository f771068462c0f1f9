"""`ponderlab new-plugin` with several plugins of different kinds in one package.

The fast tests check the generated files; the slow one pip-installs the package into a
temporary site (as tests/test_plugin_kit_install.py does), finds its three plugins in
`ponderlab plugins --json`, runs its demo spec (which uses all three together) and
its own conformance tests.
"""

from __future__ import annotations

import json
import subprocess
import sys
from pathlib import Path

import pytest
import tomllib
from test_plugin_kit_install import CLI_TWICE, plugin_env

from ponderlab.core import scaffold
from ponderlab.core.cli import main as cli_main
from ponderlab.testing import CONTRACTS

PLUGINS = {"backbone": "multi_gru", "halting": "multi_exit", "task": "multi_sort"}
ARGS = [word for kind, name in PLUGINS.items() for word in (kind, name)]


@pytest.fixture(scope="module")
def package(tmp_path_factory) -> Path:
    root = tmp_path_factory.mktemp("multi")
    assert cli_main(["new-plugin", *ARGS, "--package", "multi_kit", "--dir", str(root)]) == 0
    return root / "ponderlab-multi-kit"


def test_one_module_test_and_entry_point_per_plugin(package):
    files = sorted(str(p.relative_to(package)) for p in package.rglob("*") if p.is_file())
    expected = ["README.md", "pyproject.toml", "spec.yaml", "ponderlab_multi_kit/__init__.py"]
    expected += [f"ponderlab_multi_kit/{name}.py" for name in PLUGINS.values()]
    expected += [f"tests/test_{name}.py" for name in PLUGINS.values()]
    assert files == sorted(expected)
    pyproject = tomllib.loads((package / "pyproject.toml").read_text())
    assert pyproject["project"]["entry-points"]["ponderlab"] == {
        f"{kind}.{name}": f"ponderlab_multi_kit.{name}" for kind, name in PLUGINS.items()
    }
    for name in PLUGINS.values():
        module = (package / "ponderlab_multi_kit" / f"{name}.py").read_text()
        assert f'name: Literal["{name}"] = "{name}"' in module and "$" not in module
        compile(module, f"{name}.py", "exec")
        test = (package / "tests" / f"test_{name}.py").read_text()
        assert f"from ponderlab_multi_kit.{name} import" in test
    spec = (package / "spec.yaml").read_text()
    for kind, name in PLUGINS.items():
        assert f"{kind}:\n  name: {name}\n" in spec


def test_several_plugins_need_a_package_name_and_distinct_names(tmp_path, capsys):
    assert cli_main(["new-plugin", *ARGS, "--dir", str(tmp_path)]) == 2
    assert "--package" in capsys.readouterr().err
    assert cli_main(["new-plugin", "backbone", "twin", "task", "twin", "--package", "p", "--dir", str(tmp_path)]) == 2
    assert "repeated: twin" in capsys.readouterr().err
    assert cli_main(["new-plugin", "backbone", "odd", "task", "--dir", str(tmp_path)]) == 2
    assert "KIND NAME pairs" in capsys.readouterr().err
    assert list(tmp_path.iterdir()) == []


def test_one_plugin_keeps_the_one_module_layout():
    files = scaffold.render_plugins(scaffold.plan([("task", "solo_task")]))
    assert "ponderlab_solo_task/__init__.py" in files
    assert '"task.solo_task" = "ponderlab_solo_task"' in files["pyproject.toml"]


@pytest.mark.slow
def test_the_multi_plugin_package_installs_lists_runs_and_passes_its_tests(package, tmp_path):
    site = tmp_path / "site"
    command = [sys.executable, "-m", "pip", "install", "--no-deps", "--no-build-isolation", "--no-index",
               "--disable-pip-version-check", "--quiet", "--target", str(site), str(package)]
    done = subprocess.run(command, capture_output=True, text=True, timeout=300, cwd=tmp_path)
    assert done.returncode == 0, f"pip install failed:\n{done.stdout}\n{done.stderr}"
    listing, run_dir = tmp_path / "plugins.json", tmp_path / "run"
    done = subprocess.run(
        [sys.executable, "-c", CLI_TWICE, str(listing), str(package / "spec.yaml"), "training.steps=6",
         "training.eval_every=3", "task.train_size=64", "--output-dir", str(run_dir), "--no-progress"],
        capture_output=True, text=True, timeout=600, env=plugin_env(site), cwd=tmp_path,
    )
    assert done.returncode == 0, f"{done.stdout[-3000:]}\n{done.stderr[-3000:]}"
    rows = json.loads(listing.read_text())
    for kind, name in PLUGINS.items():
        row = next(r for r in rows if r["kind"] == kind and r.get("name") == name)
        assert (row["distribution"], row["entry_point"]) == ("ponderlab-multi-kit", f"{kind}.{name}")
    results = json.loads((run_dir / "results.json").read_text())
    assert (results["task"], results["backbone"], results["halting"]) == ("multi_sort", "multi_gru", "multi_exit")
    done = subprocess.run(
        [sys.executable, "-m", "pytest", "-q", "-p", "no:cacheprovider", str(package / "tests")],
        capture_output=True, text=True, timeout=900, env=plugin_env(site), cwd=tmp_path,
    )
    assert done.returncode == 0, done.stdout[-4000:]
    contracts = sum(len(CONTRACTS[kind]) for kind in PLUGINS)  # one test per contract, none skipped
    assert f"{contracts} passed" in done.stdout
