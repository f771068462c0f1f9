"""Experiment specs: YAML loading with line numbers, dotted overrides, validation.

The spec model is assembled from the registered plugins: `task`, `backbone` and
`halting` are unions of every plugin's config model, discriminated by `name`,
so a third-party plugin's options are validated exactly like built-in ones.
"""

from __future__ import annotations

import copy
from importlib import resources
from pathlib import Path
from typing import Annotated, Any, Union

import yaml
from pydantic import BaseModel, Field, ValidationError, create_model

from .config import DistributedConfig, StrictModel, TrainingConfig
from .curriculum import check_curriculum
from .errors import PluginError, SpecError
from .registry import Registry, get_registry

#: The spec sections that each name a plugin; a section is named after its plugin kind.
PLUGIN_SECTIONS = ("task", "backbone", "halting")
DEFAULT_HALTING = {"name": "none"}


class SpecBase(StrictModel):
    """Fields every experiment spec has besides the plugin sections."""

    seed: int = Field(
        0, ge=0, lt=2**32, description="Seed for data generation, initialisation and data order."
    )
    name: str | None = Field(None, description="Run name (used for the default output dir).")
    output_dir: str | None = Field(None, description="Run directory (default runs/<name>).")


def _union(configs: list[type[BaseModel]]) -> Any:
    if len(configs) == 1:
        return configs[0]
    return Annotated[Union[tuple(configs)], Field(discriminator="name")]  # noqa: UP007


def spec_model(registry: Registry | None = None) -> type[SpecBase]:
    """The pydantic model of an experiment spec with every registered plugin's options
    (built once per registry)."""
    registry = registry or get_registry()
    if registry.spec_model is not None:
        return registry.spec_model
    fields: dict[str, Any] = {}
    for kind in PLUGIN_SECTIONS:
        configs = [registry.plugins[kind][n].cls.config_class for n in sorted(registry.plugins[kind])]
        if not configs:
            raise PluginError(
                f"no {kind} plugins are installed (check `ponderlab plugins`){registry.why_missing()}"
            )
        if kind == "halting" and "none" in registry.plugins[kind]:  # no halting section: `none`
            fields[kind] = (_union(configs), Field(DEFAULT_HALTING, validate_default=True))
        else:
            fields[kind] = (_union(configs), ...)
    fields["training"] = (TrainingConfig, Field(default_factory=TrainingConfig))
    fields["distributed"] = (DistributedConfig, Field(default_factory=DistributedConfig))
    registry.spec_model = create_model("ExperimentSpec", __base__=SpecBase, **fields)
    return registry.spec_model


# --------------------------------------------------------------------------- YAML


class Source:
    """Where spec values came from: a YAML file with line numbers, or overrides."""

    def __init__(self, label: str, lines: dict[tuple, int] | None = None):
        self.label = label
        self.lines = lines or {}
        self.overrides: dict[tuple, str] = {}

    def where(self, path: tuple) -> str | None:
        for end in range(len(path), 0, -1):
            if path[:end] in self.overrides:
                return f"override {self.overrides[path[:end]]!r}"
            if path[:end] in self.lines:
                return f"{self.label}:{self.lines[path[:end]]}"
        return self.label if self.label else None


#: The most values (mappings, lists and scalars, aliases counted at every use) a spec may hold.
MAX_SPEC_VALUES = 100_000


def _expanded_size(node: yaml.Node, sizes: dict[int, int]) -> int:
    """Values in `node` once YAML aliases are expanded; each distinct node is counted once."""
    if id(node) not in sizes:
        # a node that refers to itself counts once (the loader rejects it later)
        sizes[id(node)] = 1
        if isinstance(node, yaml.MappingNode):
            children = [child for pair in node.value for child in pair]
        else:
            children = node.value if isinstance(node, yaml.SequenceNode) else []
        sizes[id(node)] = 1 + sum(_expanded_size(child, sizes) for child in children)
    return sizes[id(node)]


def _line_map(node: yaml.Node, source: str, prefix: tuple = (), seen_nodes: set | None = None) -> dict[tuple, int]:
    """Key path -> line; a node reached again through an alias is not walked twice."""
    seen_nodes = set() if seen_nodes is None else seen_nodes
    if id(node) in seen_nodes:
        return {}
    seen_nodes.add(id(node))
    # (key or index, the node whose line is reported, the value node)
    if isinstance(node, yaml.MappingNode):
        entries = [(key_node.value, key_node, value_node) for key_node, value_node in node.value]
    elif isinstance(node, yaml.SequenceNode):
        entries = [(index, item, item) for index, item in enumerate(node.value)]
    else:
        entries = []
    lines: dict[tuple, int] = {}
    for key, marked, value_node in entries:
        path = prefix + (key,)
        line = marked.start_mark.line + 1
        if path in lines:
            raise SpecError("duplicate key", path=dotted_key(path), where=f"{source}:{line}")
        lines[path] = line
        lines.update(_line_map(value_node, source, path, seen_nodes))
    return lines


