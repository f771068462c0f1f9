"""examples/seed000: a setting with a `halting` part (grid.yaml `extra.settings.trained_tau0`: the trained
addition setting with seed 000's own time penalty, 0, for seed000_act), its `none` row shared with its
training setting, its `random` row, cell-major seeds (`extra.cell_major`), the clear error for an override
that names a field the cell's halting lacks, search2.md's table against the training setting, and
`reproduce.py --dry-run`."""

from __future__ import annotations

import json
import sys
from pathlib import Path

import pytest
import yaml
from script_modules import load_script
from test_report_seed000_search2 import trained_search, write_run

from ponderlab.core.spec import dotted_items, validate_spec

HERE = Path(__file__).resolve().parents[1] / "examples" / "seed000"
TRAINED = "addition-transformer-{}-steps12000-lr0.001-s{}"
TAU0 = "addition-transformer-{}-steps12000-lr0.001-time_penalty0.0-s{}"
ACT0 = ["addition", "transformer", "seed000_act", "trained_tau0"]
RANDOM0 = ["addition", "transformer", "random", "trained_tau0"]


def modules():
    reproduce = load_script("examples/seed000/reproduce.py", "seed000_reproduce")
    return reproduce, reproduce.search2


def grid() -> dict:
    g = yaml.safe_load((HERE / "grid.yaml").read_text())
    g["search2"] = {**g["search2"], "specs": []}  # no search2 trial: `none` is only what is under runs2
    return g


def result(run: Path, token: float, exact: float, hops: float) -> None:
    run.mkdir(parents=True)
    (run / "results.json").write_text(json.dumps(
        {"test/token_accuracy": token, "test/exact_match": exact, "test/mean_hops": hops}))
    (run / "timing.json").write_text(json.dumps({"cpu_seconds": 300.0, "wall_seconds": 400.0}))


def test_trained_tau0_is_trained_with_seed000_act_at_time_penalty_0(tmp_path):
    _, search2 = modules()
    g = grid()
    assert g["extra"]["settings"]["trained_tau0"] == {"training": {"steps": 12000, "lr": 0.001},
                                                      "halting": {"time_penalty": 0.0}}
    assert g["haltings"]["seed000_act"]["time_penalty"] == 0.01  # the grid's rows keep graves' penalty
    new = search2.extra_points(g, tmp_path, [0, 1, 2], [ACT0])
    old = search2.extra_points(g, tmp_path, [0, 1, 2], [["addition", "transformer", "seed000_act", "trained"]])
    assert [out.name for _, out in new] == [TAU0.format("seed000_act", s) for s in range(5)]
    assert len(old) == 5
    for (a, _), (b, _) in zip(new, old, strict=True):
        x, y = dotted_items(a), dotted_items(b)
        assert {k for k in set(x) | set(y) if x.get(k) != y.get(k)} == {"name", "halting.time_penalty"}
        assert (x["halting.time_penalty"], y["halting.time_penalty"]) == (0.0, 0.01)
        assert validate_spec(a).halting.time_penalty == 0.0


def test_none_at_trained_tau0_is_trained_none_not_run_again(tmp_path, monkeypatch):
    _, search2 = modules()
    monkeypatch.chdir(tmp_path)
    g = trained_search(tmp_path, grid(), search2, token=0.70)  # none's seed 0: the search2 trial
    runs2 = tmp_path / "runs2"
    for seed in (1, 2):
        write_run(runs2 / TRAINED.format("none", seed), None, 0.71)
    trained_none = search2.setting_rows(g, runs2, ["addition", "transformer", "none", "trained"])
    assert sorted(trained_none) == [0, 1, 2]
    assert search2.setting_rows(g, runs2, ACT0, "none") == trained_none
    assert search2.cell_stem(g, ACT0, "none") == TRAINED.format("none", 0).rsplit("-s", 1)[0]
    assert search2.cell_stem(g, ACT0) == TAU0.format("seed000_act", 0).rsplit("-s", 1)[0]
    names = [out.name for _, out in search2.extra_points(g, runs2, [0, 1, 2], [ACT0, RANDOM0])]
    assert not [n for n in names if "-none-" in n]


def test_random_at_trained_tau0_at_the_tau0_rows_hops_with_randoms_own_options(tmp_path):
    _, search2 = modules()
    g = grid()
    for seed in range(5):
        result(tmp_path / TRAINED.format("none", seed), 0.70 + seed / 100, 0.10, 1.0)
        result(tmp_path / TRAINED.format("seed000_act", seed), 0.70 + seed / 100, 0.10, 1.17)  # the 0.01 row
    assert search2.extra_points(g, tmp_path, [0, 1, 2], [RANDOM0]) == []  # tau0 row not run: no random row
    for seed in range(5):
        result(tmp_path / TAU0.format("seed000_act", seed), 0.80 + seed / 100, 0.30, 2.0 + seed / 10)
    points = search2.extra_points(g, tmp_path, [0, 1, 2], [RANDOM0])
    assert [out.name for _, out in points] == [TAU0.format("random_seed000_act", s) for s in range(5)]
    spec = validate_spec(points[0][0])
    assert (spec.halting.name, spec.halting.mean_hops, spec.halting.max_hops) == ("random", 2.2, 3)
    assert (spec.training.steps, spec.training.lr) == (12000, 0.001)
    assert "time_penalty" not in points[0][0]["halting"]


