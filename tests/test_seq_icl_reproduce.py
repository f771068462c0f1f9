"""examples/seq_icl: every row's search and the GPU spec validate as `ponderlab tune` specs (nothing trains)."""

from __future__ import annotations

import importlib
import json
import shutil
import sys
from pathlib import Path

import pytest
import yaml
from script_modules import load_script

from ponderlab.tune.spec import load_tune_spec

HERE = Path(__file__).resolve().parents[1] / "examples" / "seq_icl"


def load_reproduce():
    return load_script("examples/seq_icl/reproduce.py", "seq_icl_reproduce")


def load_module(name: str):
    """A module next to reproduce.py (examples/seq_icl is on sys.path once the script is loaded)."""
    load_reproduce()
    return importlib.import_module(name)


ROWS = sorted(p for p in HERE.glob("*.yaml") if not p.stem.startswith("tune"))


@pytest.mark.parametrize("row", ROWS, ids=lambda p: p.stem)
def test_row_search_is_a_valid_tune_spec(row, tmp_path, registry):
    reproduce = load_reproduce()
    raw = reproduce.search_spec(row, tmp_path)
    task, backbone = reproduce.row_info(row)
    assert f"{task}_{backbone}" == row.stem
    path = tmp_path / "tune.yaml"
    path.write_text(yaml.safe_dump(raw))
    tspec = load_tune_spec(path, registry=registry)
    assert tspec.num_trials >= 1
    assert tspec.options.max_concurrent_trials == reproduce.PARALLEL
    for checked in tspec.checked:
        assert checked.backbone.d_model <= 64  # issue 30: width up to 64 at CPU scale
        assert checked.training.num_threads == 1


def test_every_associative_recall_row_is_searched_at_seq_icls_width_and_one_budget(tmp_path, registry):
    """seq_icl gives every model the same width and epochs: every associative-recall row's search
    trains at width 32 for the same 6000 steps (warmup 300), over seeds 0-2 and two lrs, and the
    row's spec written back is one of its search's settings."""
    reproduce = load_reproduce()
    comparable = load_module("seqicl_tools").comparable
    rows = [p for p in ROWS if p.stem.startswith("associative_recall_")]
    assert len(rows) == 8
    for row in rows:
        path = tmp_path / f"{row.stem}.yaml"
        path.write_text(yaml.safe_dump(reproduce.search_spec(row, tmp_path)))
        checked = load_tune_spec(path, registry=registry).checked
        assert len(checked) == 6
        assert {(c.backbone.d_model, c.training.steps, c.training.warmup_steps) for c in checked} == {(32, 6000, 300)}
        assert sorted({c.seed for c in checked}) == [0, 1, 2]
        assert len({c.training.lr for c in checked}) == 2
        written = comparable(yaml.safe_load(row.read_text()))
        searched = [comparable(c.model_dump(mode="json")) for c in checked]
        assert written in searched, row.stem


@pytest.mark.parametrize("name", ["tune_gpu.yaml", "tune_ar_transformer_steps6000.yaml", "tune_ih_transformer_steps25000.yaml",
                                  "tune_ar_h3_lr2e-3_steps6000.yaml", "tune_ar_transformer_heads.yaml",
                                  "tune_ih_h3_steps10000.yaml", "tune_ih_rwkv_steps10000.yaml",
                                  "tune_ih_retnet_steps10000.yaml", "tune_ar_h3_heads.yaml", "tune_ar_rwkv_d32_steps6000.yaml"])
def test_tune_specs_validate(name, registry):
    tspec = load_tune_spec(HERE / name, registry=registry)
    assert tspec.num_trials >= 2


def test_gpu_spec_is_seq_icl_budget(registry):
    tspec = load_tune_spec(HERE / "tune_gpu.yaml", registry=registry)
    assert tspec.num_trials == 2 * 8 * 3
    for checked in tspec.checked:
        assert checked.backbone.d_model == 32 and checked.backbone.n_layers == 2
        assert checked.training.steps == 62800 and checked.training.warmup_steps == 6280
        training = checked.training  # seq_icl's trainer: linear to 0, no clipping, every parameter decayed
        assert (training.schedule, training.min_lr_ratio, training.grad_clip, training.decay_vectors) == (
            "linear", 0.0, None, True)
        # seq_icl's lm_simple ties the head; ponderlab's transformer is GPT-NeoX (no such option)
        assert checked.backbone.name == "transformer" or checked.backbone.tie_embeddings
    assert "lstm" not in {c.backbone.name for c in tspec.checked}  # seq_icl's LSTM model is lstm_mixer
    assert tspec.options.resources.gpu == 1


