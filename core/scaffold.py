"""`ponderlab new-plugin KIND NAME [KIND NAME ...] [--package PKG] [--dir DIR]`: write a plugin package.

One plugin: DIR/ponderlab-NAME/ with the module ponderlab_NAME/__init__.py. Several
plugins (any kinds): DIR/ponderlab-PKG/ with one module ponderlab_PKG/NAME.py and one
entry point per plugin. Either way the package holds a pyproject with the `ponderlab`
entry points, a README, a demo spec using its plugins and one test file per plugin
built on `ponderlab.testing`; it installs with pip and its tests pass as generated.
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

#: What the demo spec uses for the parts the new plugin does not provide (built-ins).
DEMO_SECTIONS = {
    "task": "task:\n  name: binary_reverse\n  length: 10\n  train_size: 500\n  validation_size: 50\n  test_size: 100",
    "backbone": "backbone:\n  name: lstm\n  d_model: 32\n  n_layers: 1",
    "halting": "halting:\n  name: graves\n  scope: layer\n  max_hops: 3",
}
#: Small options for the generated conformance tests.
TEST_CONFIGS = {
    "backbone": '{"d_model": 16, "n_layers": 2}',
    "halting": '{"max_hops": 3}',
    "task": '{"train_size": 64, "validation_size": 16, "test_size": 16}',
}


class ScaffoldError(PonderlabError):
    """Bad plugin name or target directory."""

    exit_code = 2


@dataclass(frozen=True)
class PluginNames:
    """Every name the generated package uses for one plugin.

    `package` is the package's name when it holds several plugins (None: named after the plugin).
    """

    kind: str
    name: str
    package: str | None = None

    @property
    def dist_name(self) -> str:
        return "ponderlab-" + (self.package or self.name).replace("_", "-")

    @property
    def package_module(self) -> str:
        return "ponderlab_" + (self.package or self.name)

    @property
    def module_name(self) -> str:
        return self.package_module if self.package is None else f"{self.package_module}.{self.name}"

    @property
    def module_path(self) -> str:
        return f"{self.package_module}/{'__init__' if self.package is None else self.name}.py"

    @property
    def camel(self) -> str:
        return "".join(part.capitalize() for part in self.name.split("_") if part)

    @property
    def plugin_class(self) -> str:
        return self.camel + self.kind.capitalize()  # e.g. MyGruBackbone

    @property
    def entry_point(self) -> str:
        return f"{self.kind}.{self.name}"

    def fields(self) -> dict[str, str]:
        from .hookspecs import HOOK_API_VERSION

        return {
            "kind": self.kind,
            "name": self.name,
            "dist_name": self.dist_name,
            "module_name": self.module_name,
            "plugin_class": self.plugin_class,
            "config_class": self.camel + "Config",
            "block_class": self.camel + "Block",
            "entry_point": self.entry_point,
            "contract_class": self.kind.capitalize() + "Contract",  # from ponderlab.testing
            "test_config": TEST_CONFIGS[self.kind],
            "hook_api_version": str(HOOK_API_VERSION),
            "ponderlab_requirement": ponderlab_requirement(),
        }


def package_fields(plugins: list[PluginNames]) -> dict[str, str]:
    """Fields of the package-level files (pyproject, README, demo spec) for its plugins."""
    first = plugins[0]
    sections = {f"{k}_section": v for k, v in DEMO_SECTIONS.items()}
    for names in reversed(plugins):  # the demo uses the package's first plugin of each kind
        sections[f"{names.kind}_section"] = f"{names.kind}:\n  name: {names.name}"
    described = [f"- `{n.name}`: a {n.kind} (`{n.module_name}.{n.plugin_class}`, entry point "
                 f"`{n.entry_point}`, tests in `tests/test_{n.name}.py`)" for n in plugins]
    return {
        **first.fields(),
        **sections,
        "package_module": first.package_module,
        "entry_points": "\n".join(f'"{n.entry_point}" = "{n.module_name}"' for n in plugins),
        "plugin_list": "\n".join(described),
        "yaml_sections": "\n".join(f"{n.kind}:\n  name: {n.name}" for n in plugins),
        "command": " ".join(f"{n.kind} {n.name}" for n in plugins)
        + (f" --package {first.package}" if first.package else ""),
    }


def ponderlab_requirement() -> str:
    """`ponderlab>=X.Y,<X.(Y+1)`: hook API changes come with a minor release before 1.0."""
    try:
        version = metadata.version("ponderlab")
    except metadata.PackageNotFoundError:
        return "ponderlab"
    major, minor, *_ = [int(p) if p.isdigit() else 0 for p in version.split(".")[:2]] + [0, 0]
    upper = f"{major}.{minor + 1}" if major == 0 else f"{major + 1}"
    return f"ponderlab>={major}.{minor},<{upper}"


def _check_identifier(what: str, name: str) -> None:
    if not NAME_PATTERN.match(name) or keyword.iskeyword(name):
        raise ScaffoldError(
            f"{what} name {name!r} must be lower-case letters, digits and underscores, "
            "start with a letter, at most 40 characters (e.g. my_gru)"
        )


def plan(plugins: list[tuple[str, str]], package: str | None = None) -> list[PluginNames]:
    """Names for a package of `(kind, name)` plugins; several plugins need a package name."""
    if not plugins:
        raise ScaffoldError("give at least one KIND NAME pair")
    for kind, name in plugins:
        if kind not in KINDS:
            raise ScaffoldError(f"unknown plugin kind {kind!r} (choose from {', '.join(KINDS)})")
        _check_identifier("plugin", name)
    if len(plugins) == 1 and package is None:
        return [PluginNames(*plugins[0])]
    if package is None:
        raise ScaffoldError("several plugins go into one package: name it with --package (e.g. my_plugins)")
    _check_identifier("package", package)
    names = [name for _, name in plugins]
    repeated = sorted({name for name in names if names.count(name) > 1})
    if repeated:
        raise ScaffoldError(f"each plugin of a package needs its own name (repeated: {', '.join(repeated)})")
    return [PluginNames(kind, name, package) for kind, name in plugins]


def check_not_registered(kind: str, name: str) -> None:
    """Refuse a name an installed plugin already uses: duplicates are a conflict."""
    from .registry import get_registry

    info = get_registry().plugins[kind].get(name)
    if info is not None:
        raise ScaffoldError(f"a {kind} named {name!r} is already installed ({info.describe()}); pick another name")


def _template(relative: str) -> Template:
    return Template((resources.files("ponderlab.core") / "templates" / relative).read_text())


def render_plugins(plugins: list[PluginNames]) -> dict[str, str]:
    """The generated files of a package holding `plugins` (see `plan`)."""
    shared = package_fields(plugins)
    files = {name: _template(f"package/{name}.tmpl").substitute(shared)
             for name in ("pyproject.toml", "README.md", "spec.yaml")}
    if plugins[0].package is not None:
        files[f"{plugins[0].package_module}/__init__.py"] = _template("package/init.py.tmpl").substitute(shared)
    for names in plugins:
        fields = names.fields()
        files[names.module_path] = _template(f"{names.kind}/plugin.py.tmpl").substitute(fields)
        files[f"tests/test_{names.name}.py"] = _template("package/test_plugin.py.tmpl").substitute(fields)
    return files


def write_plugins(plugins: list[PluginNames], directory: str | Path = ".") -> Path:
    """Write the package of `plugins` under `directory`; refuse to overwrite a non-empty folder."""
    files = render_plugins(plugins)
    root = Path(directory) / plugins[0].dist_name
    if root.exists() and any(root.iterdir()):
        raise ScaffoldError(f"{root} already exists and is not empty")
    for relative, text in files.items():
        path = root / relative
        path.parent.mkdir(parents=True, exist_ok=True)
        path.write_text(text)
    return root


# --------------------------------------------------------------------------- CLI


def add_arguments(parser: argparse.ArgumentParser) -> None:
    parser.add_argument(
        "plugins", nargs="+", metavar="KIND NAME",
        help=f"pairs of a kind ({', '.join(KINDS)}) and a plugin name used in specs, e.g. backbone my_gru",
    )
    parser.add_argument(
        "--package", default=None,
        help="package name (ponderlab-PKG/, module ponderlab_PKG); needed for several plugins",
    )
    parser.add_argument(
        "--dir", default=".", help="folder in which the package folder is created (default: current folder)"
    )


def parse_pairs(words: list[str]) -> list[tuple[str, str]]:
    """["backbone", "my_gru", "task", "my_sort"] -> [("backbone", "my_gru"), ("task", "my_sort")]."""
    if len(words) % 2:
        raise ScaffoldError(f"expected KIND NAME pairs, got {' '.join(words)!r} (an odd number of words)")
    return list(zip(words[::2], words[1::2], strict=True))


def main(args: argparse.Namespace) -> int:
    plugins = plan(parse_pairs(args.plugins), args.package)
    for names in plugins:
        check_not_registered(names.kind, names.name)
    root = write_plugins(plugins, args.dir)
    listed = ", ".join(f"{n.kind} {n.name!r} (class {n.plugin_class})" for n in plugins)
    print(f"wrote {root}/ ({plugins[0].dist_name}: {listed})")
    print("next:")
    print(f"  cd {root}")
    print("  pip install -e .        # registers the entry points")
    print("  pytest                  # conformance tests from ponderlab.testing")
    print("  ponderlab run spec.yaml")
    sys.stdout.flush()
    return 0
