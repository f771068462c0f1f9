"""The hop cap is `max_hops`; specs, saved runs and tune specs that say `max_steps` (its old
name) still load, with a DeprecationWarning naming the key, and a third-party config that
declares its own `max_steps` is told at class definition what to rename."""

from __future__ import annotations

import warnings
from typing import Literal

import pytest
import yaml
from cli_runs import TINY, resume_saved_with_old_key
from pydantic import Field, ValidationError

from ponderlab.core import checkpoint as ckpt
from ponderlab.core.errors import SpecError
from ponderlab.core.halting import ACTConfig
from ponderlab.core.spec import load_spec
from ponderlab.plugins.halting.graves import GravesConfig
from ponderlab.plugins.halting.recurrent_depth import RecurrentDepthConfig
from ponderlab.plugins.halting.seed000_act import Seed000ACTConfig
from tune.spec import load_tune_spec


@pytest.mark.parametrize("config_class", [GravesConfig, RecurrentDepthConfig, Seed000ACTConfig])
def test_the_old_key_loads_as_max_hops_with_a_warning_naming_it(config_class):
    with pytest.warns(DeprecationWarning, match=r"halting\.max_steps .*halting\.max_hops"):
        config = config_class(max_steps=3)
    assert config.max_hops == 3 and "max_hops" in config.model_fields_set
    assert "max_steps" not in config.model_dump() and config.model_dump()["max_hops"] == 3


def test_both_names_at_once_is_one_clear_error():
    with pytest.raises(ValidationError, match="give max_hops only: max_steps is its old name"):
        GravesConfig(max_steps=3, max_hops=3)


def test_new_specs_do_not_warn():
    with warnings.catch_warnings():
        warnings.simplefilter("error")
        assert GravesConfig(max_hops=2).max_hops == 2


def test_a_spec_file_with_the_old_key_validates(tmp_path):
    old = {**TINY, "halting": {"name": "graves", "max_steps": 2}}
    path = tmp_path / "spec.yaml"
    path.write_text(yaml.safe_dump(old))
    with pytest.warns(DeprecationWarning, match="halting.max_steps"):
        spec = load_spec(path)
    assert spec.halting.max_hops == 2
    both = {**TINY, "halting": {"name": "graves", "max_steps": 2, "max_hops": 2}}
    path.write_text(yaml.safe_dump(both))
    with pytest.raises(SpecError, match="max_steps is its old name") as info:
        load_spec(path)
    assert info.value.path.startswith("halting")


def test_a_tune_spec_searching_the_old_key_validates_every_point(tmp_path):
    path = tmp_path / "search.yaml"
    search = {
        **TINY, "name": "old-key", "halting": {"name": "graves"},
        "search": {"halting.max_steps": {"grid": [2, 3]}},
        "tune": {"metric": "validation/exact_match", "mode": "max", "num_samples": 1},
    }
    path.write_text(yaml.safe_dump(search))
    with pytest.warns(DeprecationWarning, match="halting.max_steps"):
        tspec = load_tune_spec(path)
    assert sorted(spec.halting.max_hops for spec in tspec.checked) == [2, 3]
    # a base that says max_hops while the search still says max_steps: both given
    path.write_text(yaml.safe_dump({**search, "halting": {"name": "graves", "max_hops": 4}}))
    with pytest.raises(SpecError, match=r"max_steps is its old name \(search point halting.max_steps"):
        load_tune_spec(path)


def test_a_third_party_config_declaring_max_steps_is_told_to_rename_it():
    with pytest.raises(TypeError, match="OldConfig declares `max_steps`.*now `max_hops`"):

        class OldConfig(ACTConfig):
            name: Literal["old"] = "old"
            max_steps: int = Field(3, ge=1)


@pytest.mark.slow
def test_resume_of_a_run_saved_with_the_old_key(tmp_path):
    spec = {**TINY, "training": {**TINY["training"], "checkpoint_every": 2, "eval_every": 2}}
    resumed, run_dir = resume_saved_with_old_key(tmp_path, spec, "max_hops: 3", "max_steps: 3")
    assert resumed.returncode == 0, resumed.stderr[-2000:]
    assert "halting.max_steps is deprecated" in resumed.stderr
    assert (run_dir / "results.json").is_file()
    assert [step for step, _ in ckpt.list_checkpoints(run_dir / "checkpoints")][-1] == 4
