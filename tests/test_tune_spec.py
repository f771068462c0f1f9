"""Search specs: search/tune sections, value application, validation errors (no Ray cluster)."""

from __future__ import annotations

from pathlib import Path

import pytest
import torch
import yaml

from ponderlab.core.cli import main as cli_main
from ponderlab.core.errors import SpecError
from ponderlab.tune.spec import (
    Resources,
    SearchDim,
    apply_point,
    assign,
    compare_for_resume,
    format_value,
    load_tune_spec,
)

BASE = """\
name: tiny
seed: 0
task: {name: binary_copy, length: 8, train_size: 128, validation_size: 16, test_size: 16}
backbone: {d_model: 16, n_layers: 1}
halting: {scope: layer}
training: {steps: 20, batch_size: 16, eval_every: 10, warmup_steps: 2, log_every: 10}
"""

GRID = BASE + """\
search:
  backbone:
    grid:
      - {name: lstm}
      - {name: transformer, n_heads: 2}
  halting:
    grid:
      - {name: graves, max_hops: 2}
      - {name: none}
tune:
  storage_path: STORAGE
"""


def write(tmp_path: Path, text: str, name: str = "search.yaml") -> Path:
    path = tmp_path / name
    path.write_text(text.replace("STORAGE", str(tmp_path / "store")))
    return path


def error_of(path: Path, overrides: list[str] | None = None) -> SpecError:
    with pytest.raises(SpecError) as info:
        load_tune_spec(path, overrides)
    return info.value


# --------------------------------------------------------------------------- applying values


def test_grid_expands_and_every_point_is_validated(tmp_path):
    tspec = load_tune_spec(write(tmp_path, GRID))
    assert tspec.num_trials == 4
    combos = {(s.backbone.name, s.halting.name) for s in tspec.checked}
    assert combos == {("lstm", "graves"), ("lstm", "none"), ("transformer", "graves"), ("transformer", "none")}
    # Options shared in the base survive the plugin choice; the grid's own options are applied.
    transformer = next(s for s in tspec.checked if s.backbone.name == "transformer")
    assert (transformer.backbone.d_model, transformer.backbone.n_heads) == (16, 2)
    graves = next(s for s in tspec.checked if s.halting.name == "graves")
    assert graves.halting.max_hops == 2 and graves.halting.scope == "layer"
    assert tspec.experiment_dir == (tmp_path / "store" / "tiny").resolve()


def test_plugin_section_restarts_when_the_name_changes():
    data = {"halting": {"name": "graves", "max_hops": 4, "epsilon": 0.1}}
    assign(data, ("halting",), {"name": "none"})
    assert data["halting"] == {"name": "none"}
    data = {"halting": {"name": "graves", "max_hops": 4, "epsilon": 0.1}}
    assign(data, ("halting",), {"name": "graves", "max_hops": 2})  # same plugin: merged
    assert data["halting"] == {"name": "graves", "max_hops": 2, "epsilon": 0.1}
    data = {"backbone": {"name": "lstm", "d_model": 8, "residual": True}}
    assign(data, ("backbone", "name"), "transformer")  # like `backbone.name=...` on the command line
    assert data["backbone"] == {"name": "transformer"}


def test_whole_sections_apply_before_deeper_keys():
    dims = [
        SearchDim(key="backbone.d_model", kind="grid", values=(8, 32)),
        SearchDim(key="backbone", kind="grid", values=({"name": "lstm"}, {"name": "transformer", "d_model": 64})),
    ]
    base = {"backbone": {"name": "lstm", "d_model": 16}}
    spec = apply_point(base, dims, {"backbone.d_model": 1, "backbone": 1})
    assert spec["backbone"] == {"name": "transformer", "d_model": 32}
    assert base == {"backbone": {"name": "lstm", "d_model": 16}}  # the base is not touched


def test_domain_values_and_randint_bounds_are_inclusive():
    dim = SearchDim(key="training.batch_size", kind="randint", low=4, high=8)
    assert dim.value(8.0) == 8 and isinstance(dim.value(8.0), int)
    grid = SearchDim(key="halting", kind="grid", values=({"name": "graves", "max_hops": 4}, {"name": "none"}))
    assert grid.value(0) == {"name": "graves", "max_hops": 4}
    grid.value(0)["max_hops"] = 9  # a copy: trials never share mutable values
    assert grid.values[0]["max_hops"] == 4
    assert format_value({"name": "graves", "max_hops": 4}) == "graves(max_hops=4)"
    assert format_value(0.000123456) == "0.0001235"


