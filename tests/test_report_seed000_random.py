"""examples/seed000: the `random` rows' rule (an ACT row that differs from none in token accuracy OR
exact match, grid and `extra` cells alike), a started `random` row keeping its hops, and per-setting
seeds (grid.yaml `extra.seeds`) with n per row in search2.md."""

from __future__ import annotations

import json
from pathlib import Path

import pytest
import yaml
from script_modules import load_script

HERE = Path(__file__).resolve().parents[1] / "examples" / "seed000"
STEM = "addition-transformer-{}-steps12000-lr0.001-s{}"
TRAINED = ["addition", "transformer", "random", "trained"]


def modules():
    reproduce = load_script("examples/seed000/reproduce.py", "seed000_reproduce")
    return reproduce, reproduce.search2


def grid(no_trials: bool = True) -> dict:
    g = yaml.safe_load((HERE / "grid.yaml").read_text())
    if no_trials:  # no search2 trial: `none` at the setting is only what is under runs2
        g["search2"] = {**g["search2"], "specs": []}
    return g


def write(runs: Path, name: str, token: float, exact: float, hops: float = 1.0) -> None:
    (runs / name).mkdir(parents=True)
    (runs / name / "results.json").write_text(json.dumps(
        {"test/token_accuracy": token, "test/exact_match": exact, "test/mean_hops": hops}))
    (runs / name / "timing.json").write_text(json.dumps({"cpu_seconds": 10.0, "wall_seconds": 20.0}))


# none and an ACT row whose token accuracy is the same (Welch p ~ 1) but whose exact match is higher
NONE = [(0.80, 0.10), (0.81, 0.11), (0.80, 0.10)]
EXACT_ONLY = [(0.81, 0.20), (0.80, 0.21), (0.80, 0.22)]
NEITHER = [(0.81, 0.10), (0.80, 0.11), (0.80, 0.11)]


def test_act_differs_on_token_accuracy_or_exact_match():
    reproduce, _ = modules()
    rows = lambda pairs: [{"test/token_accuracy": t, "test/exact_match": e} for t, e in pairs]  # noqa: E731
    differs = reproduce.queue.act_differs
    assert differs(rows(EXACT_ONLY), rows(NONE))
    assert differs(rows([(0.86, 0.10), (0.87, 0.11), (0.88, 0.10)]), rows(NONE))  # token only
    assert not differs(rows(NEITHER), rows(NONE))
    assert not differs(rows(EXACT_ONLY[:1]), rows(NONE))  # one seed: no test


def test_grid_random_row_when_only_exact_match_differs(tmp_path):
    reproduce, _ = modules()
    g = grid()
    for seed, ((nt, ne), (at, ae), (gt, ge)) in enumerate(zip(NONE, EXACT_ONLY, NEITHER, strict=True)):
        write(tmp_path, f"ca2-mamba-none-s{seed}", nt, ne)
        write(tmp_path, f"ca2-mamba-seed000_act-s{seed}", at, ae, hops=1.4)
        write(tmp_path, f"ca2-mamba-graves-s{seed}", gt, ge, hops=1.2)
    points = reproduce.random_points(g, tmp_path, ["ca2"], ["mamba"], [0, 1, 2])
    # the old rule (token accuracy only) ran no random row here
    assert [spec["name"] for spec, _ in points] == [f"ca2-mamba-random_seed000_act-s{s}" for s in (0, 1, 2)]
    assert points[0][0]["halting"]["mean_hops"] == 1.4


def test_setting_random_row_when_only_exact_match_differs(tmp_path):
    _, search2 = modules()
    g = grid()
    for seed, ((nt, ne), (at, ae), (gt, ge)) in enumerate(zip(NONE, EXACT_ONLY, NEITHER, strict=True)):
        write(tmp_path, STEM.format("none", seed), nt, ne)
        write(tmp_path, STEM.format("seed000_act", seed), at, ae, hops=1.18)
        write(tmp_path, STEM.format("graves", seed), gt, ge, hops=1.03)
    points = search2.extra_points(g, tmp_path, [0, 1, 2], [TRAINED], per_setting=False)
    assert [out.name for _, out in points] == [STEM.format("random_seed000_act", s) for s in (0, 1, 2)]
    spec = points[0][0]
    assert (spec["halting"]["mean_hops"], spec["training"]["steps"], spec["training"]["lr"]) == (1.18, 12000, 0.001)


def test_a_started_random_row_keeps_its_hops_and_gets_every_seed(tmp_path):
    reproduce, search2 = modules()
    g = grid()
    for seed, ((nt, ne), (at, ae)) in enumerate(zip(NONE, NEITHER, strict=True)):  # the rule no longer triggers...
        write(tmp_path, STEM.format("none", seed), nt, ne)
        write(tmp_path, STEM.format("seed000_act", seed), at, ae, hops=1.3)
    assert search2.extra_points(g, tmp_path, [0, 1, 2], [TRAINED], per_setting=False) == []
    # ...but a random row already started (its spec file, from an earlier queue) is completed at its hops
    (tmp_path / f"{STEM.format('random_seed000_act', 0)}.yaml").write_text(yaml.safe_dump(
        {"halting": {"name": "random", "mean_hops": 1.1766, "max_hops": 3}}))
    # a longer stem that shares the prefix is not read as this row
    (tmp_path / "addition-transformer-random_seed000_act-steps12000-lr0.001-extra-s0.yaml").write_text(
        yaml.safe_dump({"halting": {"mean_hops": 2.5}}))
    points = search2.extra_points(g, tmp_path, [0, 1, 2], [TRAINED])  # extra.seeds: trained over 0-4
    assert [out.name for _, out in points] == [STEM.format("random_seed000_act", s) for s in range(5)]
    assert {spec["halting"]["mean_hops"] for spec, _ in points} == {1.1766}
    assert reproduce.queue.pinned_hops(tmp_path, "addition-transformer-random_graves-steps12000-lr0.001") is None


