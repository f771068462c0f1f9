"""The function every Ray Train worker runs: the normal Trainer with a TorchGroup.

Rank 0 writes everything (metrics, checkpoints, results); every rank loads the run's latest
checkpoint at start, so a restarted worker group (Ray Train's `max_failures`) continues from it.
"""

from __future__ import annotations

import json
import os
import socket
import time
from pathlib import Path
from typing import Any

import torch

from .. import checkpoint as ckpt
from ..run import build_model_from_spec, build_task, seed_everything, write_results
from ..spec import validate_spec
from ..trainer import Trainer
from .group import TorchGroup

WORKERS_FILE = "workers.jsonl"


def record_worker(run_dir: Path, rank: int, world_size: int, start_step: int) -> None:
    """One line per worker start (rank, pid, host): names a worker when it fails."""
    record = {
        "rank": rank, "world_size": world_size, "pid": os.getpid(), "host": socket.gethostname(),
        "start_step": start_step, "time": time.time(),
    }
    with open(run_dir / WORKERS_FILE, "a") as handle:
        handle.write(json.dumps(record) + "\n")


def worker_device(use_gpu: bool) -> torch.device:
    if not use_gpu:
        return torch.device("cpu")
    import ray.train.torch

    device = ray.train.torch.get_device()
    torch.cuda.set_device(device)
    return device


def train_worker(config: dict[str, Any]) -> None:
    """Ray Train's train_loop_per_worker; config is plain data (the spec by plugin names)."""
    import ray.train

    context = ray.train.get_context()
    rank, world_size = context.get_world_rank(), context.get_world_size()
    spec = validate_spec(config["spec"])  # this worker's registry finds the plugins by name
    torch.set_num_threads(spec.training.num_threads or max(1, int(config["cpus_per_worker"])))
    run_dir = Path(config["run_dir"])
    device = worker_device(config["use_gpu"])
    task = build_task(spec)
    data = task.build(spec.seed)
    seed_everything(spec.seed)
    model = build_model_from_spec(spec, task.vocab_size)
    channel = config.get("channel")  # a Tune trial's: rank 0 reports each validation to it
    trainer = Trainer(
        model=model, task=task, data=data, config=spec.training, seed=spec.seed,
        run_dir=run_dir if rank == 0 else None, device=device, progress=False,
        group=TorchGroup(rank, world_size, device),
        on_validation=channel.send if channel is not None and rank == 0 else None,
    )
    latest = ckpt.latest_checkpoint(run_dir / "checkpoints")
    if latest is not None:
        if rank == 0:
            trainer.resume()  # also drops metrics logged after that checkpoint
        else:
            trainer.load_state(ckpt.load_checkpoint(latest, device), str(latest))
    record_worker(run_dir, rank, world_size, trainer.step)
    results = trainer.fit()
    if rank == 0:
        write_results(spec, trainer, {**results, "workers": world_size}, device, run_dir)
