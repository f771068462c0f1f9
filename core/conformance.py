"""Conformance checks: the contracts the core relies on, runnable on any plugin class.

Public through `ponderlab.testing`. One `Conformance` object checks one plugin
class with one small config; each contract is a named check that raises a
`ContractError` saying which plugin broke which contract and how.

Contracts (see docs/plugins.md):
  all kinds   config, yaml round trip, entry point
  backbone    construction, output shapes, causality, active subset, gradient flow,
              determinism, checkpoint
  halting     scopes, hop protocol, halting weights, halting stats, packed depth,
              causality, gradient flow, determinism, checkpoint
  task        task data, split overlap, determinism, extra metrics

Model-level checks wrap the plugin in a real `PonderModel` with small probe
plugins for the other parts (a position-wise backbone, a two-hop halting
strategy), so a failure points at the plugin under test, not at a neighbour.
"""

from __future__ import annotations

import copy
import math
import tempfile
import typing
from collections.abc import Iterable
from pathlib import Path
from typing import Any, ClassVar, Literal

import torch
import yaml
from pydantic import Field, ValidationError
from torch import Tensor, nn

from . import checkpoint as ckpt
from .config import BackboneConfig, HaltingConfig, PluginConfig, TaskConfig
from .early_exit import computes_rows, layer_update
from .errors import PluginError, SpecError
from .interfaces import (
    IGNORE_INDEX,
    Backbone,
    Block,
    BlockContext,
    HaltingStrategy,
    HopFn,
    PonderOutput,
    Task,
    TaskData,
)
from .model import PonderModel
from .registry import Registry, get_registry, plugin_name
from .run import seed_everything
from .spec import read_yaml, spec_to_yaml, validate_spec

COMMON_CONTRACTS = ("config", "yaml round trip", "entry point")
CONTRACTS: dict[str, tuple[str, ...]] = {
    "backbone": COMMON_CONTRACTS
    + (
        "construction",
        "output shapes",
        "causality",
        "active subset",
        "gradient flow",
        "determinism",
        "checkpoint",
    ),
    "halting": COMMON_CONTRACTS
    + (
        "scopes",
        "hop protocol",
        "halting weights",
        "halting stats",
        "packed depth",
        "causality",
        "gradient flow",
        "determinism",
        "checkpoint",
    ),
    "task": COMMON_CONTRACTS + ("task data", "split overlap", "determinism", "extra metrics"),
}

#: Small values for common size options, used where the plugin's config has such a field
#: (dropped again if the config rejects them). `conformance_config` on the class and the
#: `config` given to the checker override them.
SMALL_OPTIONS: dict[str, Any] = {
    "d_model": 16,
    "n_layers": 2,
    "segment_size": 4,
    "train_size": 48,
    "validation_size": 12,
    "test_size": 12,
}

VOCAB = 13  # vocabulary of the probe inputs for backbone and halting checks
BASES = {"backbone": (Backbone, BackboneConfig), "halting": (HaltingStrategy, HaltingConfig), "task": (Task, TaskConfig)}
SECTIONS = {"backbone": "backbone", "halting": "halting", "task": "task"}
UNKNOWN_KEY = "conformance_unknown_option"


# --------------------------------------------------------------------------- errors


class ContractError(AssertionError):
    """A plugin broke one contract. `plugin`, `contract` and `problem` name what and how."""

    def __init__(self, plugin: str, contract: str, problem: str):
        self.plugin = plugin
        self.contract = contract
        self.problem = problem
        super().__init__(f"{plugin} broke the {contract!r} contract: {problem}")


class ConformanceError(AssertionError):
    """Several contracts broken at once (from `check_plugin`)."""

    def __init__(self, plugin: str, failures: list[ContractError]):
        self.plugin = plugin
        self.failures = failures
        lines = [f"{plugin} broke {len(failures)} contract{'s' if len(failures) > 1 else ''}:"]
        lines += [f"  - {f.contract!r}: {f.problem}" for f in failures]
        super().__init__("\n".join(lines))


class _Problem(Exception):
    """Raised inside a check; `Conformance.check` turns it into a ContractError."""


def _fail(problem: str) -> typing.NoReturn:
    raise _Problem(problem)


# --------------------------------------------------------------------------- probe plugins


class ProbeBackboneConfig(BackboneConfig):
    name: Literal["conformance_probe"] = "conformance_probe"
    d_model: int = Field(8, ge=1)
    n_layers: int = Field(2, ge=1)


class _ProbeBlock(Block):
    """Position-wise residual layer h + tanh(W h + b): causal by construction.

    It computes rows too (`forward_rows`), so depth-scope inference of a strategy
    under test takes the packed path where the strategy's loop has one.
    """

    def __init__(self, d_model: int):
        super().__init__()
        self.linear = nn.Linear(d_model, d_model)

    def forward(self, hidden: Tensor, context: BlockContext) -> Tensor:  # (B, L, D)
        return hidden + torch.tanh(self.linear(hidden))

    def forward_rows(self, hidden: Tensor, rows: Tensor, states: Tensor, context: BlockContext) -> Tensor:
        return states + torch.tanh(self.linear(states))  # (K, D)


class ProbeBackbone(Backbone):
    """The neighbour backbone used when checking a halting strategy or a task."""

    config_class = ProbeBackboneConfig

    def __init__(self, config: ProbeBackboneConfig, *, vocab_size: int):
        super().__init__(config, vocab_size=vocab_size)
        self.embedding = nn.Embedding(vocab_size, config.d_model)
        self.blocks = nn.ModuleList(_ProbeBlock(config.d_model) for _ in range(config.n_layers))
        self.norm = nn.LayerNorm(config.d_model)


class ProbeHaltingConfig(HaltingConfig):
    name: Literal["conformance_probe"] = "conformance_probe"
    steps: int = Field(2, ge=1)


