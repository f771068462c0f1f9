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
