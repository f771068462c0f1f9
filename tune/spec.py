"""Search specs: a base experiment plus a `search:` and a `tune:` section, validated up front.

    name: my-search
    task: {name: binary_reverse, length: 8}
    backbone: {d_model: 32, n_layers: 1}      # options shared by every searched backbone
    training: {steps: 400, eval_every: 100}
    search:
      backbone:                                # a whole plugin section per grid point
        grid: [{name: lstm}, {name: transformer, n_heads: 2}]
      halting:
        grid: [{name: graves, max_hops: 4}, {name: none}]
      training.lr: {loguniform: [1.0e-4, 1.0e-2]}
    tune: {metric: validation/exact_match, scheduler: asha, num_samples: 2}

Every searched value is applied to the base (shorter keys first; a mapping is merged
into the mapping already there, except that a plugin section whose `name` changes
starts afresh, as `halting.name=...` does on the command line), and every grid point
(random domains at both ends of their range) is validated as an experiment spec
before Ray starts, so a bad value is reported with its search key and file:line.
"""

from __future__ import annotations

import copy
import itertools
import math
import re
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

from pydantic import ValidationError

from ponderlab.core.errors import SpecError
from ponderlab.core.registry import Registry, get_registry
from ponderlab.core.spec import (
    Source,
    SpecBase,
    apply_overrides,
    dotted_key,
    parse_override,
    read_spec_file,
    validate_spec,
    validation_message,
)

from .dims import SearchDim, apply_order, apply_point, assign, format_value
from .options import DISCRETE_KINDS, DOMAIN_KINDS, AshaOptions, Resources, SearchDomain, TuneOptions

#: Re-exported: the search spec's parts are defined in `options` and `dims`.
__all__ = [
    "AshaOptions", "Resources", "SearchDim", "SearchDomain", "TuneOptions", "TuneSpec",
    "apply_point", "assign", "compare_for_resume", "format_value", "load_tune_spec", "saved_spec_path",
]

SEARCHABLE_ROOTS = ("seed", "task", "backbone", "halting", "training")
#: Experiment-time settings that may change on --resume (they only affect the driver).
RESUME_MUTABLE = ("address", "runtime_env", "verbose")
#: Above this many grid points, each searched value is checked on its own instead.
MAX_CHECKED_POINTS = 4096


# --------------------------------------------------------------------------- the search spec


@dataclass
class TuneSpec:
    """A validated search: base experiment, searched dimensions, tune options, checked specs."""

    base: dict
    dims: list[SearchDim]
    options: TuneOptions
    name: str
    experiment_dir: Path
    raw: dict  # the whole spec after overrides (saved for --resume)
    label: str
    checked: list[SpecBase] = field(default_factory=list)

    @property
    def max_steps(self) -> int:
        return max(spec.training.steps for spec in self.checked)

    @property
    def grid_size(self) -> int:
        return math.prod(len(d.values) for d in self.dims if d.kind == "grid")

    @property
    def num_trials(self) -> int:
        if self.options.search_algorithm == "optuna":
            return self.options.num_samples
        return self.grid_size * self.options.num_samples


class _PointSource(Source):
    """Locations for one grid point: a searched key's value in the file, else the base's."""

    def __init__(self, base_source: Source, applied: list[tuple[SearchDim, Any]]):
        super().__init__(base_source.label, base_source.lines)
        self.base_source = base_source
        self.applied = applied

    def where(self, path: tuple) -> str | None:
        found = responsible_dim(path, self.applied)
        if found is None:
            return self.base_source.where(path)
        dim, raw = found
        rest = tuple(path[len(dim.path):])
        if rest and not _contains(dim.value(raw), rest):
            return self.base_source.where(path)  # that part came from the base
        return dim_where(dim, self.base_source, raw, rest)


def _contains(value: Any, rest: tuple) -> bool:
    for part in rest:
        if not isinstance(value, dict) or part not in value:
            return False
        value = value[part]
    return True