class ProbeHalting(HaltingStrategy):
    """The neighbour strategy used when checking a backbone: `steps` hops, the last state.

    Hops after the first run only on a fixed half of the tokens, so a backbone is
    also exercised with `active` masks as real strategies pass them.
    """

    config_class = ProbeHaltingConfig

    def max_hops(self) -> int:
        return self.n_layers if self.config.scope == "depth" else self.config.steps

    def forward(self, state: Tensor, hop: HopFn) -> PonderOutput:
        batch, length = state.shape[:2]
        positions = torch.arange(length, device=state.device)
        rows = torch.arange(batch, device=state.device).unsqueeze(1)
        later = (positions.unsqueeze(0) + rows) % 2 == 0  # (B, L) tokens that keep going
        hops = torch.ones(batch, length, device=state.device)
        for step in range(self.max_hops()):
            active = None if step == 0 else later
            state = hop(state, step, active)
            if step:
                hops = hops + later.float()
        zeros = torch.zeros_like(hops)
        return PonderOutput(output=state, hops=hops, ponder_cost=zeros, remainder=zeros)


class ProbeTaskConfig(TaskConfig):
    name: Literal["conformance_probe"] = "conformance_probe"


class ProbeTask(Task):
    """The neighbour task in the spec used for the YAML round trip."""

    config_class = ProbeTaskConfig
    vocab_size = VOCAB

    def build(self, seed: int) -> TaskData:
        import datasets

        rows = [{"input_ids": [1, 2, 3], "labels": [IGNORE_INDEX, 3, IGNORE_INDEX]}]
        split = datasets.Dataset.from_list(rows)
        return TaskData(train=split, validation=split, test=split)


PROBES = {"backbone": ProbeBackbone, "halting": ProbeHalting, "task": ProbeTask}


# --------------------------------------------------------------------------- helpers


def plugin_kind(plugin: type) -> str:
    """'backbone', 'halting' or 'task' for a plugin class."""
    for kind, (base, _) in BASES.items():
        if isinstance(plugin, type) and issubclass(plugin, base):
            return kind
    raise TypeError(f"{plugin!r} is not a Backbone, HaltingStrategy or Task subclass")


def _names(items: Iterable[str], limit: int = 6) -> str:
    items = list(items)
    shown = ", ".join(items[:limit])
    return shown + (f" (and {len(items) - limit} more)" if len(items) > limit else "")


def _max_abs(tensor: Tensor) -> float:
    return float(tensor.detach().abs().max()) if tensor.numel() else 0.0


def _expect_shape(what: str, tensor: Any, shape: tuple[int, ...]) -> None:
    if not isinstance(tensor, Tensor):
        _fail(f"{what} is {type(tensor).__name__}, expected a tensor of shape {shape}")
    if tuple(tensor.shape) != shape:
        _fail(f"{what} has shape {tuple(tensor.shape)}, expected {shape}")


def _expect_finite(what: str, tensor: Tensor) -> None:
    if not bool(torch.isfinite(tensor.detach().float()).all()):
        _fail(f"{what} holds NaN or infinite values")


def _token_ids(batch: int, length: int, seed: int) -> Tensor:
    generator = torch.Generator().manual_seed(seed)
    return torch.randint(0, VOCAB, (batch, length), generator=generator)  # (B, L)


def _perturb(module: nn.Module, seed: int, scale: float = 0.5) -> None:
    """Move every floating parameter away from its initial value (in place)."""
    generator = torch.Generator().manual_seed(seed)
    with torch.no_grad():
        for parameter in module.parameters():
            if parameter.is_floating_point():
                noise = torch.randn(parameter.shape, generator=generator).to(parameter.dtype)
                parameter.add_(scale * noise)


def _state_differences(a: nn.Module, b: nn.Module) -> list[str]:
    sa, sb = a.state_dict(), b.state_dict()
    if sa.keys() != sb.keys():
        return sorted(set(sa) ^ set(sb))
    return [k for k in sa if isinstance(sa[k], Tensor) and not torch.equal(sa[k], sb[k])]


# --------------------------------------------------------------------------- the checker


