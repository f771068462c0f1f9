"""Two packages registering the same entry-point name: one short load error naming both
(pluggy's own error is `Plugin name already registered` plus a dump of every plugin)."""

from __future__ import annotations

from test_core_registry import GOOD_MODULE, make_distribution, plugin_dir  # noqa: F401 (fixture)

from ponderlab.core.registry import build_registry


def test_the_same_entry_point_name_in_two_packages_is_reported_as_registered_twice(plugin_dir):  # noqa: F811
    make_distribution(plugin_dir, "fake-one", "fake_plugin_one", GOOD_MODULE.format(cls="One", name="one"),
                      entry_name="halting.twin")
    make_distribution(plugin_dir, "fake-two", "fake_plugin_two", GOOD_MODULE.format(cls="Two", name="two"),
                      entry_name="halting.twin")
    registry = build_registry()
    errors = [e for e in registry.errors if e.source == "halting.twin"]
    assert len(errors) == 1
    error = errors[0]
    assert error.distribution == "fake-two"
    assert "entry point 'halting.twin' is registered twice: by fake-one 0.3 and by fake-two 0.3" in error.error
    assert "<kind>.<plugin name>" in error.error
    assert "already registered" not in error.error and len(error.error) < 400
    assert registry.get("halting", "one").distribution == "fake-one"  # the first one still works
    assert "two" not in registry.plugins["halting"]
    assert registry.get("backbone", "lstm")
