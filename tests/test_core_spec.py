"""Spec loading, overrides and the quality of validation errors (dotted path + file:line)."""

from __future__ import annotations

import json
import subprocess
import sys
import textwrap

import pytest
import yaml

from ponderlab.core.errors import SpecError
from ponderlab.core.spec import (
    apply_overrides,
    bundled_spec_path,
    dotted_items,
    load_spec,
    parse_override,
    spec_json_schema,
)

GOOD = """\
seed: 3
task:
  name: binary_copy
  length: 6
backbone:
  name: lstm
  d_model: 16
  n_layers: 2
halting:
  name: graves
  max_hops: 3
training:
  steps: 5
"""


def write(tmp_path, text: str, name: str = "spec.yaml"):
    path = tmp_path / name
    path.write_text(textwrap.dedent(text))
    return path


def error_of(path, overrides=()) -> SpecError:
    with pytest.raises(SpecError) as info:
        load_spec(path, list(overrides))
    return info.value


def test_good_spec_validates_into_plugin_configs(tmp_path):
    spec = load_spec(write(tmp_path, GOOD))
    assert spec.seed == 3
    assert spec.task.name == "binary_copy" and spec.task.length == 6
    assert spec.backbone.d_model == 16 and spec.backbone.n_layers == 2
    assert spec.halting.max_hops == 3 and spec.halting.scope == "layer"
    assert spec.training.steps == 5


def test_a_spec_without_a_halting_section_runs_with_halting_none(tmp_path):
    text = GOOD.split("halting:")[0] + "training:\n  steps: 5\n"
    spec = load_spec(write(tmp_path, text))
    assert spec.halting.name == "none" and type(spec.halting).__name__ != "dict"
    assert spec.halting.scope == "layer"  # the `none` config's own default, validated
    assert "halting" in spec.model_dump() and spec.model_dump()["halting"]["name"] == "none"


def test_unknown_key_names_dotted_path_and_line(tmp_path):
    path = write(tmp_path, GOOD.replace("  max_hops: 3", "  max_hop: 3"))
    err = error_of(path)
    assert err.path == "halting.max_hop"
    assert err.where == f"{path}:11"
    assert "unknown key" in str(err)


def test_wrong_type_names_path_and_line(tmp_path):
    path = write(tmp_path, GOOD.replace("  steps: 5", "  steps: many"))
    err = error_of(path)
    assert err.path == "training.steps"
    assert err.where == f"{path}:13"
    assert "many" in str(err)


def test_unknown_plugin_lists_available(tmp_path):
    path = write(tmp_path, GOOD.replace("name: lstm", "name: lsmt"))
    err = error_of(path)
    assert err.path == "backbone.name"
    assert err.where == f"{path}:6"
    assert "lsmt" in str(err) and "lstm" in str(err) and "transformer" in str(err)


def test_malformed_yaml_reports_line(tmp_path):
    path = write(tmp_path, GOOD.replace("  d_model: 16", "  d_model: [16"))
    err = error_of(path)
    assert "malformed YAML" in str(err)
    assert err.where.startswith(f"{path}:")


def test_duplicate_key_is_an_error(tmp_path):
    path = write(tmp_path, GOOD + "seed: 4\n")
    err = error_of(path)
    assert err.path == "seed" and "duplicate" in str(err)


def test_unsupported_scope_is_rejected(tmp_path, registry):
    restricted = [
        (info.name, scope)
        for info in registry.all()
        if info.kind == "halting"
        for scope in ("layer", "model", "depth")
        if scope not in info.cls.supported_scopes
    ]
    assert restricted, "expected at least one halting strategy with a restricted scope set"
    name, scope = restricted[0]
    path = write(tmp_path, GOOD.replace("  name: graves\n  max_hops: 3", f"  name: {name}\n  scope: {scope}"))
    err = error_of(path)
    assert err.path == "halting.scope"
    assert name in str(err) and scope in str(err)
    assert err.where == f"{path}:11"


