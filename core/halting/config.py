"""`ACTConfig`, the options shared by hop-capped strategies, and the scope checks."""

from __future__ import annotations

import warnings
from typing import Any

from pydantic import Field, SerializerFunctionWrapHandler, model_serializer, model_validator

from ponderlab.core.config import HaltingConfig
from ponderlab.core.errors import SpecError

OLD_CAP = "max_steps"  # the cap's name before it became `max_hops`; specs that say it still load
# A spec key's rename is news for people running the CLI, where DeprecationWarnings are hidden.
warnings.filterwarnings("default", message="spec key halting.max_steps", category=DeprecationWarning)


class ACTConfig(HaltingConfig):
    """A strategy with a cap on hops, `max_hops`, in layer and model scopes. In depth scope
    the cap is the number of layers: setting `max_hops` there is an error, and the dump
    (saved specs, tune trials) leaves it out, so what a config writes validates again."""

    max_hops: int = Field(4, ge=1, description="Cap on hops per token (M); layer and model scopes.")

    @classmethod
    def __pydantic_init_subclass__(cls, **kwargs: Any) -> None:
        super().__pydantic_init_subclass__(**kwargs)
        if OLD_CAP in cls.model_fields:
            raise TypeError(f"{cls.__qualname__} declares `{OLD_CAP}`: ACTConfig's hop cap is now "
                            f"`max_hops`; rename the field and read config.max_hops")

    @model_validator(mode="before")
    @classmethod
    def _old_cap_name(cls, data: Any) -> Any:
        return renamed_cap(data)

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


def renamed_cap(data: Any) -> Any:
    """`data` with the old key `max_steps` read as `max_hops`, with a DeprecationWarning."""
    if not isinstance(data, dict) or OLD_CAP not in data:
        return data
    if "max_hops" in data:
        raise ValueError(f"give max_hops only: {OLD_CAP} is its old name")
    warnings.warn(f"spec key halting.{OLD_CAP} is deprecated: it is now halting.max_hops (same meaning)",
                  DeprecationWarning, stacklevel=2)
    return {("max_hops" if key == OLD_CAP else key): value for key, value in data.items()}


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
