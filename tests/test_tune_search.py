"""Ray Tune searches end to end on CPU: grid, ASHA, a failing trial, plugins, a cluster + resume.

One Ray instance (ray.init(num_cpus=2)) is shared by the in-process searches. The cluster test
starts its own with `ray start --head` on loopback, joins it through tune.address (a driver
process it interrupts, then a resuming one), and ends exactly the processes it started.
"""

from __future__ import annotations

import csv
import json
import os
import secrets
import shutil
import signal
import socket
import subprocess
import sys
import tempfile
import time
from pathlib import Path
from types import SimpleNamespace

import pytest
import yaml

# Ray resolves 127.0.0.1 to the machine's outward address unless told it runs without a
# cluster network; with this set before Ray is imported, every Ray socket binds to loopback.
os.environ.setdefault("RAY_ENABLE_WINDOWS_OR_OSX_CLUSTER", "0")

import ponderlab  # noqa: E402
from ponderlab.core.registry import reset_registry  # noqa: E402
from ponderlab.tune.cluster import forget_cached_token  # noqa: E402
from ponderlab.tune.search import run_search  # noqa: E402
from ponderlab.tune.spec import load_tune_spec  # noqa: E402

REPO = Path(__file__).resolve().parents[1]
EXAMPLE_PLUGIN = REPO / "examples" / "plugins" / "ponderlab-example"

TINY = """\
name: NAME
seed: 0
"""
TASK = "task: {name: binary_copy, length: 8, train_size: 128, validation_size: 16, test_size: 16}\n"
TRAINING = "training: {steps: 20, batch_size: 16, eval_every: 10, warmup_steps: 2, log_every: 10, lr: 0.01, num_threads: 1}\n"


def short_temp_dir(prefix: str) -> Path:
    """A temp dir with a short path: Ray's unix socket paths must stay under 107 characters."""
    return Path(tempfile.mkdtemp(prefix=prefix, dir="/tmp"))


def write_search(directory: Path, name: str, body: str) -> Path:
    path = directory / f"{name}.yaml"
    path.write_text(TINY.replace("NAME", name) + body.replace("STORAGE", str(directory / "store")))
    return path


def read_csv(path: Path) -> list[dict]:
    with open(path) as handle:
        return list(csv.DictReader(handle))


def jsonl(path: Path) -> list[dict]:
    return [json.loads(line) for line in path.read_text().splitlines() if line.strip()]


def cli(*args: str, env: dict | None = None, **kwargs) -> subprocess.Popen:
    return subprocess.Popen(
        [sys.executable, "-m", "ponderlab.core.cli", *args], cwd=REPO, env={**os.environ, **(env or {})},
        stdout=subprocess.PIPE, stderr=subprocess.STDOUT, text=True, start_new_session=True, **kwargs,
    )


@pytest.fixture(scope="session")
def ray_session():
    """One local Ray for every test here; an (initially empty) plugin folder on the workers' path."""
    import ray

    root = short_temp_dir("plt")
    plugin_dir = root / "site"
    plugin_dir.mkdir()
    pythonpath = os.pathsep.join(p for p in (str(plugin_dir), os.environ.get("PYTHONPATH")) if p)
    forget_cached_token()  # a cluster joined earlier in this process left its token in Ray's cache
    ray.init(
        num_cpus=2, num_gpus=0, include_dashboard=False, _temp_dir=str(root / "ray"),
        runtime_env={"env_vars": {"PYTHONPATH": pythonpath}}, logging_level="WARNING",
    )
    yield SimpleNamespace(root=root, plugin_dir=plugin_dir)
    ray.shutdown()
    shutil.rmtree(root, ignore_errors=True)


# --------------------------------------------------------------------------- a real local cluster
# (first in this file: it can then resume in this process, before the session's Ray starts)


def free_port() -> int:
    with socket.socket() as sock:
        sock.bind(("127.0.0.1", 0))
        return sock.getsockname()[1]


def processes_under(marker: str) -> list[int]:
    """PIDs whose command line names `marker` (this test's own Ray temp dir)."""
    found = []
    for entry in Path("/proc").iterdir():
        if not entry.name.isdigit() or int(entry.name) == os.getpid():
            continue
        try:
            command = (entry / "cmdline").read_bytes().replace(b"\0", b" ").decode(errors="replace")
        except OSError:
            continue
        if marker in command:
            found.append(int(entry.name))
    return found


