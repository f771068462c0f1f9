"""`ponderlab tune` trials that are each 2-worker runs (gloo, CPU), against 1-process runs.

A local Ray with 2 CPUs serves the module: each trial's driver takes 1 and its 2 workers half a
CPU each, so the search runs one trial at a time (the limit a distributed search sets itself).
"""

from __future__ import annotations

import copy
import json
import os
import shutil

import pytest
import yaml

os.environ.setdefault("RAY_ENABLE_WINDOWS_OR_OSX_CLUSTER", "0")  # Ray sockets on loopback

from test_distributed import GRAVES, assert_same_run, jsonl  # noqa: E402
from tune_checks import short_temp_dir  # noqa: E402

import ponderlab  # noqa: E402
from ponderlab.core.errors import SpecError  # noqa: E402
from ponderlab.core.spec import resolve_spec  # noqa: E402
from ponderlab.tune.cluster import forget_cached_token  # noqa: E402
from ponderlab.tune.distributed_trial import concurrency_limit  # noqa: E402
from ponderlab.tune.search import run_search  # noqa: E402
from ponderlab.tune.spec import load_tune_spec  # noqa: E402

LRS = [0.01, 0.03]


def search_file(directory, name: str, distributed: dict) -> str:
    spec = copy.deepcopy(GRAVES)
    spec.update({
        "name": name, "distributed": distributed,
        "search": {"training.lr": {"grid": LRS}},
        "tune": {"storage_path": str(directory / "store"), "verbose": 0, "metric": "validation/loss"},
    })
    path = directory / f"{name}.yaml"
    path.write_text(yaml.safe_dump(spec))
    return path


@pytest.fixture(scope="module")
def local_ray():
    import ray

    if ray.is_initialized():
        ray.shutdown()
    root = short_temp_dir("pltd")
    forget_cached_token()
    ray.init(num_cpus=2, num_gpus=0, include_dashboard=False, _temp_dir=str(root / "ray"), logging_level="WARNING")
    yield ray
    ray.shutdown()
    shutil.rmtree(root, ignore_errors=True)


def test_concurrency_is_what_the_cluster_can_place():
    two = resolve_spec({**GRAVES, "distributed": {"workers": 2}})  # 2 CPUs + the driver's 1
    gpu = resolve_spec({**GRAVES, "distributed": {"workers": 2, "gpus_per_worker": 1, "cpus_per_worker": 2}})
    one = resolve_spec(GRAVES)
    assert concurrency_limit([one], {"CPU": 8}, None) is None  # no distributed trial: Tune decides
    assert concurrency_limit([two], {"CPU": 3}, None) == 1
    assert concurrency_limit([two, one], {"CPU": 9}, None) == 3
    assert concurrency_limit([two, one], {"CPU": 9}, None, driver_cpus=0.5) == 3
    assert concurrency_limit([two, one], {"CPU": 10}, None, driver_cpus=0.5) == 4
    assert concurrency_limit([two], {"CPU": 9}, 2) == 2  # never above the spec's max_concurrent_trials
    assert concurrency_limit([gpu], {"CPU": 64, "GPU": 8}, None) == 4  # 2 GPUs a trial
    assert concurrency_limit([gpu], {"CPU": 9, "GPU": 8}, None) == 1  # 5 CPUs a trial


@pytest.mark.parametrize(
    ("distributed", "expected"),
    [
        ({"workers": 4, "cpus_per_worker": 0.5},
         "distributed.workers: 4 workers x 0.5 CPUs and the trial's driver 1 need 3 CPUs; Ray here has 2"),
        ({"workers": 2, "gpus_per_worker": 1}, "distributed.gpus_per_worker: 2 workers x 1 GPUs need 2 GPUs; "
                                               "Ray here has 0"),
    ],
)
def test_workers_that_do_not_fit_the_local_ray_are_one_error_before_any_write(local_ray, tmp_path, distributed,
                                                                              expected):
    with pytest.raises(SpecError) as caught:
        run_search(load_tune_spec(search_file(tmp_path, "nofit", distributed)))
    assert expected in str(caught.value) and "\n" not in str(caught.value)
    assert not (tmp_path / "store").exists()


