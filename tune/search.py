"""Run a validated search with Ray Tune: param space, scheduler, searcher, start / resume.

Layout of an experiment directory (`tune.storage_path/<name>/`):
    tune_spec.yaml            the search spec after overrides (what --resume checks against)
    results.csv, results.md   one row per trial, sorted by the metric
    best.yaml                 a runnable spec of the best trial (`ponderlab run best.yaml`)
    runs/<trial_id>/          each trial's ponderlab run directory
    runs/<trial_id>.attempts.jsonl   one line per (re)start of that trial
    trial_<trial_id>/         Ray Tune's own trial files and reported checkpoints
    experiment_state-*.json, tuner.pkl, ...   Ray Tune's search state
"""

from __future__ import annotations

import logging
import os
import stat
from dataclasses import dataclass
from pathlib import Path
from typing import Any

import yaml

from ponderlab.core.checkpoint import atomic_write_text
from ponderlab.core.distributed.placement import check_capacity, runs_distributed
from ponderlab.core.errors import PonderlabError, SpecError

from .cluster import forget_cached_token, join
from .dims import SearchDim
from .distributed_trial import concurrency_limit
from .options import Resources
from .results import ResultTable, build_table, write_outputs
from .spec import TuneSpec, compare_for_resume, saved_spec_path

log = logging.getLogger(__name__)


@dataclass
class SearchOutcome:
    table: ResultTable
    experiment_dir: Path
    interrupted: bool
    outputs: dict[str, Path]


def param_space(dims: list[SearchDim]) -> dict[str, Any]:
    """Ray Tune domains; grid and choice sample an index into the listed values (Optuna-safe)."""
    from ray import tune

    space: dict[str, Any] = {}
    for dim in dims:
        if dim.kind == "grid":
            space[dim.key] = tune.grid_search(list(range(len(dim.values))))
        elif dim.kind == "choice":
            space[dim.key] = tune.choice(list(range(len(dim.values))))
        elif dim.kind == "uniform":
            space[dim.key] = tune.uniform(dim.low, dim.high)
        elif dim.kind == "loguniform":
            space[dim.key] = tune.loguniform(dim.low, dim.high)
        else:  # randint, both ends included
            space[dim.key] = tune.randint(int(dim.low), int(dim.high) + 1)
    return space


def resolve_resources(resources: Resources, cluster: dict[str, float]) -> dict[str, float]:
    """Per-trial resources; gpu auto = 1 GPU per trial when the cluster has any, else none."""
    gpu = resources.gpu
    if gpu == "auto":
        gpu = 1.0 if cluster.get("GPU", 0) > 0 else 0.0
    return {"cpu": float(resources.cpu), "gpu": float(gpu)}


def trial_dirname(trial) -> str:
    """Ray's folder for a trial: short and stable (the default embeds the config)."""
    return f"trial_{trial.trial_id}"


def make_scheduler(tspec: TuneSpec):
    options = tspec.options
    if options.scheduler == "fifo":
        return None
    from ray.tune.schedulers import ASHAScheduler

    asha = options.asha
    grace = asha.grace_period or min(spec.training.eval_every for spec in tspec.checked)
    return ASHAScheduler(
        time_attr="step",
        max_t=asha.max_t or tspec.max_steps,
        grace_period=grace,
        reduction_factor=asha.reduction_factor,
    )


def make_searcher(tspec: TuneSpec, max_concurrent: int | None):
    options = tspec.options
    if options.search_algorithm == "optuna":
        from ray.tune.search.optuna import OptunaSearch

        return OptunaSearch(seed=options.seed)
    from ray.tune.search import BasicVariantGenerator

    # Ray ignores TuneConfig.max_concurrent_trials with this generator: it takes its own limit.
    return BasicVariantGenerator(random_state=options.seed, max_concurrent=max_concurrent or 0)


def trial_plan(tspec: TuneSpec, resources: dict[str, float]) -> dict[str, Any]:
    """Plain data every trial receives (plugin names only, never classes)."""
    return {
        "base": tspec.base,
        "dims": [dim.to_plain() for dim in tspec.dims],
        "experiment_dir": str(tspec.experiment_dir),
        "cpus": resources["cpu"],
    }


def check_experiment_dir(tspec: TuneSpec, resume: bool) -> None:
    """Refuse to mix two searches in one directory; on --resume, insist on the same search."""
    directory = tspec.experiment_dir
    if not resume:
        if directory.exists() and any(directory.iterdir()):
            raise SpecError(
                f"experiment directory {directory} is not empty "
                "(use --resume to continue that search, or set tune.name=...)"
            )
        return
    saved = saved_spec_path(directory)
    if not saved.exists():
        raise SpecError(f"--resume: {directory} holds no search (no {saved.name})")
    difference = compare_for_resume(tspec, yaml.safe_load(saved.read_text()) or {})
    if difference is not None:
        raise SpecError(f"--resume: the spec differs from the one saved in {saved} (at {difference})")
    check_trusted(directory)  # before Ray reads (unpickles) anything there
    from ray.tune import Tuner

    if not Tuner.can_restore(str(directory)):
        raise SpecError(f"--resume: {directory} holds no Ray Tune experiment state")


