"""One run over 2 data-parallel workers on Ray Train (gloo, CPU), against the one-process run.

A head started once for the module (`ray start --head` on loopback, its own token) serves every
run: this process joins it for the in-process runs, and CLI drivers join it with `--address`
(the driver kill and worker kill cases). The one-process runs need no Ray.
"""

from __future__ import annotations

import json
import os
import signal
import subprocess
import sys
import time
from pathlib import Path
from types import SimpleNamespace

import pytest
import yaml

os.environ.setdefault("RAY_ENABLE_WINDOWS_OR_OSX_CLUSTER", "0")  # Ray sockets on loopback

import ponderlab  # noqa: E402
from ponderlab.core import checkpoint as ckpt  # noqa: E402
from ponderlab.core.cli import main as cli_main  # noqa: E402
from ponderlab.core.errors import SpecError  # noqa: E402
from ponderlab.core.spec import resolve_spec  # noqa: E402
from test_tune_search import (  # noqa: E402
    free_port,
    short_temp_dir,
    stop_cluster,
    without_ray_auth,
)

REPO = Path(__file__).resolve().parents[1]
TASK = {"name": "binary_copy", "length": 6, "train_size": 256, "validation_size": 32, "test_size": 32}
TRAINING = {
    "steps": 6, "batch_size": 7, "lr": 0.01, "warmup_steps": 1, "eval_every": 3, "log_every": 1,
    "num_threads": 1,
}
GRAVES = {
    "seed": 0, "task": TASK, "training": TRAINING,
    "backbone": {"name": "transformer", "d_model": 16, "n_layers": 2, "n_heads": 2, "ffn_size": 32},
    "halting": {"name": "graves", "scope": "layer", "max_steps": 3, "epsilon": 0.1,
                "halting_bias_init": -0.2, "time_penalty": 0.01},
}
ARMT = {
    **GRAVES,
    "backbone": {"name": "armt", "d_model": 16, "n_layers": 1, "n_heads": 2, "ffn_size": 32,
                 "memory_size": 2, "d_mem": 4, "segment_size": 5},
}
TRAIN_KEYS = ("loss", "task_loss", "mean_hops", "ponder_cost", "grad_norm", "lr")
FINAL_KEYS = ("loss", "token_accuracy", "exact_match", "mean_hops", "max_hops", "ponder_cost", "remainder")


def jsonl(path: Path) -> list[dict]:
    return [json.loads(line) for line in path.read_text().splitlines() if line.strip()]


def assert_same_run(run_dir: Path, reference_dir: Path) -> None:
    """Logged training numbers and final metrics equal the reference run's (float tolerance)."""
    logged, expected = jsonl(run_dir / "metrics.jsonl"), jsonl(reference_dir / "metrics.jsonl")
    assert [(r["step"], r["split"]) for r in logged] == [(r["step"], r["split"]) for r in expected]
    for got, want in zip(logged, expected, strict=True):
        keys = TRAIN_KEYS if want["split"] == "train" else FINAL_KEYS
        for key in keys:
            assert got[key] == pytest.approx(want[key], rel=1e-4, abs=1e-6), (got["step"], got["split"], key)
    results = json.loads((run_dir / "results.json").read_text())
    reference = json.loads((reference_dir / "results.json").read_text())
    for split in ("validation", "test"):
        for key in FINAL_KEYS:
            name = f"{split}/{key}"
            assert results[name] == pytest.approx(reference[name], rel=1e-4, abs=1e-6), name


def distributed(spec: dict, **placement) -> dict:
    return {**spec, "distributed": {"workers": 2, **placement}}