def test_cell_major_setting_decides_its_random_row_on_every_seed(tmp_path, monkeypatch):
    _, search2 = modules()
    g = grid()
    assert g["extra"]["cell_major"] == ["trained_tau0"]
    batches = search2.extra_batches(g, [0, 1, 2])
    assert [(c, s) for c, s in batches if c[3:] == ["trained_tau0"]] == [(ACT0, [0, 1, 2, 3, 4]),
                                                                        (RANDOM0, [0, 1, 2, 3, 4])]
    # the trained setting keeps its order: seeds 0-2 cell by cell, then 3 and 4 seed-major
    assert (["addition", "transformer", "none", "trained"], [3]) in batches
    g["extra"] = {**g["extra"], "cells": [c for c in g["extra"]["cells"] if c[3:] == ["trained_tau0"]]}
    for seed in range(5):
        result(tmp_path / TRAINED.format("none", seed), 0.70 + seed / 100, 0.10, 1.0)
    ran = []

    def run_points(points, jobs):  # stands for the runs: seed000_act at tau 0 finishes, and differs
        for spec, out in points:
            ran.append(out.name)
            if spec["halting"]["name"] == "seed000_act":
                result(out, 0.80 + spec["seed"] / 100, 0.30, 1.5)

    monkeypatch.setattr(search2, "run_points", run_points)
    search2.run(g, tmp_path / "runs", tmp_path, [0, 1, 2], 1)
    assert ran == ([TAU0.format("seed000_act", s) for s in range(5)]
                   + [TAU0.format("random_seed000_act", s) for s in range(5)])


@pytest.mark.parametrize(("cell", "setting", "words"), [
    (["addition", "transformer", "seed000_act", "bad"], {"halting": {"time_penalti": 0.0}},
     ["extra.settings.bad", "time_penalti", "seed000_act", "time_penalty"]),
    (["addition", "transformer", "constant", "trained_tau0"], None,
     ["extra.settings.trained_tau0", "time_penalty", "constant", "hops"]),
    (["addition", "transformer", "none", "trained_tau0"], None,
     ["extra.settings.trained_tau0", "time_penalty", "'none'", "training setting"]),
    (["addition", "transformer", "graves", "bad"], {"halting": {"name": "seed000_act"}},
     ["extra.settings.bad", "name", "graves"]),
])
def test_a_halting_override_the_cells_halting_lacks_is_one_clear_error_before_any_run(
        tmp_path, monkeypatch, cell, setting, words):
    _, search2 = modules()
    g = grid()
    if setting is not None:
        g["extra"]["settings"]["bad"] = setting
    g["extra"]["cells"] = g["extra"]["cells"] + [cell]
    monkeypatch.setattr(search2, "run_points", lambda points, jobs: pytest.fail("a run started"))
    with pytest.raises(SystemExit) as error:
        search2.run(g, tmp_path / "runs", tmp_path, [0, 1, 2], 1)
    message = str(error.value)
    assert all(word in message for word in words), message
    assert message.count("\n") == 0
    with pytest.raises(SystemExit):
        search2.extra_points(g, tmp_path, [0], [cell])
    with pytest.raises(SystemExit):
        search2.setting_table(g, tmp_path, [cell])


def test_unknown_cell_major_setting_is_an_error():
    _, search2 = modules()
    g = grid()
    g["extra"]["cell_major"] = ["trained_tau1"]
    with pytest.raises(SystemExit, match="extra.cell_major: trained_tau1 not in extra.settings"):
        search2.extra_batches(g, [0, 1, 2])


