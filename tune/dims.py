"""Searched dimensions (one dotted key and its domain) and how a trial's values enter the base spec."""

from __future__ import annotations

import copy
from dataclasses import dataclass
from typing import Any

from ponderlab.core.spec import PLUGIN_SECTIONS, is_plugin_switch, parent_mapping

from .options import DISCRETE_KINDS

# --------------------------------------------------------------------------- search dimensions


@dataclass(frozen=True)
class SearchDim:
    """One searched dotted key with its domain and where it was written."""

    key: str
    kind: str
    values: tuple = ()  # grid / choice
    low: float | int | None = None  # uniform / loguniform / randint
    high: float | int | None = None
    file_path: tuple = ()  # path of the domain mapping in the YAML file
    override: str | None = None  # the command-line override that set it

    @property
    def path(self) -> tuple[str, ...]:
        return tuple(self.key.split("."))

    @property
    def discrete(self) -> bool:
        return self.kind in DISCRETE_KINDS

    def value(self, raw: Any) -> Any:
        """The spec value of a trial's raw sample (an index for grid / choice)."""
        if self.discrete:
            return copy.deepcopy(self.values[int(raw)])
        if self.kind == "randint":
            return int(raw)
        return float(raw)

    def describe(self, raw: Any) -> str:
        if self.discrete:
            return f"{self.kind}[{int(raw)}] = {format_value(self.values[int(raw)])}"
        return f"{self.kind} value {format_value(self.value(raw))}"

    def describe_domain(self) -> str:
        if self.discrete:
            return f"{self.kind} over {', '.join(format_value(v) for v in self.values)}"
        return f"{self.kind} [{self.low}, {self.high}]"

    def to_plain(self) -> dict:
        return {"key": self.key, "kind": self.kind, "values": list(self.values), "low": self.low, "high": self.high}

    @classmethod
    def from_plain(cls, data: dict) -> SearchDim:
        return cls(key=data["key"], kind=data["kind"], values=tuple(data["values"]), low=data["low"], high=data["high"])


def format_value(value: Any) -> str:
    """Compact text of a searched value: graves(max_hops=4), 0.001, lstm."""
    if isinstance(value, dict):
        inner = ", ".join(f"{k}={format_value(v)}" for k, v in value.items() if k != "name")
        if "name" in value:
            return f"{value['name']}({inner})" if inner else str(value["name"])
        return f"{{{inner}}}"
    if isinstance(value, float):
        return f"{value:.4g}"
    if isinstance(value, list):
        return "[" + ", ".join(format_value(v) for v in value) + "]"
    return str(value)


# --------------------------------------------------------------------------- applying values


def apply_order(dim: SearchDim) -> tuple:
    """Sort key: whole sections first, then plugin switches (`backbone.name`), then deeper keys."""
    return (len(dim.path) - (0.5 if is_plugin_switch(dim.path) else 0),)


def _merge(target: dict, value: dict) -> None:
    for key, item in value.items():
        if isinstance(item, dict) and isinstance(target.get(key), dict):
            _merge(target[key], item)
        else:
            target[key] = copy.deepcopy(item)


def assign(data: dict, path: tuple, value: Any) -> None:
    """Set a searched value at `path`: merge mappings, restart a plugin section on a new name."""
    node = parent_mapping(data, path)
    last = path[-1]
    existing = node.get(last)
    if isinstance(value, dict) and isinstance(existing, dict):
        restart = len(path) == 1 and last in PLUGIN_SECTIONS and existing.get("name") not in (None, value.get("name"))
        if restart:
            node[last] = copy.deepcopy(value)
        else:
            _merge(existing, value)
        return
    if is_plugin_switch(path) and existing != value:
        node.clear()
    node[last] = copy.deepcopy(value)


def apply_point(base: dict, dims: list[SearchDim], raw: dict[str, Any]) -> dict:
    """The experiment spec dict of one trial: the base with every searched value applied."""
    data = copy.deepcopy(base)
    for dim in sorted(dims, key=apply_order):
        assign(data, dim.path, dim.value(raw[dim.key]))
    return data
