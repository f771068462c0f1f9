"""examples/seed000/seed000_search2.py: the second settings search's trials set beside the grid's
seed-0 rows, the follow-up rule (seeds 1 and 2 of a setting that beats the grid), the cells beyond
the grid, and search2.md."""

from __future__ import annotations

import json
from pathlib import Path

import yaml
from script_modules import load_script

from ponderlab.core.spec import validate_spec

HERE = Path(__file__).resolve().parents[1] / "examples" / "seed000"


def modules():
    reproduce = load_script("examples/seed000/reproduce.py", "seed000_reproduce")
    return reproduce, reproduce.search2


def grid() -> dict:
    return yaml.safe_load((HERE / "grid.yaml").read_text())


def expanded(spec: dict, output_dir: str) -> dict:
    """A trial's spec.yaml as ponderlab writes it: defaults filled in, output_dir set."""
    out = validate_spec(spec).model_dump(mode="json")
    out["output_dir"] = output_dir
    return out


def write_run(run: Path, spec: dict | None, token: float, exact: float = 0.2, curve: dict | None = None) -> None:
    run.mkdir(parents=True)
    if spec is not None:
        (run / "spec.yaml").write_text(yaml.safe_dump(spec, sort_keys=False))
    (run / "results.json").write_text(json.dumps({
        "test/token_accuracy": token, "test/exact_match": exact, "test/mean_hops": 1.0,
        "validation/token_accuracy": token - 0.01}))
    (run / "metrics.jsonl").write_text("\n".join(
        json.dumps({"step": s, "split": "validation", "token_accuracy": v}) for s, v in (curve or {}).items()))
    (run / "timing.json").write_text(json.dumps({"cpu_seconds": 60.0, "wall_seconds": 70.0}))


def fake_search(root: Path, g: dict, search2, trials: list[tuple[str, dict, float]]) -> None:
    """runs/tune/seed000-search2-ca2/ under root with the given (trial id, spec, test token accuracy)."""
    storage = root / "runs" / "tune" / "seed000-search2-ca2"
    rows = ["trial,status,backbone,training.lr,time_s,run_dir"]
    for trial, spec, token in trials:
        write_run(storage / "runs" / trial, expanded(spec, str(storage / "runs" / trial)), token,
                  curve={500: token - 0.05, 1000: token - 0.02, 1500: token - 0.01})
        rows.append(f"{trial},completed,{spec['backbone']['name']},{spec['training']['lr']},100.0,runs/{trial}")
    rows.append("x9,unfinished,armt,0.001,,runs/x9")  # unfinished trials are not read
    (storage / "results.csv").write_text("\n".join(rows) + "\n")


def test_setting_is_what_a_trial_changes_against_the_grid():
    reproduce, search2 = modules()
    g = grid()
    base = reproduce.compose(g, "ca2", "armt", "none", 0)
    assert search2.setting(g, expanded(base, "/x")) == {}  # the grid's own setting
    lr = reproduce.merge(base, {"training": {"lr": 0.001}})
    assert search2.setting(g, expanded(lr, "/x")) == {"training.lr": 0.001}
    memory = reproduce.merge(lr, {"backbone": {"memory_size": 8}})
    assert search2.setting(g, expanded(memory, "/x")) == {"backbone.memory_size": 8, "training.lr": 0.001}
    assert search2.label({"training.lr": 0.001, "backbone.memory_size": 8}) == "lr0.001-memory_size8"
    assert search2.grid_key(g, expanded(base, "/x")) == ("ca2", "armt")
    ca1 = reproduce.compose(g, "ca1", "mamba", "none", 0)
    assert search2.grid_key(g, expanded(ca1, "/x")) == ("ca1", "mamba")  # shifts [1], not ca2's [2]


