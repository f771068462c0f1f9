"""Plugin discovery through real entry points: isolation of broken plugins, conflicts, env lists.

Each test writes a tiny distribution (a .dist-info with entry_points.txt plus a
module) into a temp dir on sys.path, which is exactly how importlib.metadata
finds installed plugins.
"""

from __future__ import annotations

import json
import subprocess
import sys
import textwrap

import pytest

from ponderlab.core.errors import PluginError
from ponderlab.core.registry import build_registry

GOOD_MODULE = """\
from typing import Literal
from ponderlab.core.config import HaltingConfig
from ponderlab.core.hookspecs import hookimpl
from ponderlab.plugins.halting.none import NoHalting


class {cls}Config(HaltingConfig):
    name: Literal["{name}"] = "{name}"


class {cls}(NoHalting):
    config_class = {cls}Config


@hookimpl
def ponderlab_register_halting(register):
    register({cls})
"""


def make_distribution(root, dist: str, module: str, source: str, entry_name: str | None = None):
    """Write `module`.py and a dist-info declaring it under the `ponderlab` entry-point group."""
    (root / f"{module}.py").write_text(textwrap.dedent(source))
    info = root / f"{dist}-0.3.dist-info"
    info.mkdir()
    (info / "METADATA").write_text(f"Metadata-Version: 2.1\nName: {dist}\nVersion: 0.3\n")
    (info / "entry_points.txt").write_text(f"[ponderlab]\n{entry_name or module} = {module}\n")


@pytest.fixture
def plugin_dir(tmp_path, monkeypatch):
    monkeypatch.syspath_prepend(str(tmp_path))
    yield tmp_path
    for name in list(sys.modules):
        if name.startswith("fake_plugin"):
            del sys.modules[name]


def test_builtins_are_registered_through_entry_points():
    registry = build_registry()
    for kind, name in [("backbone", "lstm"), ("backbone", "transformer"), ("halting", "graves"),
                       ("halting", "none"), ("halting", "constant"), ("task", "binary_copy")]:
        info = registry.get(kind, name)
        assert info.distribution == "ponderlab"
        assert info.source.startswith(f"{kind}.")



def test_listing_the_builtins_leaves_transformers_unimported():
    """The built-in plugins import `transformers` where they build a model or load a tokenizer, not at
    registration: `ponderlab plugins` or `validate` (and every Ray worker) skips its seconds of import."""
    probe = ("import sys; from ponderlab.core.registry import build_registry; registry = build_registry(); "
             "registry.get('backbone', 'transformer'); registry.get('backbone', 'mamba'); "
             "print(sorted(m for m in sys.modules if m.split('.')[0] == 'transformers'))")
    done = subprocess.run([sys.executable, "-c", probe], capture_output=True, text=True, timeout=120)
    assert done.returncode == 0, done.stderr
    assert done.stdout.strip() == "[]"

def test_third_party_plugin_is_discovered_with_its_distribution(plugin_dir):
    make_distribution(plugin_dir, "fake-halting", "fake_plugin_ok", GOOD_MODULE.format(cls="Slow", name="slow"))
    registry = build_registry()
    info = registry.get("halting", "slow")
    assert (info.distribution, info.version, info.source) == ("fake-halting", "0.3", "fake_plugin_ok")


def test_broken_plugin_is_reported_and_skipped(plugin_dir):
    make_distribution(plugin_dir, "fake-broken", "fake_plugin_broken", "import does_not_exist_anywhere\n")
    make_distribution(plugin_dir, "fake-halting", "fake_plugin_ok", GOOD_MODULE.format(cls="Slow", name="slow"))
    registry = build_registry()
    errors = {e.source: e for e in registry.errors}
    assert "fake_plugin_broken" in errors
    assert errors["fake_plugin_broken"].distribution == "fake-broken"
    assert "does_not_exist_anywhere" in errors["fake_plugin_broken"].error
    assert registry.get("halting", "slow").distribution == "fake-halting"
    assert registry.get("backbone", "lstm")  # the rest still works


def test_hook_that_raises_is_reported(plugin_dir):
    source = GOOD_MODULE.format(cls="Bad", name="bad").replace("register(Bad)", "raise RuntimeError('boom')")
    make_distribution(plugin_dir, "fake-raise", "fake_plugin_raise", source)
    registry = build_registry()
    assert any(e.source == "fake_plugin_raise" and "boom" in e.error for e in registry.errors)


def test_duplicate_name_is_an_error_naming_both(plugin_dir):
    make_distribution(plugin_dir, "fake-one", "fake_plugin_one", GOOD_MODULE.format(cls="One", name="twin"))
    make_distribution(plugin_dir, "fake-two", "fake_plugin_two", GOOD_MODULE.format(cls="Two", name="twin"))
    registry = build_registry()
    with pytest.raises(PluginError) as info:
        registry.get("halting", "twin")
    message = str(info.value)
    assert "fake_plugin_one (fake-one 0.3)" in message and "fake_plugin_two (fake-two 0.3)" in message


def test_name_clashing_with_builtin_is_a_conflict(plugin_dir):
    make_distribution(plugin_dir, "fake-clash", "fake_plugin_clash", GOOD_MODULE.format(cls="G", name="graves"))
    registry = build_registry()
    with pytest.raises(PluginError, match="registered twice"):
        registry.get("halting", "graves")


def test_plugins_listing_marks_a_conflict_as_such(plugin_dir, capsys):
    from ponderlab.core.cli import main
    from ponderlab.core.registry import reset_registry

    make_distribution(plugin_dir, "fake-clash", "fake_plugin_clash", GOOD_MODULE.format(cls="G", name="graves"))
    reset_registry()
    try:
        assert main(["plugins", "--json"]) == 0
        rows = json.loads(capsys.readouterr().out)
        assert main(["plugins"]) == 0
        text = capsys.readouterr().out
    finally:
        reset_registry()
    conflicts = [r for r in rows if r["kind"] == "conflict"]
    assert [(r["plugin_kind"], r["name"]) for r in conflicts] == [("halting", "graves")]
    assert any("fake_plugin_clash" in source for source in conflicts[0]["sources"])
    assert "halting 'graves': registered by" in text


def test_disable_list_skips_an_entry_point(plugin_dir, monkeypatch):
    make_distribution(plugin_dir, "fake-halting", "fake_plugin_ok", GOOD_MODULE.format(cls="Slow", name="slow"))
    monkeypatch.setenv("PONDERLAB_DISABLE_PLUGINS", "fake_plugin_ok, backbone.transformer")
    registry = build_registry()
    assert "slow" not in registry.names("halting")
    assert "transformer" not in registry.names("backbone")
    assert "lstm" in registry.names("backbone")


def test_allow_list_keeps_only_named_plugins(plugin_dir, monkeypatch):
    make_distribution(plugin_dir, "fake-halting", "fake_plugin_ok", GOOD_MODULE.format(cls="Slow", name="slow"))
    monkeypatch.setenv("PONDERLAB_PLUGINS", "fake-halting,backbone.lstm")
    registry = build_registry()
    assert registry.names("halting") == ["slow"]
    assert registry.names("backbone") == ["lstm"]
    assert registry.names("task") == []


def test_registering_a_non_plugin_class_is_reported(plugin_dir):
    source = GOOD_MODULE.format(cls="Odd", name="odd").replace("register(Odd)", "register(dict)")
    make_distribution(plugin_dir, "fake-odd", "fake_plugin_odd", source)
    registry = build_registry()
    assert any(e.source == "fake_plugin_odd" and "not a HaltingStrategy" in e.error for e in registry.errors)
