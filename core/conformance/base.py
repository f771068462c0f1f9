"""Shared pieces of the conformance checks: contract names, errors, small helpers."""

from __future__ import annotations

import typing
from collections.abc import Iterable
from typing import Any

import torch
from torch import Tensor, nn

from ..registry import KINDS

COMMON_CONTRACTS = ("config", "yaml round trip", "entry point")
#: Contracts checked on a whole PonderModel around a backbone or a halting strategy.
MODEL_CONTRACTS = ("causality", "gradient flow", "determinism", "checkpoint")
CONTRACTS: dict[str, tuple[str, ...]] = {
    "backbone": (*COMMON_CONTRACTS, "construction", "output shapes", "active subset",
                 *MODEL_CONTRACTS),
    "halting": (*COMMON_CONTRACTS, "scopes", "hop protocol", "halting weights", "halting stats",
                "packed depth", *MODEL_CONTRACTS),
    "task": (*COMMON_CONTRACTS, "task data", "split overlap", "determinism", "extra metrics"),
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



# --------------------------------------------------------------------------- helpers


def plugin_kind(plugin: type) -> str:
    """'backbone', 'halting' or 'task' for a plugin class."""
    for kind, (_, base) in KINDS.items():
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


#: Every contract check runs on parameters moved this far from their initial values (fixed
#: noise, the same for every build), so a defect hidden by an initialisation (a zero-init
#: halting unit that reads the future, a block whose future-reading path starts at zero)
#: shows; the hop-weight and packed-depth checks add their own larger perturbations.
CONTRACT_PERTURBATION = 0.1
_CONTRACT_NOISE_SEED = 17


def _perturb(
    module: nn.Module, seed: int = _CONTRACT_NOISE_SEED, scale: float = CONTRACT_PERTURBATION
) -> nn.Module:
    """Move every floating parameter away from its initial value (in place); by default as
    every contract check does. Returns `module`."""
    generator = torch.Generator().manual_seed(seed)
    with torch.no_grad():
        for parameter in module.parameters():
            if parameter.is_floating_point():
                noise = torch.randn(parameter.shape, generator=generator).to(parameter.dtype)
                parameter.add_(scale * noise)
    return module


def _state_differences(a: nn.Module, b: nn.Module) -> list[str]:
    sa, sb = a.state_dict(), b.state_dict()
    if sa.keys() != sb.keys():
        return sorted(set(sa) ^ set(sb))
    return [k for k in sa if isinstance(sa[k], Tensor) and not torch.equal(sa[k], sb[k])]
