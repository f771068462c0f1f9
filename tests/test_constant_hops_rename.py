"""`constant` counts hops in `hops`; specs, saved runs and tune specs that say `steps` (its
old name) still load, with a DeprecationWarning naming the key (the same migration as
`max_steps` -> `max_hops`, tests/test_max_hops_rename.py)."""

from __future__ import annotations

import warnings

import pytest
import torch
import yaml
from cli_runs import TINY, resume_saved_with_old_key
from pydantic import ValidationError

from ponderlab.core import checkpoint as ckpt
from ponderlab.core.errors import SpecError
from ponderlab.core.spec import load_spec
from ponderlab.plugins.halting.constant import ConstantConfig, ConstantDepth
from tune.spec import load_tune_spec


def test_the_old_key_loads_as_hops_with_a_warning_naming_it():
    with pytest.warns(DeprecationWarning, match=r"halting\.steps .*halting\.hops"):
        config = ConstantConfig(steps=3)
    assert config.hops == 3 and "hops" in config.model_fields_set
    assert "steps" not in config.model_dump() and config.model_dump()["hops"] == 3
    out = ConstantDepth(config, d_model=4, n_layers=1)(torch.zeros(1, 2, 4), lambda s, n, _: s + 1)
    assert out.hops.eq(3).all() and out.output.eq(3).all()


def test_both_names_at_once_is_one_clear_error():
    with pytest.raises(ValidationError, match="give hops only: steps is its old name"):
        ConstantConfig(steps=3, hops=3)


def test_new_specs_do_not_warn():
    with warnings.catch_warnings():
        warnings.simplefilter("error")
        assert ConstantConfig(hops=2).hops == 2


def test_the_old_key_keeps_the_depth_scope_check():
    with pytest.warns(DeprecationWarning), pytest.raises(SpecError, match="halting.hops"):
        ConstantDepth(ConstantConfig(scope="depth", steps=5), d_model=4, n_layers=2)


def test_a_spec_file_with_the_old_key_validates(tmp_path):
    old = {**TINY, "halting": {"name": "constant", "steps": 2}}
    path = tmp_path / "spec.yaml"
    path.write_text(yaml.safe_dump(old))
    with pytest.warns(DeprecationWarning, match="halting.steps"):
        spec = load_spec(path)
    assert spec.halting.hops == 2
    both = {**TINY, "halting": {"name": "constant", "steps": 2, "hops": 2}}
    path.write_text(yaml.safe_dump(both))
    with pytest.raises(SpecError, match="steps is its old name") as info:
        load_spec(path)
    assert info.value.path.startswith("halting")


def test_an_override_with_the_old_key_validates(tmp_path):
    path = tmp_path / "spec.yaml"
    path.write_text(yaml.safe_dump(TINY))
    with pytest.warns(DeprecationWarning, match="halting.steps"):
        spec = load_spec(path, ["halting.name=constant", "halting.steps=3"])
    assert spec.halting.hops == 3


def test_a_tune_spec_searching_the_old_key_validates_every_point(tmp_path):
    path = tmp_path / "search.yaml"
    search = {
        **TINY, "name": "old-key", "halting": {"name": "constant"},
        "search": {"halting.steps": {"grid": [2, 3]}},
        "tune": {"metric": "validation/exact_match", "mode": "max", "num_samples": 1},
    }
    path.write_text(yaml.safe_dump(search))
    with pytest.warns(DeprecationWarning, match="halting.steps"):
        tspec = load_tune_spec(path)
    assert sorted(spec.halting.hops for spec in tspec.checked) == [2, 3]
    path.write_text(yaml.safe_dump({**search, "halting": {"name": "constant", "hops": 4}}))
    with pytest.raises(SpecError, match=r"steps is its old name \(search point halting.steps"):
        load_tune_spec(path)


@pytest.mark.slow
def test_resume_of_a_run_saved_with_the_old_key(tmp_path):
    spec = {**TINY, "halting": {"name": "constant", "hops": 2},
            "training": {**TINY["training"], "checkpoint_every": 2, "eval_every": 2}}
    resumed, run_dir = resume_saved_with_old_key(tmp_path, spec, "hops: 2", "steps: 2")
    assert resumed.returncode == 0, resumed.stderr[-2000:]
    assert "halting.steps is deprecated" in resumed.stderr
    assert (run_dir / "results.json").is_file()
    assert [step for step, _ in ckpt.list_checkpoints(run_dir / "checkpoints")][-1] == 4