def read_yaml(text: str, label: str) -> tuple[dict, Source]:
    """Parse a YAML mapping, keeping a map from key paths to line numbers."""
    try:
        node = yaml.compose(text, Loader=yaml.SafeLoader)
        if node is not None and _expanded_size(node, {}) > MAX_SPEC_VALUES:
            raise SpecError(
                f"the spec expands to more than {MAX_SPEC_VALUES:,} values "
                "(nested YAML aliases?); refusing to load it",
                where=label,
            )
        data = yaml.safe_load(text)
    except yaml.YAMLError as exc:
        mark = getattr(exc, "problem_mark", None)
        where = f"{label}:{mark.line + 1}" if mark is not None else label
        problem = getattr(exc, "problem", None) or str(exc)
        raise SpecError(f"malformed YAML: {problem}", where=where) from None
    if data is None:
        data = {}
    if not isinstance(data, dict):
        raise SpecError("a spec must be a YAML mapping", where=f"{label}:1")
    lines = _line_map(node, label) if node is not None else {}
    return data, Source(label, lines)


def bundled_spec_path(name: str = "quickstart") -> Path:
    return Path(str(resources.files("ponderlab.core") / "specs" / f"{name}.yaml"))


def read_spec_file(path: str | Path | None) -> tuple[dict, Source]:
    path = bundled_spec_path() if path is None else Path(path)
    try:
        text = path.read_text()
    except OSError as exc:
        raise SpecError(f"cannot read spec: {exc.strerror}", where=str(path)) from None
    return read_yaml(text, str(path))


# --------------------------------------------------------------------------- overrides


def dotted_key(path: tuple) -> str:
    return ".".join(str(p) for p in path)


def dotted_items(section: dict, prefix: str = "") -> dict[str, Any]:
    """A nested spec as {"dotted.key": value} over its leaves (lists are values; empty sections vanish)."""
    items: dict[str, Any] = {}
    for key, value in section.items():
        if isinstance(value, dict):
            items.update(dotted_items(value, f"{prefix}{key}."))
        else:
            items[f"{prefix}{key}"] = value
    return items


def parse_override(raw: str) -> tuple[tuple[str, ...], Any]:
    """`a.b.c=value` -> (("a", "b", "c"), parsed YAML value)."""
    key, sep, value_text = raw.partition("=")
    key = key.strip()
    if not sep or not key or any(not part for part in key.split(".")):
        raise SpecError("expected dotted.key=value", where=f"override {raw!r}")
    try:
        value = yaml.safe_load(value_text) if value_text.strip() else None
    except yaml.YAMLError:
        value = value_text
    return tuple(key.split(".")), value


def is_plugin_switch(path: tuple) -> bool:
    """True for `<plugin section>.name`: setting it to a new plugin starts the section afresh."""
    return len(path) == 2 and path[0] in PLUGIN_SECTIONS and path[1] == "name"


def parent_mapping(data: dict, path: tuple, where: str | None = None) -> dict:
    """The mapping that holds `path[-1]`, creating missing mappings on the way."""
    node = data
    for depth, part in enumerate(path[:-1]):
        child = node.get(part)
        if child is None:
            child = node[part] = {}
        if not isinstance(child, dict):
            raise SpecError(
                f"cannot set {dotted_key(path)}: {dotted_key(path[: depth + 1])} is not a mapping", where=where
            )
        node = child
    return node


def apply_overrides(data: dict, overrides: list[str], source: Source | None = None) -> dict:
    """Apply `dotted.key=value` overrides; a new plugin `name` resets that section first."""
    data = copy.deepcopy(data)
    parsed = [(raw, *parse_override(raw)) for raw in overrides]
    # A plugin switch (`halting.name=none`) starts its section afresh, before other keys apply.
    parsed.sort(key=lambda item: not is_plugin_switch(item[1]))
    for raw, path, value in parsed:
        node = parent_mapping(data, path, where=f"override {raw!r}")
        if is_plugin_switch(path) and node.get("name") != value:
            node.clear()
        node[path[-1]] = value
        if source is not None:
            source.overrides[path] = raw
    return data


# --------------------------------------------------------------------------- validation


def validation_message(exc: ValidationError) -> tuple[tuple, str]:
    """The first error of a pydantic ValidationError: (its location, one readable message).

    An unknown key reads "unknown key"; other messages name the offending input; the
    number of further errors is appended.
    """
    errors = exc.errors()
    first = errors[0]
    if first["type"] == "extra_forbidden":
        message = "unknown key"
    else:
        message = first["msg"].removeprefix("Value error, ")
        if first["type"] != "missing" and "input" in first:
            message = f"{message} (got {first['input']!r})"
    more = len(errors) - 1
    if more:
        message += f" (and {more} more error{'s' if more > 1 else ''})"
    return tuple(first["loc"]), message


