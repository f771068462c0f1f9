"""examples/seed000: every grid point composes into a valid spec of the intended shape."""

from __future__ import annotations

import calendar
import json
import time
from collections import Counter
from pathlib import Path

import pytest
import yaml
from script_modules import load_script

from ponderlab.core.api import build_task
from ponderlab.core.data import BatchPlan, TensorDataset
from ponderlab.core.spec import validate_spec

HERE = Path(__file__).resolve().parents[1] / "examples" / "seed000"


def load_reproduce():
    return load_script("examples/seed000/reproduce.py", "seed000_reproduce")


def test_every_grid_point_is_a_valid_spec(registry):
    reproduce = load_reproduce()
    grid = yaml.safe_load((HERE / "grid.yaml").read_text())
    assert set(grid["backbones"]) == {"lstm", "transformer", "mamba", "armt"}
    assert set(grid["haltings"]) == {"none", "constant", "graves", "seed000_act"}
    assert grid["haltings"]["seed000_act"]["name"] == "seed000_act"  # seed 000's own ACT, not graves
    assert grid["haltings"]["graves"]["name"] == "graves"
    assert [t["name"] for t in grid["tasks"].values()] == ["binary_addition", "ca1d", "ca1d"]
    assert len(grid["seeds"]) >= 3
    checked = 0
    for task in grid["tasks"]:
        for backbone in grid["backbones"]:
            if grid["backbones"][backbone]["name"] not in registry.names("backbone"):
                continue  # a backbone plugin still being written is checked once installed
            for halting in [*grid["haltings"], "random_graves"]:
                extra = {"max_hops": 3, "mean_hops": 1.5} if halting.startswith("random") else None
                spec = reproduce.compose(grid, task, backbone, halting, 2, extra)
                validated = validate_spec(spec)
                assert validated.training.num_threads == 1
                assert validated.seed == 2
                assert validated.name == f"{task}-{backbone}-{halting}-s2"
                expected_layers = 2 if backbone == "lstm" else grid["layers"][task]
                assert validated.backbone.n_layers == expected_layers
                if halting.startswith("random"):
                    assert (validated.halting.name, validated.halting.mean_hops) == ("random", 1.5)
                checked += 1
    assert checked >= 2 * 3 * 5


def test_compose_merges_per_task_backbone_tweaks():
    reproduce = load_reproduce()
    grid = {
        "base": {"seed": 1, "training": {"steps": 5}},
        "tasks": {"t": {"name": "binary_copy", "length": 4}},
        "layers": {"t": 3},
        "backbones": {"b": {"name": "transformer", "d_model": 8}},
        "haltings": {"h": {"name": "none"}},
        "per_task_backbone": {"t": {"b": {"d_model": 16}}},
    }
    spec = reproduce.compose(grid, "t", "b", "h", 4)
    assert spec["backbone"] == {"name": "transformer", "d_model": 16, "n_layers": 3}
    assert spec["training"] == {"steps": 5} and spec["name"] == "t-b-h-s4" and spec["seed"] == 4
    assert grid["backbones"]["b"] == {"name": "transformer", "d_model": 8}  # not mutated
    with pytest.raises(SystemExit):
        reproduce.selected(["a", "b"], "a,c", "task")


def test_interval_is_a_t_interval():
    reproduce = load_reproduce()
    mean, half = reproduce.interval([0.5, 0.7, 0.6])
    assert mean == pytest.approx(0.6)
    assert half == pytest.approx(4.302653 * 0.1 / 3**0.5, rel=1e-5)  # t(0.975, 2) * sd / sqrt(n)
    assert reproduce.fmt(*reproduce.interval([0.5])) == "0.500"  # one seed: no interval


def test_addition_draws_one_length_per_batch_from_five_up():
    """Seed 000's addition runs drew n ~ U[5, 40] per batch (at this scale U[5, 8]), in training
    and in evaluation; the seed 000 presets do the same."""
    grid = yaml.safe_load((HERE / "grid.yaml").read_text())
    options = {**grid["tasks"]["addition"], "train_size": 2000}
    assert (options["min_length"], options["length"]) == (5, 8)
    task = build_task(**options)
    data = task.build(0)
    group = list(data.train[task.batch_group_column()])
    plan = BatchPlan(TensorDataset(data.train), 32, seed=0, group=group)
    per_batch = Counter()
    for step in range(200):  # a few epochs
        lengths = {group[i] for i in plan.indices(step)}
        assert len(lengths) == 1  # one n per batch
        per_batch[lengths.pop()] += 1
    assert set(per_batch) == {5, 6, 7, 8}
    total = sum(per_batch.values())
    assert all(0.15 < count / total < 0.35 for count in per_batch.values()), per_batch  # about 1/4 each
    assert set(data.test["length"]) == {5, 6, 7, 8}  # evaluation draws n from the same range
    tune = yaml.safe_load((HERE.parent / "tune" / "seed000_small.yaml").read_text())
    addition = [t for t in tune["search"]["task"]["grid"] if t["name"] == "binary_addition"]
    assert addition == [{"name": "binary_addition", "length": 8, "min_length": 5}]


