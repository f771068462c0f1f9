"""What the registry says about plugins it could not use: a config_class outside its kind's base,
a plugin that failed to import, PONDERLAB_PLUGINS / PONDERLAB_DISABLE_PLUGINS that select nothing."""

from __future__ import annotations

import os
import textwrap
from pathlib import Path

import pytest
from cli_runs import cli, one_error, write_spec

from ponderlab.core.cli import main as cli_main
from ponderlab.core.registry import reset_registry

WRONG_CONFIG = """\
from typing import Literal

from pydantic import BaseModel

from ponderlab.core.hookspecs import hookimpl
from ponderlab.core.interfaces import Backbone


class WrongConfig(BaseModel):  # pydantic, but not a BackboneConfig (no d_model, no n_layers)
    name: Literal["wrongconfig"] = "wrongconfig"


class Wrong(Backbone):
    config_class = WrongConfig


@hookimpl
def ponderlab_register_backbones(register):
    register(Wrong)
"""


@pytest.fixture(scope="module")
def plugin_site(tmp_path_factory) -> Path:
    """A folder holding an installed distribution `fakeplug` with two backbone entry points."""
    site = tmp_path_factory.mktemp("site")
    info = site / "fakeplug-0.1.dist-info"
    info.mkdir()
    (info / "METADATA").write_text("Metadata-Version: 2.1\nName: fakeplug\nVersion: 0.1\n")
    (info / "entry_points.txt").write_text(textwrap.dedent("""\
        [ponderlab]
        backbone.wrongconfig = fakeplug_wrong
        backbone.broken = fakeplug_broken
    """))
    (site / "fakeplug_wrong.py").write_text(WRONG_CONFIG)
    (site / "fakeplug_broken.py").write_text('raise ImportError("needs the frobnicator package")\n')
    return site


def with_site(site: Path) -> dict:
    return {"PYTHONPATH": os.pathsep.join(filter(None, [str(site), os.environ.get("PYTHONPATH")]))}


def test_a_config_that_is_not_a_backbone_config_is_rejected_at_load(plugin_site, tmp_path):
    spec = write_spec(tmp_path / "spec.yaml")
    error = one_error(cli("validate", spec, "backbone.name=wrongconfig", env=with_site(plugin_site)))
    assert "unknown backbone 'wrongconfig'" in error
    assert "plugin backbone.wrongconfig (fakeplug) failed to load" in error
    assert "WrongConfig" in error and "not a subclass of BackboneConfig" in error


def test_a_plugin_that_failed_to_load_is_named(plugin_site, tmp_path):
    spec = write_spec(tmp_path / "spec.yaml")
    error = one_error(cli("run", spec, "backbone.name=broken", "--output-dir", tmp_path / "run",
                          env=with_site(plugin_site)))
    assert "unknown backbone 'broken'" in error
    assert "plugin backbone.broken (fakeplug) failed to load: ImportError: needs the frobnicator package" in error
    assert not (tmp_path / "run").exists()


@pytest.fixture
def fresh_registry():
    reset_registry()
    yield
    reset_registry()


def test_disabling_a_plugin_by_its_plugin_name_says_it_matched_nothing(
    tmp_path, capsys, monkeypatch, fresh_registry
):
    monkeypatch.setenv("PONDERLAB_DISABLE_PLUGINS", "lstm")
    assert cli_main(["validate", str(write_spec(tmp_path / "spec.yaml"))]) == 0
    err = capsys.readouterr().err
    assert "warning: PONDERLAB_DISABLE_PLUGINS: lstm is not the entry-point or distribution name" in err
    assert "backbone.lstm" in err  # the name that would have worked


def test_an_allow_list_that_leaves_nothing_says_so(tmp_path, capsys, monkeypatch, fresh_registry):
    monkeypatch.setenv("PONDERLAB_PLUGINS", "lstm")
    assert cli_main(["validate", str(write_spec(tmp_path / "spec.yaml"))]) == 2
    err = capsys.readouterr().err
    error = [line for line in err.splitlines() if line.startswith("error: ")]
    assert len(error) == 1 and "left none of" in error[0] and "PONDERLAB_PLUGINS: lstm" in error[0]