def test_follow_ups_only_for_a_setting_that_beats_the_grid_seed_0(tmp_path, monkeypatch):
    reproduce, search2 = modules()
    g = grid()
    g["search2"] = {**g["search2"], "specs": ["search2_ca2_tune.yaml"]}  # storage: runs/tune/seed000-search2-ca2
    monkeypatch.chdir(tmp_path)
    runs, runs2 = tmp_path / "runs" / "seed000", tmp_path / "runs" / "seed000-search2"
    for seed, (armt, mamba) in enumerate([(0.77, 0.84), (0.80, 0.835), (0.76, 0.838)]):
        write_run(runs / f"ca2-armt-none-s{seed}", None, armt)
        write_run(runs / f"ca2-mamba-none-s{seed}", None, mamba)
    armt = reproduce.compose(g, "ca2", "armt", "none", 0)
    mamba = reproduce.compose(g, "ca2", "mamba", "none", 0)
    fake_search(tmp_path, g, search2, [
        ("t0", reproduce.merge(armt, {"training": {"lr": 0.001}}), 0.80),   # +0.030 over 0.77: follow up
        ("t1", armt, 0.90),                                                  # the grid's own setting: never
        ("t2", reproduce.merge(mamba, {"training": {"lr": 0.001}}), 0.865),  # +0.025: below the margin
    ])
    found = search2.trials(g)
    assert [t["trial"] for t in found] == ["t0", "t1", "t2"]
    assert found[0]["curve"] == {500: 0.75, 1000: 0.78, 1500: 0.79}
    ups = search2.follow_ups(g, runs, runs2)
    assert [(t["trial"], changes) for t, changes, _ in ups] == [("t0", {"training.lr": 0.001})]
    points = ups[0][2]
    assert [out for _, out in points] == [runs2 / "ca2-armt-none-lr0.001-s1", runs2 / "ca2-armt-none-lr0.001-s2"]
    spec = points[0][0]
    assert spec == reproduce.merge(reproduce.compose(g, "ca2", "armt", "none", 1),
                                   {"name": "ca2-armt-none-lr0.001-s1", "training": {"lr": 0.001}})
    validate_spec(spec)

    # the table: trials beside grid s0, curves, the follow-up over 3 seeds against the grid's row
    write_run(runs2 / "ca2-armt-none-lr0.001-s1", None, 0.82, exact=0.3)
    write_run(runs2 / "ca2-armt-none-lr0.001-s2", None, 0.81, exact=0.3)
    report = tmp_path / "report"
    monkeypatch.setitem(g, "extra", {**g["extra"], "cells": []})  # no copy baselines to build here
    search2.write_search2(g, runs, runs2, report)
    text = (report / "search2.md").read_text()
    assert "| search2-ca2 | ca2 | armt | training.lr=0.001 | 0.790 | 0.800 | 0.200 | 0.770 / 0.200 | +0.030 | 100 |" in text
    assert "| search2-ca2 | ca2 | armt | grid's own | 0.890 | 0.900 |" in text
    assert "| search2-ca2 | ca2 | armt | training.lr=0.001 | 0.750 | 0.780 | 0.790 |" in text  # curve
    # seeds 0 (the trial), 1, 2: 0.80, 0.82, 0.81 against the grid's 0.77, 0.80, 0.76
    assert "| ca2 | armt | training.lr=0.001 | 3 | 0.810 ± 0.025 | 0.267 ± 0.143 | 0.777 ± 0.052 / 0.200 ± 0.000 | +0.033 ±" in text
    assert "follow-up and beyond-the-grid runs 2.0 CPU minutes" in text


def test_extra_cells_compose_into_valid_specs(tmp_path):
    _, search2 = modules()
    g = grid()
    points = search2.extra_points(g, tmp_path, [0, 1, 2])
    assert [out.name for _, out in points][:6] == [f"ca3-mamba-{h}-s{s}" for h in ("none", "constant") for s in (0, 1, 2)]
    spec = validate_spec(points[2][0])
    assert spec.task.shifts == [3] and spec.backbone.n_layers == 2 and spec.seed == 2
    assert spec.training.steps == 1500 and spec.training.lr == 0.003
    assert validate_spec(points[3][0]).halting.name == "constant"


