"""The checks every plugin kind shares, and the model-level checks."""

from __future__ import annotations

import tempfile
from collections.abc import Iterable
from functools import cached_property
from pathlib import Path
from typing import Any

import torch
import yaml
from pydantic import ValidationError
from torch import Tensor

from .. import checkpoint as ckpt
from ..config import PluginConfig
from ..errors import PluginError, SpecError
from ..interfaces import IGNORE_INDEX, Backbone
from ..model import PonderModel
from ..registry import CONFIG_BASES, Registry, get_registry, plugin_name
from ..run import seed_everything
from ..spec import PLUGIN_SECTIONS, read_yaml, spec_to_yaml, validate_spec
from .base import (
    CONTRACTS,
    SMALL_OPTIONS,
    UNKNOWN_KEY,
    VOCAB,
    ContractError,
    _expect_finite,
    _fail,
    _max_abs,
    _names,
    _perturb,
    _Problem,
    _state_differences,
    _token_ids,
    plugin_kind,
)
from .probes import PROBES, ProbeBackbone, ProbeBackboneConfig, ProbeHalting, ProbeHaltingConfig


class CommonChecks:
    """Set-up, running, and the contracts of every kind (config, yaml round trip, entry point)
    plus the model-level ones shared by backbones and halting strategies."""

    def __init__(self, plugin: type, config: dict[str, Any] | PluginConfig | None = None):
        self.plugin = plugin
        self.kind = plugin_kind(plugin)
        self.contracts: tuple[str, ...] = CONTRACTS[self.kind]
        self._overrides = config
        self._layers: dict[str, int] = {}  # n_layers a halting strategy is checked with, by scope
        try:
            self.name = plugin_name(plugin)
        except PluginError:
            self.name = plugin.__qualname__
        self.label = f"{self.kind} {self.name!r} ({plugin.__module__}.{plugin.__qualname__})"

    # ------------------------------------------------------------------ running
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
        """Run every contract (but `skip`); return the broken ones. Stops after a broken config.

        Contracts the plugin declares it cannot hold, with why (`conformance_exempt`), are
        skipped too; `check` still runs them (tests show the kit rejects exactly those).
        """
        skipped = set(skip) | set(getattr(self.plugin, "conformance_exempt", None) or {})
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
    @cached_property
    def config(self) -> PluginConfig:
        """The config under test (built once; a ContractError under 'config' if none builds)."""
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
        config_base = CONFIG_BASES[self.kind]
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
        try:
            config_class.model_validate({**config.model_dump(mode="json"), UNKNOWN_KEY: 1})
        except ValidationError:
            pass
        else:
            _fail("an unknown option was accepted; configs must forbid extra keys (subclass the ponderlab base config)")
        try:
            config_class.model_json_schema()
        except Exception as exc:  # `ponderlab schema` needs it
            _fail(f"no JSON schema for the config ({type(exc).__name__}: {exc}); `ponderlab schema` would fail")
        section = self.kind  # a plugin's spec section is named after its kind
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

    def _spec_data(self, config: PluginConfig | None = None) -> dict[str, Any]:
        data: dict[str, Any] = {section: {"name": "conformance_probe"} for section in PLUGIN_SECTIONS}
        data[self.kind] = (config or self.config).model_dump(mode="json")
        data["training"] = {"steps": 1}
        return data

    def _check_yaml_round_trip(self) -> None:
        """The config under test, and for a halting strategy the same options in every supported scope."""
        self._yaml_round_trip(self.config, "")
        for scope in self._scopes() if self.kind == "halting" else []:
            if scope != self.config.scope:
                self._yaml_round_trip(self._config_for_scope(scope), f" ({scope} scope)")

    def _yaml_round_trip(self, config: PluginConfig, where: str) -> None:
        try:
            text = yaml.safe_dump(config.model_dump(mode="json"), sort_keys=False)
        except yaml.YAMLError as exc:
            _fail(f"model_dump(mode='json') is not YAML-serialisable{where}: {exc}")
        try:
            reloaded = type(config).model_validate(yaml.safe_load(text))
        except ValidationError as exc:
            problem = "; ".join(e["msg"] for e in exc.errors())
            _fail(
                f"the config's own dump does not validate again{where}: {problem}. A validator that rejects an "
                "option must only reject a value the user set, or the dump must leave the option out "
                "(as ACTConfig does for max_hops in depth scope); saved runs write every option back"
            )
        if reloaded != config:
            _fail(f"config changed through YAML{where}: {self._diff(config, reloaded)}")
        registry = self._spec_registry()
        section = self.kind  # a plugin's spec section is named after its kind
        try:
            spec = validate_spec(self._spec_data(config), registry=registry)
        except SpecError as exc:
            _fail(f"a spec holding this config is rejected{where}: {exc}")
        if getattr(spec, section) != config:
            _fail(f"validating the spec changed the config{where}: {self._diff(config, getattr(spec, section))}")
        data, source = read_yaml(spec_to_yaml(spec), "<round trip>")
        try:
            again = validate_spec(data, source, registry=registry)
        except SpecError as exc:
            _fail(f"the spec written by spec_to_yaml does not validate again{where}: {exc}")
        if getattr(again, section) != config:
            _fail(f"config changed through spec YAML{where}: {self._diff(config, getattr(again, section))}")

    @staticmethod
    def _diff(before: PluginConfig, after: PluginConfig) -> str:
        pairs = {k: (getattr(before, k), getattr(after, k, None)) for k in sorted(type(before).model_fields)}
        changed = [f"{k}: {a!r} -> {b!r}" for k, (a, b) in pairs.items() if a != b]
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
    def _backbone(self, seed: int = 0) -> Backbone:
        """The backbone under test, seeded, with its parameters perturbed (`_perturb`)."""
        seed_everything(seed)
        return _perturb(self.plugin(self.config, vocab_size=VOCAB))

    def _model(self, seed: int, scope: str | None = None) -> PonderModel:
        """A PonderModel around the plugin under test (backbone or halting), seeded, with the
        plugin's parameters perturbed (`_perturb`)."""
        if self.kind == "backbone":
            halting = ProbeHaltingConfig(scope=scope or "layer")
            return PonderModel(self._backbone(seed), ProbeHalting, halting, vocab_size=VOCAB)
        config = self.config if scope is None else self._config_for_scope(scope)
        probe_config = ProbeBackboneConfig(n_layers=self._layers_for(config.scope))
        seed_everything(seed)  # after _layers_for, which may build (and so draw) the strategy once
        backbone = ProbeBackbone(probe_config, vocab_size=VOCAB)
        model = PonderModel(backbone, self.plugin, config, vocab_size=VOCAB)
        _perturb(model.sites)
        return model

    @staticmethod
    def _length(backbone: Backbone) -> int:
        """A sequence length that spans at least two segments of a memory backbone."""
        if backbone.uses_segments and backbone.segment_size:
            return 2 * int(backbone.segment_size) + 3
        return 9

    def _forward(self, model: PonderModel, ids: Tensor, labels: Tensor | None = None, seed: int = 0):
        torch.manual_seed(seed)  # stochastic strategies draw the same numbers in both runs
        return model(ids, labels=labels)

    def _scopes(self) -> list[str]:
        """The scopes a strategy supports; a backbone is checked in all three (layer first)."""
        if self.kind == "backbone":
            return ["layer", "model", "depth"]
        return sorted(getattr(self.plugin, "supported_scopes", ()))

    def _check_causality(self) -> None:
        for scope in self._scopes():
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
        for scope in self._scopes()[: 1 if self.kind == "backbone" else None]:
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
        part = "backbone" if self.kind == "backbone" else "sites"  # the model part under test
        params = [(f"{part}.{n}", p) for n, p in getattr(model, part).named_parameters()]
        params = [(n, p) for n, p in params if p.requires_grad]
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
