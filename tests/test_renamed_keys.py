"""Renamed halting keys: ACT's cap `max_steps` is now `max_hops`, `constant`'s `steps` is
now `hops` and `recurrent_depth`'s `backprop_steps` is now `backprop_hops`. Specs, overrides, tune specs and saved runs that say the old name still load,
with a DeprecationWarning naming the key; giving both names is one clear error; a
third-party ACT config that declares its own `max_steps` is told at class definition."""

from __future__ import annotations

import warnings
from typing import Literal

import pytest
import torch
import yaml
from cli_runs import TINY, resume_saved_with_old_key
from pydantic import Field, ValidationError

from ponderlab.core import checkpoint as ckpt
from ponderlab.core.errors import SpecError
from ponderlab.core.halting import ACTConfig
from ponderlab.core.spec import load_spec
from ponderlab.plugins.halting.constant import ConstantConfig, ConstantDepth
from ponderlab.plugins.halting.graves import GravesConfig
from ponderlab.plugins.halting.recurrent_depth import RecurrentDepthConfig
from ponderlab.plugins.halting.seed000_act import Seed000ACTConfig
from tune.spec import load_tune_spec

#: (strategy, config class, old key, new key)
RENAMES = [
    ("graves", GravesConfig, "max_steps", "max_hops"),
    ("constant", ConstantConfig, "steps", "hops"),
    ("recurrent_depth", RecurrentDepthConfig, "backprop_steps", "backprop_hops"),
]
rename_cases = pytest.mark.parametrize("name, config_class, old, new", RENAMES, ids=[r[0] for r in RENAMES])


@pytest.mark.parametrize("config_class", [GravesConfig, RecurrentDepthConfig, Seed000ACTConfig, ConstantConfig])
def test_the_old_key_loads_as_the_new_one_with_a_warning_naming_both(config_class):
    old, new = ("steps", "hops") if config_class is ConstantConfig else ("max_steps", "max_hops")
    with pytest.warns(DeprecationWarning, match=rf"halting\.{old} .*halting\.{new}"):
        config = config_class(**{old: 3})
    assert getattr(config, new) == 3 and new in config.model_fields_set
    assert old not in config.model_dump() and config.model_dump()[new] == 3


@rename_cases
def test_both_names_at_once_is_one_clear_error(name, config_class, old, new):
    with pytest.raises(ValidationError, match=f"give {new} only: {old} is its old name"):
        config_class(**{old: 3, new: 3})


@rename_cases
def test_new_specs_do_not_warn(name, config_class, old, new):
    with warnings.catch_warnings():
        warnings.simplefilter("error")
        assert getattr(config_class(**{new: 2}), new) == 2


@rename_cases
def test_a_spec_file_with_the_old_key_validates(tmp_path, name, config_class, old, new):
    path = tmp_path / "spec.yaml"
    path.write_text(yaml.safe_dump({**TINY, "halting": {"name": name, old: 2}}))
    with pytest.warns(DeprecationWarning, match=f"halting.{old}"):
        spec = load_spec(path)
    assert getattr(spec.halting, new) == 2
    path.write_text(yaml.safe_dump({**TINY, "halting": {"name": name, old: 2, new: 2}}))
    with pytest.raises(SpecError, match=f"{old} is its old name") as info:
        load_spec(path)
    assert info.value.path.startswith("halting")


@rename_cases
def test_an_override_with_the_old_key_validates(tmp_path, name, config_class, old, new):
    path = tmp_path / "spec.yaml"
    path.write_text(yaml.safe_dump({**TINY, "halting": {"name": "none"}}))  # `name=` starts it afresh
    with pytest.warns(DeprecationWarning, match=f"halting.{old}"):
        spec = load_spec(path, [f"halting.name={name}", f"halting.{old}=3"])
    assert getattr(spec.halting, new) == 3


@rename_cases
def test_a_tune_spec_searching_the_old_key_validates_every_point(tmp_path, name, config_class, old, new):
    path = tmp_path / "search.yaml"
    search = {
        **TINY, "name": "old-key", "halting": {"name": name},
        "search": {f"halting.{old}": {"grid": [2, 3]}},
        "tune": {"metric": "validation/exact_match", "mode": "max", "num_samples": 1},
    }
    path.write_text(yaml.safe_dump(search))
    with pytest.warns(DeprecationWarning, match=f"halting.{old}"):
        tspec = load_tune_spec(path)
    assert sorted(getattr(spec.halting, new) for spec in tspec.checked) == [2, 3]
    # a base that says the new key while the search still says the old one: both given
    path.write_text(yaml.safe_dump({**search, "halting": {"name": name, new: 4}}))
    with pytest.raises(SpecError, match=rf"{old} is its old name \(search point halting.{old}"):
        load_tune_spec(path)


def test_a_third_party_config_declaring_max_steps_is_told_to_rename_it():
    with pytest.raises(TypeError, match="OldConfig declares `max_steps`.*now `max_hops`"):

        class OldConfig(ACTConfig):
            name: Literal["old"] = "old"
            max_steps: int = Field(3, ge=1)


def test_constant_with_the_old_key_runs_that_many_hops_and_keeps_the_depth_check():
    with pytest.warns(DeprecationWarning):
        config = ConstantConfig(steps=3)
    out = ConstantDepth(config, d_model=4, n_layers=1)(torch.zeros(1, 2, 4), lambda s, n, _: s + 1)
    assert out.hops.eq(3).all() and out.output.eq(3).all()
    with pytest.warns(DeprecationWarning), pytest.raises(SpecError, match="halting.hops"):
        ConstantDepth(ConstantConfig(scope="depth", steps=5), d_model=4, n_layers=2)


@pytest.mark.slow
@rename_cases
def test_resume_of_a_run_saved_with_the_old_key(tmp_path, name, config_class, old, new):
    spec = {**TINY, "halting": {"name": name, new: 3},
            "training": {**TINY["training"], "checkpoint_every": 2, "eval_every": 2}}
    resumed, run_dir = resume_saved_with_old_key(tmp_path, spec, f"{new}: 3", f"{old}: 3")
    assert resumed.returncode == 0, resumed.stderr[-2000:]
    assert f"halting.{old} is deprecated" in resumed.stderr
    assert (run_dir / "results.json").is_file()
    assert [step for step, _ in ckpt.list_checkpoints(run_dir / "checkpoints")][-1] == 4
