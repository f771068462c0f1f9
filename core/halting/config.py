"""`ACTConfig`, the options shared by hop-capped strategies, and the scope checks."""

from __future__ import annotations

from pydantic import Field, SerializerFunctionWrapHandler, model_serializer, model_validator

from ponderlab.core.config import HaltingConfig
from ponderlab.core.errors import SpecError


class ACTConfig(HaltingConfig):
    """A strategy with a cap on hops, `max_steps`, in layer and model scopes. In depth scope
    the cap is the number of layers: setting `max_steps` there is an error, and the dump
    (saved specs, tune trials) leaves it out, so what a config writes validates again."""

    max_steps: int = Field(4, ge=1, description="Cap on hops per token (M); layer and model scopes.")

    @model_validator(mode="after")
    def _no_cap_in_depth_scope(self):
        if self.scope == "depth" and "max_steps" in self.model_fields_set:
            raise ValueError("max_steps does not apply in depth scope (the cap is the number of layers); remove it")
        return self

    @model_serializer(mode="wrap")
    def _drop_cap_in_depth_scope(self, handler: SerializerFunctionWrapHandler) -> dict:
        data = handler(self)
        if self.scope == "depth" and isinstance(data, dict):
            data.pop("max_steps", None)  # not set (the validator forbids it) and not applicable
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
