"""examples/seq_icl/tune_ih_{s4d,gilr,lru}_steps20000.yaml: the induction-head rows that stayed at
chance at 5000 steps, at the LSTM row's 20000 steps (issue 30 item 1). Nothing trains."""

from __future__ import annotations

from pathlib import Path

import pytest
import yaml
from script_modules import load_script

from ponderlab.tune.spec import load_tune_spec

HERE = Path(__file__).resolve().parents[1] / "examples" / "seq_icl"


@pytest.mark.parametrize(("backbone", "lr"), [("s4d", 1.0e-3), ("gilr", 2.0e-3), ("lru", 1.0e-3)])
def test_the_ih_20000_step_follow_ups_are_the_rows_at_the_lstms_length(backbone, lr, tmp_path, registry):
    """Each follow-up is its row's searched setting (the lr its 5000-step search chose) with the
    LSTM row's schedule (20000 steps, warmup 2000, eval every 2000), seeds 0-2, one trial at a
    time; nothing else differs from the row as its search trained it."""
    follow = load_tune_spec(HERE / f"tune_ih_{backbone}_steps20000.yaml", registry=registry)
    assert sorted(c.seed for c in follow.checked) == [0, 1, 2]
    assert follow.options.max_concurrent_trials == 1
    assert {(c.training.steps, c.training.warmup_steps, c.training.eval_every, c.training.lr)
            for c in follow.checked} == {(20000, 2000, 2000, lr)}
    lstm = yaml.safe_load((HERE / "induction_head_lstm.yaml").read_text())["training"]
    assert (lstm["steps"], lstm["warmup_steps"]) == (20000, 2000)
    reproduce = load_script("examples/seq_icl/reproduce.py", "seq_icl_reproduce")
    path = tmp_path / "row.yaml"
    path.write_text(yaml.safe_dump(reproduce.search_spec(HERE / f"induction_head_{backbone}.yaml", tmp_path)))
    row = next(c for c in load_tune_spec(path, registry=registry).checked if c.training.lr == lr)
    assert row.training.steps == 5000
    exclude = {"seed": True, "name": True, "output_dir": True,
               "training": {"steps", "warmup_steps", "eval_every", "keep_checkpoints"}}
    assert len({c.model_dump_json(exclude=exclude) for c in [row, *follow.checked]}) == 1