def test_extra_seeds_per_setting(tmp_path):
    _, search2 = modules()
    g = grid()
    assert g["extra"]["seeds"]["trained"] == [0, 1, 2, 3, 4]
    assert search2.cell_seeds(g, ["addition", "transformer", "none", "trained"], [0, 1, 2]) == [0, 1, 2, 3, 4]
    assert search2.cell_seeds(g, ["ca3", "mamba", "none"], [0, 1, 2]) == [0, 1, 2]  # no setting: the grid's
    assert search2.cell_seeds(g, TRAINED, [0, 1, 2], per_setting=False) == [0, 1, 2]  # --seeds given
    names = [out.name for _, out in search2.extra_points(g, tmp_path, [0, 1, 2])]
    stem = STEM.format("seed000_act", 0).rsplit("-s", 1)[0]
    assert [STEM.format("seed000_act", s) for s in range(5)] == [n for n in names if n.rsplit("-s", 1)[0] == stem]
    assert [f"ca3-mamba-none-s{s}" for s in range(3)] == [n for n in names if n.startswith("ca3-mamba-none")]
    g["extra"]["seeds"] = {"typo": [0]}
    with pytest.raises(SystemExit, match="typo"):
        search2.cell_seeds(g, TRAINED, [0, 1, 2])


def test_search2_reports_n_per_row_and_act_against_random(tmp_path, monkeypatch):
    _, search2 = modules()
    monkeypatch.chdir(tmp_path)
    g = grid()
    g["extra"] = {**g["extra"], "cells": [c for c in g["extra"]["cells"] if c[3:] == ["trained"]]}
    runs2 = tmp_path / "runs2"
    for seed in range(5):
        write(runs2, STEM.format("none", seed), 0.70 + seed / 100, 0.10 + seed / 100)
        write(runs2, STEM.format("seed000_act", seed), 0.75 + seed / 100, 0.25 + seed / 100, hops=1.2)
    for seed in range(3):
        write(runs2, STEM.format("random_seed000_act", seed), 0.72 + seed / 100, 0.12 + seed / 100, hops=1.2)
    table, _ = search2.setting_table(g, runs2, g["extra"]["cells"])
    text = "\n".join(table)
    assert "| none | 5 | 0.720 ± 0.020 | 0.120 ± 0.020 | 1.00 |" in text
    assert "| seed000_act | 5 | 0.770 ± 0.020 |" in text
    assert "| random_seed000_act | 3 | 0.730 ± 0.025 |" in text
    assert "## Learned halting against random at equal mean hops, at a searched setting" in text
    # ACT (5 seeds, mean 0.77 / 0.27) minus random (3 seeds, mean 0.73 / 0.13)
    row = next(line for line in table if line.endswith("|") and "| 5 / 3 |" in line)
    assert "| seed000_act | 5 / 3 | 1.20 / 1.20 | +0.040 ± " in row and "| +0.140 ± " in row
    # paired by seed over the 3 seeds in both arms: ACT - random is 0.03 token, 0.13 exact on each
    assert row.endswith("| +0.030 ± 0.000 (3) | +0.130 ± 0.000 (3) |")
    assert "| graves | 0 | not run |" in text and "| constant | 0 | not run |" in text


def test_step_5_runs_a_settings_further_seeds_seed_major_headline_arms_first(tmp_path, monkeypatch):
    _, search2 = modules()
    g = grid()
    g["extra"] = {**g["extra"], "cells": [c for c in g["extra"]["cells"] if c[3:] == ["trained"]]}
    runs2 = tmp_path / "runs2"
    for seed in range(3):  # the rule triggers: seed000_act differs from none in exact match
        write(runs2, STEM.format("none", seed), *NONE[seed])
        write(runs2, STEM.format("seed000_act", seed), *EXACT_ONLY[seed], hops=1.18)
        write(runs2, STEM.format("graves", seed), *NEITHER[seed])
        write(runs2, STEM.format("constant", seed), 0.9, 0.6, hops=3.0)
    ran = []
    monkeypatch.setattr(search2, "run_points", lambda points, jobs: ran.extend(out.name for _, out in points))
    search2.run(g, tmp_path / "runs", runs2, [0, 1, 2], 1)
    expected = ([STEM.format("random_seed000_act", s) for s in (0, 1, 2)]  # grid seeds, cell by cell
                + [STEM.format(h, s) for s in (3, 4) for h in ("none", "seed000_act", "random_seed000_act")]
                + [STEM.format("graves", s) for s in (3, 4)] + [STEM.format("constant", s) for s in (3, 4)])
    assert [name for name in ran if not (runs2 / name / "results.json").exists()] == expected
    ran.clear()
    search2.run(g, tmp_path / "runs", runs2, [0, 1, 2], 1, per_setting=False)  # --seeds 0,1,2: no further seeds
    assert [name for name in ran if not (runs2 / name / "results.json").exists()] == [
        STEM.format("random_seed000_act", s) for s in (0, 1, 2)]