def _strip_tags(loc: tuple, data: Any) -> tuple:
    """Remove pydantic's union-tag entries from an error location, following the data."""
    path: list = []
    node = data
    tagged = None  # the node whose tag was removed (an option may share the plugin's name)
    for index, part in enumerate(loc):
        if (isinstance(node, dict) and node is not tagged and node.get("name") == part
                and (part not in node or index + 1 < len(loc))):
            tagged = node
            continue  # discriminator tag inserted by pydantic
        path.append(part)
        node = node.get(part) if isinstance(node, dict) else (
            node[part] if isinstance(node, list) and isinstance(part, int) and part < len(node) else None
        )
    return tuple(path)


def _check_plugin_names(data: dict, registry: Registry, source: Source) -> None:
    for kind in PLUGIN_SECTIONS:
        if kind not in data:
            continue
        value = data[kind]
        if not isinstance(value, dict):
            problem = f"expected a mapping with a `name` key, got {type(value).__name__}"
        elif "name" not in value:
            problem = f"missing `name` (available {kind}s: {', '.join(registry.names(kind))})"
        else:
            try:
                registry.get(kind, str(value["name"]))
            except (SpecError, PluginError) as exc:
                where = source.where((kind, "name"))
                raise SpecError(str(exc), path=f"{kind}.name", where=where) from None
            continue
        raise SpecError(problem, path=kind, where=source.where((kind,)))


def _cross_field_error(message: str, path: tuple, data: dict, source: Source) -> tuple[str, tuple, str | None]:
    """A plugin validator's ValueError: drop pydantic's prefix, name the option the message
    starts with, and point at the overrides of that section when some were given."""
    message = message.removeprefix("Value error, ")
    section = data.get(path[0]) if isinstance(data.get(path[0]), dict) else {}
    option = message.split(" ", 1)[0].strip("`'\":,")
    if option in section and option != "name":
        path = (*path, option)
    where = source.where(path)
    overrides = [raw for key, raw in source.overrides.items() if key[0] == path[0]]
    if overrides and not (where or "").startswith("override"):
        shown = ", ".join(repr(raw) for raw in overrides)
        where = f"override {shown}" + (f" (with {where})" if where else "")
    return message, path, where


def validate_spec(data: dict, source: Source | None = None, registry: Registry | None = None) -> SpecBase:
    """Validate a spec dict into the assembled spec model, or raise one clear SpecError."""
    registry = registry or get_registry()
    source = source or Source("spec")
    _check_plugin_names(data, registry, source)
    model = spec_model(registry)
    try:
        spec = model.model_validate(data)
    except ValidationError as exc:
        loc, message = validation_message(exc)
        path = _strip_tags(loc, data)
        where = source.where(path)
        first = exc.errors()[0]
        if first["type"] == "value_error" and len(path) == 1 and path[0] in PLUGIN_SECTIONS:
            message, path, where = _cross_field_error(first["msg"], path, data, source)
        raise SpecError(message, path=dotted_key(path) or None, where=where) from None
    halting_cls = registry.get("halting", spec.halting.name).cls
    scope = getattr(spec.halting, "scope", None)
    if scope is not None and scope not in halting_cls.supported_scopes:
        allowed = ", ".join(sorted(halting_cls.supported_scopes))
        raise SpecError(
            f"halting {spec.halting.name!r} does not support scope {scope!r} (supported: {allowed})",
            path="halting.scope",
            where=source.where(("halting", "scope")),
        )
    check_curriculum(spec, source.where)
    return spec


def load_spec(
    path: str | Path | None = None,
    overrides: list[str] | None = None,
    registry: Registry | None = None,
) -> SpecBase:
    """Read a YAML spec (the bundled quickstart when `path` is None), apply overrides, validate."""
    data, source = read_spec_file(path)
    data = apply_overrides(data, list(overrides or []), source)
    return validate_spec(data, source, registry)


def resolve_spec(spec: SpecBase | dict | str | Path | None = None) -> SpecBase:
    """Accept a spec object, a dict, or a YAML path (the bundled quickstart when None)."""
    if isinstance(spec, SpecBase):
        return spec
    if spec is None or isinstance(spec, (str, Path)):
        return load_spec(spec)
    return validate_spec(dict(spec))


def spec_to_yaml(spec: SpecBase) -> str:
    return yaml.safe_dump(spec.model_dump(mode="json"), sort_keys=False)


def spec_json_schema(registry: Registry | None = None) -> dict:
    return spec_model(registry).model_json_schema()


__all__ = [
    "PLUGIN_SECTIONS",
    "Source",
    "SpecBase",
    "apply_overrides",
    "dotted_key",
    "is_plugin_switch",
    "load_spec",
    "parent_mapping",
    "parse_override",
    "read_spec_file",
    "read_yaml",
    "resolve_spec",
    "spec_json_schema",
    "spec_model",
    "spec_to_yaml",
    "validate_spec",
    "validation_message",
]
