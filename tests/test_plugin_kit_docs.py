"""docs/plugins.md stays true to the code: every hook, the API version, every contract."""

from __future__ import annotations

import inspect
import re
from pathlib import Path

from ponderlab.core import hookspecs
from ponderlab.testing import CONTRACTS

DOC = Path(__file__).resolve().parents[1] / "docs" / "plugins.md"


def hook_specs() -> dict[str, str]:
    """hook name -> `name(arg, ...)` for every pluggy hookspec in core/hookspecs.py."""
    specs = {}
    for name, function in inspect.getmembers(hookspecs, inspect.isfunction):
        if hasattr(function, f"{hookspecs.PROJECT_NAME}_spec"):
            arguments = ", ".join(inspect.signature(function).parameters)
            specs[name] = f"{name}({arguments})"
    return specs


def documented_hooks(text: str) -> dict[str, str]:
    headings = re.findall(r"^### `((\w+)\(.*?\))`$", text, flags=re.MULTILINE)
    return {name: signature for signature, name in headings}


def test_every_hook_is_documented_with_its_signature():
    specs = hook_specs()
    assert specs, "found no hookspecs"
    documented = documented_hooks(DOC.read_text())
    undocumented = sorted(set(specs) - set(documented))
    assert not undocumented, f"hooks missing from docs/plugins.md: {undocumented}"
    stale = sorted(set(documented) - set(specs))
    assert not stale, f"docs/plugins.md documents hooks that core/hookspecs.py lacks: {stale}"
    for name, signature in specs.items():
        assert documented[name] == signature, f"docs/plugins.md shows {documented[name]}, the hookspec is {signature}"


def test_documented_hook_api_version_matches_the_code():
    match = re.search(r"Hook API version: \*\*(\d+)\*\*", DOC.read_text())
    assert match, "docs/plugins.md must state 'Hook API version: **N**'"
    assert int(match.group(1)) == hookspecs.HOOK_API_VERSION


def test_every_contract_is_in_the_table():
    text = DOC.read_text()
    for kind, contracts in CONTRACTS.items():
        for contract in contracts:
            row = re.search(rf"^\| (all|{kind}) \| `{contract}` \|", text, flags=re.MULTILINE)
            assert row, f"docs/plugins.md has no table row for the {kind} contract {contract!r}"


def test_the_plugin_environment_variables_are_documented():
    text = DOC.read_text()
    source = inspect.getsource(__import__("ponderlab.core.registry", fromlist=["_selected"]))
    for variable in re.findall(r'"(PONDERLAB_[A-Z_]+)"', source):
        assert variable in text, f"{variable} (read in core/registry.py) is not in docs/plugins.md"