def test_extra_cells_in_the_table_with_constant_against_none(tmp_path, monkeypatch):
    _, search2 = modules()
    g = grid()
    g["search2"] = {**g["search2"], "specs": ["search2_ca2_tune.yaml"]}
    monkeypatch.chdir(tmp_path)
    storage = tmp_path / "runs" / "tune" / "seed000-search2-ca2"
    write_run(storage / "runs" / "t0", expanded(search2.compose(g, "ca2", "mamba", "none", 0), "/x"), 0.83)
    (storage / "results.csv").write_text("trial,status,time_s,run_dir\nt0,completed,50,runs/t0\n")
    runs2 = tmp_path / "runs2"
    for seed, (none, constant) in enumerate([(0.82, 0.85), (0.83, 0.84), (0.81, 0.85)]):
        write_run(runs2 / f"ca3-mamba-none-s{seed}", None, none)
        write_run(runs2 / f"ca3-mamba-constant-s{seed}", None, constant)
    copied = {}
    monkeypatch.setattr(search2, "copy_baseline", lambda full, task, seeds: copied.setdefault(task, {
        s: {"copy/token_accuracy": 0.6, "copy/exact_match": 0.25, "rule/token_accuracy": 0.99,
            "rule/exact_match": 0.98} for s in seeds}))
    search2.write_search2(g, tmp_path / "runs" / "seed000", runs2, tmp_path / "report")
    text = (tmp_path / "report" / "search2.md").read_text()
    assert list(copied) == ["ca3"]
    assert ("| ca3 | mamba | none | 3 | 0.820 ± 0.025 | 0.200 ± 0.000 | 0.600 ± 0.000 / 0.250 ± 0.000 | +0.220 ± 0.025 | "
            "-0.050 ± 0.000 | 0.990 / 0.980 | 60 |") in text
    assert "| ca3 | mamba | constant | 3 | +0.027 ± 0.020 | 0.025 |" in text  # 0.8467 - 0.82, Welch
    assert "ca3" not in g["tasks"]  # the grid itself is not changed


def trained_search(root: Path, g: dict, search2, token: float = 0.70) -> dict:
    """The transformer's addition trial at lr 1e-3 and 12000 steps (seed 0) in runs/tune/seed000-search2-steps-long."""
    g["search2"] = {**g["search2"], "specs": ["search2_steps_long_tune.yaml"]}
    storage = root / "runs" / "tune" / "seed000-search2-steps-long"
    spec = search2.merge(search2.compose(g, "addition", "transformer", "none", 0),
                         {"training": {"steps": 12000, "lr": 0.001}})
    write_run(storage / "runs" / "t0", expanded(spec, "/x"), token)
    (storage / "results.csv").write_text("trial,status,time_s,run_dir\nt0,completed,214,runs/t0\n")
    return g


def test_extra_cells_at_a_setting_run_the_grid_haltings_at_that_setting(tmp_path, monkeypatch):
    _, search2 = modules()
    monkeypatch.chdir(tmp_path)
    g = trained_search(tmp_path, grid(), search2)
    runs2 = tmp_path / "runs2"
    cells = [c for c in g["extra"]["cells"] if c[3:] == ["trained"]]
    # random right after seed000_act (the headline comparison), before graves and constant
    assert [c[2] for c in cells] == ["none", "seed000_act", "random", "graves", "constant"]
    points = search2.extra_points(g, runs2, [0, 1, 2], cells, per_setting=False)
    # none's seed 0 is the search trial at that setting: not run again; random: nothing has finished yet
    assert [out.name for _, out in points] == (
        ["addition-transformer-none-steps12000-lr0.001-s1", "addition-transformer-none-steps12000-lr0.001-s2"]
        + [f"addition-transformer-{h}-steps12000-lr0.001-s{s}" for h in ("seed000_act", "graves", "constant")
           for s in (0, 1, 2)])
    # grid.yaml's extra.seeds: the trained setting over seeds 0-4 (--seeds on the command line: per_setting False)
    five = search2.extra_points(g, runs2, [0, 1, 2], cells)
    assert [out.name for _, out in five][:4] == [f"addition-transformer-none-steps12000-lr0.001-s{s}" for s in (1, 2, 3, 4)]
    assert len(five) == 4 + 3 * 5
    spec = validate_spec(points[2][0])
    assert (spec.training.steps, spec.training.lr, spec.halting.name, spec.seed) == (12000, 0.001, "seed000_act", 0)
    assert spec.backbone.n_layers == 2 and spec.training.batch_size == 32 and spec.halting.max_hops == 3
    assert g["base"]["training"]["lr"] == 0.003  # the grid's own spec is unchanged