@pytest.mark.slow
def test_two_trials_of_two_workers_each_match_their_one_process_runs(local_ray, tmp_path):
    outcome = run_search(load_tune_spec(search_file(tmp_path, "ddp", {"workers": 2, "cpus_per_worker": 0.5})))
    rows = outcome.table.rows
    assert [row.status for row in rows] == ["completed", "completed"]
    assert sorted(row.spec["training"]["lr"] for row in rows) == LRS
    for row in rows:
        run_dir = outcome.experiment_dir / "runs" / row.trial_id
        assert {r["rank"] for r in jsonl(run_dir / "workers.jsonl")} == {0, 1}  # really 2 workers
        assert json.loads((run_dir / "results.json").read_text())["workers"] == 2
        one_process = {k: v for k, v in row.spec.items() if k != "distributed"}
        reference = tmp_path / f"one-{row.trial_id}"
        ponderlab.run(one_process, output_dir=reference)
        assert_same_run(run_dir, reference)
        # Tune got the periodic validation (with its checkpoint, in the normal format) and the end.
        reported = jsonl(outcome.experiment_dir / f"trial_{row.trial_id}" / "result.json")
        assert [r["step"] for r in reported] == [3, 6] and all(r["checkpoint_dir_name"] for r in reported)
        assert reported[0]["validation/loss"] == pytest.approx(
            next(r["loss"] for r in jsonl(run_dir / "metrics.jsonl") if r["split"] == "validation"), rel=1e-6)
        assert row.metrics["test/loss"] == pytest.approx(json.loads((run_dir / "results.json").read_text())["test/loss"])
        assert (run_dir / "checkpoints" / "step_00000006.pt").exists()


@pytest.mark.slow
def test_a_trial_whose_worker_is_killed_continues_from_its_reported_checkpoint(local_ray, tmp_path):
    """Tune retries the trial from the checkpoint rank 0 reported (the path `--resume` takes too):
    the run directory is restored from it and the 2 workers continue to the same end."""
    import signal
    import threading
    import time

    path = search_file(tmp_path, "retry", {"workers": 2, "cpus_per_worker": 0.5})
    spec = yaml.safe_load(path.read_text())
    spec["search"] = {"training.lr": {"grid": [0.01]}}
    spec["training"].update({"steps": 40, "eval_every": 10, "log_every": 10})
    spec["tune"]["max_failures"] = 1
    path.write_text(yaml.safe_dump(spec))
    outcome: dict = {}
    search = threading.Thread(target=lambda: outcome.update(done=run_search(load_tune_spec(path))), daemon=True)
    search.start()
    experiment = tmp_path / "store" / "retry"
    deadline = time.time() + 400
    killed = None
    while killed is None and time.time() < deadline and search.is_alive():
        for result_file in experiment.glob("trial_*/result.json"):
            if any(r.get("checkpoint_dir_name") for r in jsonl(result_file)):
                run_dir = experiment / "runs" / result_file.parent.name.removeprefix("trial_")
                rank1 = [r["pid"] for r in jsonl(run_dir / "workers.jsonl") if r["rank"] == 1]
                os.kill(rank1[-1], signal.SIGKILL)
                killed = rank1[-1]
        time.sleep(0.1)
    assert killed is not None, "no trial reported a checkpoint in time"
    search.join(timeout=600)
    (row,) = outcome["done"].table.rows
    assert row.status == "completed"
    run_dir = experiment / "runs" / row.trial_id
    starts = jsonl(experiment / "runs" / f"{row.trial_id}.attempts.jsonl")
    assert [s["start_step"] for s in starts][0] == 0 and 0 < starts[-1]["start_step"] < 40, starts
    assert {r["pid"] for r in jsonl(run_dir / "workers.jsonl") if r["start_step"] > 0}  # workers restarted
    reference = tmp_path / "one"
    ponderlab.run({k: v for k, v in row.spec.items() if k != "distributed"}, output_dir=reference)
    assert_same_run(run_dir, reference)