def _fake_search(directory: Path, rows: list[tuple[str, int, str, float | None]]) -> None:
    """A search directory as `ponderlab tune` leaves it: tune_spec.yaml and results.csv."""
    directory.mkdir(parents=True)
    (directory / "tune_spec.yaml").write_text(yaml.safe_dump(
        {"search": {"training.lr": {"grid": [0.001, 0.003]}, "seed": {"grid": [0, 1, 2]}}}))
    lines = ["trial,status,training.lr,seed,validation/exact_match,test/exact_match,run_dir"]
    for i, (lr, seed, status, value) in enumerate(rows):
        shown = "" if value is None else value
        lines.append(f"t{i},{status},{lr},{seed},{shown},{shown},runs/t{i}")
    (directory / "results.csv").write_text("\n".join(lines) + "\n")


def test_setting_is_chosen_by_its_mean_over_seeds_not_its_best_seed(tmp_path):
    reproduce = load_reproduce()
    search = tmp_path / "search"
    # lr 0.001 has the single best trial (seed 0 at 1.0) but a bad mean; lr 0.003 is robust.
    _fake_search(search, [("0.001", 0, "completed", 1.0), ("0.001", 1, "completed", 0.44),
                          ("0.001", 2, "completed", 0.39), ("0.003", 2, "completed", 0.97),
                          ("0.003", 0, "completed", 0.99), ("0.003", 1, "completed", 0.96)])
    ranked = reproduce.settings(search)
    assert [g["config"] for g in ranked] == [{"training.lr": "0.003"}, {"training.lr": "0.001"}]
    assert [t["_seed"] for t in ranked[0]["trials"]] == [0, 1, 2]
    assert ranked[0]["mean"] == pytest.approx((0.99 + 0.96 + 0.97) / 3)
    assert ranked[0]["min"] == pytest.approx(0.96)
    table = load_module("seqicl_tools").settings_markdown(search)
    assert "| training.lr=0.003 | 0, 1, 2 | 0.990, 0.960, 0.970 | 0.973 | 0.960 |" in table


def test_failed_trials_do_not_count_towards_a_mean(tmp_path):
    reproduce = load_reproduce()
    search = tmp_path / "search"
    _fake_search(search, [("0.001", 0, "completed", 0.5), ("0.001", 1, "error", None),
                          ("0.003", 0, "error", None), ("0.003", 1, "error", None)])
    ranked = reproduce.settings(search)
    assert ranked[0]["config"] == {"training.lr": "0.001"}
    assert ranked[0]["values"] == [0.5] and ranked[0]["failed"] == 1
    assert ranked[1]["values"] == [] and ranked[1]["failed"] == 2
    assert reproduce.best_setting(search)["config"] == {"training.lr": "0.001"}


def test_a_setting_missing_a_seed_ranks_below_complete_ones(tmp_path):
    reproduce = load_reproduce()
    search = tmp_path / "search"
    # lr 0.003 has the higher mean but only 2 of its 3 seeds finished.
    _fake_search(search, [("0.001", 0, "completed", 0.99), ("0.001", 1, "completed", 0.98),
                          ("0.001", 2, "completed", 0.97), ("0.003", 0, "completed", 1.0),
                          ("0.003", 1, "completed", 1.0), ("0.003", 2, "error", None)])
    assert [g["config"] for g in reproduce.settings(search)] == [{"training.lr": "0.001"}, {"training.lr": "0.003"}]


