"""A trial that is itself an N-worker run: Ray Train's TorchTrainer launched from the Tune trial.

This is Ray's Train-inside-Tune layout (Ray Train V2: the trial function is the Train driver).
The trial reserves only its driver's share (`tune.resources.cpu` CPUs, default 1, and no GPU);
the TorchTrainer asks Ray for `workers` x (cpus_per_worker, gpus_per_worker) itself, and the
search runs at most as many trials at once as the cluster can place, drivers and workers
(`concurrency_limit`), so a started trial never waits on another trial's workers. Rank 0 sends each validation through a `TuneChannel` once that step's
checkpoint is written; the trial reports it to Tune with the checkpoint (as a one-process
trial does) and only then lets rank 0 go on, so a scheduler's decision and Ray's record of the
checkpoint come before the run moves past it. A resumed trial restores its run directory from
Tune's checkpoint and the workers continue from it (core/distributed/worker.py).
"""

from __future__ import annotations

import json
import math
import threading
from pathlib import Path
from typing import Any

from ponderlab.core.distributed.placement import resources_needed, runs_distributed
from ponderlab.core.spec import SpecBase

#: Seconds rank 0 waits for the trial to take a validation (Tune may be saving a checkpoint).
SEND_TIMEOUT_S = 3600.0
_DONE = "done"


class TuneChannel:
    """Rank 0 -> the Tune trial: one validation at a time, each acknowledged before rank 0 goes on."""

    def __init__(self):
        from ray.util.queue import Queue

        self.items = Queue(actor_options={"num_cpus": 0})
        self.acks = Queue(actor_options={"num_cpus": 0})

    def send(self, step: int, metrics: dict[str, float]) -> None:
        """Called on rank 0 after the step's checkpoint is written (Trainer.on_validation)."""
        self.items.put((step, dict(metrics)))
        self.acks.get(timeout=SEND_TIMEOUT_S)

    def close(self) -> None:
        self.items.put((_DONE, None))

    def receive(self) -> tuple[Any, dict[str, float] | None]:
        return self.items.get()

    def acknowledge(self) -> None:
        self.acks.put(True)


def concurrency_limit(
    specs: list[SpecBase], cluster: dict[str, float], asked: int | None, driver_cpus: float = 1.0
) -> int | None:
    """How many trials may run at once: as many as the cluster can place the largest trial.

    None when no trial is distributed (Tune's per-trial resources decide); never above `asked`.
    """
    needs = [resources_needed(spec.distributed, driver_cpus) for spec in specs if runs_distributed(spec)]
    if not needs:
        return asked
    fits = []
    for resource in ("CPU", "GPU"):
        largest = max(need[resource] for need in needs)
        if largest > 0:
            fits.append(math.floor(cluster.get(resource, 0.0) / largest + 1e-9))
    limit = max(1, min(fits))
    return min(limit, asked) if asked else limit


def run_distributed_trial(spec: SpecBase, run_dir: Path, resume: bool, reporter) -> dict[str, Any]:
    """Run the trial's N workers, reporting every validation through `reporter`; return the results."""
    from ponderlab.core.distributed.launch import run_distributed

    channel = TuneChannel()
    outcome: dict[str, Any] = {}

    def fit() -> None:
        try:
            outcome["results"], _ = run_distributed(spec, output_dir=run_dir, resume=resume, channel=channel)
        except BaseException as exc:  # handed to the trial's thread, which raises it
            outcome["error"] = exc
        finally:
            channel.close()

    driver = threading.Thread(target=fit, name="ponderlab-train-driver", daemon=True)
    driver.start()
    while True:
        step, metrics = channel.receive()
        if step == _DONE:
            break
        reporter.on_validation(step, metrics)
        channel.acknowledge()
    driver.join()
    if "error" in outcome:
        raise outcome["error"]
    return outcome.get("results") or json.loads((run_dir / "results.json").read_text())