def check_trusted(directory: Path) -> None:
    """Refuse to resume from state that another user could have written.

    Ray Tune's restore unpickles tuner.pkl and the experiment state beside it, and a
    pickle can run any code as whoever resumes. The folder and every file directly in it
    must be owned by the current user and writable by nobody else (no group or other write).
    Sub-folders (trials, runs) hold no pickles that a restore reads and are not checked.
    """
    user = os.geteuid()
    for path in [directory, *sorted(directory.iterdir())]:
        info = path.lstat()
        if path != directory and stat.S_ISDIR(info.st_mode):
            continue
        if stat.S_ISLNK(info.st_mode):
            problem = "is a symbolic link"
        elif info.st_uid != user:
            problem = f"is owned by user id {info.st_uid}, not by you ({user})"
        elif info.st_mode & (stat.S_IWGRP | stat.S_IWOTH):
            problem = f"is writable by other users (mode {stat.filemode(info.st_mode)})"
        else:
            continue
        raise SpecError(
            f"--resume: {path} {problem}; resuming unpickles Ray Tune's state in {directory}, which "
            "could run code as you, so only your own state is resumed (see docs/tune.md, Trust)"
        )


def connect(tspec: TuneSpec) -> bool:
    """Start or join Ray unless this process is already connected; True if we connected."""
    import ray

    if ray.is_initialized():
        if tspec.options.address:
            log.warning("Ray is already initialised in this process; ignoring tune.address")
        return False
    options = dict(
        runtime_env=tspec.options.runtime_env, include_dashboard=False, logging_level=logging.WARNING
    )
    if tspec.options.address:
        join(tspec.options.address, **options)
    else:
        forget_cached_token()  # a new local cluster makes or reads its own token
        ray.init(**options)
    return True


def run_search(tspec: TuneSpec, *, resume: bool = False, retry_failed: bool = False) -> SearchOutcome:
    """Run (or continue) the search; write the results table and best.yaml."""
    import ray
    from ray import tune

    from .trial import trial_main

    check_experiment_dir(tspec, resume)
    # Trials checkpoint at every validation by design; Ray would warn about the state syncs.
    os.environ.setdefault("TUNE_WARN_EXCESSIVE_EXPERIMENT_CHECKPOINT_SYNC_THRESHOLD_S", "0")
    connected = connect(tspec)
    try:
        cluster = ray.cluster_resources()
        resources = resolve_resources(tspec.options.resources, cluster)
        if any(runs_distributed(spec) for spec in tspec.checked):
            resources["gpu"] = 0.0  # the trial drives workers that Ray Train places (GPUs: theirs)
            if not tspec.options.address:  # a local Ray has what it has: every trial must fit
                for spec in tspec.checked:
                    if runs_distributed(spec):
                        check_capacity(spec.distributed, cluster, driver_cpus=resources["cpu"])
        max_concurrent = concurrency_limit(
            tspec.checked, cluster, tspec.options.max_concurrent_trials, driver_cpus=resources["cpu"]
        )
        trainable = tune.with_resources(
            tune.with_parameters(trial_main, plan=trial_plan(tspec, resources)), resources
        )
        if resume:
            # The space again: should Ray's searcher state be older than its trial list (a hard
            # kill during a state sync), a re-generated trial still gets a full config.
            tuner = tune.Tuner.restore(
                str(tspec.experiment_dir), trainable=trainable, param_space=param_space(tspec.dims),
                resume_unfinished=True, resume_errored=retry_failed,
            )
        else:
            tspec.experiment_dir.mkdir(parents=True, exist_ok=True)
            atomic_write_text(
                saved_spec_path(tspec.experiment_dir), yaml.safe_dump(tspec.raw, sort_keys=False)
            )
            tuner = tune.Tuner(
                trainable,
                param_space=param_space(tspec.dims),
                tune_config=tune.TuneConfig(
                    metric=tspec.options.metric,
                    mode=tspec.options.resolved_mode,
                    num_samples=tspec.options.num_samples,
                    scheduler=make_scheduler(tspec),
                    search_alg=make_searcher(tspec, max_concurrent),
                    # Optuna: Ray wraps it in a ConcurrencyLimiter; the basic generator has its own.
                    max_concurrent_trials=max_concurrent if tspec.options.search_algorithm == "optuna" else None,
                    reuse_actors=tspec.options.reuse_actors,
                    trial_dirname_creator=trial_dirname,
                ),
                run_config=tune.RunConfig(
                    name=tspec.name,
                    storage_path=str(tspec.experiment_dir.parent),
                    failure_config=tune.FailureConfig(
                        max_failures=tspec.options.max_failures, fail_fast=tspec.options.fail_fast
                    ),
                    checkpoint_config=tune.CheckpointConfig(num_to_keep=tspec.options.keep_checkpoints),
                    verbose=tspec.options.verbose,
                ),
            )
        tuner.fit()
        analysis = tune.ExperimentAnalysis(str(tspec.experiment_dir))
        trials = analysis.trials
        if not trials:
            raise PonderlabError(f"the search in {tspec.experiment_dir} ran no trials")
        table = build_table(tspec, trials)  # a failed trial's error file needs Ray still up
    finally:
        if connected:
            ray.shutdown()
    outputs = write_outputs(tspec, table)
    interrupted = any(row.status == "unfinished" for row in table.rows)
    return SearchOutcome(table=table, experiment_dir=tspec.experiment_dir, interrupted=interrupted, outputs=outputs)