def test_table_only_with_only_keeps_the_other_rows_from_table_json(tmp_path, monkeypatch, capsys):
    """`--table-only --only ROW` from a runs/ copy that lacks other rows, or lacks ROW itself, must not
    drop or rewrite them; a named row that neither runs/ nor table.json holds is listed as missing."""
    reproduce, table_module = load_reproduce(), load_module("seqicl_table")
    docs, root = tmp_path / "docs" / "results" / "seq_icl", tmp_path
    docs.mkdir(parents=True)
    monkeypatch.setattr(table_module, "DOCS", docs)
    monkeypatch.setattr(table_module, "ROOT", root)
    kept_row = {"row": "associative_recall_lstm", "task": "associative_recall", "backbone": "lstm", "width": 64,
                "heads": None, "lr": 0.003, "steps": 3000, "train_size": 5000, "seeds": [0, 1, 2],
                "test_exact_match": [44.6, 51.0, 46.8], "mean": 47.5, "min": 44.6, "max": 51.0, "std": 3.2,
                "reference": 36.2, "chance": 100 / 9, "search_trials": 2, "search_cpu_seconds": 154.7,
                "search_trial_seconds": 150.0, "seed_cpu_seconds_each": 75.0, "seed_cpu_seconds": 150.0,
                "search": [], "target": "< 80", "target_met": True, "searched": "training.lr=0.003: 45.4 (n=1)"}
    stale_row = {**kept_row, "row": "associative_recall_h3", "backbone": "h3", "mean": 1.0}
    (docs / "table.json").write_text(json.dumps([kept_row, stale_row]))
    (root / "docs" / "results.md").write_text("before\n<!-- begin: seq_icl table (reproduce.py) -->\nold\n"
                                              "<!-- end: seq_icl table -->\nafter\n")
    # a follow-up whose runs are not in this copy: its recorded budget still counts
    (docs / "tried_gone.md").write_text('table\n\nBudget (process tree of `ponderlab tune`): {\n "cpu_seconds": 600.0,\n'
                                        ' "wall_seconds": 900.0\n}\n')
    (tmp_path / "runs" / "tried").mkdir(parents=True)
    (tmp_path / "runs" / "tried" / "here.budget.json").write_text('{"cpu_seconds": 120.0, "wall_seconds": 1.0}')
    assert reproduce.main(["--table-only", "--only", "associative_recall_h3", "--only", "associative_recall_s4d",
                           "--output-dir", str(tmp_path / "runs")]) == 0
    assert "associative_recall_h3: no finished runs in" in capsys.readouterr().err
    rows = {r["row"]: r for r in json.loads((docs / "table.json").read_text())}
    assert rows["associative_recall_lstm"] == kept_row  # not in --only: kept as it was
    assert rows["associative_recall_h3"] == stale_row  # named but without runs here: kept, not dropped
    assert "associative_recall_s4d" not in rows  # named, no runs here and none before: nothing to keep
    table = (docs / "table.md").read_text()
    assert "47.5 [44.6, 51.0], n=3" in table
    kept = next(line for line in table.splitlines() if line.startswith("Rows not regenerated"))
    assert kept.endswith("table.json: associative_recall_h3, associative_recall_lstm.")
    missing = next(line for line in table.splitlines() if line.startswith("Rows with no finished"))
    missing = missing.split(": ", 1)[1].rstrip(".").split(", ")
    assert "associative_recall_s4d" in missing
    assert "associative_recall_h3" not in missing and "associative_recall_lstm" not in missing
    assert "not included: 12 CPU-minutes" in table  # 600 s recorded in docs + 120 s in runs/tried
    pasted = (root / "docs" / "results.md").read_text()
    assert pasted.startswith("before\n") and pasted.endswith("after\n") and "\nold\n" not in pasted
    assert "47.5 [44.6, 51.0], n=3" in pasted


def test_table_only_on_seeds_without_their_search_keeps_the_search_from_table_json(tmp_path, monkeypatch):
    """`--table-only --only ROW` on a runs/ copy that holds ROW's seeds but not its search (a fresh
    machine that retrained the seeds): the row's numbers come from the seeds, its search from table.json."""
    reproduce, table_module = load_reproduce(), load_module("seqicl_table")
    docs = tmp_path / "docs" / "results" / "seq_icl"
    docs.mkdir(parents=True)
    monkeypatch.setattr(table_module, "DOCS", docs)
    monkeypatch.setattr(table_module, "ROOT", tmp_path)
    (tmp_path / "docs" / "results.md").write_text("no table here\n")
    stem = "associative_recall_gilr"
    recorded = {"row": stem, "search_trials": 2, "search_cpu_seconds": 460.8, "search_trial_seconds": 0.0,
                "search": [{"training.lr": "0.003"}], "searched": "training.lr=0.003: 25.0 (n=1)", "adopted_from": []}
    (docs / "table.json").write_text(json.dumps([recorded]))
    spec = yaml.safe_load((reproduce.HERE / f"{stem}.yaml").read_text())
    for seed, val in enumerate([0.25, 0.27, 0.29]):
        _fake_run(tmp_path / "runs" / "seeds" / stem / f"seed{seed}", {**spec, "seed": seed}, val)
    assert reproduce.main(["--table-only", "--only", stem, "--output-dir", str(tmp_path / "runs")]) == 0
    row = json.loads((docs / "table.json").read_text())[0]
    assert row["test_exact_match"] == pytest.approx([25.0, 27.0, 29.0])  # from the seeds in this copy
    assert (row["search_trials"], row["search_cpu_seconds"], row["searched"]) == (2, 460.8, recorded["searched"])
    assert "| 2, 461 |" in (docs / "table.md").read_text()


