"""Every code block of docs/plugins.md and of the README's plugin section runs as written.

Like the README's API snippet (tests/test_core_api.py), the blocks are taken from the
files themselves. docs/plugins.md's blocks run in document order in one work folder:
bash blocks with bash, python blocks with python, toml blocks are parsed and their
entry-point names checked. The adaptations: `pip install` without `--target`
installs into the work folder's `site/` (on PYTHONPATH for every block) instead of the
test environment, as tests/test_plugin_kit_install.py does; `pytest` is the test
interpreter's (a venv that borrows pytest from system site-packages has no script). The README's two blocks
become a package (its python block the module, its toml block the entry point) that is
installed the same way and must pass every contract of `ponderlab.testing`.
"""

from __future__ import annotations

import os
import re
import shutil
import subprocess
import sys
import textwrap
from pathlib import Path

import pytest
import tomllib

ROOT = Path(__file__).resolve().parents[1]
DOC = ROOT / "docs" / "plugins.md"
README = ROOT / "README.md"
EXAMPLE = ROOT / "examples" / "plugins" / "ponderlab-example"
BLOCK = re.compile(r"^( *)```(\w*)\n(.*?)^\1```", re.S | re.M)
RUNNABLE = {"python", "bash", "toml"}
ENTRY_POINT_NAME = re.compile(r"^(backbone|halting|task)\.[a-z][a-z0-9_]*$")

#: `pip install` into $SITE unless the command names its own --target (see the module docstring).
PIP_INTO_SITE = """
pip() {
  if [ "$1" = install ] && [[ " $* " != *" --target "* ]]; then
    shift
    local args=()
    for arg in "$@"; do [ "$arg" = -e ] || args+=("$arg"); done
    "$PYTHON" -m pip install --no-deps --no-build-isolation --target "$SITE" "${args[@]}" \\
      --no-index --quiet --disable-pip-version-check
  else
    "$PYTHON" -m pip "$@" --no-index --quiet --disable-pip-version-check
  fi
}
pytest() { "$PYTHON" -m pytest "$@"; }
set -euo pipefail
"""


def code_blocks(text: str) -> list[tuple[str, str]]:
    """(language, dedented code) of every fenced block, in order."""
    return [(lang, textwrap.dedent(indent_fix(indent, code))) for indent, lang, code in BLOCK.findall(text)]


def indent_fix(indent: str, code: str) -> str:
    return "\n".join(line[len(indent):] if line.startswith(indent) else line for line in code.splitlines()) + "\n"


def plugin_section() -> str:
    match = re.search(r"<!-- plugin-section -->(.*?)<!-- /plugin-section -->", README.read_text(), re.S)
    assert match, "README lost its plugin-section markers"
    return match.group(1)


def entry_points(toml_text: str) -> dict[str, str]:
    return tomllib.loads(toml_text)["project"]["entry-points"]["ponderlab"]


def environment(site: Path) -> dict[str, str]:
    env = {k: v for k, v in os.environ.items() if k not in ("PONDERLAB_PLUGINS", "PONDERLAB_DISABLE_PLUGINS")}
    env["PYTHONPATH"] = os.pathsep.join(filter(None, [str(site), env.get("PYTHONPATH")]))
    env["PATH"] = os.pathsep.join([str(Path(sys.executable).parent), env.get("PATH", "")])
    env["OMP_NUM_THREADS"] = "1"
    env["PYTHON"] = sys.executable
    env["SITE"] = str(site)
    return env


def run_block(language: str, code: str, work: Path, env: dict[str, str], label: str) -> None:
    if language == "toml":
        for name in entry_points(code):
            assert ENTRY_POINT_NAME.match(name), f"{label}: entry point {name!r} is not '<kind>.<plugin name>'"
        return
    command = ["bash", "-c", PIP_INTO_SITE + code] if language == "bash" else [sys.executable, "-c", code]
    done = subprocess.run(command, cwd=work, env=env, capture_output=True, text=True, timeout=900)
    assert done.returncode == 0, f"{label} failed:\n{code}\n--- stdout\n{done.stdout[-4000:]}\n--- stderr\n" \
                                 f"{done.stderr[-4000:]}"


@pytest.mark.parametrize("source", ["docs/plugins.md", "README plugin section"])
def test_every_block_is_one_the_runner_runs(source):
    text = DOC.read_text() if source == "docs/plugins.md" else plugin_section()
    blocks = code_blocks(text)
    assert blocks, f"no code blocks in {source}"
    languages = {language for language, _ in blocks}
    assert languages <= RUNNABLE, f"{source} has blocks nobody runs: {sorted(languages - RUNNABLE)}"


def test_the_readme_names_its_entry_point_by_kind_and_plugin():
    blocks = dict(code_blocks(plugin_section()))
    (name, module), = entry_points(blocks["toml"]).items()
    assert name == "halting.three_hops" and module == "my_package.three_hops"
    assert 'Literal["three_hops"]' in blocks["python"]


@pytest.mark.slow
def test_every_block_of_docs_plugins_md_runs(tmp_path):
    ignore = shutil.ignore_patterns("build", "*.egg-info", "__pycache__", ".pytest_cache")
    shutil.copytree(EXAMPLE, tmp_path / "examples" / "plugins" / "ponderlab-example", ignore=ignore)
    env = environment(tmp_path / "site")
    for index, (language, code) in enumerate(code_blocks(DOC.read_text())):
        run_block(language, code, tmp_path, env, f"docs/plugins.md block {index} ({language})")
    assert (tmp_path / "ponderlab-my-gru" / "spec.yaml").exists()  # the short way's package


@pytest.mark.slow
def test_the_readme_plugin_section_is_an_installable_conforming_package(tmp_path):
    blocks = dict(code_blocks(plugin_section()))
    package = tmp_path / "my-package"
    (package / "my_package").mkdir(parents=True)
    (package / "my_package" / "__init__.py").write_text("")
    (package / "my_package" / "three_hops.py").write_text(blocks["python"])
    (package / "pyproject.toml").write_text(
        '[project]\nname = "my-package"\nversion = "0.1.0"\n\n[tool.setuptools]\npackages = ["my_package"]\n\n'
        + blocks["toml"]
    )
    env = environment(tmp_path / "site")
    run_block("bash", f"pip install {package}", tmp_path, env, "installing the README's package")
    check = "\n".join([
        "from ponderlab.core.registry import get_registry",
        "from ponderlab.testing import check_plugin",
        "from my_package.three_hops import ThreeHops",
        "info = get_registry().get('halting', 'three_hops')",
        "assert info.cls is ThreeHops and info.source == 'halting.three_hops', info",
        "check_plugin(ThreeHops)  # every contract, the entry point included",
    ])
    run_block("python", check, tmp_path, env, "the README's plugin through ponderlab.testing")