# ------------------------------------------------------------ selection of rows (--cells, --stop-at)

SCRIPT = Path(__file__).resolve().parents[1] / "examples" / "seed000" / "reproduce.py"


def test_cells_select_backbone_halting_pairs_cell_by_cell(tmp_path):
    reproduce = load_reproduce()
    grid = yaml.safe_load((HERE / "grid.yaml").read_text())
    pairs = reproduce.parse_cells(grid, "mamba:graves, armt:seed000_act")
    assert pairs == [("mamba", "graves"), ("armt", "seed000_act")]
    batches = reproduce.cell_points(grid, pairs, ["ca1", "ca2"], [0, 1, 2], tmp_path)
    assert [pair for pair, _ in batches] == pairs
    names = [[spec["name"] for spec, _ in points] for _, points in batches]
    # pair by pair in the order given; within a pair every seed of one task before the next task
    assert names == [[f"{t}-mamba-graves-s{s}" for t in ("ca1", "ca2") for s in (0, 1, 2)],
                     [f"{t}-armt-seed000_act-s{s}" for t in ("ca1", "ca2") for s in (0, 1, 2)]]
    spec, out = batches[1][1][0]
    assert out == tmp_path / "ca1-armt-seed000_act-s0"
    assert spec["halting"]["name"] == "seed000_act" and spec["backbone"]["segment_size"] == 9
    for bad in ["mamba", "mamba:", ":graves", "mamba:foo", "gru:none", " , "]:
        with pytest.raises(SystemExit):
            reproduce.parse_cells(grid, bad)
    # the default selection is still the whole cross product, seed-major
    every = reproduce.grid_points(grid, list(grid["tasks"]), list(grid["backbones"]), list(grid["haltings"]),
                                  [0, 1, 2], tmp_path)
    assert len(every) == 3 * 4 * 4 * 3
    assert {spec["seed"] for spec, _ in every[:24]} == {0}  # transformer/lstm seed 0 first


def test_cells_on_the_command_line(tmp_path):
    import subprocess
    import sys

    out = subprocess.run([sys.executable, str(SCRIPT), "--cells", "lstm:constant", "--tasks", "ca2",
                          "--seeds", "4,5", "--print-specs"], capture_output=True, text=True, check=True)
    specs = [s for s in yaml.safe_load_all(out.stdout) if s]
    assert [s["name"] for s in specs] == ["ca2-lstm-constant-s4", "ca2-lstm-constant-s5"]
    assert specs[0]["halting"] == {"name": "constant", "scope": "layer", "hops": 3}
    clash = subprocess.run([sys.executable, str(SCRIPT), "--cells", "lstm:none", "--backbones", "lstm",
                            "--print-specs"], capture_output=True, text=True)
    assert clash.returncode != 0 and "--cells replaces" in clash.stderr


def utc(text: str) -> float:
    """Epoch seconds of a UTC time written YYYY-MM-DD HH:MM."""
    return calendar.timegm(time.strptime(text, "%Y-%m-%d %H:%M"))