def test_a_row_regenerated_without_its_search_keeps_the_search_from_table_json():
    """Regenerating a row's seeds on a copy of runs/ that lacks the row's search (a new machine,
    --adopt) keeps the search's trials, CPU time and settings as table.json recorded them."""
    table_module = load_module("seqicl_table")
    search = [{"training.lr": "0.001", "validation/exact_match": "0.066"}]
    earlier = {"search_trials": 2, "search_cpu_seconds": 324.4, "search_trial_seconds": 0.0, "search": search,
               "adopted_from": ["old"], "searched": "**the row's setting** (lr 0.001, 20000 steps), from the "
               "follow-up(s) old, adopted by `--adopt`: 25.0 (n=3); the row's own search: training.lr=0.001: 6.6 (n=1)"}
    adopted_here = {"search_trials": 0, "search_cpu_seconds": None, "search_trial_seconds": 0, "search": [],
                    "adopted_from": ["new"], "searched": "**the row's setting** (lr 0.0005, 20000 steps), from the "
                    "follow-up(s) new, adopted by `--adopt`: 81.1 (n=3)"}
    row = table_module.carry_search(adopted_here, earlier)
    assert (row["search_trials"], row["search_cpu_seconds"], row["search"]) == (2, 324.4, search)
    assert row["searched"] == adopted_here["searched"] + "; the row's own search: training.lr=0.001: 6.6 (n=1)"
    assert row["adopted_from"] == ["new"]
    plain = {**adopted_here, "adopted_from": [], "searched": ""}
    assert table_module.carry_search(plain, {**earlier, "adopted_from": [], "searched": "training.lr=0.001: 6.6 (n=1)"}
                                     )["searched"] == "training.lr=0.001: 6.6 (n=1)"
    own = {**adopted_here, "search_trials": 1, "searched": "training.lr=0.002: 7.0 (n=1)"}
    assert table_module.carry_search(own, earlier) == own  # a search in this copy of runs/ wins
    assert table_module.carry_search(adopted_here, {**earlier, "search_trials": 0}) == adopted_here


def _fake_run(run_dir: Path, spec: dict, val: float) -> None:
    run_dir.mkdir(parents=True)
    (run_dir / "spec.yaml").write_text(yaml.safe_dump(spec))
    (run_dir / "metrics.jsonl").write_text("")
    (run_dir / "results.json").write_text(json.dumps({"validation/exact_match": val, "test/exact_match": val}))


def _row_with_seeds(tmp_path: Path, stem: str, row_spec: dict, vals: dict[int, float],
                    trained: dict | None = None) -> tuple[Path, Path]:
    """A row's example spec and its seeds' runs in OUT/seeds (trained with `trained`, by default the
    row's spec), with validation `vals` by seed: (spec path, OUT)."""
    out, spec_path = tmp_path / "runs", tmp_path / f"{stem}.yaml"
    spec_path.write_text(yaml.safe_dump(row_spec))
    for seed, val in vals.items():
        _fake_run(out / "seeds" / stem / f"seed{seed}", {**(trained or row_spec), "seed": seed}, val)
    return spec_path, out


def _fake_follow_up(directory: Path, spec: dict, vals: dict[int, float]) -> None:
    directory.mkdir(parents=True)
    (directory / "tune_spec.yaml").write_text(yaml.safe_dump({"search": {"seed": {"grid": sorted(vals)}}}))
    lines = ["trial,status,seed,validation/exact_match,test/exact_match,run_dir"]
    for seed, val in vals.items():
        lines.append(f"t{seed},completed,{seed},{val},{val},runs/t{seed}")
        _fake_run(directory / "runs" / f"t{seed}", {**spec, "seed": seed, "output_dir": "x"}, val)
    (directory / "results.csv").write_text("\n".join(lines) + "\n")


