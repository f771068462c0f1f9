"""examples/seed000/rerun_setting.py: one `extra` setting rerun from scratch in its own runs directory
(`none` at its training setting, then its cells, each over all of the setting's seeds, the `random` row
decided on the runs before it), its tables, and the clear errors for a setting it cannot rerun."""

from __future__ import annotations

import json
import re
import sys
from pathlib import Path

import pytest
import yaml
from script_modules import load_script

HERE = Path(__file__).resolve().parents[1] / "examples" / "seed000"
TRAINED = "addition-transformer-{}-steps12000-lr0.001-s{}"
TAU0 = "addition-transformer-{}-steps12000-lr0.001-time_penalty0.0-s{}"


def rerun():
    return load_script("examples/seed000/rerun_setting.py", "seed000_rerun_setting")


def grid() -> dict:
    return yaml.safe_load((HERE / "grid.yaml").read_text())


def test_the_reduced_grid_holds_the_setting_and_its_none_row_only():
    module = rerun()
    reduced = module.setting_grid(grid(), "trained_tau0")
    assert reduced["seeds"] == [] and reduced["search2"]["specs"] == []  # no grid runs, no trial as none's seed 0
    assert reduced["extra"]["cells"] == [["addition", "transformer", "none", "trained"],
                                         ["addition", "transformer", "seed000_act", "trained_tau0"],
                                         ["addition", "transformer", "random", "trained_tau0"]]
    assert reduced["extra"]["cell_major"] == ["trained", "trained_tau0"]
    assert reduced["extra"]["seeds"] == {"trained": [0, 1, 2, 3, 4], "trained_tau0": [0, 1, 2, 3, 4]}
    assert grid()["seeds"] == [0, 1, 2]  # the grid itself is not changed


@pytest.mark.parametrize(("change", "words"), [
    (lambda g: None, "no 'trained_tau1' (known: trained, trained_tau0)"),
    (lambda g: g["extra"]["settings"].update(trained_tau1={"training": {"steps": 12000}}),
     "extra.cells has no cell at setting 'trained_tau1'"),
])
def test_a_setting_it_cannot_rerun_is_one_clear_error(change, words):
    g = grid()
    change(g)
    with pytest.raises(SystemExit, match=re.escape(words)):
        rerun().setting_grid(g, "trained_tau1")


def test_it_runs_none_then_act_then_random_at_the_act_rows_hops_and_writes_the_tables(tmp_path, monkeypatch):
    module = rerun()
    ran, hops_of_random = [], set()

    def run_cli(args, logfile):  # stands for `ponderlab run SPEC --output-dir OUT`: ACT at tau 0 is ahead of none
        spec, out = yaml.safe_load(Path(args[1]).read_text()), Path(args[3])
        ran.append(out.name)
        name, seed = spec["halting"]["name"], spec["seed"]
        if name == "random":
            hops_of_random.add(spec["halting"]["mean_hops"])
        token = {"none": 0.70, "seed000_act": 0.85, "random": 0.80}[name] + seed / 100
        hops = {"none": 1.0, "seed000_act": 2.0 + seed / 100, "random": 2.02}[name]
        out.mkdir(parents=True)
        (out / "results.json").write_text(json.dumps(
            {"test/token_accuracy": token, "test/exact_match": token - 0.5, "test/mean_hops": hops}))
        (out / "metrics.jsonl").write_text(json.dumps({"step": 500, "split": "validation", "mean_hops": hops}))
        return {"cpu_seconds": 60.0, "wall_seconds": 61.0}

    monkeypatch.setattr(module.queue, "run_cli", run_cli)
    for name in ("NICE", "DRY_RUN", "STOP_AT", "DEADLINE"):  # main sets the queue's switches: restored after
        monkeypatch.setattr(module.queue, name, getattr(module.queue, name))
    runs2, report = tmp_path / "runs2", tmp_path / "report" / "rerun.md"
    monkeypatch.setattr(sys, "argv", ["rerun_setting.py", "trained_tau0", "--runs2", str(runs2),
                                      "--report", str(report), "--jobs", "1"])
    assert module.main() == 0
    assert ran == ([TRAINED.format("none", s) for s in range(5)] + [TAU0.format("seed000_act", s) for s in range(5)]
                   + [TAU0.format("random_seed000_act", s) for s in range(5)])
    assert hops_of_random == {2.02}  # the ACT row's mean test hops over its 5 seeds
    text = report.read_text()
    assert "| addition | transformer | trained: training.steps=12000, training.lr=0.001 | none | 5 | 0.720 ± " in text
    # ACT minus random: Welch over 5 seeds a side (sd 0.0158 each: 0.050 ± 2.306 * 0.010), and paired by seed
    assert "| seed000_act | 5 / 5 | 2.02 / 2.02 | +0.050 ± 0.023 | 0.001 | +0.050 ± 0.023 | 0.001 | +0.050 ± 0.000 (5) |" \
        in text
    assert "| seed000_act: trained_tau0 | 5 | 2.02 |" in text  # its hops curve; the training setting's ACT row
    assert "| seed000_act: trained |" not in text  # has no seed here, so no empty curve row
    assert "Budget: 15 runs, 15.0 CPU minutes of training." in text
    ran.clear()
    assert module.main() == 0  # resumed: everything finished, nothing runs again
    assert ran == []