def test_stop_at_past_midnight_is_tomorrows_deadline(tmp_path, monkeypatch):
    """--stop-at fixes one deadline when the command starts: the next HH:MM UTC. Started at 23:50
    with --stop-at 00:10, runs still start at 23:55 and at 00:09 and stop at 00:10 the next day
    (comparing times of day, 23:55 >= 00:10, stopped at once)."""
    reproduce = load_reproduce()
    queue = reproduce.queue
    started = []

    def fake_run_cli(args: list[str], logfile: Path) -> dict:  # `ponderlab run SPEC --output-dir OUT`
        out = Path(args[args.index("--output-dir") + 1])
        out.mkdir(parents=True)
        (out / "results.json").write_text(json.dumps(
            {"test/token_accuracy": 0.5, "test/exact_match": 0.0, "test/mean_hops": 1.0}))
        started.append(out.name)
        return {"cpu_seconds": 1.0, "wall_seconds": 1.0}

    monkeypatch.setattr(queue, "run_cli", fake_run_cli)
    monkeypatch.setattr(queue, "DEADLINE", queue.DEADLINE)  # restored after the test
    monkeypatch.setattr(queue, "STOP_AT", queue.STOP_AT)
    clock = [utc("2026-12-03 23:50")]
    monkeypatch.setattr(queue.time, "time", lambda: clock[0])
    reproduce.set_stop_at("00:10")
    assert queue.DEADLINE == utc("2026-12-04 00:10")

    for seed, at in enumerate(["2026-12-03 23:55", "2026-12-04 00:09", "2026-12-04 00:10", "2026-12-04 09:00"]):
        clock[0] = utc(at)
        queue.train({"name": f"ca1-lstm-none-s{seed}"}, tmp_path / f"ca1-lstm-none-s{seed}")
    assert started == ["ca1-lstm-none-s0", "ca1-lstm-none-s1"]  # not at 00:10 nor after
    assert not (tmp_path / "ca1-lstm-none-s2.yaml").exists()
    assert reproduce.past_stop(utc("2026-12-04 00:10")) and not reproduce.past_stop(utc("2026-12-04 00:09"))


def test_stop_deadline_is_the_next_occurrence(monkeypatch):
    reproduce = load_reproduce()
    now = utc("2026-12-03 07:04")
    assert reproduce.stop_deadline("07:05", now) == utc("2026-12-03 07:05")  # later today
    assert reproduce.stop_deadline("07:04", now) == now  # exactly now: now (stops at once)
    assert reproduce.stop_deadline("07:03", now) == utc("2026-12-04 07:03")  # passed today: tomorrow
    assert reproduce.stop_deadline("00:00", now) == utc("2026-12-04 00:00")
    assert reproduce.stop_deadline("23:59", utc("2026-12-31 23:59") + 30) == utc("2027-01-01 23:59")
    for bad in ["7", "24:00", "07:60", "ab:cd", "07:5"]:
        with pytest.raises(SystemExit, match="HH:MM"):
            reproduce.stop_deadline(bad, now)
    monkeypatch.setattr(reproduce.queue, "DEADLINE", utc("2026-12-03 07:05"))  # restored after the test
    reproduce.set_stop_at(None)
    assert not reproduce.past_stop(utc("2026-12-03 23:59"))


def test_stop_at_on_the_command_line_rejects_a_malformed_time():
    import subprocess
    import sys

    bad = subprocess.run([sys.executable, str(SCRIPT), "--stop-at", "25:00", "--print-specs"],
                         capture_output=True, text=True)
    assert bad.returncode != 0 and "not a UTC time HH:MM" in bad.stderr


def write_result(runs: Path, name: str, token: float, exact: float = 0.1, hops: float = 1.0) -> None:
    (runs / name).mkdir(parents=True)
    (runs / name / "results.json").write_text(json.dumps(
        {"test/token_accuracy": token, "test/exact_match": exact, "test/mean_hops": hops}))
    (runs / name / "timing.json").write_text(json.dumps({"cpu_seconds": 10.0, "wall_seconds": 20.0}))


def test_random_rows_only_for_the_act_halting_asked(tmp_path):
    reproduce = load_reproduce()
    grid = yaml.safe_load((HERE / "grid.yaml").read_text())
    for seed, (none, act, graves) in enumerate([(0.80, 0.85, 0.90), (0.81, 0.86, 0.91), (0.80, 0.87, 0.92)]):
        write_result(tmp_path, f"ca2-mamba-none-s{seed}", none)
        write_result(tmp_path, f"ca2-mamba-seed000_act-s{seed}", act, hops=1.5)
        write_result(tmp_path, f"ca2-mamba-graves-s{seed}", graves, hops=1.2)
    both = reproduce.random_points(grid, tmp_path, ["ca2"], ["mamba"], [0, 1, 2])
    assert sorted({spec["name"].rsplit("-s", 1)[0] for spec, _ in both}) == [
        "ca2-mamba-random_graves", "ca2-mamba-random_seed000_act"]
    only = reproduce.random_points(grid, tmp_path, ["ca2"], ["mamba"], [0, 1, 2], acts=["seed000_act"])
    assert [spec["name"] for spec, _ in only] == [f"ca2-mamba-random_seed000_act-s{s}" for s in (0, 1, 2)]
    assert only[0][0]["halting"] == {"name": "random", "scope": "layer", "distribution": "two_point",
                                     "max_hops": 3, "mean_hops": 1.5}


