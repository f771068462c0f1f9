"""Plugin discovery: entry points -> pluggy -> a registry of backbones, halting strategies, tasks.

Every entry point in the `ponderlab` group is loaded on its own: one that fails
to import (or whose hook raises) is recorded in `Registry.errors` and skipped.
Two plugins registering the same name for the same kind is a conflict that
names both sources; using that name is then an error.

Environment:
  PONDERLAB_PLUGINS          comma-separated allow-list (entry-point or distribution names)
  PONDERLAB_DISABLE_PLUGINS  comma-separated deny-list (same matching)
"""

from __future__ import annotations

import functools
import os
import sys
import typing
from dataclasses import dataclass, field
from importlib import metadata
from typing import Any

import pluggy

from . import hookspecs
from .config import BackboneConfig, HaltingConfig, TaskConfig
from .errors import PluginError, SpecError
from .interfaces import Backbone, HaltingStrategy, Task

KINDS = {
    "backbone": ("ponderlab_register_backbones", Backbone),
    "halting": ("ponderlab_register_halting", HaltingStrategy),
    "task": ("ponderlab_register_tasks", Task),
}

#: The config base class each kind's `config_class` must derive from.
CONFIG_BASES = {"backbone": BackboneConfig, "halting": HaltingConfig, "task": TaskConfig}


@dataclass(frozen=True)
class PluginInfo:
    """One registered plugin class and where it came from."""

    kind: str
    name: str
    cls: type
    source: str  # entry-point name (or the name a plugin object was registered under)
    distribution: str
    version: str

    def describe(self) -> str:
        return f"{self.source} ({self.distribution} {self.version})"


@dataclass(frozen=True)
class LoadError:
    """A plugin that could not be loaded."""

    source: str
    distribution: str
    error: str


@dataclass
class Registry:
    plugins: dict[str, dict[str, PluginInfo]] = field(
        default_factory=lambda: {kind: {} for kind in KINDS}
    )
    errors: list[LoadError] = field(default_factory=list)
    notes: list[str] = field(default_factory=list)  # what the PONDERLAB_* selection did
    conflicts: dict[tuple[str, str], list[PluginInfo]] = field(default_factory=dict)
    spec_model: Any = None  # the assembled spec model, built on first use by core.spec

    def names(self, kind: str) -> list[str]:
        return sorted(set(self.plugins[kind]) | {n for k, n in self.conflicts if k == kind})

    def get(self, kind: str, name: str) -> PluginInfo:
        if (kind, name) in self.conflicts:
            sources = " and ".join(p.describe() for p in self.conflicts[(kind, name)])
            raise PluginError(f"{kind} plugin name {name!r} is registered twice: by {sources}")
        try:
            return self.plugins[kind][name]
        except KeyError:
            available = ", ".join(self.names(kind)) or "none"
            raise SpecError(f"unknown {kind} {name!r} (available: {available}){self.why_missing()}") from None

    def why_missing(self) -> str:
        """Plugins that failed to load and what the PONDERLAB_* selection did, as a suffix."""
        parts = [f"plugin {e.source} ({e.distribution}) failed to load: {e.error}" for e in self.errors]
        parts += self.notes
        return "; " + "; ".join(parts) if parts else ""

    def all(self) -> list[PluginInfo]:
        return [info for kind in KINDS for info in self.plugins[kind].values()]

    # ------------------------------------------------------------------ loading
    def _add(self, kind: str, cls: type, source: str, distribution: str, version: str) -> None:
        base = KINDS[kind][1]
        if not (isinstance(cls, type) and issubclass(cls, base)):
            raise PluginError(f"{source}: registered {cls!r} as a {kind}, but it is not a {base.__name__}")
        config_base = CONFIG_BASES[kind]
        config_class = getattr(cls, "config_class", None)
        if not (isinstance(config_class, type) and issubclass(config_class, config_base)):
            raise PluginError(
                f"{source}: {cls.__qualname__}.config_class is {config_class!r}, "
                f"which is not a subclass of {config_base.__name__}"
            )
        name = plugin_name(cls)
        info = PluginInfo(kind, name, cls, source, distribution, version)
        if (kind, name) in self.conflicts:
            self.conflicts[(kind, name)].append(info)
            return
        existing = self.plugins[kind].get(name)
        if existing is not None and existing.cls is not cls:
            del self.plugins[kind][name]
            self.conflicts[(kind, name)] = [existing, info]
            return
        self.plugins[kind][name] = info


def plugin_name(cls: type) -> str:
    """The plugin's name: the Literal value of its config's `name` field."""
    config_class = getattr(cls, "config_class", None)
    if config_class is None:
        raise PluginError(f"{cls.__qualname__} has no config_class")
    annotation = config_class.model_fields["name"].annotation
    args = typing.get_args(annotation)
    if typing.get_origin(annotation) is not typing.Literal or len(args) != 1:
        raise PluginError(
            f"{config_class.__qualname__}.name must be annotated as Literal['<plugin name>']"
        )
    return str(args[0])


