"""`ponderlab new-plugin {backbone,halting,task} NAME [--dir DIR]`: write a ready plugin package.

The package (DIR/ponderlab-NAME/) holds a pyproject with the `ponderlab` entry
point, the plugin module, a README, a demo spec and tests built on
`ponderlab.testing`; it installs with pip and its tests pass as generated.
Templates live in ponderlab/core/templates/ (string.Template, `$name` fields).
"""

from __future__ import annotations

import argparse
import keyword
import re
import sys
from dataclasses import dataclass
from importlib import metadata, resources
from pathlib import Path
from string import Template

from .errors import PonderlabError

KINDS = ("backbone", "halting", "task")
NAME_PATTERN = re.compile(r"^[a-z][a-z0-9_]{0,39}$")
SECTIONS = {"backbone": "backbone", "halting": "halting", "task": "task"}

#: What the demo spec uses for the parts the new plugin does not provide (built-ins).
DEMO_SECTIONS = {
    "task": "task:\n  name: binary_reverse\n  length: 10\n  train_size: 500\n  validation_size: 50\n  test_size: 100",
    "backbone": "backbone:\n  name: lstm\n  d_model: 32\n  n_layers: 1",
    "halting": "halting:\n  name: graves\n  scope: layer\n  max_steps: 3",
}
#: Small options for the generated conformance tests.
TEST_CONFIGS = {
    "backbone": '{"d_model": 16, "n_layers": 2}',
    "halting": '{"max_steps": 3}',
    "task": '{"train_size": 64, "validation_size": 16, "test_size": 16}',
}
CLASS_SUFFIX = {"backbone": "Backbone", "halting": "Halting", "task": "Task"}
CONTRACT_CLASS = {"backbone": "BackboneContract", "halting": "HaltingContract", "task": "TaskContract"}


class ScaffoldError(PonderlabError):
    """Bad plugin name or target directory."""

    exit_code = 2


@dataclass(frozen=True)
class PluginNames:
    """Every name the generated package uses, derived from the kind and the plugin name."""

    kind: str
    name: str

    @property
    def dist_name(self) -> str:
        return "ponderlab-" + self.name.replace("_", "-")

    @property
    def module_name(self) -> str:
        return "ponderlab_" + self.name

    @property
    def camel(self) -> str:
        return "".join(part.capitalize() for part in self.name.split("_") if part)

    @property
    def plugin_class(self) -> str:
        return self.camel + CLASS_SUFFIX[self.kind]

    @property
    def entry_point(self) -> str:
        return f"{self.kind}.{self.name}"

    def fields(self) -> dict[str, str]:
        from .hookspecs import HOOK_API_VERSION

        sections = {f"{k}_section": v for k, v in DEMO_SECTIONS.items()}
        sections[f"{self.kind}_section"] = f"{SECTIONS[self.kind]}:\n  name: {self.name}"
        return {
            "kind": self.kind,
            "name": self.name,
            "dist_name": self.dist_name,
            "module_name": self.module_name,
            "plugin_class": self.plugin_class,
            "config_class": self.camel + "Config",
            "block_class": self.camel + "Block",
            "entry_point": self.entry_point,
            "section": SECTIONS[self.kind],
            "contract_class": CONTRACT_CLASS[self.kind],
            "test_config": TEST_CONFIGS[self.kind],
            "hook_api_version": str(HOOK_API_VERSION),
            "ponderlab_requirement": ponderlab_requirement(),
            **sections,
        }


def ponderlab_requirement() -> str:
    """`ponderlab>=X.Y,<X.(Y+1)`: hook API changes come with a minor release before 1.0."""
    try:
        version = metadata.version("ponderlab")
    except metadata.PackageNotFoundError:
        return "ponderlab"
    parts = [int(p) if p.isdigit() else 0 for p in version.split(".")[:2]] + [0, 0]
    major, minor = parts[0], parts[1]
    upper = f"{major}.{minor + 1}" if major == 0 else f"{major + 1}"
    return f"ponderlab>={major}.{minor},<{upper}"


def check_name(kind: str, name: str) -> None:
    if kind not in KINDS:
        raise ScaffoldError(f"unknown plugin kind {kind!r} (choose from {', '.join(KINDS)})")
    if not NAME_PATTERN.match(name) or keyword.iskeyword(name):
        raise ScaffoldError(
            f"plugin name {name!r} must be lower-case letters, digits and underscores, "
            "start with a letter, at most 40 characters (e.g. my_gru)"
        )


def check_not_registered(kind: str, name: str) -> None:
    """Refuse a name an installed plugin already uses: duplicates are a conflict."""
    from .registry import get_registry

    registry = get_registry()
    info = registry.plugins[kind].get(name)
    if info is not None:
        raise ScaffoldError(f"a {kind} named {name!r} is already installed ({info.describe()}); pick another name")


def _template(relative: str) -> Template:
    return Template((resources.files("ponderlab.core") / "templates" / relative).read_text())


def render_package(kind: str, name: str) -> dict[str, str]:
    """The generated files: path inside the package folder -> text."""
    check_name(kind, name)
    names = PluginNames(kind, name)
    fields = names.fields()
    layout = {
        "pyproject.toml": "package/pyproject.toml.tmpl",
        "README.md": "package/README.md.tmpl",
        "spec.yaml": "package/spec.yaml.tmpl",
        f"{names.module_name}/__init__.py": f"{kind}/plugin.py.tmpl",
        f"tests/test_{name}.py": "package/test_plugin.py.tmpl",
    }
    return {path: _template(source).substitute(fields) for path, source in layout.items()}


def write_package(kind: str, name: str, directory: str | Path = ".") -> Path:
    """Write ponderlab-NAME/ under `directory`; refuse to overwrite a non-empty folder."""
    files = render_package(kind, name)
    root = Path(directory) / PluginNames(kind, name).dist_name
    if root.exists() and any(root.iterdir()):
        raise ScaffoldError(f"{root} already exists and is not empty")
    for relative, text in files.items():
        path = root / relative
        path.parent.mkdir(parents=True, exist_ok=True)
        path.write_text(text)
    return root


# --------------------------------------------------------------------------- CLI


def add_arguments(parser: argparse.ArgumentParser) -> None:
    parser.add_argument("kind", choices=KINDS, help="what the plugin provides")
    parser.add_argument("name", help="plugin name used in specs, e.g. my_gru")
    parser.add_argument(
        "--dir", default=".", help="folder in which ponderlab-NAME/ is created (default: current folder)"
    )


def main(args: argparse.Namespace) -> int:
    check_name(args.kind, args.name)
    check_not_registered(args.kind, args.name)
    root = write_package(args.kind, args.name, args.dir)
    names = PluginNames(args.kind, args.name)
    print(f"wrote {root}/ ({names.dist_name}: {args.kind} {args.name!r}, class {names.plugin_class})")
    print("next:")
    print(f"  cd {root}")
    print("  pip install -e .        # registers the entry point")
    print("  pytest                  # conformance tests from ponderlab.testing")
    print("  ponderlab run spec.yaml")
    sys.stdout.flush()
    return 0
