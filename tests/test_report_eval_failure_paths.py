"""Failure paths of `ponderlab eval` and `ponderlab report`, run as a user runs them (subprocesses):
another run's files are never overwritten, a full disk leaves no partial output, damaged run
files are skipped by name instead of aborting the report."""

from __future__ import annotations

import json
import shutil
from pathlib import Path

import pytest
from cli_runs import TINY, cli, every_file, limits, one_error

from ponderlab.core.cli import main as cli_main
from ponderlab.core.run import execute
from ponderlab.core.spec import validate_spec


@pytest.fixture(scope="module")
def two_runs(tmp_path_factory) -> Path:
    """runs/a and runs/b: finished 4-step runs of two seeds (copy before changing)."""
    root = tmp_path_factory.mktemp("runs")
    for name, seed in (("a", 5), ("b", 6)):
        data = json.loads(json.dumps(TINY))
        data["seed"] = seed
        execute(validate_spec(data), output_dir=root / name, progress=False)
    return root


def snapshot(folder: Path) -> dict[str, bytes]:
    return {name: (folder / name).read_bytes() for name in every_file(folder) if (folder / name).is_file()}


# --------------------------------------------------------------------------- eval
@pytest.mark.slow  # three CLI processes
def test_eval_out_never_overwrites_another_runs_files(two_runs, tmp_path):
    runs = shutil.copytree(two_runs, tmp_path / "runs")
    (runs / "b" / "eval_test.json").write_text("{}")
    before = snapshot(runs / "b")
    for out in (runs / "b" / "results.json", runs / "b"):  # the folder: b's own eval_test.json
        error = one_error(cli("eval", runs / "a", "--out", out, "--limit", "4"))
        assert "another run's files" in error and "refusing to overwrite" in error
        assert snapshot(runs / "b") == before
    # A fresh file name in another run's folder is fine.
    fresh = runs / "b" / "from_a.json"
    assert cli("eval", runs / "a", "--out", fresh, "--limit", "4").returncode == 0
    assert json.loads(fresh.read_text())["run_dir"] == str(runs / "a")


def test_eval_limit_below_one_is_refused(two_runs, tmp_path, capsys):
    with pytest.raises(SystemExit) as info:
        cli_main(["eval", str(two_runs / "a"), "--limit", "0", "--out", str(tmp_path / "out.json")])
    assert info.value.code == 2
    assert "--limit: 0 is not a positive integer" in capsys.readouterr().err
    assert not (tmp_path / "out.json").exists()


def test_eval_out_of_room_is_one_message_and_writes_nothing(two_runs, tmp_path):
    result = cli("eval", two_runs / "a", "--out", tmp_path / "new" / "eval.json", preexec_fn=limits(file_size=200))
    error = one_error(result, exit_code=1)
    assert f"cannot write {tmp_path / 'new' / 'eval.json'}" in error and "nothing was written" in error
    assert list(tmp_path.iterdir()) == []


# --------------------------------------------------------------------------- report
def test_report_skips_damaged_runs_by_name_and_reads_odd_optional_files(two_runs, tmp_path):
    runs = shutil.copytree(two_runs, tmp_path / "runs")
    shutil.copytree(runs / "a", runs / "broken")
    (runs / "broken" / "results.json").write_text('{"task": "binary_rev')  # cut short
    with open(runs / "a" / "metrics.jsonl", "a") as handle:
        handle.write("[1, 2, 3]\n7\n")  # valid JSON, not records
    (runs / "b" / "halting.json").write_text("[]")
    result = cli("report", runs, "--out", tmp_path / "report", "--heatmap-examples", "0")
    assert result.returncode == 0, result.stderr[-3000:]
    assert f"warning: skipped a run: {runs / 'broken' / 'results.json'}: not a JSON object" in result.stderr
    rows = (tmp_path / "report" / "runs.csv").read_text().splitlines()
    assert len(rows) == 3 and not any("broken" in row for row in rows)
    for name in ("report.md", "learning_curves.png", "accuracy_vs_hops.png"):
        assert (tmp_path / "report" / name).is_file(), name


def test_report_out_of_room_leaves_no_partial_report(two_runs, tmp_path):
    out = tmp_path / "report"
    result = cli("report", two_runs, "--out", out, "--heatmap-examples", "0", preexec_fn=limits(file_size=4096))
    error = one_error(result, exit_code=1)
    assert "cannot write the report" in error and f"nothing was written to {out}" in error
    assert list(tmp_path.iterdir()) == []  # no report folder, no staging folder