def test_overrides_apply_and_are_typed(tmp_path):
    spec = load_spec(write(tmp_path, GOOD), ["training.lr=1e-3", "backbone.d_model=32", "seed=9"])
    assert spec.training.lr == pytest.approx(1e-3)
    assert spec.backbone.d_model == 32 and spec.seed == 9


def test_override_switching_plugin_resets_its_section(tmp_path):
    spec = load_spec(write(tmp_path, GOOD), ["halting.name=constant", "halting.hops=3"])
    assert spec.halting.name == "constant" and spec.halting.hops == 3


def test_bad_override_key_names_the_override(tmp_path):
    err = error_of(write(tmp_path, GOOD), ["training.lrr=1"])
    assert err.path == "training.lrr"
    assert err.where == "override 'training.lrr=1'"


@pytest.mark.parametrize("raw", ["training.lr", "=3", "training..lr=1"])
def test_malformed_override(raw):
    with pytest.raises(SpecError, match="dotted.key=value"):
        parse_override(raw)


def test_override_through_a_scalar_is_an_error():
    with pytest.raises(SpecError, match="seed is not a mapping"):
        apply_overrides({"seed": 1}, ["seed.x=2"])


def test_schema_includes_every_registered_plugin_option(registry):
    schema = json.dumps(spec_json_schema(registry))
    for kind in ("backbone", "halting", "task"):
        for name in registry.names(kind):
            assert f'"{name}"' in schema
    assert "max_hops" in schema and "time_penalty" in schema


def test_bundled_quickstart_is_valid():
    spec = load_spec(None)
    data = yaml.safe_load(bundled_spec_path().read_text())
    assert spec.task.name == data["task"]["name"]


# ------------------------------------------------------------------ CLI behaviour
def run_cli(*args, cwd):
    return subprocess.run(
        [sys.executable, "-m", "ponderlab.core.cli", *args], cwd=cwd, capture_output=True, text=True
    )


@pytest.mark.parametrize(
    "edit, expected",
    [
        (("  d_model: 16", "  d_model: [16"), "malformed YAML"),
        (("  max_hops: 3", "  max_stepz: 3"), "halting.max_stepz: unknown key"),
        (("  steps: 5", "  steps: -1"), "training.steps"),
        (("name: lstm", "name: nope"), "unknown backbone 'nope'"),
    ],
)
def test_cli_bad_spec_exits_2_with_one_message_and_writes_nothing(tmp_path, edit, expected):
    path = write(tmp_path, GOOD.replace(*edit))
    out_dir = tmp_path / "run"
    result = run_cli("run", str(path), "--output-dir", str(out_dir), "--no-progress", cwd=tmp_path)
    assert result.returncode == 2
    assert expected in result.stderr
    assert str(path) in result.stderr
    assert len(result.stderr.strip().splitlines()) == 1
    assert not out_dir.exists()
    assert not (tmp_path / "runs").exists()


def test_cli_bad_override_exits_2(tmp_path):
    path = write(tmp_path, GOOD)
    result = run_cli("run", str(path), "training.steps", "--output-dir", str(tmp_path / "o"), cwd=tmp_path)
    assert result.returncode == 2
    assert "override 'training.steps'" in result.stderr
    assert not (tmp_path / "o").exists()


def test_cli_validate_and_schema(tmp_path):
    path = write(tmp_path, GOOD)
    ok = run_cli("validate", str(path), "training.steps=7", cwd=tmp_path)
    assert ok.returncode == 0 and "binary_copy / lstm / graves" in ok.stdout
    schema = run_cli("schema", cwd=tmp_path)
    assert schema.returncode == 0
    parsed = json.loads(schema.stdout)
    assert "task" in parsed["properties"] and "halting" in parsed["properties"]


def test_dotted_items_lists_the_leaves_of_a_nested_spec():
    spec = {"name": "x", "task": {"name": "ca1d", "shifts": [1, 2]}, "training": {"opt": {"lr": 0.1}, "empty": {}}}
    assert dotted_items(spec) == {"name": "x", "task.name": "ca1d", "task.shifts": [1, 2], "training.opt.lr": 0.1}