def test_search2_sets_the_tau0_row_beside_every_row_of_its_training_setting(tmp_path):
    _, search2 = modules()
    g = grid()
    cells = [c for c in g["extra"]["cells"] if len(c) > 3]
    for seed in range(5):
        result(tmp_path / TRAINED.format("none", seed), 0.70 + seed / 100, 0.10 + seed / 100, 1.0)
        result(tmp_path / TRAINED.format("seed000_act", seed), 0.75 + seed / 100, 0.20 + seed / 100, 1.17)
        result(tmp_path / TRAINED.format("constant", seed), 0.95 + seed / 1000, 0.70, 3.0)
        result(tmp_path / TAU0.format("seed000_act", seed), 0.85 + seed / 100, 0.40 + seed / 100, 2.0)
    lines = search2.override_table(g, tmp_path, cells)
    rows = [line for line in lines if line.startswith("| addition")]
    assert [line.split(" | ")[4] for line in rows] == ["seed000_act", "none", "constant"]
    assert rows[0].startswith("| addition | transformer | seed000_act: trained_tau0 | time_penalty=0.0 | "
                              "seed000_act | 5 / 5 | 2.00 / 1.17 | +0.100 ± 0.023 | 0.000 | +0.200 ± 0.023 | 0.000 |")
    assert "| none | 5 / 5 | 2.00 / 1.00 | +0.150 ± 0.023 |" in rows[1]
    assert "| +0.300 ± 0.023 |" in rows[1]  # exact match 0.42 against 0.12
    assert "| constant | 5 / 5 | 2.00 / 3.00 | -0.082 ± " in rows[2]
    for seed, (tau0, act) in enumerate([([2.0, 2.1, 2.06], [1.6, 1.2, 1.17]), ([2.0, 2.0, 2.0], [1.6, 1.0, 1.0])]):
        for stem, hops in ((TAU0, tau0), (TRAINED, act)):
            (tmp_path / stem.format("seed000_act", seed) / "metrics.jsonl").write_text("\n".join(
                json.dumps({"step": step, "split": split, "mean_hops": h if split == "validation" else 9.0})
                for step, h in zip((500, 1000, 12000), hops, strict=True) for split in ("validation", "train")))
    lines = search2.override_table(g, tmp_path, cells)
    assert "| row | seeds | step 500 | step 1000 | step 12000 |" in lines
    # mean over the seeds whose metrics.jsonl has that step (seeds 0 and 1 here), train records not counted
    assert "| seed000_act: trained_tau0 | 5 | 2.00 | 2.05 | 2.03 |" in lines
    assert "| seed000_act: trained | 5 | 1.60 | 1.10 | 1.08 |" in lines
    table, _ = search2.setting_table(g, tmp_path, cells)
    text = "\n".join(table)
    assert ("| addition | transformer | trained_tau0: training.steps=12000, training.lr=0.001, halting.time_penalty=0.0 | "
            "seed000_act | 5 | 0.870 ± 0.020 | 0.420 ± 0.020 | 2.00 | +0.150 ± 0.023 |") in text  # against trained's none
    assert search2.override_table(g, tmp_path, [c for c in cells if c[3] == "trained"]) == []


def test_dry_run_lists_what_would_start_and_starts_nothing(tmp_path, monkeypatch, capsys):
    reproduce, _ = modules()
    queue = reproduce.queue
    monkeypatch.setattr(queue, "DRY_RUN", False)
    monkeypatch.setattr(queue, "PRINT_SPECS", False)
    monkeypatch.setattr(queue, "run_cli", lambda *a, **k: pytest.fail("a command ran"))
    runs = tmp_path / "runs"
    result(runs / "addition-transformer-none-s0", 0.7, 0.1, 1.0)  # finished: not listed
    (runs / "addition-transformer-none-s1").mkdir()
    (runs / "addition-transformer-none-s1" / "spec.yaml").write_text("{}")  # started: resumed
    monkeypatch.setattr(sys, "argv", [
        "reproduce.py", "--runs", str(runs), "--runs2", str(tmp_path / "runs2"), "--report", str(tmp_path / "rep"),
        "--no-search", "--no-search2", "--no-random", "--tasks", "addition", "--backbones", "transformer",
        "--haltings", "none,seed000_act", "--seeds", "0,1", "--dry-run", "--print-specs"])  # in order: one at a time
    assert reproduce.main() == 0
    out = capsys.readouterr().out
    listed = [line.removeprefix("would run: ") for line in out.splitlines() if line.startswith("would run: ")]
    assert listed == [f"{runs}/addition-transformer-seed000_act-s0", f"{runs}/addition-transformer-none-s1 (--resume)",
                      f"{runs}/addition-transformer-seed000_act-s1"]
    assert "name: addition-transformer-seed000_act-s0" in out and "time_penalty: 0.01" in out
    assert not (tmp_path / "rep").exists() and not (runs / "addition-transformer-seed000_act-s0").exists()
    queue.DRY_RUN = True
    monkeypatch.chdir(tmp_path)  # the search's storage (runs/tune/...) does not exist here
    spec_path = HERE / "search2_steps_long_tune.yaml"
    queue.run_search(spec_path, tmp_path / "runs2")
    assert "would run: ponderlab tune" in capsys.readouterr().out
    with pytest.raises(SystemExit, match="--report-only"):
        monkeypatch.setattr(sys, "argv", ["reproduce.py", "--dry-run", "--report-only"])
        reproduce.main()
