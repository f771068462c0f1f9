"""Ray Tune searches end to end on CPU: a grid, ASHA, a failing trial, a third-party plugin.

One Ray instance (ray.init(num_cpus=2)) is shared by the in-process searches. The search on a
real local cluster, interrupted and resumed, is in test_tune_cluster.py.
"""

from __future__ import annotations

import json
import os
import shutil
import subprocess
import sys
import tempfile
from pathlib import Path
from types import SimpleNamespace

import pytest
import yaml
from tune_checks import REPO, TASK, jsonl, read_csv, short_temp_dir, write_search

import ponderlab
from ponderlab.core.registry import reset_registry
from ponderlab.tune.cluster import forget_cached_token
from ponderlab.tune.search import run_search
from ponderlab.tune.spec import load_tune_spec

EXAMPLE_PLUGIN = REPO / "examples" / "plugins" / "ponderlab-example"
TRAINING = "training: {steps: 20, batch_size: 16, eval_every: 10, warmup_steps: 2, log_every: 10, lr: 0.01, num_threads: 1}\n"


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
