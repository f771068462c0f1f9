"""A Ray Tune search on a real local cluster: `ray start --head` on loopback with token
authentication, joined through tune.address by a driver process that is interrupted and then
resumed; a driver without the token gets one clear message. Ends exactly the processes it started.
"""

from __future__ import annotations

import json
import os
import secrets
import shutil
import signal
import subprocess
import sys
import time
from pathlib import Path
from types import SimpleNamespace

import pytest
import yaml
from tune_checks import (
    REPO,
    TASK,
    cli,
    free_port,
    jsonl,
    read_csv,
    short_temp_dir,
    stop_cluster,
    without_ray_auth,
    write_search,
)

import ponderlab
from ponderlab.tune.search import run_search
from ponderlab.tune.spec import load_tune_spec


@pytest.fixture(scope="module")
def local_cluster():
    """A head started as docs/tune.md says: with a token of its own, so token authentication is on."""
    temp_dir = short_temp_dir("plc")
    token = temp_dir / "auth_token"
    token.write_text(secrets.token_hex(32))
    token.chmod(0o600)
    port = free_port()
    ports = {name: free_port() for name in (
        "ray-client-server-port", "node-manager-port", "object-manager-port", "metrics-export-port",
        "runtime-env-agent-port", "dashboard-agent-listen-port", "dashboard-agent-grpc-port",
    )}
    command = [
        # This interpreter's Ray (not whichever `ray` is first on PATH), so the cluster's workers
        # import the same ponderlab as this test.
        sys.executable, "-c", "from ray.scripts.scripts import main; main()",
        "start", "--head", f"--port={port}", "--node-ip-address=127.0.0.1", "--num-cpus=2",
        "--num-gpus=0", f"--temp-dir={temp_dir}", "--include-dashboard=false", "--disable-usage-stats",
        *(f"--{name}={value}" for name, value in ports.items()),
    ]
    try:
        head_env = {**without_ray_auth(os.environ), "RAY_AUTH_MODE": "token", "RAY_AUTH_TOKEN_PATH": str(token)}
        started = subprocess.run(command, capture_output=True, text=True, timeout=180, env=head_env)
        assert started.returncode == 0, started.stdout + started.stderr
        yield SimpleNamespace(address=f"127.0.0.1:{port}", temp_dir=temp_dir, token=token)
    finally:
        stop_cluster(temp_dir)
        shutil.rmtree(temp_dir, ignore_errors=True)


RESUME = TASK + """\
training: {steps: 40, batch_size: 16, eval_every: 10, warmup_steps: 2, log_every: 10, num_threads: 1}
backbone: {name: lstm, d_model: 16, n_layers: 1}
search:
  halting: {grid: [{name: graves, max_hops: 2}]}
tune: {storage_path: STORAGE, verbose: 0}
"""


def wait_for_processed_checkpoint(experiment: Path, process: subprocess.Popen, timeout: float) -> None:
    """Until the driver has logged a result that carries a checkpoint (Ray's result.json)."""
    deadline = time.time() + timeout
    while time.time() < deadline:
        if process.poll() is not None:
            pytest.fail(f"the search ended before it could be interrupted:\n{process.stdout.read()[-3000:]}")
        for result_file in experiment.glob("trial_*/result.json"):
            if any(r.get("checkpoint_dir_name") for r in jsonl(result_file)):
                return
        time.sleep(0.2)
    pytest.fail("no trial reported a checkpoint in time")


