"""`ACTConfig`, the options shared by hop-capped strategies, and the scope checks."""

from __future__ import annotations

import warnings
from typing import Any

from pydantic import Field, SerializerFunctionWrapHandler, model_serializer, model_validator

from ponderlab.core.config import HaltingConfig
from ponderlab.core.errors import SpecError


def renamed_key(data: Any, old: str, new: str) -> Any:
    """Map a halting option's old spec key to its new name, with a DeprecationWarning
    (the CLI shows those that start "spec key", core/cli.py); both keys is one error.
    For a config's `model_validator(mode="before")`."""
    if isinstance(data, dict) and old in data:
        if new in data:
            raise ValueError(f"give {new} only: {old} is its old name")
        warnings.warn(f"spec key halting.{old} is deprecated: it is now halting.{new} (same meaning)",
                      DeprecationWarning, stacklevel=3)
        data = {(new if key == old else key): value for key, value in data.items()}
    return data


class ACTConfig(HaltingConfig):
    """A strategy with a cap on hops, `max_hops`, in layer and model scopes. In depth scope
    the cap is the number of layers: setting `max_hops` there is an error, and the dump
    (saved specs, tune trials) leaves it out, so what a config writes validates again.
    Specs may still say `max_steps`, the cap's old name (with a DeprecationWarning)."""

    max_hops: int = Field(4, ge=1, description="Cap on hops per token (M); layer and model scopes.")

    @classmethod
    def __pydantic_init_subclass__(cls, **kwargs: Any) -> None:
        super().__pydantic_init_subclass__(**kwargs)
        if "max_steps" in cls.model_fields:
            raise TypeError(f"{cls.__qualname__} declares `max_steps`: ACTConfig's hop cap is now `max_hops`; rename it")

    @model_validator(mode="before")
    @classmethod
    def _old_cap_name(cls, data: Any) -> Any:
        return renamed_key(data, "max_steps", "max_hops")

    @model_validator(mode="after")
    def _no_cap_in_depth_scope(self):
        if self.scope == "depth" and "max_hops" in self.model_fields_set:
            raise ValueError("max_hops does not apply in depth scope (the cap is the number of layers); remove it")
        return self

    @model_serializer(mode="wrap")
    def _drop_cap_in_depth_scope(self, handler: SerializerFunctionWrapHandler) -> dict:
        data = handler(self)
        if self.scope == "depth" and isinstance(data, dict):
            data.pop("max_hops", None)  # not set (the validator forbids it) and not applicable
        return data


def require_scope(strategy: str, scope: str, supported: frozenset[str], hint: str = "") -> None:
    """Raise a SpecError naming halting.scope when `scope` is not supported."""
    if scope not in supported:
        allowed = ", ".join(sorted(supported))
        raise SpecError(
            f"halting {strategy!r} does not support scope {scope!r} (supported: {allowed}){hint}",
            path="halting.scope",
        )


def depth_cap_error(strategy: str, option: str, value: float, n_layers: int) -> SpecError:
    """The error for a depth-scope option larger than the stack."""
    return SpecError(
        f"{option} {value} exceeds the {n_layers} layer(s) available to halting {strategy!r} "
        "in depth scope",
        path=f"halting.{option}",
    )