def stop_cluster(temp_dir: Path) -> None:
    """End the processes of this test's cluster only (`ray stop` would end every Ray here)."""
    pids = processes_under(str(temp_dir))
    for pid in pids:
        try:
            os.kill(pid, signal.SIGTERM)
        except ProcessLookupError:
            pass
    deadline = time.time() + 3
    while time.time() < deadline and any(Path(f"/proc/{pid}").exists() for pid in pids):
        time.sleep(0.3)
    for pid in pids:
        try:
            os.kill(pid, signal.SIGKILL)
        except ProcessLookupError:
            pass


def without_ray_auth(env: dict) -> dict:
    """`env` less every variable that tells Ray about authentication."""
    return {k: v for k, v in env.items() if k not in ("RAY_AUTH_MODE", "RAY_AUTH_TOKEN", "RAY_AUTH_TOKEN_PATH")}


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
    # connected to Ray yet (this test runs first), else a second command.
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


# --------------------------------------------------------------------------- a 2x2 grid


GRID = TASK + TRAINING + """\
backbone: {d_model: 16, n_layers: 1}       # shared by both backbones; the grid picks the plugin
halting: {scope: layer}
search:
  backbone:
    grid:
      - {name: lstm}
      - {name: transformer, n_heads: 2}
  halting:
    grid:
      - {name: graves, max_hops: 2}
      - {name: none}
tune: {storage_path: STORAGE, verbose: 0, metric: validation/token_accuracy}
"""


def test_grid_backbone_by_halting_completes(ray_session, tmp_path):
    outcome = run_search(load_tune_spec(write_search(tmp_path, "grid", GRID)))
    rows = outcome.table.rows
    assert [r.status for r in rows] == ["completed"] * 4 and not outcome.interrupted
    assert {(r.spec["backbone"]["name"], r.spec["halting"]["name"]) for r in rows} == {
        ("lstm", "graves"), ("lstm", "none"), ("transformer", "graves"), ("transformer", "none"),
    }
    experiment = outcome.experiment_dir
    for row in rows:
        run_dir = experiment / "runs" / row.trial_id
        for name in ("spec.yaml", "seed", "metrics.jsonl", "results.json", "halting.json", "tensorboard"):
            assert (run_dir / name).exists(), name
        assert (run_dir / "checkpoints" / "step_00000020.pt").exists()
        saved = yaml.safe_load((run_dir / "spec.yaml").read_text())
        assert saved["backbone"]["name"] == row.spec["backbone"]["name"] and saved["output_dir"] == str(run_dir)
        results = json.loads((run_dir / "results.json").read_text())
        assert row.metrics["test/exact_match"] == pytest.approx(results["test/exact_match"])
        # Ray saw the periodic validation (step 10, with its checkpoint) and the final one.
        reported = jsonl(experiment / f"trial_{row.trial_id}" / "result.json")
        assert [r["step"] for r in reported] == [10, 20]
        assert all(r["checkpoint_dir_name"] for r in reported)
        assert "validation/token_accuracy" in reported[0] and "test/token_accuracy" in reported[1]

    table = read_csv(outcome.outputs["csv"])
    assert len(table) == 4
    assert {"trial", "status", "task", "backbone", "halting", "validation/token_accuracy"} <= set(table[0])
    assert {r["halting"] for r in table} == {"graves(max_hops=2)", "none"}
    assert {r["backbone"] for r in table} == {"lstm", "transformer(n_heads=2)"}
    scores = [float(r["validation/token_accuracy"]) for r in table]
    assert scores == sorted(scores, reverse=True)
    assert "| trial | status | task | backbone | halting |" in outcome.outputs["markdown"].read_text()

    # best.yaml is runnable and reproduces the best trial.
    best = rows[0]
    assert scores[0] == pytest.approx(best.metrics["validation/token_accuracy"])
    again = ponderlab.run(str(outcome.outputs["best"]), output_dir=tmp_path / "again")
    trial_results = json.loads((experiment / "runs" / best.trial_id / "results.json").read_text())
    for key in ("validation/token_accuracy", "test/token_accuracy", "test/loss", "test/mean_hops"):
        assert again[key] == pytest.approx(trial_results[key], abs=1e-6), key


# --------------------------------------------------------------------------- ASHA and a failing trial


ASHA = TASK + """\
training: {steps: 30, batch_size: 16, eval_every: 10, warmup_steps: 2, log_every: 10, num_threads: 1}
backbone: {name: lstm, d_model: 16, n_layers: 1}
halting: {name: none}
search:
  training.lr: {grid: [0.01, .inf, 1.0e-7]}     # good, crashes (non-finite loss), hopeless
tune:
  storage_path: STORAGE
  verbose: 0
  metric: validation/loss
  scheduler: asha
  asha: {grace_period: 10, reduction_factor: 2}
  max_failures: 1
"""
# Two trials run at once. The crashing one is retried (on a new worker) before the hopeless
# one starts, and the hopeless one starts only when the good one has finished and freed its
# worker, so ASHA judges it against the good trial's recorded rungs: stopped at step 10.


