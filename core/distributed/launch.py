"""The driver of a distributed run: run directory, Ray (local or a cluster), TorchTrainer, failures.

`ponderlab run SPEC --workers N` ends here. The run directory has the same layout as a
one-process run (spec.yaml, metrics.jsonl, checkpoints/, results.json), plus workers.jsonl
(one line per worker start) and ray_train/ (Ray Train's own state). On a cluster the run
directory must be on storage every node mounts at the same path.
"""

from __future__ import annotations

import json
import logging
from pathlib import Path
from typing import Any

from .. import checkpoint as ckpt
from ..errors import PonderlabError
from ..run import build_task, prepare_run_dir, resume_spec, write_spec
from ..spec import SpecBase
from .placement import check_capacity, check_placement
from .worker import WORKERS_FILE, train_worker


class WorkerFailedError(PonderlabError):
    """A worker of a distributed run died or raised; the run can continue with --resume."""


def connect(address: str | None) -> bool:
    """Start a local Ray, or join `address` (token handled as for tune); True if we connected."""
    import ray

    if ray.is_initialized():
        return False
    options: dict[str, Any] = dict(include_dashboard=False, logging_level=logging.WARNING)
    from ponderlab.tune.cluster import forget_cached_token, join

    if address:
        join(address, option="distributed.address", **options)
    else:
        forget_cached_token()  # a new local cluster makes or reads its own token
        ray.init(**options)
    return True


def describe_worker(run_dir: Path, rank: int) -> str:
    """`worker rank R (pid P on host H)` from the last start recorded for that rank."""
    starts = []
    path = run_dir / WORKERS_FILE
    if path.exists():
        starts = [json.loads(line) for line in path.read_text().splitlines() if line.strip()]
    mine = [record for record in starts if record.get("rank") == rank]
    if not mine:
        return f"worker rank {rank}"
    return f"worker rank {rank} (pid {mine[-1]['pid']} on {mine[-1]['host']})"


def lost_worker(failure: Exception) -> bool:
    """True when the worker process itself was lost (killed, crashed), not an error in its code."""
    import ray.exceptions

    try:
        from ray.train.v2._internal.exceptions import RayTrainError
    except ImportError:  # another Ray layout: Ray's own errors only
        RayTrainError = ray.exceptions.RayError  # noqa: N806
    return isinstance(failure, (ray.exceptions.RayError, RayTrainError))


def first_line(error: Exception) -> str:
    return f"{type(error).__name__}: {(str(error).strip().splitlines() or [''])[0]}"


def failure_message(run_dir: Path, error: Exception) -> str:
    """One message: which worker failed and why, the last good checkpoint, how to go on.

    A lost worker (killed, crashed) is named as the cause; workers that then failed because
    their peer was gone are only counted.
    """
    failures = getattr(error, "worker_failures", None) or {}
    lost = {rank: failure for rank, failure in failures.items() if lost_worker(failure)}
    causes = lost or failures
    if causes:
        verb = "was lost" if lost else "failed"
        what = "; ".join(
            f"{describe_worker(run_dir, rank)} {verb} ({first_line(failure)})"
            for rank, failure in sorted(causes.items())
        )
        followers = sorted(set(failures) - set(causes))
        if followers:
            what += f"; rank(s) {', '.join(map(str, followers))} stopped with it"
    else:
        what = f"the distributed run failed ({first_line(error)})"
    return f"{what}; {ckpt.last_good(run_dir / 'checkpoints')}; continue with: ponderlab run --resume --output-dir {run_dir}"


def make_trainer(spec: SpecBase, run_dir: Path, channel: Any = None):
    """Ray Train's TorchTrainer for the run: N workers (gloo on CPUs, NCCL on GPUs), our failure policy.

    channel: where rank 0 sends each validation (a Tune trial's `TuneChannel`), or None.
    """
    from ray.train import FailureConfig, RunConfig, ScalingConfig
    from ray.train.torch import TorchConfig, TorchTrainer

    placement = spec.distributed
    use_gpu = placement.gpus_per_worker > 0
    resources = {"CPU": placement.cpus_per_worker}
    if use_gpu:
        resources["GPU"] = placement.gpus_per_worker
    return TorchTrainer(
        train_worker,
        train_loop_config={
            "spec": spec.model_dump(mode="json"), "run_dir": str(run_dir),
            "use_gpu": use_gpu, "cpus_per_worker": placement.cpus_per_worker, "channel": channel,
        },
        torch_config=TorchConfig(backend="nccl" if use_gpu else "gloo"),
        scaling_config=ScalingConfig(
            num_workers=placement.workers, use_gpu=use_gpu, resources_per_worker=resources
        ),
        run_config=RunConfig(
            name="train", storage_path=str(run_dir / "ray_train"),
            failure_config=FailureConfig(max_failures=placement.max_failures),
        ),
    )


def run_distributed(
    spec: SpecBase, *, output_dir: str | Path | None = None, resume: bool = False, progress: bool = True,
    channel: Any = None,
) -> tuple[dict[str, Any], Path]:
    """Train one run over `spec.distributed.workers` Ray Train workers; returns (results, run_dir).

    progress: accepted for `execute`'s signature; workers show no progress bar (metrics.jsonl,
    and Ray's worker log lines, show the progress). channel: see `make_trainer` (Tune trials).
    """
    from ray.train.v2.api.exceptions import TrainingFailedError

    check_placement(spec)
    run_dir = prepare_run_dir(spec, output_dir, resume)
    if resume:  # the saved experiment, placed as asked now
        spec = resume_spec(run_dir, spec).model_copy(update={"distributed": spec.distributed})
    build_task(spec)  # bad task options fail here, before anything is written
    placement = spec.distributed
    connected = connect(placement.address)  # a cluster that refuses us: also before any write
    try:
        if connected and not placement.address:  # a local Ray has what it has: workers must fit
            import ray

            check_capacity(placement, ray.cluster_resources())
        run_dir = run_dir.resolve()
        run_dir.mkdir(parents=True, exist_ok=True)
        if not resume:
            write_spec(spec, run_dir)
        make_trainer(spec, run_dir, channel).fit()
    except TrainingFailedError as exc:
        raise WorkerFailedError(failure_message(run_dir, exc)) from None
    finally:
        if connected:
            import ray

            ray.shutdown()
    results = json.loads((run_dir / "results.json").read_text())
    return results, run_dir