def test_setting_table_against_none_at_that_setting_and_random_when_act_differs(tmp_path, monkeypatch):
    _, search2 = modules()
    monkeypatch.chdir(tmp_path)
    g = trained_search(tmp_path, grid(), search2, token=0.70)
    g["extra"] = {**g["extra"], "cells": [c for c in g["extra"]["cells"] if c[3:] == ["trained"]]}
    runs2 = tmp_path / "runs2"
    stem = "addition-transformer-{}-steps12000-lr0.001-s{}"
    for seed, (none, graves) in {1: (0.72, 0.71), 2: (0.71, 0.70)}.items():
        write_run(runs2 / stem.format("none", seed), None, none)
        write_run(runs2 / stem.format("graves", seed), None, graves)
    for seed, act in enumerate([0.79, 0.80, 0.81]):
        write_run(runs2 / stem.format("seed000_act", seed), None, act)
        (runs2 / stem.format("seed000_act", seed) / "results.json").write_text(json.dumps({
            "test/token_accuracy": act, "test/exact_match": 0.3, "test/mean_hops": 2.0 + seed / 10,
            "validation/token_accuracy": act}))
    write_run(runs2 / stem.format("graves", 0), None, 0.72)
    random = search2.extra_points(g, runs2, [0, 1, 2], [["addition", "transformer", "random", "trained"]],
                                  per_setting=False)
    # seed000_act (0.80) differs from none (0.70, 0.72, 0.71); graves (0.72, 0.71, 0.70) does not
    assert [out.name for _, out in random] == [stem.format("random_seed000_act", s) for s in (0, 1, 2)]
    spec = validate_spec(random[0][0])
    assert (spec.halting.name, spec.halting.mean_hops, spec.halting.max_hops) == ("random", 2.1, 3)
    assert (spec.training.steps, spec.training.lr) == (12000, 0.001)
    search2.write_search2(g, tmp_path / "runs" / "seed000", runs2, tmp_path / "report")
    text = (tmp_path / "report" / "search2.md").read_text()
    # none: seed 0 from the search trial (0.70), seeds 1-2 from the follow-ups; its CPU from those two
    assert "| trained: training.steps=12000, training.lr=0.001 | none | 3 | 0.710 ± 0.025 | 0.200 ± 0.000 | 1.00 | | | | | 60 |" in text
    assert ("| addition | transformer | trained: training.steps=12000, training.lr=0.001 | seed000_act | 3 | "
            "0.800 ± 0.025 | 0.300 ± 0.000 | 2.10 | +0.090 ± 0.023 | 0.000 | +0.100 ± 0.000 | 0.000 | 60 |") in text
    assert "| graves | 3 | 0.710 ± 0.025 | 0.200 ± 0.000 | 1.00 | +0.000 ± 0.023 | 1.000 |" in text
    assert "| constant | 0 | not run |" in text
    assert "beyond-the-grid runs 6.0 CPU minutes" in text  # seed000_act and graves, 3 x 60 s each; not none's