class Conformance:
    """Checks one plugin class against the contracts of its kind.

    `config`: option overrides (a dict) or a ready config object; by default the
    class defaults with small sizes (see `SMALL_OPTIONS`, `conformance_config`).
    """

    def __init__(self, plugin: type, config: dict[str, Any] | PluginConfig | None = None):
        self.plugin = plugin
        self.kind = plugin_kind(plugin)
        self._overrides = config
        self._config: PluginConfig | None = None
        self._synthetic_runs: list | None = None
        self._built: TaskData | None = None
        self._layers: dict[str, int] = {}
        try:
            self.name = plugin_name(plugin)
        except PluginError:
            self.name = plugin.__qualname__
        self.label = f"{self.kind} {self.name!r} ({plugin.__module__}.{plugin.__qualname__})"

    # ------------------------------------------------------------------ running
    @property
    def contracts(self) -> tuple[str, ...]:
        return CONTRACTS[self.kind]

    def check(self, contract: str) -> None:
        """Run one contract; raise ContractError naming it if the plugin breaks it."""
        if contract not in self.contracts:
            raise ValueError(f"unknown {self.kind} contract {contract!r} (known: {', '.join(self.contracts)})")
        method = getattr(self, "_check_" + contract.replace(" ", "_"))
        try:
            if contract != "config":
                self.config  # noqa: B018  (a broken config is reported under every contract)
            method()
        except ContractError:
            raise
        except _Problem as problem:
            raise ContractError(self.label, contract, str(problem)) from None
        except Exception as exc:
            raise ContractError(self.label, contract, f"raised {type(exc).__name__}: {exc}") from exc

    def run(self, skip: Iterable[str] = ()) -> list[ContractError]:
        """Run every contract (but `skip`); return the broken ones. Stops after a broken config."""
        skipped = set(skip)
        unknown = skipped - set(self.contracts)
        if unknown:
            raise ValueError(f"unknown {self.kind} contract(s) to skip: {', '.join(sorted(unknown))}")
        failures = []
        for contract in self.contracts:
            if contract in skipped:
                continue
            try:
                self.check(contract)
            except ContractError as error:
                failures.append(error)
                if contract == "config":
                    break
        return failures

    # ------------------------------------------------------------------ config
    @property
    def config(self) -> PluginConfig:
        if self._config is None:
            self._config = self._make_config()
        return self._config

    def _make_config(self) -> PluginConfig:
        config_class = getattr(self.plugin, "config_class", None)
        if config_class is None:
            raise ContractError(self.label, "config", "the class has no `config_class`")
        if isinstance(self._overrides, PluginConfig):
            return self._overrides
        explicit = dict(getattr(self.plugin, "conformance_config", None) or {})
        explicit.update(self._overrides or {})
        small = {k: v for k, v in SMALL_OPTIONS.items() if k in config_class.model_fields and k not in explicit}
        while True:
            try:
                return config_class.model_validate({**small, **explicit})
            except ValidationError as exc:
                if not small:
                    raise ContractError(
                        self.label, "config", f"cannot build a config from {explicit or 'the defaults'}: {exc}"
                    ) from None
                rejected = {e["loc"][0] for e in exc.errors() if e["loc"]} & set(small)
                for key in rejected or list(small):
                    del small[key]

    def _check_config(self) -> None:
        kind_base, config_base = BASES[self.kind]
        config_class = getattr(self.plugin, "config_class", None)
        if config_class is None:
            _fail("the class has no `config_class`")
        if not (isinstance(config_class, type) and issubclass(config_class, config_base)):
            _fail(f"config_class {config_class!r} must subclass ponderlab.core.config.{config_base.__name__}")
        try:
            name = plugin_name(self.plugin)
        except PluginError as exc:
            _fail(str(exc))
        default = config_class.model_fields["name"].default
        if default != name:
            _fail(f"`name` must default to its Literal value {name!r} (default is {default!r})")
        config = self.config
        if config.name != name:
            _fail(f"the config's name is {config.name!r}, expected {name!r}")
        dumped = config.model_dump(mode="json")
        try:
            config_class.model_validate({**dumped, UNKNOWN_KEY: 1})
        except ValidationError:
            pass
        else:
            _fail("an unknown option was accepted; configs must forbid extra keys (subclass the ponderlab base config)")
        try:
            config_class.model_json_schema()
        except Exception as exc:  # `ponderlab schema` needs it
            _fail(f"no JSON schema for the config ({type(exc).__name__}: {exc}); `ponderlab schema` would fail")
        section = SECTIONS[self.kind]
        data = self._spec_data()
        data[section][UNKNOWN_KEY] = 1
        try:
            validate_spec(data, registry=self._spec_registry())
        except SpecError as exc:
            if exc.path != f"{section}.{UNKNOWN_KEY}":
                _fail(f"an unknown key in the spec was reported at {exc.path!r}, not {section}.{UNKNOWN_KEY}: {exc}")
        else:
            _fail(f"a spec with the unknown key {section}.{UNKNOWN_KEY} was accepted")

    def _spec_registry(self) -> Registry:
        registry = Registry()
        for kind, probe in PROBES.items():
            registry._add(kind, probe, "ponderlab.testing", "ponderlab", "")
        registry._add(self.kind, self.plugin, "plugin under test", self.plugin.__module__, "")
        return registry

    def _spec_data(self) -> dict[str, Any]:
        data: dict[str, Any] = {section: {"name": "conformance_probe"} for section in SECTIONS.values()}
        data[SECTIONS[self.kind]] = self.config.model_dump(mode="json")
        data["training"] = {"steps": 1}
        return copy.deepcopy(data)

    def _check_yaml_round_trip(self) -> None:
        config = self.config
        config_class = type(config)
        try:
            text = yaml.safe_dump(config.model_dump(mode="json"), sort_keys=False)
        except yaml.YAMLError as exc:
            _fail(f"model_dump(mode='json') is not YAML-serialisable: {exc}")
        reloaded = config_class.model_validate(yaml.safe_load(text))
        if reloaded != config:
            _fail(f"config changed through YAML: {self._diff(config, reloaded)}")
        registry = self._spec_registry()
        section = SECTIONS[self.kind]
        try:
            spec = validate_spec(self._spec_data(), registry=registry)
        except SpecError as exc:
            _fail(f"a spec holding this config is rejected: {exc}")
        if getattr(spec, section) != config:
            _fail(f"validating the spec changed the config: {self._diff(config, getattr(spec, section))}")
        data, source = read_yaml(spec_to_yaml(spec), "<round trip>")
        try:
            again = validate_spec(data, source, registry=registry)
        except SpecError as exc:
            _fail(f"the spec written by spec_to_yaml does not validate again: {exc}")
        if getattr(again, section) != config:
            _fail(f"config changed through spec YAML: {self._diff(config, getattr(again, section))}")

    @staticmethod
    def _diff(before: PluginConfig, after: PluginConfig) -> str:
        fields = type(before).model_fields
        a = {k: getattr(before, k, None) for k in fields}
        b = {k: getattr(after, k, None) for k in fields}
        changed = [f"{k}: {a.get(k)!r} -> {b.get(k)!r}" for k in sorted(set(a) | set(b)) if a.get(k) != b.get(k)]
        return "; ".join(changed) or f"{before!r} != {after!r}"

    def _check_entry_point(self) -> None:
        registry = get_registry()
        if (self.kind, self.name) in registry.conflicts:
            sources = " and ".join(p.describe() for p in registry.conflicts[(self.kind, self.name)])
            _fail(f"the name {self.name!r} is registered twice ({sources}); rename the plugin")
        info = registry.plugins[self.kind].get(self.name)
        if info is None:
            errors = "; ".join(f"{e.source}: {e.error}" for e in registry.errors)
            _fail(
                f"no {self.kind} named {self.name!r} is registered through the `ponderlab` entry-point group: "
                "install the package (pip install -e .) and check [project.entry-points.ponderlab] "
                "in its pyproject.toml" + (f" (load errors: {errors})" if errors else "")
            )
        if info.cls is not self.plugin:
            _fail(f"{self.kind} {self.name!r} is registered as {info.cls.__module__}.{info.cls.__qualname__}")

    # ------------------------------------------------------------------ models
    def _model(self, seed: int, scope: str | None = None) -> PonderModel:
        """A PonderModel around the plugin under test (backbone or halting), seeded."""
        seed_everything(seed)
        if self.kind == "backbone":
            backbone = self.plugin(self.config, vocab_size=VOCAB)
            halting_config = ProbeHaltingConfig(scope=scope or "layer")
            return PonderModel(backbone, ProbeHalting, halting_config, vocab_size=VOCAB)
        config = self.config if scope is None else self._config_for_scope(scope)
        n_layers = self._layers_for(config.scope)
        backbone = ProbeBackbone(ProbeBackboneConfig(n_layers=n_layers), vocab_size=VOCAB)
        return PonderModel(backbone, self.plugin, config, vocab_size=VOCAB)

    def _length(self, backbone: Backbone | None = None) -> int:
        """A sequence length that spans at least two segments of a memory backbone."""
        if backbone is not None and backbone.uses_segments and backbone.segment_size:
            return 2 * int(backbone.segment_size) + 3
        return 9

    def _tested_params(self, model: PonderModel) -> list[tuple[str, nn.Parameter]]:
        module = model.backbone if self.kind == "backbone" else model.sites
        prefix = "backbone" if self.kind == "backbone" else "sites"
        return [(f"{prefix}.{n}", p) for n, p in module.named_parameters() if p.requires_grad]

    def _forward(self, model: PonderModel, ids: Tensor, labels: Tensor | None = None, seed: int = 0):
        torch.manual_seed(seed)  # stochastic strategies draw the same numbers in both runs
        return model(ids, labels=labels)

    def _model_scopes(self) -> list[str]:
        """Scopes the model-level checks run in: all three for a backbone, the supported ones for a strategy."""
        return ["layer", "model", "depth"] if self.kind == "backbone" else self._scopes()

    def _check_causality(self) -> None:
        for scope in self._model_scopes():
            model = self._model(seed=0, scope=scope).eval()
            length = self._length(model.backbone)
            cut = length // 2 + 1
            ids = _token_ids(2, length, seed=1)
            changed = ids.clone()
            changed[:, cut:] = (ids[:, cut:] + 1 + _token_ids(2, length - cut, seed=2) % (VOCAB - 1)) % VOCAB
            with torch.no_grad():
                a = self._forward(model, ids).logits  # (B, L, V)
                b = self._forward(model, changed).logits
            before = _max_abs(a[:, :cut] - b[:, :cut])
            if before > 1e-5 * max(1.0, _max_abs(a)):
                _fail(
                    f"logits at positions < {cut} changed by {before:.2e} when only tokens at positions >= {cut} "
                    f"changed ({scope} scope): the output at position t must depend only on tokens <= t"
                )
            if _max_abs(a[:, cut:] - b[:, cut:]) == 0.0:
                _fail(f"logits at positions >= {cut} did not change when the tokens there did ({scope} scope)")

    def _check_gradient_flow(self) -> None:
        for scope in self._model_scopes()[: 1 if self.kind == "backbone" else None]:
            self._gradient_flow(scope)

    def _gradient_flow(self, scope: str) -> None:
        model = self._model(seed=0, scope=scope).train()
        length = self._length(model.backbone)
        ids = _token_ids(2, length, seed=3)
        labels = _token_ids(2, length, seed=4)
        labels[:, :2] = IGNORE_INDEX
        out = self._forward(model, ids, labels)
        if out.loss is None or out.loss.dim() != 0:
            _fail(f"the model returned no scalar loss ({scope} scope)")
        _expect_finite(f"the loss ({scope} scope)", out.loss)
        if self.kind == "halting":  # the task loss alone must reach the layers through the output
            first = [p for p in model.backbone.blocks[0].parameters() if p.requires_grad]
            grads = torch.autograd.grad(out.task_loss, first, retain_graph=True, allow_unused=True)
            if not any(g is not None and bool(g.any()) for g in grads):
                _fail(
                    f"no gradient reaches the layers from the task loss ({scope} scope): "
                    "is the output detached from the hop states?"
                )
        out.loss.backward()
        params = self._tested_params(model)
        missing = [n for n, p in params if p.grad is None]
        # In depth scope a strategy's per-layer parameters go unused when every token exits earlier.
        if missing and (scope != "depth" or len(missing) == len(params)):
            _fail(f"these parameters got no gradient from the training loss ({scope} scope): {_names(missing)}")
        with_grad = [(n, p) for n, p in params if p.grad is not None]
        bad = [n for n, p in with_grad if not bool(torch.isfinite(p.grad).all())]
        if bad:
            _fail(f"non-finite gradients in ({scope} scope): {_names(bad)}")
        if with_grad and not any(bool(p.grad.any()) for _, p in with_grad):
            _fail(f"every gradient is zero ({scope} scope)")
        if self.kind == "backbone":
            embedding_grad = [p.grad for p in model.backbone.embedding.parameters() if p.grad is not None]
            if not any(bool(g.any()) for g in embedding_grad):
                _fail("no gradient reaches the token embedding")

    def _check_determinism(self) -> None:
        if self.kind == "task":
            return self._check_task_determinism()
        a, b = self._model(seed=123), self._model(seed=123)
        differ = _state_differences(a, b)
        if differ:
            _fail(f"two models built from seed 123 differ in: {_names(differ)}")
        length = self._length(a.backbone)
        ids, labels = _token_ids(2, length, seed=5), _token_ids(2, length, seed=6)
        for mode in ("train", "eval"):
            a.train(mode == "train")
            b.train(mode == "train")
            with torch.no_grad():
                out_a, out_b = self._forward(a, ids, labels, seed=9), self._forward(b, ids, labels, seed=9)
            for what in ("logits", "loss"):
                if not torch.allclose(getattr(out_a, what), getattr(out_b, what), atol=1e-6, rtol=0):
                    _fail(f"{what} differ between two identical seeded runs ({mode} mode)")
            if not torch.equal(out_a.stats.hops, out_b.stats.hops):
                _fail(f"hops differ between two identical seeded runs ({mode} mode)")
        if self.kind == "backbone":
            c = self._model(seed=124)
            if not _state_differences(a.backbone, c.backbone):
                _fail("seeds 123 and 124 give identical weights: initialisation ignores the seed")

    def _check_checkpoint(self) -> None:
        source = self._model(seed=1)
        _perturb(source, seed=7, scale=0.05)  # so the saved weights differ from any fresh init
        target = self._model(seed=2)
        with tempfile.TemporaryDirectory() as tmp:
            path = Path(tmp) / "step_00000001.pt"
            ckpt.save_checkpoint({"model": source.state_dict()}, path)
            state = ckpt.load_checkpoint(path)  # weights_only=True
        result = target.load_state_dict(state["model"], strict=False)
        if result.missing_keys or result.unexpected_keys:
            _fail(
                f"state_dict does not load into a fresh model: missing {_names(result.missing_keys)}; "
                f"unexpected {_names(result.unexpected_keys)}"
            )
        length = self._length(source.backbone)
        ids = _token_ids(2, length, seed=8)
        source.eval()
        target.eval()
        with torch.no_grad():
            a, b = self._forward(source, ids).logits, self._forward(target, ids).logits
        if not torch.allclose(a, b, atol=1e-6, rtol=1e-6):
            _fail(
                f"a model loaded from the checkpoint gives other logits (max diff {_max_abs(a - b):.2e}): "
                "some state lives outside state_dict (non-persistent buffer, plain attribute?)"
            )

    # ------------------------------------------------------------------ backbones
    def _backbone(self, seed: int = 0) -> Backbone:
        seed_everything(seed)
        return self.plugin(self.config, vocab_size=VOCAB)

    def _check_construction(self) -> None:
        backbone = self._backbone()
        for attribute in ("embedding", "blocks", "norm"):
            if not isinstance(getattr(backbone, attribute, None), nn.Module):
                _fail(f"`self.{attribute}` must be set to an nn.Module in __init__")
        if not isinstance(backbone.blocks, nn.ModuleList) or len(backbone.blocks) == 0:
            _fail("`self.blocks` must be a non-empty nn.ModuleList of the distinct layers")
        not_blocks = [type(b).__name__ for b in backbone.blocks if not isinstance(b, Block)]
        if not_blocks:
            _fail(f"every entry of `self.blocks` must be a ponderlab Block (got {_names(not_blocks)})")
        if backbone.uses_segments:
            size = backbone.segment_size
            if not isinstance(size, int) or size < 1:
                _fail(f"uses_segments is True but segment_size is {size!r} (a positive int is needed)")

    def _check_output_shapes(self) -> None:
        backbone = self._backbone().eval()
        width = backbone.d_model
        base = self._length(backbone)
        for length in (base, base + 3):
            ids = _token_ids(2, length, seed=length)
            with torch.no_grad():
                hidden = backbone.embed(ids)
                _expect_shape(f"embed(input_ids (2, {length}))", hidden, (2, length, width))
                if not hidden.is_floating_point():
                    _fail(f"embed returned {hidden.dtype}, expected a floating dtype")
                if not backbone.uses_segments:
                    for index, block in enumerate(backbone.blocks):
                        for step in (0, 1):
                            out = block(hidden, BlockContext(layer=index, step=step))
                            _expect_shape(f"blocks[{index}] (step {step})", out, (2, length, width))
                            _expect_finite(f"blocks[{index}] output", out)
                for scope in ("layer", "model", "depth"):
                    model = PonderModel(backbone, ProbeHalting, ProbeHaltingConfig(scope=scope), vocab_size=VOCAB)
                    out = model.eval()(ids)
                    _expect_shape(f"logits ({scope} scope)", out.logits, (2, length, VOCAB))
                    _expect_finite(f"logits ({scope} scope)", out.logits)

    def _check_active_subset(self) -> None:
        """With an active mask, the core's layer update (dense, or `forward_rows` on the running
        tokens) gives the full forward's rows at active tokens and keeps the others."""
        backbone = self._backbone().eval()
        if backbone.uses_segments:
            return  # blocks need segment memory; the model-level checks cover them
        length = self._length(backbone)
        generator = torch.Generator().manual_seed(11)
        hidden = torch.randn(2, length, backbone.d_model, generator=generator)  # (B, L, D)
        active = torch.rand(2, length, generator=generator) > 0.5  # (B, L)
        active[0, 0], active[1, -1] = True, False
        nobody = torch.zeros_like(active)  # a GPU loop may queue a hop after every token halted
        for index, block in enumerate(backbone.blocks):
            if computes_rows(block):
                self._check_rows(index, block, hidden, active)
            with torch.no_grad():
                full = block(hidden, BlockContext(layer=index, step=1))
                for mask, what in ((active, "an active mask"), (nobody, "no active token")):
                    try:
                        update = layer_update(block, hidden, hidden, BlockContext(layer=index, step=1, active=mask))
                    except Exception as error:  # noqa: BLE001 - any failure is the finding
                        _fail(f"blocks[{index}] fails with {what}: {type(error).__name__}: {error}")
                    _expect_shape(f"blocks[{index}] with {what}", update, tuple(hidden.shape))
                    gap = _max_abs(full[mask] - update[mask]) if bool(mask.any()) else 0.0
                    if gap > 1e-5 * max(1.0, _max_abs(full)):
                        _fail(f"blocks[{index}]: the output for active tokens changes by {gap:.2e} "
                              "when an active mask is given")
                    if not torch.equal(update[~mask], hidden[~mask]):
                        _fail(f"blocks[{index}]: the rows of inactive tokens change with {what}")

    @staticmethod
    def _check_rows(index: int, block: Block, hidden: Tensor, active: Tensor) -> None:
        """forward_rows gives the rows of the full forward, for a subset and for every token."""
        flat = hidden.reshape(-1, hidden.shape[-1])  # (B*L, D)
        with torch.no_grad():
            full = block(hidden, BlockContext(layer=index, step=1)).reshape(flat.shape)
            for rows in (active.reshape(-1).nonzero().squeeze(1), torch.arange(len(flat))):
                try:
                    packed = block.forward_rows(hidden, rows, flat.index_select(0, rows),
                                                BlockContext(layer=index, step=1))
                except Exception as error:  # noqa: BLE001 - any failure is the finding
                    _fail(f"blocks[{index}].forward_rows fails: {type(error).__name__}: {error}")
                _expect_shape(f"blocks[{index}].forward_rows for {len(rows)} rows", packed,
                              (len(rows), flat.shape[-1]))
                gap = _max_abs(packed - full.index_select(0, rows))
                if gap > 1e-5 * max(1.0, _max_abs(full)):
                    _fail(f"blocks[{index}].forward_rows differs from forward at those rows by "
                          f"{gap:.2e} ({len(rows)} of {len(flat)} rows)")

    # ------------------------------------------------------------------ halting
    def _config_for_scope(self, scope: str) -> HaltingConfig:
        """The config under test moved to `scope` (options only valid elsewhere are dropped)."""
        config = self.config
        if scope == config.scope:
            return config
        config_class = type(config)
        try:
            return config_class.model_validate({**config.model_dump(exclude_unset=True), "scope": scope})
        except ValidationError:
            pass
        try:
            return config_class.model_validate({"scope": scope})
        except ValidationError as exc:
            _fail(f"supported_scopes lists {scope!r}, but no default config is valid there: {exc}")

    def _layers_for(self, scope: str) -> int:
        """3 layers, or 1 where the strategy rejects several layers in this scope (with a SpecError)."""
        if scope not in self._layers:
            try:
                self.plugin(self._config_for_scope(scope), d_model=8, n_layers=3)
                self._layers[scope] = 3
            except SpecError:
                self._layers[scope] = 1
        return self._layers[scope]

    def _strategy(self, scope: str, d_model: int) -> HaltingStrategy:
        config = self._config_for_scope(scope)
        return self.plugin(config, d_model=d_model, n_layers=self._layers_for(scope))

    def _scopes(self) -> list[str]:
        return sorted(getattr(self.plugin, "supported_scopes", ()))

    def _check_scopes(self) -> None:
        scopes = set(getattr(self.plugin, "supported_scopes", ()))
        if not scopes or not scopes <= {"layer", "model", "depth"}:
            _fail(f"supported_scopes must be a non-empty subset of layer/model/depth (got {sorted(scopes)})")
        if self.config.scope not in scopes:
            _fail(f"the config's scope {self.config.scope!r} is not in supported_scopes {sorted(scopes)}")
        for scope in sorted(scopes):
            layers = self._layers_for(scope)
            strategy = self._strategy(scope, d_model=8)
            hops = strategy.max_hops()
            if not isinstance(hops, int) or hops < 1:
                _fail(f"max_hops() is {hops!r} in {scope} scope (a positive int is needed)")
            if scope == "depth" and hops > layers:
                _fail(f"max_hops() is {hops} in depth scope with {layers} layers (hop n runs layer n: at most n_layers)")
            weight = strategy.loss_weight()
            if not isinstance(weight, (int, float)) or not math.isfinite(weight) or weight < 0:
                _fail(f"loss_weight() is {weight!r} (a finite number >= 0 is needed)")

    def _synthetic(self) -> list[dict[str, Any]]:
        """Run the strategy with marker hops: hop n returns e_n (one-hot) for active tokens.

        The input state is e_N (N = max_hops) and every state carries the same random
        per-token tail. A strategy whose output is sum_n w_n s_n with weights summing
        to 1 returns w_n in coordinate n, 0 in coordinate N, and the tail unchanged.
        """
        if self._synthetic_runs is not None:
            return self._synthetic_runs
        runs = []
        batch, length, tail_width = 3, 5, 3
        for scope in self._scopes():
            hops_cap = self._strategy(scope, d_model=8).max_hops()
            width = hops_cap + 1 + tail_width
            for mode in ("train", "eval"):
                for perturbed in (False, True):
                    seed_everything(0)
                    strategy = self._strategy(scope, d_model=width).train(mode == "train")
                    if perturbed:
                        _perturb(strategy, seed=1)
                    generator = torch.Generator().manual_seed(2)
                    tail = torch.randn(batch, length, tail_width, generator=generator)
                    state = torch.zeros(batch, length, width)
                    state[..., hops_cap] = 1.0
                    state[..., hops_cap + 1 :] = tail
                    log = _HopLog(batch, length, width, hops_cap, tail)
                    where = f"{scope} scope, {mode} mode{', perturbed weights' if perturbed else ''}"
                    try:
                        with torch.no_grad():
                            out = strategy(state, log.hop)
                    except _Problem as problem:
                        _fail(f"{problem} ({where})")
                    runs.append({"where": where, "out": out, "log": log, "cap": hops_cap, "state": state})
        self._synthetic_runs = runs
        return runs

    def _check_hop_protocol(self) -> None:
        for run in self._synthetic():
            out, log, where = run["out"], run["log"], run["where"]
            if not isinstance(out, PonderOutput):
                _fail(f"forward returned {type(out).__name__}, expected a PonderOutput ({where})")
            if not log.steps:
                _fail(f"the hop function was never called ({where})")
            _expect_shape(f"PonderOutput.output ({where})", out.output, tuple(run["state"].shape))
            if out.output.dtype != run["state"].dtype:
                _fail(f"output dtype {out.output.dtype} differs from the state's {run['state'].dtype} ({where})")

    def _check_halting_weights(self) -> None:
        for run in self._synthetic():
            out, log, cap, where = run["out"], run["log"], run["cap"], run["where"]
            output = out.output.float()
            weights = output[..., :cap]  # (B, L, N) weight of hop n's state
            kept_input = output[..., cap]  # (B, L) weight of the input state
            total = weights.sum(-1) + kept_input
            if _max_abs(total - 1.0) > 1e-4:
                _fail(
                    f"halting weights sum to values in [{float(total.min()):.4f}, {float(total.max()):.4f}], "
                    f"not 1: the output must be a weighted combination of hop states whose weights sum to 1 ({where})"
                )
            if _max_abs(output[..., cap + 1 :] - log.tail) > 1e-4:
                _fail(f"the output is not a weighted combination of hop states ({where})")
            if _max_abs(kept_input) > 1e-4:
                _fail(f"the output keeps weight {_max_abs(kept_input):.4f} on the input state; it must combine hop states ({where})")
            counted = torch.ceil(out.hops.float() - 1e-4)  # (B, L)
            hop_index = torch.arange(cap).view(1, 1, cap)
            beyond = (hop_index >= counted.unsqueeze(-1)) & (weights.abs() > 1e-4)
            if bool(beyond.any()):
                _fail(f"the output uses states of hops beyond the `hops` it reports for {int(beyond.any(-1).sum())} tokens ({where})")
            if out.hop_weights is not None:
                given = torch.stack([w.float() for w in out.hop_weights], dim=-1)  # (B, L, n)
                count = given.shape[-1]
                if count > cap or given.shape[:2] != weights.shape[:2]:
                    _fail(f"hop_weights has {count} entries of shape {tuple(given.shape[:2])}; expected at most "
                          f"{cap} of shape {tuple(weights.shape[:2])} ({where})")
                gap = max(_max_abs(given - weights[..., :count]), _max_abs(weights[..., count:]))
                if gap > 1e-4:
                    _fail(f"hop_weights do not give the output's combination of hop states (off by {gap:.2e}) ({where})")

    def _check_halting_stats(self) -> None:
        for run in self._synthetic():
            out, log, cap, where = run["out"], run["log"], run["cap"], run["where"]
            shape = tuple(run["state"].shape[:2])
            for field_name in ("hops", "ponder_cost", "remainder"):
                value = getattr(out, field_name)
                _expect_shape(f"PonderOutput.{field_name} ({where})", value, shape)
                _expect_finite(f"PonderOutput.{field_name} ({where})", value)
            hops = out.hops.float()
            if float(hops.min()) < 1 - 1e-5 or float(hops.max()) > cap + 1e-5:
                _fail(f"hops range over [{float(hops.min())}, {float(hops.max())}], outside [1, max_hops()={cap}] ({where})")
            over = hops > log.executed + 1e-4
            if bool(over.any()):
                _fail(f"hops exceed the hops actually run for {int(over.sum())} tokens ({where})")
            if out.aux_loss is not None:
                if out.aux_loss.numel() != 1:
                    _fail(f"aux_loss must be a scalar (shape {tuple(out.aux_loss.shape)}) ({where})")
                _expect_finite(f"aux_loss ({where})", out.aux_loss)
            if (out.hop_states is None) != (out.hop_probs is None):
                _fail(f"hop_states and hop_probs must be given together ({where})")
            if out.hop_states is not None:
                count = len(out.hop_states)
                _expect_shape(f"hop_probs ({where})", out.hop_probs, (*shape, count))
                for index, hop_state in enumerate(out.hop_states):
                    _expect_shape(f"hop_states[{index}] ({where})", hop_state, tuple(run["state"].shape))
                probs = out.hop_probs.float()
                if float(probs.min()) < -1e-6 or _max_abs(probs.sum(-1) - 1.0) > 1e-4:
                    _fail(f"hop_probs must be non-negative and sum to 1 over hops ({where})")

    def _check_packed_depth(self) -> None:
        """Depth-scope inference on packed rows gives what the dense hops give."""
        if "depth" not in self._scopes():
            return
        layers = self._layers_for("depth")
        ids = _token_ids(3, 7, seed=5)
        padded = torch.ones(3, 7, dtype=torch.bool)
        padded[1, 4:] = False
        for scale in (0.5, 3.0):  # small and large halting weights: mixed exit layers
            seed_everything(0)
            backbone = ProbeBackbone(ProbeBackboneConfig(n_layers=layers), vocab_size=VOCAB)
            model = PonderModel(backbone, self.plugin, self._config_for_scope("depth"), vocab_size=VOCAB).eval()
            _perturb(model.sites[0], seed=3, scale=scale)
            for mask in (None, padded):
                where = f"depth scope, weights perturbed by {scale}, {'padded' if mask is not None else 'no padding'}"
                outputs = []
                for packed in (True, False):
                    model.packed_inference = packed
                    seed_everything(1)
                    with torch.no_grad():
                        outputs.append(model(ids, mask=mask))
                packed_out, dense_out = outputs
                gap = _max_abs(packed_out.logits - dense_out.logits)
                if gap > 1e-5 * max(1.0, _max_abs(dense_out.logits)):
                    _fail(f"packed rows give logits {gap:.2e} away from forward's ({where})")
                for field_name in ("hops", "layers", "remainder", "ponder_cost"):
                    given, expected = getattr(packed_out.stats, field_name), getattr(dense_out.stats, field_name)
                    _expect_shape(f"{field_name} on packed rows ({where})", given, tuple(expected.shape))
                    if _max_abs(given.float() - expected.float()) > 1e-5:
                        _fail(f"packed rows give other {field_name} than forward ({where})")

    # ------------------------------------------------------------------ tasks
    def _task(self) -> Task:
        return self.plugin(self.config)

    def _task_data(self) -> TaskData:
        """The splits built from seed 0 (built once per checker)."""
        if self._built is None:
            self._built = self._task().build(0)
        return self._built

    def _check_task_data(self) -> None:
        import datasets

        task = self._task()
        vocab = getattr(task, "vocab_size", None)
        if not isinstance(vocab, int) or vocab < 2:
            _fail(f"vocab_size is {vocab!r} (an int >= 2 is needed)")
        data = self._task_data()
        if not isinstance(data, TaskData):
            _fail(f"build(seed) returned {type(data).__name__}, expected TaskData")
        for split in ("train", "validation", "test"):
            dataset = data.split(split)
            if not isinstance(dataset, datasets.Dataset):
                _fail(f"the {split} split is {type(dataset).__name__}, expected datasets.Dataset")
            if len(dataset) == 0:
                _fail(f"the {split} split is empty")
            for column in ("input_ids", "labels", *task.slice_columns):
                if column not in dataset.column_names:
                    _fail(f"the {split} split has no {column!r} column")
            for row_index, row in enumerate(dataset):
                _check_row(row, row_index, split, vocab, task.slice_columns)
        group = task.batch_group_column()
        if group is not None:
            if group not in data.train.column_names:
                _fail(f"batch_group_column() is {group!r}, which the train split lacks")
            if not all(isinstance(v, int) for v in data.train[group]):
                _fail(f"the batch group column {group!r} must hold ints")

    def _check_split_overlap(self) -> None:
        data = self._task_data()
        train = {tuple(ids) for ids in data.train["input_ids"]}
        for split in ("validation", "test"):
            rows = [tuple(ids) for ids in data.split(split)["input_ids"]]
            shared = [ids for ids in rows if ids in train]
            if shared:
                _fail(
                    f"{len(shared)} of {len(rows)} {split} examples also appear in train "
                    f"(first: {list(shared[0])[:24]})"
                )

    def _check_task_determinism(self) -> None:
        first, second = self._task_data(), self._task().build(0)
        for split in ("train", "validation", "test"):
            if first.split(split).to_dict() != second.split(split).to_dict():
                _fail(f"two builds with seed 0 give different {split} splits")

    def _check_extra_metrics(self) -> None:
        task = self._task()
        data = self._task_data()
        seed_everything(0)
        backbone = ProbeBackbone(ProbeBackboneConfig(), vocab_size=task.vocab_size)
        model = PonderModel(backbone, ProbeHalting, ProbeHaltingConfig(), vocab_size=task.vocab_size)
        subset = data.test.select(range(min(4, len(data.test))))
        metrics = task.extra_metrics(model, subset, torch.device("cpu"))
        if not isinstance(metrics, dict):
            _fail(f"extra_metrics returned {type(metrics).__name__}, expected a dict")
        for key, value in metrics.items():
            if not isinstance(key, str) or not isinstance(value, (int, float)) or not math.isfinite(value):
                _fail(f"extra_metrics must map str to finite numbers (got {key!r}: {value!r})")


