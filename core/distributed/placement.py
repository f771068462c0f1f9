"""Where a run executes: the spec's `distributed` section and the `ponderlab run` flags that set it.

Light on purpose (no Ray import): the CLI decides here whether a run goes through Ray Train.
"""

from __future__ import annotations

from typing import Any

from pydantic import ValidationError

from ..config import DistributedConfig
from ..errors import SpecError
from ..spec import SpecBase

#: `ponderlab run` flag -> key of the spec's `distributed` section.
FLAGS = {"--workers": "workers", "--gpus-per-worker": "gpus_per_worker", "--address": "address"}


def apply_flags(spec: SpecBase, flags: dict[str, Any]) -> SpecBase:
    """The spec with the given flags (None: not given) written into its `distributed` section."""
    section = spec.distributed.model_dump()
    for flag, value in flags.items():
        if value is None:
            continue
        try:
            section = DistributedConfig.model_validate({**section, FLAGS[flag]: value}).model_dump()
        except ValidationError as exc:
            message = exc.errors()[0]["msg"]
            raise SpecError(f"{message} (got {value!r})", path=f"distributed.{FLAGS[flag]}", where=flag) from None
    return spec.model_copy(update={"distributed": DistributedConfig.model_validate(section)})


def runs_distributed(spec: SpecBase) -> bool:
    """True when the run goes through Ray Train: several workers, or GPU workers.

    One CPU worker is a plain process here (the address is then not used).
    """
    placement = spec.distributed
    return placement.workers > 1 or placement.gpus_per_worker > 0


def check_placement(spec: SpecBase) -> None:
    """Every worker needs at least one row of the global batch."""
    workers, batch_size = spec.distributed.workers, spec.training.batch_size
    if workers > batch_size:
        raise SpecError(
            f"{workers} workers need a global batch of at least {workers} rows "
            f"(training.batch_size is {batch_size}): each worker takes its share of that batch",
            path="distributed.workers",
        )


def resources_needed(placement: DistributedConfig, driver_cpus: float = 0.0) -> dict[str, float]:
    """{"CPU", "GPU"} that the workers take, with a driver taking `driver_cpus` (a Tune trial's)."""
    return {
        "CPU": placement.workers * placement.cpus_per_worker + driver_cpus,
        "GPU": placement.workers * placement.gpus_per_worker,
    }


def capacity_problem(
    placement: DistributedConfig, cluster: dict[str, float], driver_cpus: float = 0.0
) -> tuple[str, str] | None:
    """(option, message) when `placement`'s workers (and a driver taking `driver_cpus`, as a Tune
    trial's does) cannot all be placed on `cluster`'s resources."""
    needed = resources_needed(placement, driver_cpus)
    cpus, gpus = needed["CPU"], needed["GPU"]
    have_cpus, have_gpus = cluster.get("CPU", 0.0), cluster.get("GPU", 0.0)
    if gpus > have_gpus:
        return "distributed.gpus_per_worker", (
            f"{placement.workers} workers x {placement.gpus_per_worker:g} GPUs need {gpus:g} GPUs; "
            f"Ray here has {have_gpus:g} (set gpus_per_worker: 0 for CPU workers on gloo)"
        )
    if cpus > have_cpus:
        driver = f" and the trial's driver {driver_cpus:g}" if driver_cpus else ""
        return "distributed.workers", (
            f"{placement.workers} workers x {placement.cpus_per_worker:g} CPUs{driver} need {cpus:g} CPUs; "
            f"Ray here has {have_cpus:g} (fewer workers, a smaller distributed.cpus_per_worker, or a cluster)"
        )
    return None


def check_capacity(placement: DistributedConfig, cluster: dict[str, float], driver_cpus: float = 0.0) -> None:
    """SpecError when the workers (and a trial's driver) do not fit this (local, fixed-size) Ray."""
    problem = capacity_problem(placement, cluster, driver_cpus)
    if problem is not None:
        raise SpecError(problem[1], path=problem[0])
