"""CLI: plugin listing, and the bundled quickstart reaching its target as `ponderlab run` with no arguments."""

from __future__ import annotations

import json
import subprocess
import sys

import pytest


def cli(*args, cwd=None):
    return subprocess.run([sys.executable, "-m", "ponderlab.core.cli", *args], cwd=cwd,
                          capture_output=True, text=True)


def test_plugins_json_lists_every_kind_with_provenance():
    result = cli("plugins", "--json")
    assert result.returncode == 0, result.stderr
    rows = json.loads(result.stdout)
    plugins = [r for r in rows if r["kind"] in ("backbone", "halting", "task")]
    for row in plugins:
        assert {"kind", "name", "distribution", "version"} <= set(row)
    found = {(r["kind"], r["name"]): r for r in plugins}
    for key in [("backbone", "lstm"), ("backbone", "transformer"), ("halting", "none"),
                ("halting", "constant"), ("halting", "graves"), ("task", "binary_copy"),
                ("task", "binary_reverse"), ("task", "binary_addition")]:
        assert key in found, key
        assert found[key]["distribution"] == "ponderlab"
        assert found[key]["version"] == "0.1.0"


def test_plugins_text_groups_by_kind():
    result = cli("plugins")
    assert result.returncode == 0
    lines = result.stdout.splitlines()
    assert lines[0] == "backbone:"
    assert any(line.strip().startswith("graves") for line in lines)


def test_unknown_command_exits_2():
    assert cli("frobnicate").returncode == 2


@pytest.mark.slow
def test_quickstart_with_no_arguments_reaches_its_target(tmp_path):
    result = cli("run", "--no-progress", cwd=tmp_path)
    assert result.returncode == 0, result.stderr
    run_dirs = list((tmp_path / "runs").iterdir())
    assert len(run_dirs) == 1 and run_dirs[0].name.startswith("quickstart-")
    results = json.loads((run_dirs[0] / "results.json").read_text())
    assert results["test/exact_match"] >= 0.99
    # the summary table is printed
    assert "exact match" in result.stdout and "mean hops" in result.stdout and "time" in result.stdout
    assert f"{results['test/exact_match']:.4f}" in result.stdout
