"""`ponderlab eval`: re-testing a saved checkpoint, task overrides, its own output file, clear errors."""

from __future__ import annotations

import hashlib
import json
import shutil
from pathlib import Path

import pytest
import torch

import ponderlab
from ponderlab.core.cli import main as cli_main
from ponderlab.core.data import TensorDataset
from ponderlab.core.evaluation import (
    build_task_data,
    evaluate_run,
    hop_matrix,
    load_run_spec,
    load_trained_model,
    output_path,
)


@pytest.fixture(scope="module")
def run_dir(tmp_path_factory) -> Path:
    path = tmp_path_factory.mktemp("eval") / "run"
    spec = {
        "seed": 5,
        "task": {"name": "binary_reverse", "length": 6, "min_length": 4, "train_size": 200,
                 "validation_size": 16, "test_size": 30},
        "backbone": {"name": "transformer", "d_model": 16, "n_layers": 2, "n_heads": 2, "ffn_size": 32},
        "halting": {"name": "graves", "max_hops": 3, "epsilon": 0.1, "halting_bias_init": -1.0},
        "training": {"steps": 12, "batch_size": 16, "eval_batch_size": 7, "lr": 3e-3, "warmup_steps": 2,
                     "eval_every": 6, "log_every": 6, "num_threads": 1},
    }
    ponderlab.run(spec, output_dir=path)
    return path


def snapshot(folder: Path) -> dict[str, str]:
    return {
        str(p.relative_to(folder)): hashlib.sha1(p.read_bytes()).hexdigest()
        for p in sorted(folder.rglob("*")) if p.is_file()
    }


def test_eval_without_overrides_reproduces_the_runs_test_metrics(run_dir, capsys):
    before = snapshot(run_dir)
    assert cli_main(["eval", str(run_dir)]) == 0
    after = snapshot(run_dir)
    assert set(after) - set(before) == {"eval_test.json"}
    assert all(after[name] == digest for name, digest in before.items())  # nothing else touched
    record = json.loads((run_dir / "eval_test.json").read_text())
    results = json.loads((run_dir / "results.json").read_text())
    assert record["step"] == 12 and record["checkpoint"].endswith("step_00000012.pt")
    assert record["overrides"] == []
    shared = [k for k in results if k.startswith("test/")]
    assert "test/length=4/exact_match" in shared
    for key in shared:
        assert record["results"][key] == pytest.approx(results[key], rel=1e-6, abs=1e-9), key
    halting = json.loads((run_dir / "halting.json").read_text())["test"]
    assert record["halting"]["hop_histogram"] == halting["hop_histogram"]
    assert "written:" in capsys.readouterr().out
    (run_dir / "eval_test.json").unlink()


def test_task_overrides_make_a_generalisation_test(run_dir, tmp_path):
    record = evaluate_run(run_dir, split="validation", overrides=["task.test_length=9"])
    keys = [k for k in record["results"] if k.startswith("validation/length=")]
    assert keys and all(k.startswith("validation/length=9/") for k in keys)
    assert record["task"]["test_length"] == 9
    assert record["results"]["validation/examples"] == 16
    # the file name carries a hash of the overrides unless a label is given
    first = output_path(run_dir, "test", ["task.test_length=9", "task.min_length=5"])
    second = output_path(run_dir, "test", ["task.min_length=5", "task.test_length=9"])
    assert first == second and first.name.startswith("eval_test_") and first.parent == run_dir
    assert output_path(run_dir, "test", ["task.test_length=9"], label="len9").name == "eval_test_len9.json"
    assert output_path(run_dir, "test", [], out=tmp_path).parent == tmp_path
    assert cli_main(["eval", str(run_dir), "task.test_length=9", "--out", str(tmp_path)]) == 0
    (written,) = tmp_path.glob("eval_test_*.json")
    saved = json.loads(written.read_text())
    assert saved["overrides"] == ["task.test_length=9"]
    assert "test/length=9/exact_match" in saved["results"]
    assert not list(run_dir.glob("eval_*"))


def test_hop_matrix_matches_one_example_at_a_time(run_dir):
    spec = load_run_spec(run_dir)
    task, data = build_task_data(spec)
    model, _, _ = load_trained_model(run_dir, spec, task.vocab_size, torch.device("cpu"))
    dataset = TensorDataset(data.test, task.slice_columns)
    matrix, scored = hop_matrix(model, dataset, examples=10, batch_size=4)
    assert matrix.shape[0] == 10
    with torch.no_grad():
        for i in range(10):
            ids = torch.tensor([data.test[i]["input_ids"]])
            expected = model(ids).stats.hops[0].numpy()  # (L,)
            n = len(expected)
            assert matrix[i, :n] == pytest.approx(expected, abs=1e-6)
            assert all(v != v for v in matrix[i, n:])  # NaN padding
            labels = data.test[i]["labels"]
            assert scored[i, :n].tolist() == [label != -100 for label in labels]
    assert ((matrix[~(matrix != matrix)] >= 1) & (matrix[~(matrix != matrix)] <= 3)).all()


@pytest.mark.parametrize(
    "args, message",
    [
        (["eval", "{tmp}/nowhere"], "not a run directory"),
        (["eval", "{run}", "training.steps=3"], "may change the task only"),
        (["eval", "{run}", "task.colour=3"], "task.colour: unknown key"),
        (["eval", "{run}", "--out", "{run}/results.json"], "refusing to write"),
        (["eval", "{tmp}/nockpt"], "no checkpoint"),
        (["eval", "{tmp}/broken"], "cannot load checkpoint"),
        (["eval", "{tmp}/mismatch"], "weights do not match"),
    ],
)
def test_bad_input_is_one_clear_error(run_dir, tmp_path, capsys, args, message):
    for name in ("nockpt", "broken", "mismatch"):
        (tmp_path / name / "checkpoints").mkdir(parents=True)
        shutil.copy(run_dir / "spec.yaml", tmp_path / name / "spec.yaml")
    (tmp_path / "broken" / "checkpoints" / "step_00000012.pt").write_bytes(b"not a checkpoint")
    state = torch.load(run_dir / "checkpoints" / "step_00000012.pt", weights_only=True)
    state["model"] = {k: v for k, v in state["model"].items() if "head" not in k}
    torch.save(state, tmp_path / "mismatch" / "checkpoints" / "step_00000012.pt")
    before = snapshot(run_dir)
    argv = [a.format(tmp=tmp_path, run=run_dir) for a in args]
    assert cli_main(argv) == 2
    err = capsys.readouterr().err.strip()
    assert err.startswith("error: ") and message in err and len(err.splitlines()) == 1
    assert snapshot(run_dir) == before