@pytest.mark.parametrize("follow_up_vals, adopted", [
    ({0: 0.97, 2: 0.82, 1: 1.0}, True),    # mean 0.930 > the row's 0.911
    ({0: 1.0, 2: 0.898, 1: 0.836}, False),  # the row's values on other seeds: a tie keeps the row
    ({0: 0.97, 2: 0.82, 1: 0.94}, False),   # mean 0.910 < 0.911
])
def test_adopt_replaces_the_row_only_if_better_over_the_seeds(tmp_path, follow_up_vals, adopted):
    reproduce = load_reproduce()
    row_spec = {"name": "row", "seed": 0, "task": {"name": "induction_head"}, "backbone": {"name": "transformer"},
                "training": {"steps": 20000, "lr": 0.0005, "eval_every": 2000}}
    spec_path, out = _row_with_seeds(tmp_path, "induction_head_transformer", row_spec, {0: 0.898, 1: 1.0, 2: 0.836})
    longer = {**row_spec, "name": "follow", "training": {"steps": 25000, "lr": 0.0005, "eval_every": 2500}}
    # the seeds split over two follow-ups, as tune_ih_transformer_steps25000{,_seed1}.yaml
    _fake_follow_up(out / "tried" / "a", longer, {s: v for s, v in follow_up_vals.items() if s != 1})
    _fake_follow_up(out / "tried" / "b", longer, {1: follow_up_vals[1]})
    result = reproduce.adopt(spec_path, out, ["a", "b"], 3)
    assert result is adopted
    written = yaml.safe_load(spec_path.read_text())
    seeds_dir = out / "seeds" / spec_path.stem
    if result:
        assert written["training"]["steps"] == 25000 and written["seed"] == 0 and written["name"] == "row"
        assert "output_dir" not in written
        header = spec_path.read_text().split("\nname:")[0]
        assert "training.eval_every=2500, training.steps=25000 -> val 0.970, 1.000, 0.820" in header
        assert "training.eval_every=2000, training.steps=20000 -> val 0.898, 1.000, 0.836" in header
        moved = out / "superseded" / f"{spec_path.stem}_lr0.0005_steps20000"
        assert json.loads((moved / "seed2" / "results.json").read_text())["validation/exact_match"] == 0.836
        assert json.loads((seeds_dir / "seed1" / "results.json").read_text())["validation/exact_match"] == 1.0
        assert "tried/b/runs/t1" in (seeds_dir / "seed1" / "source.txt").read_text()
        assert reproduce.adopt(spec_path, out, ["a", "b"], 3) is False  # a second call is a tie: no-op
    else:
        assert written == row_spec
        assert json.loads((seeds_dir / "seed2" / "results.json").read_text())["validation/exact_match"] == 0.836


def test_adopt_does_not_compare_with_a_missing_seed(tmp_path):
    reproduce = load_reproduce()
    row_spec = {"name": "row", "seed": 0, "training": {"steps": 20000, "lr": 0.0005}}
    spec_path, out = _row_with_seeds(tmp_path, "induction_head_transformer", row_spec, {0: 0.5, 1: 0.5, 2: 0.5})
    _fake_follow_up(out / "tried" / "a", {**row_spec, "training": {"steps": 25000, "lr": 0.0005}}, {0: 1.0, 2: 1.0})
    assert reproduce.adopt(spec_path, out, ["a"], 3) is False
    assert yaml.safe_load(spec_path.read_text()) == row_spec


def _fake_heads_follow_up(directory: Path, spec: dict, vals: dict[tuple[int, int], float]) -> None:
    """A follow-up searching backbone.n_heads x seed, as tune_ar_transformer_heads.yaml."""
    directory.mkdir(parents=True)
    heads = sorted({h for h, _ in vals})
    (directory / "tune_spec.yaml").write_text(yaml.safe_dump(
        {"search": {"backbone.n_heads": {"grid": heads}, "seed": {"grid": sorted({s for _, s in vals})}}}))
    lines = ["trial,status,backbone.n_heads,seed,validation/exact_match,test/exact_match,run_dir"]
    for (head, seed), val in vals.items():
        lines.append(f"t{head}_{seed},completed,{head},{seed},{val},{val},runs/t{head}_{seed}")
        run_spec = {**spec, "backbone": {**spec["backbone"], "n_heads": head}, "seed": seed, "output_dir": "x"}
        _fake_run(directory / "runs" / f"t{head}_{seed}", run_spec, val)
    (directory / "results.csv").write_text("\n".join(lines) + "\n")