def _check_row(row: dict, index: int, split: str, vocab: int, slice_columns: tuple[str, ...]) -> None:
    where = f"{split} example {index}"
    ids, labels = row["input_ids"], row["labels"]
    if not isinstance(ids, list) or not isinstance(labels, list):
        _fail(f"{where}: input_ids and labels must be lists of ints")
    if len(ids) == 0 or len(ids) != len(labels):
        _fail(f"{where}: input_ids ({len(ids)}) and labels ({len(labels)}) must be non-empty and equally long")
    if not all(isinstance(t, int) and 0 <= t < vocab for t in ids):
        _fail(f"{where}: input_ids must be ints in [0, vocab_size={vocab})")
    if not all(isinstance(t, int) and (t == IGNORE_INDEX or 0 <= t < vocab) for t in labels):
        _fail(f"{where}: labels must be ints in [0, vocab_size={vocab}) or {IGNORE_INDEX}")
    if all(t == IGNORE_INDEX for t in labels):
        _fail(f"{where}: no position is scored (every label is {IGNORE_INDEX})")
    for column in slice_columns:
        if not isinstance(row[column], int):
            _fail(f"{where}: slice column {column!r} must hold ints (got {row[column]!r})")


class _HopLog:
    """A marker hop function that checks the hop protocol and counts hops per token."""

    def __init__(self, batch: int, length: int, width: int, cap: int, tail: Tensor):
        self.shape = (batch, length, width)
        self.cap = cap
        self.tail = tail  # (B, L, T)
        self.steps: list[int] = []
        self.executed = torch.zeros(batch, length)  # (B, L) hops run per token

    def hop(self, state: Tensor, step: int, active: Tensor | None) -> Tensor:
        expected = len(self.steps)
        if isinstance(step, Tensor) or not isinstance(step, int):
            _fail(f"hop called with step={step!r}; step must be a Python int")
        if step != expected:
            _fail(f"hop called with step {step} after steps {self.steps}; steps must be 0, 1, 2, ... in order")
        if step >= self.cap:
            _fail(f"hop called with step {step}, but max_hops() is {self.cap}")
        if tuple(state.shape) != self.shape:
            _fail(f"hop called with a state of shape {tuple(state.shape)}, expected {self.shape}")
        self.steps.append(step)
        new = torch.zeros(self.shape, dtype=state.dtype)
        new[..., step] = 1.0
        new[..., self.cap + 1 :] = self.tail
        if active is None:
            self.executed += 1
            return new
        if not isinstance(active, Tensor) or active.dtype != torch.bool or tuple(active.shape) != self.shape[:2]:
            _fail(f"hop called with active={active!r}; it must be None or a (B, L) bool tensor")
        self.executed += active.float()
        return torch.where(active.unsqueeze(-1), new, state)  # the core freezes inactive tokens