def test_search_on_a_local_cluster_is_interrupted_and_resumed(local_cluster, tmp_path, monkeypatch):
    spec = write_search(tmp_path, "resume", RESUME)
    experiment = tmp_path / "store" / "resume"
    join = f"tune.address={local_cluster.address}"
    # The driver brings only the cluster's token (no RAY_AUTH_MODE): ponderlab asks Ray for token
    # authentication itself. It is stopped mid-way with SIGINT (Ctrl+C): Ray Tune saves the
    # search state, the command writes a partial table and exits 130.
    driver_env = {**without_ray_auth(os.environ), "RAY_AUTH_TOKEN_PATH": str(local_cluster.token)}
    monkeypatch.delenv("RAY_AUTH_MODE", raising=False)
    monkeypatch.delenv("RAY_AUTH_TOKEN", raising=False)
    monkeypatch.setenv("RAY_AUTH_TOKEN_PATH", str(local_cluster.token))
    driver = subprocess.Popen(
        [sys.executable, "-m", "ponderlab.core.cli", "tune", str(spec), join], cwd=REPO, env=driver_env,
        stdout=subprocess.PIPE, stderr=subprocess.STDOUT, text=True, start_new_session=True,
    )
    try:
        wait_for_processed_checkpoint(experiment, driver, timeout=300)
        driver.send_signal(signal.SIGINT)
        output, _ = driver.communicate(timeout=120)
    finally:
        if driver.poll() is None:
            os.killpg(driver.pid, signal.SIGKILL)
            driver.wait()
    assert driver.returncode == 130, output[-3000:]
    assert "--resume" in output
    (partial,) = read_csv(experiment / "results.csv")
    assert partial["status"] == "unfinished"

    # Another driver continues the search on the same cluster: this process when it is not
    # connected to Ray yet (no Ray test ran before this file), else a second command.
    import ray

    if ray.is_initialized():
        resumed = cli("tune", str(spec), join, "--resume", env={"RAY_AUTH_TOKEN_PATH": str(local_cluster.token)})
        output, _ = resumed.communicate(timeout=400)
        assert resumed.returncode == 0, output[-3000:]
    else:
        outcome = run_search(load_tune_spec(spec, [join]), resume=True)
        assert not outcome.interrupted and not ray.is_initialized()
    (row,) = read_csv(experiment / "results.csv")
    assert row["status"] == "completed" and row["step"] == "40"
    starts = jsonl(experiment / "runs" / f"{row['trial']}.attempts.jsonl")
    assert len(starts) == 2 and 0 < starts[1]["start_step"] < 40, starts
    # Both attempts ran in workers of that cluster: their log files (named by pid) are there.
    for start in starts:
        pid = start["pid"]
        logs = [*local_cluster.temp_dir.rglob(f"worker-*-{pid}.out"), *local_cluster.temp_dir.rglob(f"*_{pid}.log")]
        assert logs, pid

    # The trial continued from its checkpoint: its log has each step once, and it ends
    # exactly where an uninterrupted run of the same spec ends.
    run_dir = experiment / "runs" / row["trial"]
    records = jsonl(run_dir / "metrics.jsonl")
    for split in ("train", "validation"):
        steps = [r["step"] for r in records if r["split"] == split]
        assert steps == sorted(set(steps)), split
    spec_of_trial = yaml.safe_load((run_dir / "spec.yaml").read_text())
    spec_of_trial.pop("output_dir")
    straight = ponderlab.run(spec_of_trial, output_dir=tmp_path / "straight")
    resumed_results = json.loads((run_dir / "results.json").read_text())
    for key in ("test/loss", "test/token_accuracy", "validation/loss", "test/mean_hops"):
        assert resumed_results[key] == pytest.approx(straight[key], abs=1e-5), key


def test_joining_a_cluster_without_its_token_says_what_to_do(local_cluster, tmp_path):
    """A driver with no token anywhere (a new machine): one message, exit 2, no traceback, nothing written."""
    spec = write_search(tmp_path, "no_token", RESUME)
    home = tmp_path / "empty_home"
    home.mkdir()
    env = {**without_ray_auth(os.environ), "HOME": str(home)}
    driver = subprocess.Popen(
        [sys.executable, "-m", "ponderlab.core.cli", "tune", str(spec), f"tune.address={local_cluster.address}"],
        cwd=REPO, env=env, stdout=subprocess.PIPE, stderr=subprocess.PIPE, text=True, start_new_session=True,
    )
    output, errors = driver.communicate(timeout=300)
    assert driver.returncode == 2, output + errors
    assert "Traceback" not in errors, errors
    message = [line for line in errors.splitlines() if line.startswith("error:")]
    assert len(message) == 1, errors
    assert f"cannot join the Ray cluster at {local_cluster.address}" in message[0]
    assert "ray get-auth-token" in message[0] and "~/.ray/auth_token" in message[0]
    assert not (tmp_path / "store").exists()