@pytest.mark.parametrize("row_vals, adopted", [((0.9, 0.9, 0.9), True), ((1.0, 1.0, 1.0), False)])
def test_adopt_takes_the_best_setting_of_a_follow_up_that_searched_several(tmp_path, monkeypatch, row_vals,
                                                                            adopted):
    reproduce = load_reproduce()
    row_spec = {"name": "row", "seed": 0, "task": {"name": "associative_recall"},
                "backbone": {"name": "transformer", "n_heads": 4}, "training": {"steps": 4000, "lr": 0.003}}
    spec_path, out = _row_with_seeds(tmp_path, "associative_recall_transformer", row_spec, dict(enumerate(row_vals)))
    # 1 head has the best single trial (1.0) but the worse mean; 2 heads is the follow-up's best setting
    _fake_heads_follow_up(out / "tried" / "heads", {**row_spec, "name": "heads"},
                          {(1, 0): 1.0, (1, 1): 0.5, (1, 2): 0.6, (2, 0): 0.95, (2, 1): 0.96, (2, 2): 0.97})
    assert reproduce.adopt(spec_path, out, ["heads"], 3) is adopted
    written = yaml.safe_load(spec_path.read_text())
    if adopted:
        assert written["backbone"]["n_heads"] == 2 and written["name"] == "row"
        header = spec_path.read_text().split("\nname:")[0]
        assert "backbone.n_heads=2 -> val 0.950, 0.960, 0.970" in header
        assert "backbone.n_heads=4 -> val 0.900, 0.900, 0.900" in header
        assert "not chosen: backbone.n_heads=1 -> val 1.000, 0.500, 0.600" in header
        seeds_dir = out / "seeds" / spec_path.stem
        assert "tried/heads/runs/t2_1" in (seeds_dir / "seed1" / "source.txt").read_text()
        table_module = load_module("seqicl_table")
        monkeypatch.setattr(table_module, "DOCS", tmp_path / "docs")
        row = table_module.summarize(spec_path, out)  # the table names the follow-up the row now comes from
        assert row["adopted_from"] == ["heads"] and row["adopted_trials"] == 6
        assert row["searched"].startswith("**the row's setting** (lr 0.003, 4000 steps), from the follow-up(s) heads")
        assert "from the follow-up(s) heads: 6, -" in table_module.adopted_cell(row)
    else:
        assert written == row_spec  # 2 heads' mean 0.96 does not beat the row's 1.0


def test_adopt_refuses_to_compare_with_seeds_of_another_setting(tmp_path):
    """A stale copy of runs/ (the row's seeds trained with an older spec) must not be the baseline."""
    reproduce = load_reproduce()
    row_spec = {"name": "row", "seed": 0, "training": {"steps": 4000, "lr": 0.003}}
    older = {**row_spec, "training": {"steps": 3000, "lr": 0.001}}
    spec_path, out = _row_with_seeds(tmp_path, "associative_recall_transformer", row_spec,
                                     {0: 1.0, 1: 0.44, 2: 0.438}, trained=older)
    _fake_follow_up(out / "tried" / "a", {**row_spec, "training": {"steps": 4000, "lr": 0.002}},
                    {0: 1.0, 1: 1.0, 2: 1.0})
    with pytest.raises(SystemExit, match="not trained with the row's spec"):
        reproduce.adopt(spec_path, out, ["a"], 3)
    assert yaml.safe_load(spec_path.read_text()) == row_spec
    assert json.loads((out / "seeds" / spec_path.stem / "seed1" / "results.json").read_text())[
        "validation/exact_match"] == 0.44


@pytest.mark.parametrize("backbone", ["s4d", "rwkv", "lru", "gilr", "retnet"])
def test_the_ih_weak_rows_search_lr_at_seed_0_over_5000_steps(backbone, tmp_path, registry):
    """The five induction-head rows seq_icl has at chance (seqicl7): lr {1e-3, 2e-3} at seed 0,
    5000 steps (warmup 500, evaluated every 500), width 64, 100k training sequences; the LSTM row
    keeps the task's 20000 steps."""
    reproduce = load_reproduce()
    path = tmp_path / "tune.yaml"
    path.write_text(yaml.safe_dump(reproduce.search_spec(HERE / f"induction_head_{backbone}.yaml", tmp_path)))
    tspec = load_tune_spec(path, registry=registry)
    assert sorted(c.training.lr for c in tspec.checked) == [1.0e-3, 2.0e-3]
    for checked in tspec.checked:
        assert checked.seed == 0 and checked.backbone.name == backbone and checked.backbone.d_model == 64
        assert (checked.training.steps, checked.training.warmup_steps, checked.training.eval_every) == (5000, 500, 500)
        assert checked.task.train_size == 100000 and checked.training.batch_size == 32
    path.write_text(yaml.safe_dump(reproduce.search_spec(HERE / "induction_head_lstm.yaml", tmp_path)))
    assert {c.training.steps for c in load_tune_spec(path, registry=registry).checked} == {20000}


@pytest.mark.parametrize(("test_values", "curve"), [((0.05, 0.07, 0.04), True), ((0.10, 0.12, 0.09), True),
                                                    ((0.17, 0.16, 0.18), False), ((1.0, 1.0, 1.0), True)])
