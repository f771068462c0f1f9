"""examples/seq_icl/tune_ar_{rwkv,gilr,retnet,lstm,s4d,lru}_steps6000.yaml: the associative-recall
rows whose step budget was never searched (3000 steps), at the H3 row's 6000 steps (issue 30 item 1).
Nothing trains."""

from __future__ import annotations

import importlib
from pathlib import Path

import pytest
import yaml
from script_modules import load_script

from ponderlab.tune.spec import load_tune_spec

HERE = Path(__file__).resolve().parents[1] / "examples" / "seq_icl"
ROWS = [("rwkv", 3.0e-3), ("gilr", 3.0e-3), ("retnet", 1.0e-3), ("lstm", 3.0e-3), ("s4d", 3.0e-3), ("lru", 1.0e-3)]


@pytest.mark.parametrize(("backbone", "lr"), ROWS)
def test_the_ar_6000_step_follow_ups_are_the_rows_at_h3s_schedule(backbone, lr, tmp_path, registry):
    """Each follow-up is its row's searched setting (the lr its 3000-step search chose) with the
    H3 row's schedule (6000 steps, warmup 300), seeds 0-2, one trial at a time; nothing else
    (width, heads, eval interval, data, optimizer) differs from the row as its search trained it."""
    follow = load_tune_spec(HERE / f"tune_ar_{backbone}_steps6000.yaml", registry=registry)
    assert follow.name == f"ar_{backbone}_steps6000"
    assert sorted(c.seed for c in follow.checked) == [0, 1, 2]
    assert follow.options.max_concurrent_trials == 1
    assert {(c.training.steps, c.training.warmup_steps, c.training.lr) for c in follow.checked} == {(6000, 300, lr)}
    h3 = yaml.safe_load((HERE / "associative_recall_h3.yaml").read_text())["training"]
    assert (h3["steps"], h3["warmup_steps"]) == (6000, 300)
    reproduce = load_script("examples/seq_icl/reproduce.py", "seq_icl_reproduce")
    path = tmp_path / "row.yaml"
    path.write_text(yaml.safe_dump(reproduce.search_spec(HERE / f"associative_recall_{backbone}.yaml", tmp_path)))
    searched = load_tune_spec(path, registry=registry).checked
    assert sorted(c.training.lr for c in searched) == [1.0e-3, 3.0e-3]
    row = next(c for c in searched if c.training.lr == lr)
    assert (row.training.steps, row.training.warmup_steps) == (3000, 150)
    exclude = {"seed": True, "name": True, "output_dir": True,
               "training": {"steps", "warmup_steps", "keep_checkpoints"}}
    assert len({c.model_dump_json(exclude=exclude) for c in [row, *follow.checked]}) == 1


def test_a_row_spec_without_a_newer_null_key_compares_equal_to_its_runs_resolved_spec():
    """The LSTM and S4D row specs (before their --adopt) predated training.curriculum; a run of
    them writes it as null. --adopt and the seed copy must see the same setting, and any real
    difference still counts."""
    load_script("examples/seq_icl/reproduce.py", "seq_icl_reproduce")  # puts examples/seq_icl on sys.path
    comparable = importlib.import_module("seqicl_tools").comparable
    row = yaml.safe_load((HERE / "associative_recall_lstm.yaml").read_text())
    row["training"].pop("curriculum", None)  # the row spec as it was written before the key existed
    run = {**row, "output_dir": "runs/x", "training": {**row["training"], "curriculum": None}}
    assert comparable(run) == comparable(row)
    assert comparable({**run, "training": {**run["training"], "steps": row["training"]["steps"] + 1000}}) != comparable(row)
    assert comparable({**run, "training": {**run["training"], "curriculum": {"name": "x"}}}) != comparable(row)