@pytest.fixture(scope="module")
def asha_search(ray_session, tmp_path_factory):
    directory = tmp_path_factory.mktemp("asha")
    outcome = run_search(load_tune_spec(write_search(directory, "asha", ASHA)))
    by_lr = {row.params["training.lr"]: row for row in outcome.table.rows}
    return SimpleNamespace(outcome=outcome, good=by_lr[0.01], failing=by_lr[float("inf")], hopeless=by_lr[1e-7])


def test_asha_stops_a_hopeless_trial(asha_search):
    good, hopeless = asha_search.good, asha_search.hopeless
    assert good.status == "completed" and good.metrics["step"] == 30
    assert hopeless.status == "stopped" and hopeless.metrics["step"] == 10
    assert hopeless.metrics["validation/loss"] > good.metrics["validation/loss"]
    run_dir = asha_search.outcome.experiment_dir / "runs" / hopeless.trial_id
    assert not (run_dir / "results.json").exists()
    assert max(r["step"] for r in jsonl(run_dir / "metrics.jsonl")) < 30
    assert asha_search.outcome.table.best is good


def test_failing_trial_is_recorded_and_the_search_goes_on(asha_search):
    failing, outcome = asha_search.failing, asha_search.outcome
    assert failing.status == "error" and "non-finite loss" in failing.error
    assert failing.failures == 2  # the first run and one retry (tune.max_failures: 1)
    assert len(jsonl(outcome.experiment_dir / "runs" / f"{failing.trial_id}.attempts.jsonl")) == 2
    # The trial after it still ran, and the outputs name the failure.
    assert asha_search.hopeless.metrics.get("step") == 10
    rows = {r["trial"]: r for r in read_csv(outcome.outputs["csv"])}
    assert rows[failing.trial_id]["status"] == "error" and "non-finite loss" in rows[failing.trial_id]["error"]
    assert list(rows)[-1] == failing.trial_id  # no metric: sorted last
    best = yaml.safe_load(outcome.outputs["best"].read_text())
    assert best["training"]["lr"] == 0.01


# --------------------------------------------------------------------------- a third-party plugin


@pytest.fixture
def example_plugin(ray_session):
    """Install the example plugin package into the folder on the workers' path (not globally)."""
    if not (EXAMPLE_PLUGIN / "pyproject.toml").exists():
        pytest.skip("examples/plugins/ponderlab-example is not there")
    source = Path(tempfile.mkdtemp(prefix="plsrc")) / "pkg"
    shutil.copytree(EXAMPLE_PLUGIN, source, ignore=shutil.ignore_patterns("build", "*.egg-info", "tests"))
    subprocess.run(
        [sys.executable, "-m", "pip", "install", "--quiet", "--no-deps", "--no-build-isolation",
         "--target", str(ray_session.plugin_dir), str(source)],
        check=True, capture_output=True,
    )
    shutil.rmtree(source.parent, ignore_errors=True)
    sys.path.insert(0, str(ray_session.plugin_dir))
    reset_registry()
    yield ray_session.plugin_dir
    sys.path.remove(str(ray_session.plugin_dir))
    reset_registry()


PLUGIN = """\
task: {name: majority, length: 9, train_size: 128, validation_size: 16, test_size: 16}
backbone: {name: gru, d_model: 16, n_layers: 1}
training: {steps: 20, batch_size: 16, eval_every: 10, warmup_steps: 2, log_every: 10, num_threads: 1}
search:
  halting:
    grid:
      - {name: confidence_exit, max_hops: 2}
tune: {storage_path: STORAGE, verbose: 0}
"""


def test_third_party_plugin_works_inside_trials(example_plugin, tmp_path):
    outcome = run_search(load_tune_spec(write_search(tmp_path, "plugin", PLUGIN)))
    (row,) = outcome.table.rows
    assert row.status == "completed", row.error
    run_dir = outcome.experiment_dir / "runs" / row.trial_id
    saved = yaml.safe_load((run_dir / "spec.yaml").read_text())
    assert (saved["task"]["name"], saved["backbone"]["name"], saved["halting"]["name"]) == (
        "majority", "gru", "confidence_exit",
    )
    (attempt,) = jsonl(outcome.experiment_dir / "runs" / f"{row.trial_id}.attempts.jsonl")
    assert attempt["pid"] != os.getpid()  # it ran in a Ray worker, which found the plugin itself
    assert "test/exact_match" in json.loads((run_dir / "results.json").read_text())