def test_a_row_without_target_gets_its_curve_near_chance_or_far_from_seq_icl(tmp_path, monkeypatch,
                                                                               test_values, curve):
    """Rows at chance (S4D & co. on induction head) have no target; their learning curve is the
    evidence, so it is drawn; so is a row more than 10 points from seq_icl's number (100% vs 8.8)."""
    table_module = load_module("seqicl_table")
    docs = tmp_path / "docs"
    monkeypatch.setattr(table_module, "DOCS", docs)
    spec = {"name": "row", "seed": 0, "task": {"name": "induction_head", "train_size": 100000},
            "backbone": {"name": "s4d", "d_model": 64}, "training": {"steps": 5000, "lr": 0.001}}
    spec_path = tmp_path / "induction_head_s4d.yaml"
    spec_path.write_text(yaml.safe_dump(spec))
    out = tmp_path / "runs"
    for seed, value in enumerate(test_values):
        run_dir = out / "seeds" / spec_path.stem / f"seed{seed}"
        _fake_run(run_dir, {**spec, "seed": seed}, value)
        (run_dir / "metrics.jsonl").write_text(
            json.dumps({"step": 500, "split": "validation", "exact_match": value}) + "\n")
    row = table_module.summarize(spec_path, out)
    assert row["target"] == "-" and row["target_met"] is None and row["reference"] == 8.8
    assert row["mean"] == pytest.approx(100 * sum(test_values) / 3)
    assert (row.get("curve") == "curve_induction_head_s4d.png") is curve
    assert (docs / "curve_induction_head_s4d.png").exists() is curve
    # a row with no seq_icl number (RetNet) has nothing to be compared with: its curve is drawn
    retnet = tmp_path / "induction_head_retnet.yaml"
    retnet.write_text(yaml.safe_dump({**spec, "backbone": {"name": "retnet", "d_model": 64}}))
    shutil.copytree(out / "seeds" / spec_path.stem, out / "seeds" / retnet.stem)
    assert table_module.summarize(retnet, out)["curve"] == "curve_induction_head_retnet.png"


def test_a_row_spec_without_a_newer_key_compares_equal_to_its_runs_resolved_spec():
    """Row specs predate keys the schema gained later (training.curriculum, decay_vectors, schedule,
    LRU's scan_gradient); a run of them writes each at its default. --adopt and the seed copy must
    see the same setting, and any real difference still counts."""
    comparable = load_module("seqicl_tools").comparable
    row = yaml.safe_load((HERE / "width64" / "associative_recall_lstm.yaml").read_text())
    row["training"].pop("curriculum", None)  # the row spec as it was written before the key existed
    run = {**row, "output_dir": "runs/x", "training": {**row["training"], "curriculum": None}}
    assert comparable(run) == comparable(row)
    assert comparable({**run, "training": {**run["training"], "steps": row["training"]["steps"] + 1000}}) != comparable(row)
    assert comparable({**run, "training": {**run["training"], "curriculum": {"name": "x"}}}) != comparable(row)
    # options added later with a default that trains as before (decay_vectors, schedule)
    newer = {**run, "training": {**run["training"], "decay_vectors": False, "schedule": "cosine"}}
    assert comparable(newer) == comparable(row)
    assert comparable({**newer, "training": {**newer["training"], "schedule": "linear"}}) != comparable(row)
    assert comparable({**newer, "training": {**newer["training"], "decay_vectors": True}}) != comparable(row)
    # a backbone option added later (LRU's scan_gradient): absent in the row, at its default in a run
    lru_row = yaml.safe_load((HERE / "width64" / "associative_recall_lru.yaml").read_text())
    assert "scan_gradient" not in lru_row["backbone"]
    lru_run = {**lru_row, "backbone": {**lru_row["backbone"], "scan_gradient": "exact"}}
    assert comparable(lru_run) == comparable(lru_row)
    assert comparable({**lru_run, "backbone": {**lru_run["backbone"], "scan_gradient": "seq_icl_kernel"}}) != comparable(lru_row)


def test_an_interrupted_search_keeps_its_cpu_time_and_says_how_to_continue(tmp_path):
    """A `ponderlab tune` that exits non-zero (130: interrupted) still adds the seconds it used to the
    budget file, on top of the earlier ones, and the script exits with one message, no traceback."""
    reproduce = load_reproduce()
    budget = tmp_path / "follow_up.budget.json"
    budget.write_text(json.dumps({"cpu_seconds": 100.0, "wall_seconds": 50.0}))
    # 3 CPU-s: timed() samples the process tree every 2 s, so at least one sample sees about 2 of them
    burn = "import sys, time\nend = time.process_time() + 3\nwhile time.process_time() < end: pass\nsys.exit(130)"
    with pytest.raises(SystemExit) as stopped:
        reproduce.timed_search([sys.executable, "-c", burn], budget, dry_run=False)
    recorded = json.loads(budget.read_text())
    assert 101.0 < recorded["cpu_seconds"] < 110.0 and recorded["wall_seconds"] > 53.0
    assert "exited with 130" in str(stopped.value) and str(budget) in str(stopped.value)