# ------------------------------------------------------------------------------- --embed RESULTS_MD

RESULTS_MD = """# Results

<!-- section: other -->
other text
<!-- end: other -->

<!-- section: seed000 (issues 7 and 30) -->
## Seed 000

Hand-written prose that stays.

### Search (generated: search.md)

stale search table

### Grid (generated: table.md)

stale grid table
<!-- end: seed000 -->

<!-- section: after -->
after text
<!-- end: after -->
"""


def test_embed_replaces_only_the_generated_block(tmp_path):
    reproduce = load_reproduce()
    report = tmp_path / "report"
    report.mkdir()
    (report / "search.md").write_text("# Search title\n\nsearch body 0.811\n\n## sub\n| a |\n")
    (report / "table.md").write_text("# Grid title\n\ngrid intro\n\n## ca1\n\n| lstm | none | 0.840 |\n")
    results = tmp_path / "results.md"
    results.write_text(RESULTS_MD)
    reproduce.embed(report, results)
    text = results.read_text()
    assert "stale" not in text
    assert "Search title" not in text and "Grid title" not in text  # the files' own titles dropped
    assert "search body 0.811" in text and "| lstm | none | 0.840 |" in text
    # the files' sections become level-4 headings under the block's "### Grid (generated ...)"
    assert "\n#### sub\n" in text and "\n#### ca1\n" in text
    assert "\n## ca1\n" not in text
    before, block = text.split("### Search (generated: search.md)")
    assert before == RESULTS_MD.split("### Search (generated: search.md)")[0]  # prose above kept
    assert block.index("search body") < block.index("### Grid (generated: table.md)") < block.index("grid intro")
    assert text.endswith("| lstm | none | 0.840 |\n<!-- end: seed000 -->\n\n<!-- section: after -->\n"
                         "after text\n<!-- end: after -->\n")
    reproduce.embed(report, results)
    assert results.read_text() == text  # idempotent
    results.write_text("# Results\n\nno seed000 section\n")
    with pytest.raises(SystemExit, match="no '### Search"):
        reproduce.embed(report, results)


def test_report_only_embed_from_the_command_line(tmp_path):
    """`--report-only --embed FILE` writes table.md from the runs and copies it into FILE."""
    import subprocess
    import sys

    grid = {
        "seeds": [0, 1],
        "search": "search_tune.yaml",  # its storage (runs/tune under cwd) is absent: no search.md rewrite
        "base": {"training": {"steps": 5}},
        "tasks": {"addition": {"name": "binary_addition", "length": 4}},
        "backbones": {"lstm": {"name": "lstm", "d_model": 8, "n_layers": 1}},
        "haltings": {"none": {"name": "none"}, "graves": {"name": "graves", "max_hops": 3}},
        "act_haltings": ["graves"],
    }
    (tmp_path / "grid.yaml").write_text(yaml.safe_dump(grid))
    runs = tmp_path / "runs"
    write_result(runs, "addition-lstm-none-s0", 0.60)
    write_result(runs, "addition-lstm-none-s1", 0.70)
    write_result(runs, "addition-lstm-graves-s0", 0.65, hops=1.25)
    write_result(runs, "addition-lstm-graves-s1", 0.75, hops=1.75)
    report = tmp_path / "report"
    report.mkdir()
    (report / "search.md").write_text("# Search\n\nsearch kept\n")
    results = tmp_path / "results.md"
    results.write_text(RESULTS_MD)
    subprocess.run([sys.executable, str(SCRIPT), "--grid", str(tmp_path / "grid.yaml"), "--runs", str(runs),
                    "--report", str(report), "--report-only", "--embed", str(results)],
                   cwd=tmp_path, check=True, capture_output=True, text=True)
    table = (report / "table.md").read_text()
    assert "| lstm | graves | 2 | 0.700 ± 0.635 | 0.100 ± 0.000 | 1.50 | 10 |" in table  # t(0.975, 1) = 12.706
    assert "| addition | lstm | graves | 2 | +0.050 ±" in table
    assert "Budget: 4 runs finished (4 planned" in table
    data = json.loads((report / "table.json").read_text())
    assert data["cells"]["addition/lstm/none"]["token_accuracy"] == [0.6, 0.7] and data["runs"] == 4
    text = results.read_text()
    assert "stale" not in text and "search kept" in text
    assert "| lstm | graves | 2 | 0.700 ± 0.635 |" in text and "\n#### addition\n" in text
    assert "Hand-written prose that stays." in text and "after text" in text