def test_nested_and_dotted_search_keys_are_equivalent(tmp_path):
    tail = "tune: {storage_path: STORAGE}\n"
    dotted = BASE + "search:\n  training.lr: {loguniform: [1.0e-4, 1.0e-2]}\n" + tail
    nested = BASE + "search:\n  training:\n    lr: {loguniform: [1.0e-4, 1.0e-2]}\n" + tail
    picks = ["backbone.name=lstm", "halting.name=none"]
    a = load_tune_spec(write(tmp_path, dotted, "a.yaml"), picks)
    b = load_tune_spec(write(tmp_path, nested, "b.yaml"), picks)
    assert [(d.key, d.kind, d.low, d.high) for d in a.dims] == [(d.key, d.kind, d.low, d.high) for d in b.dims]
    assert [d.key for d in a.dims] == ["training.lr"]
    # Both ends of a random domain are validated.
    assert sorted(s.training.lr for s in b.checked) == [1e-4, 1e-2]


def test_overrides_reach_base_tune_and_search(tmp_path):
    path = write(tmp_path, GRID)
    tspec = load_tune_spec(path, [
        "training.steps=30", "tune.scheduler=asha", "tune.num_samples=2",
        "search.halting.grid=[{name: none}]", "search.training.lr.choice=[0.01, 0.001]",
    ])
    assert tspec.options.scheduler == "asha" and tspec.num_trials == 2 * 2 * 1
    assert {s.training.steps for s in tspec.checked} == {30}
    assert {d.key: d.kind for d in tspec.dims} == {"backbone": "grid", "halting": "grid", "training.lr": "choice"}
    dropped = load_tune_spec(path, ["search.halting=null", "halting.name=none"])
    assert [d.key for d in dropped.dims] == ["backbone"]


def test_resolved_mode_and_gpu_auto():
    from ponderlab.tune.search import resolve_resources
    from ponderlab.tune.spec import TuneOptions

    assert TuneOptions(metric="validation/loss").resolved_mode == "min"
    assert TuneOptions(metric="validation/exact_match").resolved_mode == "max"
    assert TuneOptions(metric="validation/loss", mode="max").resolved_mode == "max"
    assert resolve_resources(Resources(), {"CPU": 16.0, "GPU": 4.0}) == {"cpu": 1.0, "gpu": 1.0}
    assert resolve_resources(Resources(), {"CPU": 2.0}) == {"cpu": 1.0, "gpu": 0.0}
    assert resolve_resources(Resources(cpu=2, gpu=0.5), {"CPU": 2.0}) == {"cpu": 2.0, "gpu": 0.5}


def test_param_space_samples_indices_for_discrete_domains():
    from ray.tune.search.sample import Categorical, Float, Integer

    from ponderlab.tune.search import param_space

    space = param_space([
        SearchDim(key="halting", kind="grid", values=({"name": "none"}, {"name": "graves"})),
        SearchDim(key="training.lr", kind="choice", values=(0.1, 0.2, 0.3)),
        SearchDim(key="training.lr_x", kind="loguniform", low=1e-4, high=1e-2),
        SearchDim(key="seed", kind="randint", low=0, high=3),
    ])
    assert space["halting"] == {"grid_search": [0, 1]}
    assert isinstance(space["training.lr"], Categorical) and space["training.lr"].categories == [0, 1, 2]
    assert isinstance(space["training.lr_x"], Float)
    assert isinstance(space["seed"], Integer) and (space["seed"].lower, space["seed"].upper) == (0, 4)


def test_compare_for_resume_names_the_first_difference(tmp_path):
    path = write(tmp_path, GRID)
    saved = load_tune_spec(path).raw
    assert compare_for_resume(load_tune_spec(path, ["tune.address=auto", "tune.verbose=0"]), saved) is None
    assert compare_for_resume(load_tune_spec(path, ["training.lr=0.5"]), saved) == "training.lr"
    assert compare_for_resume(load_tune_spec(path, ["search.halting.grid=[{name: none}]"]), saved) == "search.halting.grid"


