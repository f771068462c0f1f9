"""The pydantic models of a search spec's `search:` domains and `tune:` section."""

from __future__ import annotations

import re
from typing import Any, Literal

from pydantic import Field, field_validator, model_validator

from ponderlab.core.config import StrictModel

DOMAIN_KINDS = ("grid", "choice", "uniform", "loguniform", "randint")
DISCRETE_KINDS = ("grid", "choice")
#: Metrics computed at every validation (core/metrics.py); slices add `col=value/exact_match`.
VALIDATION_METRICS = (
    "loss", "token_accuracy", "exact_match", "mean_hops", "max_hops",
    "mean_layers", "ponder_cost", "remainder",
)
_SLICE_METRIC = re.compile(r"^[^/=]+=[^/]+/(exact_match|token_accuracy)$")
_LOWER_IS_BETTER = ("loss", "mean_hops", "max_hops", "mean_layers", "ponder_cost", "remainder")


# --------------------------------------------------------------------------- pydantic models


class SearchDomain(StrictModel):
    """One searched key: exactly one of grid / choice / uniform / loguniform / randint."""

    grid: list[Any] | None = Field(None, description="Every value, once per sample (grid search).")
    choice: list[Any] | None = Field(None, description="One value drawn uniformly per trial.")
    uniform: tuple[float, float] | None = Field(None, description="[low, high] drawn uniformly.")
    loguniform: tuple[float, float] | None = Field(None, description="[low, high] drawn log-uniformly.")
    randint: tuple[int, int] | None = Field(None, description="[low, high], both ends included.")

    @model_validator(mode="after")
    def _one_kind(self):
        given = [kind for kind in DOMAIN_KINDS if getattr(self, kind) is not None]
        if len(given) != 1:
            raise ValueError(f"give exactly one of {', '.join(DOMAIN_KINDS)} (got {', '.join(given) or 'none'})")
        kind = given[0]
        value = getattr(self, kind)
        if kind in DISCRETE_KINDS and not value:
            raise ValueError(f"{kind} needs at least one value")
        if kind in ("uniform", "loguniform") and not value[0] < value[1]:
            raise ValueError(f"{kind} needs low < high (got {list(value)})")
        if kind == "loguniform" and value[0] <= 0:
            raise ValueError(f"loguniform needs low > 0 (got {value[0]})")
        if kind == "randint" and value[0] > value[1]:
            raise ValueError(f"randint needs low <= high (got {list(value)})")
        return self

    @property
    def kind(self) -> str:
        return next(kind for kind in DOMAIN_KINDS if getattr(self, kind) is not None)


class AshaOptions(StrictModel):
    """Asynchronous successive halving, on the training step of each validation."""

    grace_period: int | None = Field(
        None, ge=1, description="Steps before a trial can be stopped (default: training.eval_every)."
    )
    reduction_factor: float = Field(3.0, gt=1, description="Keep the best 1/reduction_factor at each rung.")
    max_t: int | None = Field(None, ge=1, description="Last rung in steps (default: the most training.steps).")


class Resources(StrictModel):
    """What one trial reserves. gpu: auto = 1 GPU per trial when the cluster has GPUs, else 0."""

    cpu: float = Field(1.0, gt=0)
    gpu: float | Literal["auto"] = Field("auto")

    @field_validator("gpu", mode="before")
    @classmethod
    def _gpu(cls, value):
        if value == "auto":
            return value
        if isinstance(value, bool) or not isinstance(value, (int, float)) or value < 0:
            raise ValueError(f"must be a number of GPUs >= 0 or 'auto' (got {value!r})")
        return value


class TuneOptions(StrictModel):
    """The `tune:` section: how Ray Tune runs the search."""

    metric: str = Field("validation/exact_match", description="Reported at every validation.")
    mode: Literal["max", "min"] | None = Field(None, description="Default: min for losses/hops/costs.")
    num_samples: int = Field(1, ge=1, description="Repeats of the grid (basic) or trials (optuna).")
    scheduler: Literal["fifo", "asha"] = "fifo"
    asha: AshaOptions = Field(default_factory=AshaOptions)
    search_algorithm: Literal["basic", "optuna"] = Field(
        "basic", description="basic: grid + random sampling; optuna: TPE (no grid domains)."
    )
    seed: int | None = Field(None, description="Seed of the sampler (random domains, Optuna).")
    max_concurrent_trials: int | None = Field(None, ge=1)
    resources: Resources = Field(default_factory=Resources)
    storage_path: str = Field("runs/tune", description="Experiment dirs go under it (shared FS on a cluster).")
    name: str | None = Field(None, description="Experiment name (default: the spec's name or file stem).")
    address: str | None = Field(None, description="Join an existing Ray cluster (e.g. auto, 10.0.0.1:6379).")
    runtime_env: dict[str, Any] | None = Field(None, description="Ray runtime_env for this search's workers.")
    max_failures: int = Field(0, ge=-1, description="Retries of a crashed trial (-1: unlimited).")
    fail_fast: bool = Field(False, description="Stop the whole search at the first trial error.")
    reuse_actors: bool = Field(True, description="Run later trials in the same worker processes.")
    keep_checkpoints: int = Field(2, ge=1, description="Reported checkpoints Ray keeps per trial.")
    columns: list[str] = Field(default_factory=list, description="Extra result keys for the table.")
    verbose: int = Field(1, ge=0, le=3, description="Ray Tune console verbosity.")

    @field_validator("metric")
    @classmethod
    def _known_metric(cls, value: str) -> str:
        split, _, name = value.partition("/")
        if split != "validation" or not (name in VALIDATION_METRICS or _SLICE_METRIC.match(name)):
            raise ValueError(
                "must be a metric reported at every validation: validation/<name> with <name> one of "
                f"{', '.join(VALIDATION_METRICS)} (or a slice such as validation/length=8/exact_match)"
            )
        return value

    @field_validator("storage_path")
    @classmethod
    def _local_path(cls, value: str) -> str:
        if "://" in value:
            raise ValueError("must be a filesystem path (on a cluster: one every node mounts)")
        return value

    @property
    def resolved_mode(self) -> str:
        if self.mode is not None:
            return self.mode
        return "min" if self.metric.rsplit("/", 1)[-1] in _LOWER_IS_BETTER else "max"
