"""One run over 2 data-parallel workers on Ray Train (gloo, CPU), against the one-process run.

A head started once for the module (`ray start --head` on loopback, its own token) serves every
run: this process joins it for the in-process runs, and CLI drivers join it with `--address`
(the driver kill and worker kill cases). The one-process runs need no Ray.
"""

from __future__ import annotations

import json
import os
import shutil
import signal
import subprocess
import sys
import threading
import time
from pathlib import Path
from types import SimpleNamespace

import pytest
import yaml

os.environ.setdefault("RAY_ENABLE_WINDOWS_OR_OSX_CLUSTER", "0")  # Ray sockets on loopback

from tune_checks import (  # noqa: E402
    free_port,
    short_temp_dir,
    stop_cluster,
    without_ray_auth,
)

import ponderlab  # noqa: E402
from ponderlab.core import checkpoint as ckpt  # noqa: E402
from ponderlab.core.cli import main as cli_main  # noqa: E402
from ponderlab.core.errors import SpecError  # noqa: E402
from ponderlab.core.spec import resolve_spec  # noqa: E402

REPO = Path(__file__).resolve().parents[1]
TASK = {"name": "binary_copy", "length": 6, "train_size": 256, "validation_size": 32, "test_size": 32}
TRAINING = {
    "steps": 6, "batch_size": 7, "lr": 0.01, "warmup_steps": 1, "eval_every": 3, "log_every": 1,
    "num_threads": 1,
}
GRAVES = {
    "seed": 0, "task": TASK, "training": TRAINING,
    "backbone": {"name": "transformer", "d_model": 16, "n_layers": 2, "n_heads": 2, "ffn_size": 32},
    "halting": {"name": "graves", "scope": "layer", "max_hops": 3, "epsilon": 0.1,
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
            shutil.rmtree(temp_dir, ignore_errors=True)


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


# --------------------------------------------------------------------------- failures and resume

LONGER = {**GRAVES, "training": {**TRAINING, "steps": 40, "checkpoint_every": 2, "eval_every": 20}}


@pytest.fixture(scope="module")
def longer_reference(tmp_path_factory) -> dict:
    """Final results of the one-process run of LONGER, uninterrupted (no Ray)."""
    return ponderlab.run(LONGER, output_dir=tmp_path_factory.mktemp("reference") / "longer")


def start_driver(head, *args: str) -> subprocess.Popen:
    """`ponderlab run ... --workers 2 --address HEAD` in a session of its own."""
    return subprocess.Popen(
        [sys.executable, "-m", "ponderlab.core.cli", "run", *args, "--workers", "2", "--address", head.address,
         "--no-progress"],
        cwd=REPO, env=head.env, stdout=subprocess.PIPE, stderr=subprocess.PIPE, text=True,
        start_new_session=True,
    )


def checkpoint_step(run_dir: Path) -> int:
    found = ckpt.list_checkpoints(run_dir / "checkpoints")
    return found[-1][0] if found else 0


def wait_for_checkpoint(run_dir: Path, after: int, driver: subprocess.Popen | None = None) -> int:
    """Until a checkpoint later than step `after` exists; its step."""
    deadline = time.time() + 400
    while time.time() < deadline:
        step = checkpoint_step(run_dir)
        if step > after:
            return step
        if driver is not None and driver.poll() is not None:
            pytest.fail(f"the run ended before it could be killed:\n{driver.stderr.read()[-3000:]}")
        time.sleep(0.05)
    pytest.fail(f"no checkpoint after step {after} in time")


def latest_worker_pids(run_dir: Path) -> dict[int, int]:
    """rank -> pid of each rank's latest start (workers.jsonl)."""
    return {record["rank"]: record["pid"] for record in jsonl(run_dir / "workers.jsonl")}


def wait_until_gone(pids) -> None:
    deadline = time.time() + 120
    while time.time() < deadline and any(Path(f"/proc/{pid}").exists() for pid in pids):
        time.sleep(0.2)
    assert not any(Path(f"/proc/{pid}").exists() for pid in pids), pids


def end(driver: subprocess.Popen) -> None:
    if driver.poll() is None:
        os.killpg(driver.pid, signal.SIGKILL)
        driver.wait()


@pytest.mark.slow
def test_killed_driver_and_killed_worker_then_resume_on_one_worker(head, longer_reference, tmp_path, capsys):
    spec_path = tmp_path / "spec.yaml"
    spec_path.write_text(yaml.safe_dump(LONGER))
    run_dir = tmp_path / "run"
    # 1. The driver is killed (SIGKILL) after a checkpoint: Ray ends its workers.
    driver = start_driver(head, str(spec_path), "--output-dir", str(run_dir))
    try:
        wait_for_checkpoint(run_dir, 0, driver)
        workers = latest_worker_pids(run_dir)
        os.killpg(driver.pid, signal.SIGKILL)
        driver.wait()
    finally:
        end(driver)
    wait_until_gone(workers.values())
    killed_at = checkpoint_step(run_dir)
    assert 0 < killed_at < 40

    # 2. `--resume` continues on 2 workers from that checkpoint; one worker is killed with kill -9.
    driver = start_driver(head, "--resume", "--output-dir", str(run_dir))
    try:
        wait_for_checkpoint(run_dir, killed_at, driver)
        starts = jsonl(run_dir / "workers.jsonl")[-2:]
        assert {s["start_step"] for s in starts} == {killed_at}
        victim = latest_worker_pids(run_dir)[1]
        os.kill(victim, signal.SIGKILL)
        _, errors = driver.communicate(timeout=300)
    finally:
        end(driver)
    assert driver.returncode == 1, errors[-3000:]
    last_good = ckpt.latest_checkpoint(run_dir / "checkpoints")
    messages = [line for line in errors.splitlines() if line.startswith("error:")]
    assert len(messages) == 1, errors[-3000:]
    assert messages[0].startswith(f"error: worker rank 1 (pid {victim} on "), messages[0]
    assert f"last good checkpoint: {last_good}" in messages[0]
    assert f"continue with: ponderlab run --resume --output-dir {run_dir}" in messages[0]

    # 3. `ponderlab eval` loads the checkpoint the 2 workers wrote.
    capsys.readouterr()
    out = tmp_path / "eval.json"
    assert cli_main(["eval", str(run_dir), "--checkpoint", str(last_good), "--out", str(out)]) == 0
    evaluation = json.loads(out.read_text())
    assert evaluation["step"] == int(last_good.stem.split("_")[1])
    assert 0 < evaluation["results"]["test/token_accuracy"] <= 1

    # 4. The 2-worker checkpoint continues in one process (no Ray) and ends where an
    # uninterrupted one-process run ends; each step is logged once.
    assert cli_main(["run", "--resume", "--output-dir", str(run_dir), "--workers", "1", "--no-progress"]) == 0
    results = json.loads((run_dir / "results.json").read_text())
    assert results["train/steps"] == 40 and "workers" not in results
    for key in ("test/loss", "test/token_accuracy", "test/mean_hops", "validation/loss"):
        assert results[key] == pytest.approx(longer_reference[key], rel=1e-4, abs=1e-6), key
    train_steps = [r["step"] for r in jsonl(run_dir / "metrics.jsonl") if r["split"] == "train"]
    assert train_steps == list(range(1, 41))


@pytest.mark.slow
def test_max_failures_recovers_from_a_killed_worker(head, longer_reference, tmp_path):
    from ponderlab.core.distributed.launch import run_distributed

    run_dir = tmp_path / "run"
    killed = {}

    def kill_rank_1() -> None:
        killed["at"] = wait_for_checkpoint(run_dir, 0)
        killed["pid"] = latest_worker_pids(run_dir)[1]
        os.kill(killed["pid"], signal.SIGKILL)

    killer = threading.Thread(target=kill_rank_1, daemon=True)
    killer.start()
    results, _ = run_distributed(resolve_spec(distributed(LONGER, max_failures=1)), output_dir=run_dir)
    killer.join(timeout=5)
    starts = jsonl(run_dir / "workers.jsonl")
    assert len(starts) == 4 and starts[-1]["start_step"] >= killed["at"] > 0, starts
    assert killed["pid"] in {s["pid"] for s in starts[:2]}
    for key in ("test/loss", "test/token_accuracy", "test/mean_hops", "validation/loss"):
        assert results[key] == pytest.approx(longer_reference[key], rel=1e-4, abs=1e-6), key


@pytest.mark.slow
def test_joining_without_the_token_exits_2_and_writes_nothing(head, tmp_path):
    """A driver with no token anywhere: one message naming distributed.address, nothing written."""
    spec_path = tmp_path / "spec.yaml"
    spec_path.write_text(yaml.safe_dump(GRAVES))
    home = tmp_path / "empty_home"
    home.mkdir()
    driver = subprocess.Popen(
        [sys.executable, "-m", "ponderlab.core.cli", "run", str(spec_path), "--output-dir", str(tmp_path / "run"),
         "--workers", "2", "--address", head.address],
        cwd=REPO, env={**without_ray_auth(os.environ), "HOME": str(home)}, stdout=subprocess.PIPE,
        stderr=subprocess.PIPE, text=True, start_new_session=True,
    )
    try:
        _, errors = driver.communicate(timeout=300)
    finally:
        end(driver)
    assert driver.returncode == 2, errors[-3000:]
    messages = [line for line in errors.splitlines() if line.startswith("error:")]
    assert len(messages) == 1 and "Traceback" not in errors, errors[-3000:]
    assert messages[0].startswith(f"error: distributed.address: cannot join the Ray cluster at {head.address}")
    assert not (tmp_path / "run").exists()


# --------------------------------------------------------------------------- curriculum, capacity


@pytest.mark.slow
def test_two_workers_match_one_process_through_a_curriculum(head, tmp_path):
    """Stages switch on the same steps on every worker; `until` is decided by rank 0 for all."""
    from test_curriculum import SPEC as CURRICULUM

    from ponderlab.core.distributed.launch import run_distributed

    spec = {**CURRICULUM, "training": {**CURRICULUM["training"], "curriculum": {
        **CURRICULUM["training"]["curriculum"], "steps_per_stage": [3, 5, 2], "until": 0.0}}}
    reference = tmp_path / "one"
    ponderlab.run(spec, output_dir=reference)
    _, run_dir = run_distributed(resolve_spec(distributed(spec)), output_dir=tmp_path / "two")
    logged, expected = jsonl(run_dir / "metrics.jsonl"), jsonl(reference / "metrics.jsonl")
    shape = [(r["step"], r["split"], r.get("stage")) for r in expected]
    assert [(r["step"], r["split"], r.get("stage")) for r in logged] == shape
    assert [s for s in shape if s[1] == "curriculum"] == [(1, "curriculum", 0), (3, "curriculum", 1),
                                                          (5, "curriculum", 2)]  # until at steps 2 and 4
    for got, want in zip(logged, expected, strict=True):
        keys = {"train": TRAIN_KEYS, "validation": FINAL_KEYS, "test": FINAL_KEYS}.get(want["split"], ())
        for key in keys:
            assert got[key] == pytest.approx(want[key], rel=1e-4, abs=1e-6), (got["step"], got["split"], key)


@pytest.mark.slow
def test_gpu_workers_without_gpus_exit_2_before_anything_is_written(tmp_path):
    from cli_runs import cli

    spec = tmp_path / "spec.yaml"
    spec.write_text(yaml.safe_dump(GRAVES))
    finished = cli("run", spec, "--workers", "2", "--gpus-per-worker", "1", "--output-dir", tmp_path / "run",
                   env=without_ray_auth(dict(os.environ)), timeout=300)
    errors = [line for line in finished.stderr.splitlines() if line.startswith("error:")]
    assert finished.returncode == 2, finished.stderr[-2000:]
    assert len(errors) == 1 and "distributed.gpus_per_worker: 2 workers x 1 GPUs need 2 GPUs; Ray here has 0" in errors[0]
    assert not (tmp_path / "run").exists()