# --------------------------------------------------------------------------- errors


def test_bad_grid_value_names_search_key_and_line(tmp_path):
    path = write(tmp_path, GRID.replace("{name: graves, max_hops: 2}", "{name: graves, max_hops: 0}"))
    err = error_of(path)
    assert err.path == "halting.max_hops"
    assert err.where == f"{path}:14"
    assert "search halting: grid[0]" in str(err) and "greater than or equal to 1" in str(err)


def test_option_of_the_wrong_plugin_is_an_unknown_key_at_its_line(tmp_path):
    # lstm has no n_heads: the (backbone=lstm) points fail on the deeper searched key.
    path = write(tmp_path, GRID.replace("tune:\n", "  backbone.n_heads: {grid: [2, 4]}\ntune:\n"))
    err = error_of(path)
    assert (err.path, err.where) == ("backbone.n_heads", f"{path}:16")
    assert "unknown key" in str(err) and "search backbone.n_heads: grid[0] = 2" in str(err)


def test_unknown_plugin_in_grid(tmp_path):
    path = write(tmp_path, GRID.replace("{name: none}", "{name: nonesuch}"))
    err = error_of(path)
    assert err.path == "halting.name" and err.where == f"{path}:15"
    assert "unknown halting 'nonesuch'" in str(err) and "available" in str(err)


def test_random_domain_checked_at_both_ends(tmp_path):
    path = write(tmp_path, GRID.replace("tune:\n", "  halting.epsilon: {uniform: [0.1, 1.5]}\ntune:\n"))
    err = error_of(path)
    # graves accepts epsilon < 1 only; `none` has no epsilon at all: the first failure is reported.
    assert err.path == "halting.epsilon" and err.where == f"{path}:16"
    assert "search halting.epsilon: uniform value" in str(err)


@pytest.mark.parametrize(
    ("snippet", "path", "line", "needle"),
    [
        ("  training.lr: {grid: []}\n", "search.training.lr", 16, "at least one value"),
        ("  training.lr: {uniform: [0.1, 0.01]}\n", "search.training.lr", 16, "low < high"),
        ("  training.lr: {grid: [1], choice: [2]}\n", "search.training.lr", 16, "exactly one of"),
        ("  training.lr: {loguniform: [0, 1]}\n", "search.training.lr", 16, "low > 0"),
        ("  training.lr: 0.1\n", "search.training.lr", 16, "expected a domain"),
        ("  tune.metric: {grid: [a]}\n", "search.tune.metric", 16, "cannot search"),
        ("  training.lr: {grid: [1], weight: 2}\n", "search.training.lr.weight", 16, "unknown key"),
    ],
)
def test_bad_domains(tmp_path, snippet, path, line, needle):
    spec = write(tmp_path, GRID.replace("tune:\n", snippet + "tune:\n"))
    err = error_of(spec)
    assert (err.path, err.where) == (path, f"{spec}:{line}")
    assert needle in str(err)


@pytest.mark.parametrize(
    ("tune_text", "path", "needle"),
    [
        ("  metric: test/exact_match\n", "tune.metric", "reported at every validation"),
        ("  scheduler: hyperband\n", "tune.scheduler", "'fifo' or 'asha'"),
        ("  num_samples: 0\n", "tune.num_samples", "greater than or equal to 1"),
        ("  resources: {gpu: lots}\n", "tune.resources.gpu", "auto"),
        ("  asha: {grace: 3}\n", "tune.asha.grace", "unknown key"),
    ],
)
def test_bad_tune_section(tmp_path, tune_text, path, needle):
    spec = write(tmp_path, GRID + tune_text)
    err = error_of(spec)
    assert err.path == path and err.where.startswith(f"{spec}:")
    assert needle in str(err)


def test_bad_override_is_named(tmp_path):
    err = error_of(write(tmp_path, GRID), ["tune.storage_path=s3://bucket/x"])
    assert err.path == "tune.storage_path" and err.where == "override 'tune.storage_path=s3://bucket/x'"
    assert "filesystem path" in str(err)
    err = error_of(write(tmp_path, GRID), ["search.training.lr.loguniform=[0.1]"])
    assert err.path == "search.training.lr" and err.where == "override 'search.training.lr.loguniform=[0.1]'"