# --------------------------------------------------------------------------- public helpers


def check_plugin(
    plugin: type, config: dict[str, Any] | PluginConfig | None = None, *, skip: Iterable[str] = ()
) -> None:
    """Check every contract of a plugin class; raise ConformanceError listing the broken ones."""
    checker = Conformance(plugin, config)
    failures = checker.run(skip=skip)
    if failures:
        raise ConformanceError(checker.label, failures)


def check_contract(plugin: type, contract: str, config: dict[str, Any] | PluginConfig | None = None) -> None:
    """Check one named contract of a plugin class (raises ContractError)."""
    Conformance(plugin, config).check(contract)


# --------------------------------------------------------------------------- pytest base classes


class _ContractTests:
    """Subclass with `plugin = MyClass` (and optionally `config = {...}`) in a `Test*` class."""

    plugin: ClassVar[type]
    config: ClassVar[dict[str, Any] | None] = None
    #: contracts not to run, with the reason in a comment (e.g. ("entry point",) before installing)
    skip_contracts: ClassVar[tuple[str, ...]] = ()

    def _check(self, contract: str) -> None:
        if contract in self.skip_contracts:
            import pytest

            pytest.skip(f"contract {contract!r} is in skip_contracts")
        cls = type(self)
        checker = cls.__dict__.get("_conformance")
        if checker is None:
            if not isinstance(getattr(cls, "plugin", None), type):
                raise TypeError(f"{cls.__name__}: set `plugin = YourPluginClass` on the test class")
            checker = Conformance(cls.plugin, cls.config)
            cls._conformance = checker
        checker.check(contract)