def test_the_recipe_column_reads_the_rows_seq_icl_recipe_follow_ups(tmp_path):
    """A row's cell "at seq_icl's recipe" comes from OUT/tried/ar_<backbone>_seqicl_recipe and its
    _kernel_gradient twin (completed trials only); a copy of runs/ without them keeps table.json's."""
    table_module = load_module("seqicl_table")
    out = tmp_path / "runs"
    _fake_follow_up(out / "tried" / "ar_lru_seqicl_recipe", {}, {0: 0.758, 1: 0.748, 2: 0.708})
    _fake_follow_up(out / "tried" / "ar_lru_seqicl_recipe_kernel_gradient", {}, {0: 0.11, 1: 0.13})
    failed = out / "tried" / "ar_lru_seqicl_recipe_kernel_gradient" / "results.csv"
    failed.write_text(failed.read_text() + "t2,error,2,,,runs/t2\n")
    _fake_follow_up(out / "tried" / "ih_lru_seqicl_recipe_decay_vectors", {}, {0: 0.5})  # not a recipe check
    checks = table_module.recipe_checks(out, "associative_recall", "lru")
    assert [c["name"] for c in checks] == ["ar_lru_seqicl_recipe", "ar_lru_seqicl_recipe_kernel_gradient"]
    assert checks[1]["test_exact_match"] == pytest.approx([11.0, 13.0])
    assert table_module.recipe_cell({"recipe": checks}) == (
        "73.8 [70.8, 75.8], n=3; with seq_icl's LRU scan gradient 12.0 [11.0, 13.0], n=2")
    assert table_module.recipe_checks(out, "induction_head", "lru") == []
    assert table_module.recipe_cell({"recipe": []}) == "-"
    here = {"search_trials": 2, "searched": "", "recipe": []}
    assert table_module.carry_search(here, {"recipe": checks})["recipe"] == checks
    # a copy of runs/ with some checks keeps the recorded ones it lacks, in RECIPE_CHECKS order
    assert table_module.carry_search({**here, "recipe": checks[1:]}, {"recipe": checks})["recipe"] == checks
    kept = {"task": "associative_recall", "backbone": "lru", "recipe": []}
    assert table_module.with_recipe(kept, out) == {**kept, "recipe": checks}
    kept_lstm = {"task": "associative_recall", "backbone": "lstm", "recipe": checks[:1]}
    assert table_module.with_recipe(kept_lstm, out) == kept_lstm  # nothing for it in this copy of runs/
    tied = {"name": "ar_lru_seqicl_recipe_full_tied", "label": "tied ", "judged": True, "test_exact_match": [45.8]}
    stale = {**checks[0], "test_exact_match": [1.0, 2.0, 3.0]}
    merged = table_module.with_recipe({**kept, "recipe": [tied, stale]}, out)["recipe"]
    assert merged == [checks[0], checks[1], tied]  # OUT's numbers win; the check OUT lacks is kept


def test_the_met_cell_says_whether_the_row_meets_its_target_at_seq_icls_recipe():
    """Per judged recipe follow-up of 3+ seeds, against the row's own target; the LRU scan-gradient
    check (a reproduced bug) is shown but not judged."""
    table_module = load_module("seqicl_table")
    exact = {"name": "ar_lstm_seqicl_recipe", "label": "", "judged": True, "test_exact_match": [40.4, 40.4, 33.4]}
    full = {"name": "ar_lstm_seqicl_recipe_full", "label": "with everything ", "judged": True,
            "test_exact_match": [85.0, 90.0, 95.0]}
    kernel = {"name": "x", "label": "with the kernel ", "judged": False, "test_exact_match": [11.0] * 3}
    row = {"task": "associative_recall", "backbone": "lstm", "recipe": [exact, full, kernel]}
    assert table_module.recipe_verdicts(row) == "; at seq_icl's recipe: yes; at seq_icl's recipe with everything: **no**"
    assert table_module.recipe_verdicts({**row, "recipe": [{**exact, "test_exact_match": [40.0] * 2}]}) == ""
    assert table_module.recipe_verdicts({**row, "recipe": [kernel]}) == ""
    assert table_module.recipe_verdicts({**row, "backbone": "gilr"}) == ""  # no target
    strong = {"task": "associative_recall", "backbone": "h3", "recipe": [{**exact, "test_exact_match": [96.0] * 3}]}
    assert table_module.recipe_verdicts(strong) == "; at seq_icl's recipe: yes"