def test_optuna_refuses_grid_domains(tmp_path):
    spec = write(tmp_path, GRID + "  search_algorithm: optuna\n")
    err = error_of(spec)
    assert err.path == "search.backbone" and err.where == f"{spec}:9"
    assert "use choice" in str(err)


def test_asha_grace_beyond_last_rung(tmp_path):
    spec = write(tmp_path, GRID + "  scheduler: asha\n  asha: {grace_period: 50}\n")
    err = error_of(spec)
    assert err.path == "tune.asha.grace_period" and "max_t = 20" in str(err)


def test_missing_plugin_name_when_nothing_picks_it(tmp_path):
    spec = write(tmp_path, BASE + "tune: {storage_path: STORAGE}\n")
    err = error_of(spec)
    assert err.path == "backbone" and "missing `name`" in str(err) and err.where == f"{spec}:4"


def test_cli_bad_spec_exits_2_and_writes_nothing(tmp_path, capsys):
    spec = write(tmp_path, GRID.replace("{name: graves, max_hops: 2}", "{name: graves, max_stepz: 2}"))
    assert cli_main(["tune", str(spec)]) == 2
    err = capsys.readouterr().err
    assert f"{spec}:14: halting.max_stepz: unknown key" in err and "search halting: grid[0]" in err
    assert not (tmp_path / "store").exists()


def test_cli_dry_run_lists_the_search(tmp_path, capsys):
    spec = write(tmp_path, GRID)
    assert cli_main(["tune", str(spec), "tune.num_samples=3", "--dry-run"]) == 0
    out = capsys.readouterr().out
    assert "12 trial(s)" in out and "halting: grid over graves(max_hops=2), none" in out
    assert not (tmp_path / "store").exists()


# --------------------------------------------------------------------------- trial restore


def test_restore_run_dir_drops_checkpoints_after_the_reported_one(tmp_path):
    from ponderlab.core import checkpoint as ckpt
    from ponderlab.core.spec import validate_spec
    from ponderlab.tune.trial import restore_run_dir

    picks = {"backbone": {"name": "lstm", "d_model": 16, "n_layers": 1}, "halting": {"name": "none"}}
    spec = validate_spec(yaml.safe_load(BASE) | picks)
    run_dir, reported = tmp_path / "run", tmp_path / "reported"
    for step in (10, 20, 30):
        ckpt.save_checkpoint({"step": step, "w": torch.full((2,), float(step))}, ckpt.checkpoint_path(run_dir / "checkpoints", step))
    ckpt.save_checkpoint({"step": 20, "w": torch.full((2,), 20.0)}, ckpt.checkpoint_path(reported, 20))
    assert restore_run_dir(run_dir, spec, reported) == 20
    assert [s for s, _ in ckpt.list_checkpoints(run_dir / "checkpoints")] == [10, 20]
    assert yaml.safe_load((run_dir / "spec.yaml").read_text())["output_dir"] == str(run_dir)

    # A run dir that was lost is rebuilt around the reported checkpoint.
    fresh = tmp_path / "fresh"
    assert restore_run_dir(fresh, spec, reported) == 20
    state = ckpt.load_checkpoint(ckpt.checkpoint_path(fresh / "checkpoints", 20))
    assert torch.equal(state["w"], torch.full((2,), 20.0)) and (fresh / "seed").read_text() == "0\n"

    # No checkpoint: the trial starts afresh in an empty run dir.
    assert restore_run_dir(run_dir, spec, None) == 0 and not run_dir.exists()


def test_resume_refuses_a_changed_or_missing_search(tmp_path):
    from ponderlab.tune.search import run_search

    path = write(tmp_path, GRID)
    experiment = tmp_path / "store" / "tiny"
    experiment.mkdir(parents=True)
    with pytest.raises(SpecError, match="holds no search"):
        run_search(load_tune_spec(path), resume=True)
    (experiment / "tune_spec.yaml").write_text(yaml.safe_dump(load_tune_spec(path).raw))
    with pytest.raises(SpecError, match=r"differs .* \(at training.steps\)"):
        run_search(load_tune_spec(path, ["training.steps=100"]), resume=True)
    with pytest.raises(SpecError, match="holds no Ray Tune experiment state"):
        run_search(load_tune_spec(path), resume=True)
    with pytest.raises(SpecError, match="not empty"):
        run_search(load_tune_spec(path))
