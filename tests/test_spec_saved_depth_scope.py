"""A depth-scope run's saved spec.yaml validates again (it once held `max_hops: 4`,
which the depth-scope check of ACTConfig then rejected on --resume and eval)."""

from __future__ import annotations

import pytest
import yaml

import ponderlab
from ponderlab.core.errors import SpecError
from ponderlab.core.spec import load_spec, spec_to_yaml, validate_spec

SPEC = {
    "task": {"name": "binary_copy", "length": 4, "train_size": 64, "validation_size": 8, "test_size": 8},
    "backbone": {"name": "lstm", "d_model": 8, "n_layers": 2},
    "halting": {"name": "graves", "scope": "depth"},
    "training": {"steps": 2, "eval_every": 2, "batch_size": 8, "warmup_steps": 0},
}


@pytest.mark.parametrize("strategy", ["graves", "random", "pondernet"])
def test_depth_scope_dump_leaves_out_the_cap_and_validates_again(strategy):
    spec = validate_spec({**SPEC, "halting": {"name": strategy, "scope": "depth"}})
    saved = yaml.safe_load(spec_to_yaml(spec))
    assert "max_hops" not in saved["halting"]
    assert validate_spec(saved).halting == spec.halting
    layer = validate_spec({**SPEC, "halting": {"name": strategy, "scope": "layer"}})
    assert yaml.safe_load(spec_to_yaml(layer))["halting"]["max_hops"] == 4  # resolved defaults stay


def test_a_cap_the_user_sets_in_depth_scope_is_still_rejected():
    with pytest.raises(SpecError, match="max_hops"):
        validate_spec({**SPEC, "halting": {"name": "graves", "scope": "depth", "max_hops": 4}})


@pytest.mark.slow
def test_a_saved_depth_scope_graves_run_reloads_and_resumes(tmp_path):
    run_dir = tmp_path / "run"
    first = ponderlab.run(SPEC, output_dir=run_dir)
    saved = (run_dir / "spec.yaml").read_text()
    assert "scope: depth" in saved and "max_hops" not in saved
    reloaded = load_spec(run_dir / "spec.yaml")
    assert reloaded.halting == validate_spec(SPEC).halting
    again = ponderlab.run(SPEC, output_dir=run_dir, resume=True)  # validates the saved spec.yaml
    assert again["test/exact_match"] == first["test/exact_match"]