def responsible_dim(path: tuple, applied: list[tuple[SearchDim, Any]]) -> tuple[SearchDim, Any] | None:
    """The searched key that set `path` (the longest key that is a prefix of it)."""
    best = None
    for dim, raw in applied:
        if tuple(path[: len(dim.path)]) == dim.path and (best is None or len(dim.path) > len(best[0].path)):
            best = (dim, raw)
    return best


def dim_where(dim: SearchDim, source: Source, raw: Any = None, rest: tuple = ()) -> str | None:
    if dim.override is not None:
        return f"override {dim.override!r}"
    anchor = dim.file_path + (dim.kind,)
    if dim.discrete and raw is not None:
        anchor += (int(raw),)
    return source.where(anchor + tuple(rest))  # the line of the value, else of its nearest key


def _follow(loc: tuple, data: Any) -> tuple:
    """An error location without pydantic's union-member tags, following the data."""
    path: list = []
    node = data
    for index, part in enumerate(loc):
        if isinstance(node, dict) and part in node:
            path.append(part)
            node = node[part]
        elif isinstance(node, (list, tuple)) and isinstance(part, int) and part < len(node):
            path.append(part)
            node = node[part]
        elif isinstance(node, dict) and index == len(loc) - 1:
            path.append(part)  # a missing or unknown key
        else:
            node = None  # a tag (e.g. `float`, `literal['auto']`): skip it
    return tuple(path)


def _raise_validation(exc: ValidationError, prefix: tuple, data: Any, source: Source) -> None:
    loc, message = validation_message(exc)
    path = prefix + _follow(loc, data)
    raise SpecError(message, path=dotted_key(path), where=source.where(path)) from None


def _collect_dims(search: Any, source: Source) -> list[SearchDim]:
    """Flatten the search section (dotted and/or nested keys) into dimensions."""
    if search is None:
        return []
    if not isinstance(search, dict):
        raise SpecError("expected a mapping of dotted keys to domains", path="search", where=source.where(("search",)))
    dims: dict[str, SearchDim] = {}

    def visit(node: Any, file_path: tuple, key_parts: tuple) -> None:
        where = source.where(file_path)
        dotted = ".".join(key_parts)
        if not isinstance(node, dict) or not node:
            raise SpecError(
                f"expected a domain such as {{grid: [...]}} or {{loguniform: [low, high]}}, got {node!r}",
                path=dotted_key(file_path), where=where,
            )
        if not set(node) & set(DOMAIN_KINDS):
            for key, child in node.items():
                visit(child, file_path + (key,), key_parts + tuple(str(key).split(".")))
            return
        if any(not part for part in key_parts):
            raise SpecError("empty part in dotted key", path=dotted_key(file_path), where=where)
        if key_parts[0] not in SEARCHABLE_ROOTS:
            raise SpecError(
                f"cannot search {dotted!r}: searched keys start with {', '.join(SEARCHABLE_ROOTS)}",
                path=dotted_key(file_path), where=where,
            )
        try:
            domain = SearchDomain.model_validate(node)
        except ValidationError as exc:
            _raise_validation(exc, file_path, node, source)
        if dotted in dims:
            raise SpecError(f"{dotted!r} is searched twice", path=dotted_key(file_path), where=where)
        dims[dotted] = _make_dim(dotted, domain, file_path=file_path)

    for key, node in search.items():
        visit(node, ("search", key), tuple(str(key).split(".")))
    return list(dims.values())


def _make_dim(key: str, domain: SearchDomain, **where: Any) -> SearchDim:
    kind = domain.kind
    value = getattr(domain, kind)
    if kind in DISCRETE_KINDS:
        return SearchDim(key=key, kind=kind, values=tuple(value), **where)
    return SearchDim(key=key, kind=kind, low=value[0], high=value[1], **where)