def _test_name(contract: str) -> str:
    return "test_" + contract.replace(" ", "_")


def _contract_test(contract: str):
    """A pytest method that checks one contract, named test_<contract with underscores>."""

    def test(self: _ContractTests) -> None:
        self._check(contract)

    test.__name__ = _test_name(contract)
    test.__doc__ = f"The {contract!r} contract."
    return test


def _contract_suite(kind: str, doc: str) -> type[_ContractTests]:
    """The pytest base class with one test method per contract of `kind` (see CONTRACTS)."""
    methods = {test.__name__: test for test in map(_contract_test, CONTRACTS[kind])}
    return type(f"{kind.capitalize()}Contract", (_ContractTests,), {"__doc__": doc, **methods})


BackboneContract = _contract_suite(
    "backbone", "Conformance tests for a backbone: `class TestMine(BackboneContract): plugin = Mine`."
)
HaltingContract = _contract_suite(
    "halting", "Conformance tests for a halting strategy: `class TestMine(HaltingContract): plugin = Mine`."
)
TaskContract = _contract_suite(
    "task", "Conformance tests for a task: `class TestMine(TaskContract): plugin = Mine`."
)


CONTRACT_CLASSES: dict[str, type[_ContractTests]] = {
    "backbone": BackboneContract,
    "halting": HaltingContract,
    "task": TaskContract,
}


def contract_test_names(kind: str) -> dict[str, str]:
    """contract -> the test method of the pytest base class that checks it."""
    return {contract: _test_name(contract) for contract in CONTRACTS[kind]}


__all__ = [
    "CONTRACTS",
    "SMALL_OPTIONS",
    "BackboneContract",
    "ConformanceError",
    "Conformance",
    "ContractError",
    "HaltingContract",
    "TaskContract",
    "check_contract",
    "check_plugin",
    "plugin_kind",
]