@pytest.fixture(scope="module")
def head():
    """A Ray head with a token of its own (2 CPUs); this process joins it (token mode, as `join` does)."""
    import ray

    from ponderlab.tune.cluster import join

    temp_dir = short_temp_dir("pld")
    token = temp_dir / "auth_token"
    token.write_text(os.urandom(32).hex())
    token.chmod(0o600)
    port = free_port()
    ports = {name: free_port() for name in (
        "ray-client-server-port", "node-manager-port", "object-manager-port", "metrics-export-port",
        "runtime-env-agent-port", "dashboard-agent-listen-port", "dashboard-agent-grpc-port",
    )}
    command = [  # this interpreter's Ray, so the workers import this checkout's ponderlab
        sys.executable, "-c", "from ray.scripts.scripts import main; main()", "start", "--head", f"--port={port}", "--node-ip-address=127.0.0.1", "--num-cpus=2",
        "--num-gpus=0", f"--temp-dir={temp_dir}", "--include-dashboard=false", "--disable-usage-stats",
        *(f"--{name}={value}" for name, value in ports.items()),
    ]
    env = {**without_ray_auth(os.environ), "RAY_AUTH_TOKEN_PATH": str(token)}
    with pytest.MonkeyPatch.context() as patch:
        try:
            started = subprocess.run(
                command, capture_output=True, text=True, timeout=180, env={**env, "RAY_AUTH_MODE": "token"}
            )
            assert started.returncode == 0, started.stdout + started.stderr
            address = f"127.0.0.1:{port}"
            for name in ("RAY_AUTH_MODE", "RAY_AUTH_TOKEN"):
                patch.delenv(name, raising=False)
            patch.setenv("RAY_AUTH_TOKEN_PATH", str(token))
            join(address, option="distributed.address", include_dashboard=False, logging_level="WARNING")
            yield SimpleNamespace(address=address, env=env)
        finally:
            ray.shutdown()
            stop_cluster(temp_dir)


@pytest.fixture(scope="module")
def graves_reference(tmp_path_factory) -> Path:
    """The one-process run of the transformer + graves spec (no Ray)."""
    run_dir = tmp_path_factory.mktemp("reference") / "graves"
    ponderlab.run(GRAVES, output_dir=run_dir)
    return run_dir


# --------------------------------------------------------------------------- bad placement: no Ray


def test_bad_worker_flags_exit_2_and_write_nothing(tmp_path, capsys):
    run_dir = tmp_path / "run"
    spec = tmp_path / "spec.yaml"
    spec.write_text(yaml.safe_dump(GRAVES))
    assert cli_main(["run", str(spec), "--output-dir", str(run_dir), "--workers", "0"]) == 2
    assert "--workers: distributed.workers: " in capsys.readouterr().err
    assert cli_main(["run", str(spec), "--output-dir", str(run_dir), "--workers", "8"]) == 2
    message = capsys.readouterr().err
    assert "distributed.workers: 8 workers need a global batch of at least 8 rows" in message
    assert "training.batch_size is 7" in message
    assert not run_dir.exists()


def test_distributed_section_is_validated_with_the_spec():
    spec = resolve_spec(distributed(GRAVES, gpus_per_worker=1, max_failures=2))
    assert (spec.distributed.workers, spec.distributed.gpus_per_worker, spec.distributed.max_failures) == (2, 1, 2)
    with pytest.raises(SpecError, match="distributed.worker: unknown key"):
        resolve_spec({**GRAVES, "distributed": {"worker": 2}})


# --------------------------------------------------------------------------- same numbers


@pytest.mark.slow
def test_two_workers_match_one_process_transformer_graves(head, graves_reference, tmp_path):
    from ponderlab.core.distributed.launch import run_distributed

    results, run_dir = run_distributed(resolve_spec(distributed(GRAVES)), output_dir=tmp_path / "two")
    assert results["workers"] == 2
    assert {r["rank"] for r in jsonl(run_dir / "workers.jsonl")} == {0, 1}
    hops = {r["mean_hops"] for r in jsonl(run_dir / "metrics.jsonl") if r["split"] == "train"}
    assert len(hops) > 1  # halting varies, so the hop statistics are really compared
    assert_same_run(run_dir, graves_reference)


@pytest.mark.slow
def test_two_workers_match_one_process_armt_segments(head, tmp_path):
    from ponderlab.core.distributed.launch import run_distributed

    reference = tmp_path / "one"
    ponderlab.run(ARMT, output_dir=reference)
    _, run_dir = run_distributed(resolve_spec(distributed(ARMT)), output_dir=tmp_path / "two")
    assert_same_run(run_dir, reference)
