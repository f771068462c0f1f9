"""Failure paths of `ponderlab run`, `validate`, `eval` and the plugin registry, driven as a user would.

The tests run the real CLI in a subprocess (`python -m ponderlab.core.cli`), or call its `main` in
process where no process of their own is needed (a validation error), and check the exit code, the
one-line message and what is (not) left on disk.
"""

from __future__ import annotations

import json
import shutil
import subprocess
import sys
import time
from pathlib import Path

import pytest
import torch
import yaml
from cli_runs import TINY, cli, every_file, limits, one_error, write_spec

from ponderlab.core import checkpoint as ckpt
from ponderlab.core.cli import main as cli_main
from ponderlab.core.run import execute
from ponderlab.core.spec import read_yaml, validate_spec


def alias_bomb(depth: int) -> str:
    """A few hundred bytes of YAML whose aliases expand to 9**(depth + 1) values."""
    lines = ["a0: &a0 [x, x, x, x, x, x, x, x, x]"]
    lines += [f"a{i}: &a{i} [" + ", ".join([f"*a{i - 1}"] * 9) + "]" for i in range(1, depth + 1)]
    return "\n".join(lines) + "\n"


def test_yaml_alias_bomb_is_refused_with_a_clear_error(tmp_path):
    (tmp_path / "bomb.yaml").write_text(alias_bomb(9))
    error = one_error(cli("validate", "bomb.yaml", cwd=tmp_path, timeout=60))
    assert "bomb.yaml" in error and "expands to more than" in error and "aliases" in error
    assert sorted(p.name for p in tmp_path.iterdir()) == ["bomb.yaml"]


def test_a_few_aliases_still_load_with_line_numbers():
    text = yaml.safe_dump({k: v for k, v in TINY.items() if k != "training"})
    text += "training: {steps: &n 4, eval_every: *n, log_every: *n, warmup_steps: 1}\n"
    data, source = read_yaml(text, "spec.yaml")
    assert data["training"] == {"steps": 4, "eval_every": 4, "log_every": 4, "warmup_steps": 1}
    assert source.where(("training", "log_every")) == f"spec.yaml:{text.count(chr(10))}"


@pytest.fixture(scope="module")
def finished_run(tmp_path_factory) -> Path:
    """A finished 4-step run (checkpoints at steps 2 and 4), built in process; copy before changing."""
    path = tmp_path_factory.mktemp("finished") / "run"
    execute(validate_spec(json.loads(json.dumps(TINY))), output_dir=path, progress=False)
    return path


def copy_run(source: Path, target: Path) -> Path:
    shutil.copytree(source, target)
    return target


def records(path: Path) -> list[dict]:
    return [json.loads(line) for line in path.read_text().splitlines()]


# --------------------------------------------------------------------------- concurrent runs
@pytest.mark.slow
def test_a_second_run_on_a_busy_directory_exits_2_naming_the_first(tmp_path):
    spec = write_spec(tmp_path / "spec.yaml")
    run_dir = tmp_path / "run"
    first = subprocess.Popen(
        [sys.executable, "-m", "ponderlab.core.cli", "run", spec, "training.steps=100000",
         "training.eval_every=100000", "--output-dir", run_dir, "--no-progress"],
        stdout=subprocess.DEVNULL, stderr=subprocess.PIPE, text=True,
    )
    try:
        deadline = time.monotonic() + 120
        while not (run_dir / "spec.yaml").exists():  # the first run holds the directory
            assert first.poll() is None and time.monotonic() < deadline, first.stderr and first.stderr.read()
            time.sleep(0.2)
        second = cli("run", spec, "seed=7", "--output-dir", run_dir, "--no-progress")
        resumed = cli("run", "--resume", "--output-dir", run_dir, "--no-progress")
        assert first.poll() is None  # still training: the others were refused while it ran
    finally:
        first.kill()
        first.wait()
    for result in (second, resumed):
        error = one_error(result)
        assert f"is in use by process {first.pid}" in error and str(run_dir) in error
    assert yaml.safe_load((run_dir / "spec.yaml").read_text())["seed"] == TINY["seed"]
    assert (run_dir / "seed").read_text() == f"{TINY['seed']}\n"