def _env_list(variable: str) -> set[str] | None:
    raw = os.environ.get(variable)
    if raw is None or not raw.strip():
        return None
    return {item.strip() for item in raw.split(",") if item.strip()}


def _selected(entry_point_name: str, distribution: str) -> bool:
    allow = _env_list("PONDERLAB_PLUGINS")
    deny = _env_list("PONDERLAB_DISABLE_PLUGINS") or set()
    keys = {entry_point_name, distribution}
    return not keys & deny and (allow is None or bool(keys & allow))


def selection_notes(found: list[tuple[metadata.EntryPoint, str, str]]) -> list[str]:
    """What PONDERLAB_PLUGINS / PONDERLAB_DISABLE_PLUGINS did: names that match nothing,
    and an allow-list that leaves no plugin."""
    known = {ep.name for ep, _, _ in found} | {dist for _, dist, _ in found}
    notes = []
    for variable in ("PONDERLAB_PLUGINS", "PONDERLAB_DISABLE_PLUGINS"):
        unknown = sorted((_env_list(variable) or set()) - known)
        if unknown:
            notes.append(
                f"{variable}: {', '.join(unknown)} is not the entry-point or distribution name of an "
                "installed plugin (e.g. backbone.lstm or ponderlab; see `ponderlab plugins`), so it selects nothing"
            )
    if found and not any(_selected(ep.name, dist) for ep, dist, _ in found):
        notes.append(f"PONDERLAB_PLUGINS / PONDERLAB_DISABLE_PLUGINS left none of {len(found)} installed plugins")
    return notes


def _entry_points() -> list[tuple[metadata.EntryPoint, str, str]]:
    found = {}
    for dist in metadata.distributions():
        dist_name = dist.metadata["Name"] or "unknown"
        for ep in dist.entry_points.select(group=hookspecs.PROJECT_NAME):
            # the same distribution visible twice on sys.path is listed once
            found.setdefault((dist_name, ep.name, ep.value), (ep, dist_name, dist.version))
    return sorted(found.values(), key=lambda item: (item[1] != "ponderlab", item[0].name, item[1]))


def build_registry() -> Registry:
    """Discover the `ponderlab` entry points into a registry."""
    manager = pluggy.PluginManager(hookspecs.PROJECT_NAME)
    manager.add_hookspecs(hookspecs)
    registry = Registry()
    sources: dict[str, tuple[str, str]] = {}  # entry-point name -> (distribution, version)

    found = _entry_points()
    registry.notes = selection_notes(found)
    for ep, dist_name, version in found:
        if not _selected(ep.name, dist_name):
            continue
        if ep.name in sources:  # pluggy would refuse it with a dump of every registered plugin
            first_dist, first_version = sources[ep.name]
            clash = (
                f"entry point {ep.name!r} is registered twice: by {first_dist} {first_version} "
                f"and by {dist_name} {version} ({ep.value}); {dist_name}'s is skipped. "
                "Entry-point names must be unique across installed packages: "
                "name them '<kind>.<plugin name>'"
            )
            registry.errors.append(LoadError(ep.name, dist_name, clash))
            continue
        try:
            module = ep.load()
            manager.register(module, name=ep.name)
        except Exception as exc:  # a broken plugin must not take the others down
            registry.errors.append(LoadError(ep.name, dist_name, f"{type(exc).__name__}: {exc}"))
            continue
        sources[ep.name] = (dist_name, version)

    for source, (dist_name, version) in sources.items():
        others = [p for p in manager.get_plugins() if manager.get_name(p) != source]
        for kind, (hook_name, _) in KINDS.items():
            caller = manager.subset_hook_caller(hook_name, remove_plugins=others)
            register = functools.partial(registry._add, kind, source=source, distribution=dist_name, version=version)
            try:
                caller(register=register)  # register(cls)
            except Exception as exc:
                registry.errors.append(LoadError(source, dist_name, f"{type(exc).__name__}: {exc}"))
    return registry


_REGISTRY: Registry | None = None


def get_registry() -> Registry:
    """The process-wide registry (built on first use; Ray workers build their own)."""
    global _REGISTRY
    if _REGISTRY is None:
        _REGISTRY = build_registry()
        for note in _REGISTRY.notes:
            print(f"warning: {note}", file=sys.stderr)
    return _REGISTRY


def reset_registry() -> None:
    """Forget the cached registry (after installing a plugin, or changing the env lists)."""
    global _REGISTRY
    _REGISTRY = None