def _apply_search_overrides(dims: list[SearchDim], overrides: list[str]) -> list[SearchDim]:
    """`search.training.lr.choice=[...]` sets a domain; `search.training.lr=null` drops one."""
    by_key = {dim.key: dim for dim in dims}
    for raw in overrides:
        path, value = parse_override(raw)
        parts = path[1:]
        where = f"override {raw!r}"
        if parts and parts[-1] in DOMAIN_KINDS and len(parts) > 1:
            key, node = ".".join(parts[:-1]), {parts[-1]: value}
        elif parts and value is None:
            by_key.pop(".".join(parts), None)
            continue
        elif parts and isinstance(value, dict):
            key, node = ".".join(parts), value
        else:
            raise SpecError(
                "expected search.<dotted.key>.<grid|choice|uniform|loguniform|randint>=VALUE "
                "(or search.<dotted.key>=null to stop searching it)", where=where,
            )
        if key.split(".")[0] not in SEARCHABLE_ROOTS:
            raise SpecError(
                f"cannot search {key!r}: searched keys start with {', '.join(SEARCHABLE_ROOTS)}", where=where
            )
        try:
            domain = SearchDomain.model_validate(node)
        except ValidationError as exc:
            raise SpecError(validation_message(exc)[1], path=f"search.{key}", where=where) from None
        by_key[key] = _make_dim(key, domain, override=raw)
    return list(by_key.values())


def _check_points(dims: list[SearchDim]) -> list[list[tuple[SearchDim, Any]]]:
    """Points that exercise every searched value, each paired with what set it."""
    discrete = [d for d in dims if d.discrete]
    continuous = [d for d in dims if not d.discrete]
    ends = [[(d, d.low) for d in continuous], [(d, d.high) for d in continuous]] if continuous else [[]]
    size = math.prod(len(d.values) for d in discrete)
    if size <= MAX_CHECKED_POINTS:
        combos = itertools.product(*[[(d, i) for i in range(len(d.values))] for d in discrete])
        return [list(combo) + end for combo in combos for end in ends]
    points = []  # too many combinations: vary one searched value at a time
    for dim in discrete:
        for i in range(len(dim.values)):
            points += [[(d, i if d is dim else 0) for d in discrete] + end for end in ends]
    return points


def check_search(base: dict, dims: list[SearchDim], source: Source, registry: Registry) -> list[SpecBase]:
    """Validate every grid point as an experiment spec; errors name the search key and line."""
    checked = []
    for point in _check_points(dims):
        data = copy.deepcopy(base)
        for dim, value in sorted(point, key=lambda item: apply_order(item[0])):
            try:
                assign(data, dim.path, dim.value(value))
            except SpecError as exc:
                raise SpecError(
                    f"{exc.message} (search {dim.key}: {dim.describe(value)})",
                    path=f"search.{dim.key}", where=dim_where(dim, source, value),
                ) from None
        try:
            checked.append(validate_spec(data, _PointSource(source, point), registry))
        except SpecError as exc:
            path = tuple(exc.path.split(".")) if exc.path else ()
            found = responsible_dim(path, point) if path else None
            if found is not None:
                context = f"search {found[0].key}: {found[0].describe(found[1])}"
            elif related := [(d, v) for d, v in point if path and d.path[0] == path[0]]:
                context = "search point " + ", ".join(f"{d.key}: {d.describe(v)}" for d, v in related)
            else:
                context = None
            message = exc.message + (f" ({context})" if context else "")
            raise SpecError(message, path=exc.path, where=exc.where) from None
    return checked


def _check_tune_combination(options: TuneOptions, dims: list[SearchDim], checked: list[SpecBase], source: Source) -> None:
    if options.search_algorithm == "optuna":
        grid = next((d for d in dims if d.kind == "grid"), None)
        if grid is not None:
            raise SpecError(
                "grid is not supported with tune.search_algorithm: optuna (use choice)",
                path=f"search.{grid.key}", where=dim_where(grid, source),
            )
        if not dims:
            raise SpecError("optuna needs at least one searched key", path="tune.search_algorithm",
                            where=source.where(("tune", "search_algorithm")))
        try:
            import optuna  # noqa: F401
        except ImportError:
            raise SpecError("optuna is not installed (pip install optuna)", path="tune.search_algorithm",
                            where=source.where(("tune", "search_algorithm"))) from None
    if options.scheduler == "asha":
        steps = max(spec.training.steps for spec in checked)
        asha = options.asha
        max_t = asha.max_t or steps
        grace = asha.grace_period or min(spec.training.eval_every for spec in checked)
        if grace > max_t:
            raise SpecError(
                f"grace period {grace} is beyond the last rung max_t = {max_t}",
                path="tune.asha.grace_period", where=source.where(("tune", "asha")),
            )