# --------------------------------------------------------------------------- resume
@pytest.mark.slow
def test_resume_repairs_metrics_and_falls_back_past_a_truncated_checkpoint(finished_run, tmp_path):
    run_dir = copy_run(finished_run, tmp_path / "run")
    metrics = run_dir / "metrics.jsonl"
    intact = records(metrics)
    with open(metrics, "a") as handle:  # a line without a step, then one cut short by a full disk
        handle.write('{"split": "train", "loss": 1.0}\n{"step": 6, "split": "tr')

    # A finished run resumes without logging its final records twice; umask 027 is honoured.
    result = cli("run", "--resume", "--output-dir", run_dir, "--no-progress", preexec_fn=limits(umask=0o027))
    assert result.returncode == 0, result.stderr
    after = records(metrics)
    assert [(r["step"], r["split"]) for r in after] == [(r["step"], r["split"]) for r in intact]
    assert (run_dir / "results.json").stat().st_mode & 0o777 == 0o640
    assert metrics.stat().st_mode & 0o777 == 0o640

    # The newest checkpoint cut short: the one before it is used, with a message.
    newest = run_dir / "checkpoints" / "step_00000004.pt"
    newest.write_bytes(newest.read_bytes()[:1000])
    result = cli("run", "--resume", "--output-dir", run_dir, "--no-progress")
    assert result.returncode == 0, result.stderr
    assert "step_00000004.pt" in result.stderr and "resuming from" in result.stderr
    assert "step_00000002.pt" in result.stderr
    assert [(r["step"], r["split"]) for r in records(metrics)] == [(r["step"], r["split"]) for r in intact]
    assert torch.load(newest, weights_only=True)["step"] == 4  # written again by the resumed run


def test_resume_with_no_checkpoint_asks_for_a_fresh_directory(finished_run, tmp_path):
    run_dir = copy_run(finished_run, tmp_path / "run")
    shutil.rmtree(run_dir / "checkpoints")
    before = (run_dir / "metrics.jsonl").read_text()
    error = one_error(cli("run", "--resume", "--output-dir", run_dir, "--no-progress"))
    assert "no checkpoint" in error and "new output directory" in error
    assert (run_dir / "metrics.jsonl").read_text() == before
    assert not (run_dir / "checkpoints").exists()


# --------------------------------------------------------------------------- a full disk
def test_run_out_of_room_is_one_message_and_keeps_the_last_checkpoint(finished_run, tmp_path):
    spec = write_spec(tmp_path / "spec.yaml")
    checkpoint_size = (finished_run / "checkpoints" / "step_00000004.pt").stat().st_size
    run_dir = tmp_path / "run"
    # Checkpoints fit; the halting plot written after training (several times larger) does not.
    result = cli("run", spec, "--output-dir", run_dir, "--no-progress",
                 preexec_fn=limits(file_size=checkpoint_size + 4096))
    error = one_error(result, exit_code=1)
    kept = run_dir / "checkpoints" / "step_00000004.pt"
    assert "cannot write" in error and "File too large" in error
    assert f"kept: checkpoint {kept} (step 4 of 4)" in error
    assert torch.load(kept, weights_only=True)["step"] == 4
    assert not (run_dir / "results.json").exists()
    assert not [name for name in every_file(run_dir) if name.endswith(".tmp")]


# --------------------------------------------------------------------------- valid specs that crashed later
@pytest.mark.parametrize(
    "override, message",
    [
        ("training.betas=[5,5]", "training.betas.0: Input should be less than 1"),
        ("seed=-5", "seed: Input should be greater than or equal to 0"),
        ("seed=99999999999999999999", "seed: Input should be less than 4294967296"),
    ],
)
def test_values_that_crashed_training_are_rejected_at_validation(tmp_path, capsys, override, message):
    spec = write_spec(tmp_path / "spec.yaml")
    assert cli_main(["run", str(spec), override, "--output-dir", str(tmp_path / "run"), "--no-progress"]) == 2
    err = capsys.readouterr().err.strip()
    assert err.startswith("error: ") and message in err and len(err.splitlines()) == 1
    assert not (tmp_path / "run").exists()


def test_output_dir_naming_a_file_is_refused(tmp_path, capsys):
    (tmp_path / "taken").write_text("mine\n")
    spec = write_spec(tmp_path / "spec.yaml")
    assert cli_main(["run", str(spec), "--output-dir", str(tmp_path / "taken"), "--no-progress"]) == 2
    assert "is a file, not a directory" in capsys.readouterr().err
    assert (tmp_path / "taken").read_text() == "mine\n"


def test_a_checkpoint_that_is_not_a_dict_is_refused_on_resume(finished_run, tmp_path, capsys):
    run_dir = copy_run(finished_run, tmp_path / "run")
    for _, path in ckpt.list_checkpoints(run_dir / "checkpoints"):
        torch.save(torch.zeros(3), path)
    before = {name: (run_dir / name).read_bytes() for name in ("metrics.jsonl", "results.json")}
    assert cli_main(["run", "--resume", "--output-dir", str(run_dir), "--no-progress"]) == 2
    err = capsys.readouterr().err
    assert "no intact checkpoint" in err and "not a ponderlab checkpoint (holds a Tensor)" in err
    assert {name: (run_dir / name).read_bytes() for name in before} == before
