"""examples/seq_icl: every row's search and the GPU spec validate as `ponderlab tune` specs (nothing trains)."""

from __future__ import annotations

from pathlib import Path

import pytest
import yaml
from script_modules import load_script

from ponderlab.tune.spec import load_tune_spec

HERE = Path(__file__).resolve().parents[1] / "examples" / "seq_icl"


def load_reproduce():
    return load_script("examples/seq_icl/reproduce.py", "seq_icl_reproduce")


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


@pytest.mark.parametrize("name", ["tune_gpu.yaml", "tune_ar_transformer_steps6000.yaml"])
def test_tune_specs_validate(name, registry):
    tspec = load_tune_spec(HERE / name, registry=registry)
    assert tspec.num_trials >= 2


def test_gpu_spec_is_seq_icl_budget(registry):
    tspec = load_tune_spec(HERE / "tune_gpu.yaml", registry=registry)
    assert tspec.num_trials == 2 * 8 * 3
    for checked in tspec.checked:
        assert checked.backbone.d_model == 32 and checked.backbone.n_layers == 2
        assert checked.training.steps == 62800 and checked.training.warmup_steps == 6280
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
    table = reproduce.settings_markdown(search)
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