def load_tune_spec(
    path: str | Path,
    overrides: list[str] | None = None,
    registry: Registry | None = None,
) -> TuneSpec:
    """Read, override and validate a search spec; raise one clear SpecError on bad input."""
    registry = registry or get_registry()
    path = Path(path)
    data, source = read_spec_file(path)
    overrides = list(overrides or [])
    search_overrides = [o for o in overrides if o.partition("=")[0].strip().split(".")[0] == "search"]
    data = apply_overrides(data, [o for o in overrides if o not in search_overrides], source)

    tune_data = {} if data.get("tune") is None else data["tune"]
    if not isinstance(tune_data, dict):
        raise SpecError("expected a mapping", path="tune", where=source.where(("tune",)))
    try:
        options = TuneOptions.model_validate(tune_data)
    except ValidationError as exc:
        _raise_validation(exc, ("tune",), tune_data, source)

    dims = _apply_search_overrides(_collect_dims(data.get("search"), source), search_overrides)
    base = {k: v for k, v in data.items() if k not in ("search", "tune")}
    if "output_dir" in base:
        raise SpecError(
            "a search writes each trial's run under tune.storage_path/<name>/runs/; remove output_dir",
            path="output_dir", where=source.where(("output_dir",)),
        )
    checked = check_search(base, dims, source, registry)
    _check_tune_combination(options, dims, checked, source)

    name = options.name or base.get("name") or path.stem
    if not re.fullmatch(r"[A-Za-z0-9][A-Za-z0-9_.+-]*", str(name)):
        raise SpecError(
            f"experiment name {name!r} must be letters, digits and _.+- only",
            path="tune.name" if options.name else "name",
            where=source.where(("tune", "name") if options.name else ("name",)),
        )
    experiment_dir = (Path(options.storage_path).expanduser() / str(name)).resolve()
    raw = copy.deepcopy(data)
    raw["tune"] = {**(raw.get("tune") or {}), "storage_path": str(experiment_dir.parent), "name": str(name)}
    raw["search"] = {dim.key: {dim.kind: list(dim.values) if dim.discrete else [dim.low, dim.high]} for dim in dims}
    return TuneSpec(
        base=base, dims=dims, options=options, name=str(name), experiment_dir=experiment_dir,
        raw=raw, label=str(path), checked=checked,
    )


def saved_spec_path(experiment_dir: Path) -> Path:
    return Path(experiment_dir) / "tune_spec.yaml"


def compare_for_resume(current: TuneSpec, saved_raw: dict) -> str | None:
    """The first dotted key where a spec differs from the saved one (None when they agree)."""

    def strip(raw: dict) -> dict:
        raw = copy.deepcopy(raw)
        tune = raw.get("tune") or {}
        for key in RESUME_MUTABLE:
            tune.pop(key, None)
        raw["tune"] = TuneOptions.model_validate(tune).model_dump(mode="json")
        return raw

    def first_difference(a: Any, b: Any, prefix: tuple) -> tuple | None:
        if isinstance(a, dict) and isinstance(b, dict):
            for key in sorted(set(a) | set(b), key=str):
                found = first_difference(a.get(key), b.get(key), prefix + (key,))
                if found is not None:
                    return found
            return None
        return None if a == b else prefix

    found = first_difference(strip(current.raw), strip(saved_raw), ())
    return None if found is None else dotted_key(found) or "(spec)"
