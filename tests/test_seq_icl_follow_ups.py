"""examples/seq_icl/tune_*.yaml follow-ups: each is its row's setting with one thing changed
(steps, warmup, lr or its schedule, heads, width or seed), and nothing else differs. Nothing trains.
The associative-recall follow-ups were defined against the rows searched at width 64, kept in
examples/seq_icl/width64/ with their plan (seqicl_study.SEARCH_WIDTH_64)."""

from __future__ import annotations

import importlib
from functools import reduce
from pathlib import Path

import pytest
import torch
import yaml
from script_modules import load_script

from ponderlab.core.spec import validate_spec
from ponderlab.core.training_step import lr_factor
from ponderlab.tune.spec import load_tune_spec

HERE = Path(__file__).resolve().parents[1] / "examples" / "seq_icl"
AR_STEPS6000_ROWS = [("rwkv", 3.0e-3), ("gilr", 3.0e-3), ("retnet", 1.0e-3), ("lstm", 3.0e-3), ("s4d", 3.0e-3),
                     ("lru", 1.0e-3)]


def load_reproduce():
    return load_script("examples/seq_icl/reproduce.py", "seq_icl_reproduce")


def follow_ups_row(stem: str) -> Path:
    """The row spec a row's follow-ups were defined against: for associative recall, the row as
    searched at width 64 (width64/), for induction head the row itself."""
    return HERE / "width64" / f"{stem}.yaml" if stem.startswith("associative_recall_") else HERE / f"{stem}.yaml"


def row_as_written(stem: str, registry):
    """The row's spec as `ponderlab run` validates it (its adopted setting; see follow_ups_row)."""
    return validate_spec(yaml.safe_load(follow_ups_row(stem).read_text()), registry=registry)


def searched_settings(stem: str, tmp_path: Path, registry) -> list:
    """The settings of the row's own search (reproduce.py's tune spec for it), as validated."""
    reproduce = load_reproduce()  # puts examples/seq_icl on sys.path
    plans = importlib.import_module("seqicl_study").SEARCH_WIDTH_64 if stem.startswith("associative_recall_") else None
    path = tmp_path / f"{stem}_search.yaml"
    path.write_text(yaml.safe_dump(reproduce.search_spec(follow_ups_row(stem), tmp_path, plans)))
    return load_tune_spec(path, registry=registry).checked


def setting_with(settings: list, wanted: dict):
    """The first of the validated settings whose dotted fields have the wanted values."""
    return next(c for c in settings if all(reduce(getattr, field.split("."), c) == value
                                           for field, value in wanted.items()))


def searched_setting(stem: str, lr: float, tmp_path: Path, registry):
    """The row's setting as its own search trained it at that lr (before any follow-up was adopted)."""
    return setting_with(searched_settings(stem, tmp_path, registry), {"training.lr": lr})


def base_setting(base: str | tuple[str, dict], registry, tmp_path: Path):
    """A follow-up's base: the row as written (a row's stem), the first setting of a `tune_*` follow-up,
    or (stem, {dotted field: value}): the setting with those values among the row's own search's
    settings (a row's stem) or a `tune_*` follow-up's (for a row that has since adopted something else)."""
    if isinstance(base, tuple):
        stem, wanted = base
        settings = (load_tune_spec(HERE / f"{stem}.yaml", registry=registry).checked if stem.startswith("tune_")
                    else searched_settings(stem, tmp_path, registry))
        return setting_with(settings, wanted)
    if base.startswith("tune_"):
        return load_tune_spec(HERE / f"{base}.yaml", registry=registry).checked[0]
    return row_as_written(base, registry)


def differing_only_in(exclude: dict, *specs) -> bool:
    """Whether the validated specs are equal once the `exclude` fields are left out."""
    return len({spec.model_dump_json(exclude=exclude) for spec in specs}) == 1


def test_the_seed_1_follow_up_is_the_25000_step_follow_up_at_another_seed(registry):
    """tune_ih_transformer_steps25000_seed1.yaml completes the 25000-step follow-up: same setting, seed 1."""
    both = [load_tune_spec(HERE / f"tune_ih_transformer_steps25000{s}.yaml", registry=registry) for s in ("", "_seed1")]
    assert [t.num_trials for t in both] == [2, 1]
    seeds = sorted(c.seed for t in both for c in t.checked)
    assert seeds == [0, 1, 2]
    dumped = {c.model_dump_json(exclude={"seed", "name", "output_dir"}) for t in both for c in t.checked}
    assert len(dumped) == 1


def test_the_h3_lr_follow_up_is_the_row_at_another_lr(tmp_path, registry):
    """tune_ar_h3_lr2e-3_steps6000.yaml is the associative-recall h3 row's setting at lr 2e-3, seeds 0-2
    (heads of size 1: the row's head_dim until it adopted 2 from tune_ar_h3_heads.yaml)."""
    follow = load_tune_spec(HERE / "tune_ar_h3_lr2e-3_steps6000.yaml", registry=registry)
    assert sorted(c.seed for c in follow.checked) == [0, 1, 2]
    assert {c.training.lr for c in follow.checked} == {0.002}
    row = searched_settings("associative_recall_h3", tmp_path, registry)[0]
    assert {c.backbone.head_dim for c in follow.checked} == {1}
    exclude = {"seed": True, "name": True, "output_dir": True, "training": {"lr", "keep_checkpoints"},
               "backbone": {"head_dim"}}
    dumped = {c.model_dump_json(exclude=exclude) for c in [row, *follow.checked]}
    assert len(dumped) == 1


def test_the_heads_follow_up_is_the_transformer_row_at_1_and_2_heads(tmp_path, registry):
    """tune_ar_transformer_heads.yaml is the associative-recall transformer row's search setting at
    lr 3e-3 (the row when it ran; the search, rerun on a later machine, chose 2e-3 in a tie at 100%)
    with n_heads in {1, 2} (the row: 4), seeds 0-2; nothing else differs."""
    follow = load_tune_spec(HERE / "tune_ar_transformer_heads.yaml", registry=registry)
    assert sorted((c.backbone.n_heads, c.seed) for c in follow.checked) == [(h, s) for h in (1, 2) for s in range(3)]
    row = searched_setting("associative_recall_transformer", 0.003, tmp_path, registry)
    assert row.backbone.n_heads == 4
    written = row_as_written("associative_recall_transformer", registry)
    assert differing_only_in({"seed": True, "name": True, "output_dir": True, "training": {"lr"}}, written, row)
    exclude = {"seed": True, "name": True, "output_dir": True, "backbone": {"n_heads"},
               "training": {"keep_checkpoints"}}
    assert differing_only_in(exclude, row, *follow.checked)


def test_the_ih_h3_steps_follow_up_is_the_row_with_twice_the_steps(tmp_path, registry):
    """tune_ih_h3_steps10000.yaml is the induction-head h3 row's chosen setting (lr 1e-3) at 10000
    steps (warmup 10%), seeds 0-2; nothing else differs but the heads the row adopted later."""
    follow = load_tune_spec(HERE / "tune_ih_h3_steps10000.yaml", registry=registry)
    assert sorted(c.seed for c in follow.checked) == [0, 1, 2]
    assert {(c.training.steps, c.training.warmup_steps) for c in follow.checked} == {(10000, 1000)}
    row_lr = yaml.safe_load((HERE / "induction_head_h3.yaml").read_text())["training"]["lr"]
    row = searched_setting("induction_head_h3", row_lr, tmp_path, registry)
    assert row.training.steps == 5000
    # the row has since adopted heads of size 2 (tune_ih_h3_heads.yaml); this ran at size 1
    assert row.backbone.head_dim == 2 and {c.backbone.head_dim for c in follow.checked} == {1}
    exclude = {"seed": True, "name": True, "output_dir": True, "backbone": {"head_dim"},
               "training": {"steps", "warmup_steps", "keep_checkpoints"}}
    dumped = {c.model_dump_json(exclude=exclude) for c in [row, *follow.checked]}
    assert len(dumped) == 1


@pytest.mark.parametrize(("backbone", "lr"), [("rwkv", 2.0e-3), ("retnet", 1.0e-3)])
def test_the_ih_steps_follow_ups_are_the_rows_with_twice_the_steps(backbone, lr, tmp_path, registry):
    """tune_ih_{rwkv,retnet}_steps10000.yaml are the induction-head rows' searched settings (the lr
    their 5000-step searches chose; RWKV's row has since adopted lr 1e-3) at 10000 steps (warmup
    10%), seeds 0-2, one trial at a time; nothing else differs."""
    follow = load_tune_spec(HERE / f"tune_ih_{backbone}_steps10000.yaml", registry=registry)
    assert sorted(c.seed for c in follow.checked) == [0, 1, 2]
    assert follow.options.max_concurrent_trials == 1
    assert {(c.training.steps, c.training.warmup_steps) for c in follow.checked} == {(10000, 1000)}
    row = searched_setting(f"induction_head_{backbone}", lr, tmp_path, registry)
    assert row.training.steps == 5000
    exclude = {"seed": True, "name": True, "output_dir": True,
               "training": {"steps", "warmup_steps", "keep_checkpoints"}}
    assert len({c.model_dump_json(exclude=exclude) for c in [row, *follow.checked]}) == 1


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
    row = searched_setting(f"induction_head_{backbone}", lr, tmp_path, registry)
    assert row.training.steps == 5000
    exclude = {"seed": True, "name": True, "output_dir": True,
               "training": {"steps", "warmup_steps", "eval_every", "keep_checkpoints"}}
    assert len({c.model_dump_json(exclude=exclude) for c in [row, *follow.checked]}) == 1


@pytest.mark.parametrize(("backbone", "lr"), AR_STEPS6000_ROWS)
def test_the_ar_6000_step_follow_ups_are_the_rows_at_h3s_schedule(backbone, lr, tmp_path, registry):
    """Each follow-up is its row's searched setting (the lr its 3000-step search chose) with the
    H3 row's schedule (6000 steps, warmup 300), seeds 0-2, one trial at a time; nothing else
    (width, heads, eval interval, data, optimizer) differs from the row as its search trained it."""
    follow = load_tune_spec(HERE / f"tune_ar_{backbone}_steps6000.yaml", registry=registry)
    assert follow.name == f"ar_{backbone}_steps6000"
    assert sorted(c.seed for c in follow.checked) == [0, 1, 2]
    assert follow.options.max_concurrent_trials == 1
    assert {(c.training.steps, c.training.warmup_steps, c.training.lr) for c in follow.checked} == {(6000, 300, lr)}
    h3 = yaml.safe_load(follow_ups_row("associative_recall_h3").read_text())["training"]
    assert (h3["steps"], h3["warmup_steps"]) == (6000, 300)
    searched = searched_settings(f"associative_recall_{backbone}", tmp_path, registry)
    assert sorted(c.training.lr for c in searched) == [1.0e-3, 3.0e-3]
    row = next(c for c in searched if c.training.lr == lr)
    assert (row.training.steps, row.training.warmup_steps) == (3000, 150)
    exclude = {"seed": True, "name": True, "output_dir": True,
               "training": {"steps", "warmup_steps", "keep_checkpoints"}}
    if backbone == "retnet":  # the row adopted 4 heads later (tune_ar_retnet_heads.yaml); this ran at 8
        assert row.backbone.n_heads == 4 and {c.backbone.n_heads for c in follow.checked} == {8}
        exclude["backbone"] = {"n_heads"}
    assert len({c.model_dump_json(exclude=exclude) for c in [row, *follow.checked]}) == 1


def test_the_ar_h3_heads_follow_up_is_the_row_with_heads_of_size_2_and_4(tmp_path, registry):
    """tune_ar_h3_heads.yaml is the associative-recall h3 row as it was then (lr 2e-3, 6000 steps,
    head_dim 1) with head_dim in {2, 4}, seeds 0-2; nothing else differs. The row adopted head_dim 2;
    its own search, run since at head_dim 2 over lr {1e-3, 2e-3}, chose 1e-3, so the follow-up's
    head_dim 2 setting is that search's lr 2e-3 setting."""
    follow = load_tune_spec(HERE / "tune_ar_h3_heads.yaml", registry=registry)
    assert sorted((c.backbone.head_dim, c.seed) for c in follow.checked) == [(d, s) for d in (2, 4) for s in range(3)]
    row = row_as_written("associative_recall_h3", registry)
    assert (row.backbone.head_dim, row.training.lr, row.training.steps) == (2, 0.001, 6000)
    at_2e3 = searched_setting("associative_recall_h3", 0.002, tmp_path, registry)
    exclude = {"seed": True, "name": True, "output_dir": True}
    assert differing_only_in(exclude, at_2e3, *[c for c in follow.checked if c.backbone.head_dim == 2])
    assert differing_only_in({**exclude, "backbone": {"head_dim"}}, at_2e3, *follow.checked)
    assert differing_only_in({**exclude, "training": {"lr"}}, row, at_2e3)


@pytest.mark.parametrize(("follow_up", "row_stem", "lr", "steps", "at_a_time"),
                         [("ar_rwkv_d32_steps6000", "associative_recall_rwkv", 0.003, 6000, 1),
                          ("ar_lstm_d32_steps12000", "associative_recall_lstm", 0.003, 12000, 1),
                          ("ar_s4d_d32_steps6000", "associative_recall_s4d", 0.003, 6000, 1),
                          ("ar_transformer_d32_steps4000", "associative_recall_transformer", 0.002, 4000, 2),
                          ("ar_h3_d32_steps6000", "associative_recall_h3", 0.001, 6000, 2),
                          ("ih_transformer_d32", "induction_head_transformer", 0.0005, 25000, 2),
                          ("ih_h3_d32", "induction_head_h3", 0.001, 10000, 2)])
def test_the_width_32_checks_are_the_width_64_rows_at_seq_icls_width(follow_up, row_stem, lr, steps, at_a_time,
                                                                       registry):
    """tune_ar_{rwkv,lstm,s4d,transformer,h3}_d32_*.yaml are the associative-recall rows as adopted at width 64
    (width64/), tune_ih_{transformer,h3}_d32.yaml the induction-head rows, at seq_icl's width 32, seeds 0-2;
    the transformer's FFN stays 4x the width (256 -> 128); nothing else differs."""
    follow = load_tune_spec(HERE / f"tune_{follow_up}.yaml", registry=registry)
    assert sorted(c.seed for c in follow.checked) == [0, 1, 2]
    assert follow.options.max_concurrent_trials == at_a_time
    assert {c.backbone.d_model for c in follow.checked} == {32}
    row = row_as_written(row_stem, registry)
    assert (row.backbone.d_model, row.training.lr, row.training.steps) == (64, lr, steps)
    width_fields = {"d_model"}
    if row.backbone.name == "transformer":
        assert (row.backbone.ffn_size, {c.backbone.ffn_size for c in follow.checked}) == (256, {128})
        width_fields.add("ffn_size")
    exclude = {"seed": True, "name": True, "output_dir": True, "backbone": width_fields}
    assert differing_only_in(exclude, row, *follow.checked)


@pytest.mark.parametrize(("follow_up", "backbone", "changed", "at_a_time"), [
    ("ar_rwkv_d32_steps12000", "rwkv", {"steps": 12000, "warmup_steps": 600, "lr": 3.0e-3}, 1),
    ("ar_lstm_d32_steps24000", "lstm", {"steps": 24000, "warmup_steps": 1200, "lr": 3.0e-3}, 1),
    ("ar_lru_d32_steps24000", "lru", {"steps": 24000, "warmup_steps": 1200, "lr": 3.0e-3}, 1),
    ("ar_gilr_d32_warmup3140", "gilr", {"warmup_steps": 3140}, 1)])
def test_the_width_32_checks_read_against_the_current_rows_change_only_training_fields(follow_up, backbone, changed,
                                                                                      at_a_time, registry):
    """docs/results.md reads these checks against the associative-recall rows as searched at width 32
    (6000 steps, warmup 300): each is that row with only the named training fields changed (the
    longer ones: more steps at the same share of warmup, lr 3e-3 where the LRU row chose 1e-3; GILR:
    the long warmup), seeds 0-2, one at a time. The first three were defined against the width-64 rows."""
    follow = load_tune_spec(HERE / f"tune_{follow_up}.yaml", registry=registry)
    assert sorted(c.seed for c in follow.checked) == [0, 1, 2]
    assert follow.options.max_concurrent_trials == at_a_time
    row = validate_spec(yaml.safe_load((HERE / f"associative_recall_{backbone}.yaml").read_text()), registry=registry)
    assert (row.backbone.d_model, row.training.steps, row.training.warmup_steps) == (32, 6000, 300)
    assert all(getattr(c.training, field) == value for c in follow.checked for field, value in changed.items())
    exclude = {"seed": True, "name": True, "output_dir": True, "training": set(changed)}
    assert differing_only_in(exclude, row, *follow.checked)


@pytest.mark.parametrize(("follow_up", "changed", "value"), [("ar_gilr_d32", "d_model", 32),
                                                            ("ar_gilr_nodrop", "mixer_dropout", 0.0)])
def test_the_ar_gilr_checks_are_the_row_with_one_layer_setting_changed(follow_up, changed, value, registry,
                                                                         tmp_path):
    """tune_ar_gilr_{d32,nodrop}.yaml are the associative-recall gilr row as it stood then, its search's
    setting (lr 3e-3, 3000 steps, width 64, seq_icl's mixer dropout 0.2; the row has since adopted
    62800 steps), with only the width or only the mixer dropout changed, seeds 0-2, one at a time."""
    follow = load_tune_spec(HERE / f"tune_{follow_up}.yaml", registry=registry)
    assert sorted(c.seed for c in follow.checked) == [0, 1, 2]
    assert follow.options.max_concurrent_trials == 1
    assert {getattr(c.backbone, changed) for c in follow.checked} == {value}
    assert row_as_written("associative_recall_gilr", registry).training.steps == 62800
    row = searched_setting("associative_recall_gilr", 3.0e-3, tmp_path, registry)
    assert (row.backbone.d_model, row.backbone.mixer_dropout, row.training.lr, row.training.steps) == (64, 0.2, 0.003, 3000)
    exclude = {"seed": True, "name": True, "output_dir": True, "backbone": {changed}, "training": {"keep_checkpoints"}}
    assert differing_only_in(exclude, row, *follow.checked)


def test_the_ar_retnet_heads_follow_up_is_the_row_with_2_and_4_heads(registry):
    """tune_ar_retnet_heads.yaml is the associative-recall retnet row as adopted from its 6000-step
    follow-up (lr 1e-3, 6000 steps, 8 heads) with n_heads in {2, 4}, seeds 0-2, one trial at a time;
    nothing else differs. The row has since adopted 4 heads from it, then the 3140-step warmup
    (tune_ar_retnet_warmup3140.yaml)."""
    follow = load_tune_spec(HERE / "tune_ar_retnet_heads.yaml", registry=registry)
    assert sorted((c.backbone.n_heads, c.seed) for c in follow.checked) == [(h, s) for h in (2, 4) for s in range(3)]
    assert follow.options.max_concurrent_trials == 1
    row = row_as_written("associative_recall_retnet", registry)
    assert (row.backbone.n_heads, row.training.lr, row.training.steps, row.training.warmup_steps) == (4, 0.001, 6000, 3140)
    before = load_tune_spec(HERE / "tune_ar_retnet_steps6000.yaml", registry=registry).checked
    assert {c.backbone.n_heads for c in before} == {8}
    assert {c.training.warmup_steps for c in [*before, *follow.checked]} == {300}
    exclude = {"seed": True, "name": True, "output_dir": True, "backbone": {"n_heads"}, "training": {"warmup_steps"}}
    assert differing_only_in(exclude, row, *follow.checked)
    exclude["training"] = {"warmup_steps", "keep_checkpoints"}
    assert differing_only_in(exclude, row, *before)


ONE_AXIS_FOLLOW_UPS = [
    ("ih_retnet_heads", "induction_head_retnet", "backbone", "n_heads", 8, [4]),
    ("ih_h3_heads", "tune_ih_h3_steps10000", "backbone", "head_dim", 1, [2]),
    ("ih_transformer_heads", "induction_head_transformer", "backbone", "n_heads", 4, [1]),
    ("ar_s4d_lr1e-3", "tune_ar_s4d_steps6000", "training", "lr", 3.0e-3, [1.0e-3]),
    ("ar_retnet_lr3e-3", ("tune_ar_retnet_heads", {"backbone.n_heads": 4}), "training", "lr", 1.0e-3, [3.0e-3]),
    ("ar_lstm_lr1e-3_steps12000", "associative_recall_lstm", "training", "lr", 3.0e-3, [1.0e-3]),
    ("ar_lru_lr3e-3_steps12000", "tune_ar_lru_steps12000", "training", "lr", 1.0e-3, [3.0e-3]),
    ("ar_gilr_lr", ("associative_recall_gilr", {"training.lr": 3.0e-3}), "training", "lr", 3.0e-3, [5.0e-4, 1.0e-3]),
    ("ar_rwkv_lr1e-3", "associative_recall_rwkv", "training", "lr", 3.0e-3, [1.0e-3]),
    ("ih_s4d_lr", "tune_ih_s4d_steps20000", "training", "lr", 1.0e-3, [5.0e-4, 2.0e-3]),
    ("ih_lru_lr", "tune_ih_lru_steps20000", "training", "lr", 1.0e-3, [5.0e-4]),
    ("ih_transformer_heads2", "induction_head_transformer", "backbone", "n_heads", 4, [2]),
    ("ih_h3_lr5e-4", "induction_head_h3", "training", "lr", 1.0e-3, [5.0e-4]),
    ("ar_lru_d32", "tune_ar_lru_lr3e-3_steps12000", "backbone", "d_model", 64, [32]),
    ("ih_gilr_lr", "induction_head_gilr", "training", "lr", 2.0e-3, [5.0e-4]),
    ("ih_rwkv_lr1e-3", "tune_ih_rwkv_steps20000", "training", "lr", 2.0e-3, [1.0e-3]),
    ("ih_retnet_lr5e-4", "induction_head_retnet", "training", "lr", 1.0e-3, [5.0e-4]),
    ("ih_transformer_lr1e-3", "induction_head_transformer", "training", "lr", 5.0e-4, [1.0e-3]),
    ("ih_transformer_lr3e-4", "induction_head_transformer", "training", "lr", 5.0e-4, [3.0e-4]),
    ("ih_gilr_lr1e-3", "induction_head_gilr", "training", "lr", 2.0e-3, [1.0e-3]),
    ("ar_gilr_steps6000_warmup3140", "tune_ar_gilr_steps6000", "training", "warmup_steps", 300, [3140]),
    ("ar_gilr_steps6000_warmup3140", "associative_recall_gilr", "training", "steps", 62800, [6000]),
    ("ar_gilr_steps6000_warmup1000", "tune_ar_gilr_steps6000", "training", "warmup_steps", 300, [1000]),
    ("ar_s4d_warmup3140", "tune_ar_s4d_steps6000", "training", "warmup_steps", 300, [3140]),
    ("ar_retnet_warmup3140", ("tune_ar_retnet_heads", {"backbone.n_heads": 4}), "training", "warmup_steps", 300, [3140]),
    ("ih_retnet_lr2e-3", "induction_head_retnet", "training", "lr", 1.0e-3, [2.0e-3]),
    ("ar_rwkv_d32_lr1e-3", "tune_ar_rwkv_d32_steps6000", "training", "lr", 3.0e-3, [1.0e-3]),
    ("ar_lstm_d32_lr1e-3", "tune_ar_lstm_d32_steps12000", "training", "lr", 3.0e-3, [1.0e-3]),
    ("ar_lru_d32_lr1e-3", "tune_ar_lru_d32", "training", "lr", 3.0e-3, [1.0e-3]),
    ("ar_h3_d32_lr2e-3", "tune_ar_h3_d32_steps6000", "training", "lr", 1.0e-3, [2.0e-3]),
    ("ar_transformer_d32_heads1", "tune_ar_transformer_d32_steps4000", "backbone", "n_heads", 4, [1]),
]


@pytest.mark.parametrize(("follow_up", "base", "part", "field", "row_value", "values"), ONE_AXIS_FOLLOW_UPS)
def test_the_one_axis_follow_ups_are_their_rows_with_that_axis_changed(follow_up, base, part, field, row_value,
                                                                       values, registry, tmp_path):
    """The follow-ups that change one field (heads, lr, warmup or, for GILR's warmup check, steps):
    each is its base (the row as written, i.e. its adopted setting, or the follow-up named
    `tune_*` that it builds on) with one field over `values` (none of them the base's own), seeds 0-2
    for each value, one trial at a time; nothing else differs (but the number of checkpoints kept)."""
    follow = load_tune_spec(HERE / f"tune_{follow_up}.yaml", registry=registry)
    assert follow.name == follow_up
    assert follow.options.max_concurrent_trials == 1
    tried = sorted((getattr(getattr(c, part), field), c.seed) for c in follow.checked)
    assert tried == [(v, s) for v in values for s in range(3)]
    row = base_setting(base, registry, tmp_path)
    assert getattr(getattr(row, part), field) == row_value and row_value not in values
    exclude = {"seed": True, "name": True, "output_dir": True, "training": {"keep_checkpoints"}}
    exclude[part] = {field, *exclude.get(part, ())}  # checkpoints kept on disk are not a setting
    assert differing_only_in(exclude, row, *follow.checked)


@pytest.mark.parametrize(("follow_up", "row"), [("ar_s4d_warmup3140", "associative_recall_s4d"),
                                                ("ih_rwkv_lr1e-3", "induction_head_rwkv"),
                                                ("ar_retnet_warmup3140", "associative_recall_retnet"),
                                                ("ih_h3_heads", "induction_head_h3")])
def test_a_row_that_adopted_a_one_axis_follow_up_is_that_setting(follow_up, row, registry):
    """`--adopt` wrote the follow-up's one setting back as the row's spec: only seed and names differ."""
    follow = load_tune_spec(HERE / f"tune_{follow_up}.yaml", registry=registry)
    assert differing_only_in({"seed": True, "name": True, "output_dir": True}, row_as_written(row, registry),
                             *follow.checked)


#: (follow-up, its base, the base's (steps, warmup), the follow-up's (steps, warmup), the lr, the row
#: that has adopted it and still stands at it, or None). The base is the row as written or the `tune_*`
#: the row stood at then.
LONGER_FOLLOW_UPS = [
    ("ar_lstm_steps12000", "tune_ar_lstm_steps6000", (6000, 300), (12000, 600), 3.0e-3, "associative_recall_lstm"),
    ("ar_lru_steps12000", "tune_ar_lru_steps6000", (6000, 300), (12000, 600), 1.0e-3, None),
    ("ih_rwkv_steps20000", "tune_ih_rwkv_steps10000", (10000, 1000), (20000, 2000), 2.0e-3, None),
    ("ih_retnet_steps20000", "tune_ih_retnet_steps10000", (10000, 1000), (20000, 2000), 1.0e-3,
     "induction_head_retnet"),
    ("ar_lstm_steps24000", "associative_recall_lstm", (12000, 600), (24000, 1200), 3.0e-3, None),
    ("ar_lru_steps24000", "tune_ar_lru_lr3e-3_steps12000", (12000, 600), (24000, 1200), 3.0e-3,
     "associative_recall_lru"),
    ("ih_lru_steps40000", "tune_ih_lru_lr", (20000, 2000), (40000, 4000), 5.0e-4, None),
    ("ih_s4d_steps30000", "tune_ih_s4d_lr", (20000, 2000), (30000, 3000), 5.0e-4, "induction_head_s4d"),
    ("ar_gilr_steps62800", ("associative_recall_gilr", {"training.lr": 3.0e-3}), (3000, 150), (62800, 3140), 3.0e-3,
     "associative_recall_gilr"),
    ("ih_transformer_steps30000", "induction_head_transformer", (25000, 1000), (30000, 1200), 5.0e-4, None),
    ("ih_lru_steps60000", "tune_ih_lru_steps40000", (40000, 4000), (60000, 6000), 5.0e-4, "induction_head_lru"),
    ("ar_rwkv_d32_steps12000", "tune_ar_rwkv_d32_steps6000", (6000, 300), (12000, 600), 3.0e-3, None),
    ("ar_lstm_d32_steps24000", "tune_ar_lstm_d32_steps12000", (12000, 600), (24000, 1200), 3.0e-3, None),
    ("ar_lru_d32_steps24000", "tune_ar_lru_d32", (12000, 600), (24000, 1200), 3.0e-3, None),
    ("ar_h3_d32_steps12000", "tune_ar_h3_d32_steps6000", (6000, 300), (12000, 600), 1.0e-3, None),
    ("ar_transformer_d32_seqicl_model_steps12000", "tune_ar_transformer_d32_seqicl_model", (4000, 200), (12000, 600),
     2.0e-3, None),
]


@pytest.mark.parametrize(("follow_up", "base", "base_schedule", "schedule", "lr", "adopted_by"), LONGER_FOLLOW_UPS)
def test_the_longer_follow_ups_are_their_bases_with_more_steps(follow_up, base, base_schedule, schedule, lr,
                                                               adopted_by, registry, tmp_path):
    """Each follow-up is its base at more steps with the same share of warmup, seeds 0-2, one trial at
    a time; nothing else differs. A row that adopted it is that setting."""
    follow = load_tune_spec(HERE / f"tune_{follow_up}.yaml", registry=registry)
    assert follow.name == follow_up
    assert sorted(c.seed for c in follow.checked) == [0, 1, 2]
    assert follow.options.max_concurrent_trials == 1
    (base_steps, base_warmup), (steps, warmup) = base_schedule, schedule
    assert steps > base_steps and warmup * base_steps == base_warmup * steps
    assert {(c.training.steps, c.training.warmup_steps, c.training.lr) for c in follow.checked} == {(*schedule, lr)}
    row = base_setting(base, registry, tmp_path)
    assert (row.training.steps, row.training.warmup_steps) == base_schedule
    exclude = {"seed": True, "name": True, "output_dir": True}
    if adopted_by is not None:
        assert differing_only_in(exclude, row_as_written(adopted_by, registry), *follow.checked)
    exclude["training"] = {"steps", "warmup_steps"}
    assert differing_only_in(exclude, row, *follow.checked)


def test_the_ih_rwkv_seeds_3_to_5_are_the_lr_follow_up_at_three_more_seeds(registry):
    """tune_ih_rwkv_lr1e-3_seeds3to5.yaml is tune_ih_rwkv_lr1e-3.yaml's one setting at seeds 3-5."""
    first = load_tune_spec(HERE / "tune_ih_rwkv_lr1e-3.yaml", registry=registry)
    more = load_tune_spec(HERE / "tune_ih_rwkv_lr1e-3_seeds3to5.yaml", registry=registry)
    assert more.options.max_concurrent_trials == 1
    assert sorted(c.seed for c in [*first.checked, *more.checked]) == list(range(6))
    assert differing_only_in({"seed": True, "name": True, "output_dir": True}, *first.checked, *more.checked)


def test_the_gilr_constant_lr_check_is_the_6000_step_follow_up_at_the_warmups_mean_lr(registry):
    """tune_ar_gilr_constant_lr.yaml is tune_ar_gilr_steps6000.yaml at a constant lr (no warmup, no
    decay) equal to the mean lr of the 3140-step warmup to 3e-3; nothing else differs."""
    follow = load_tune_spec(HERE / "tune_ar_gilr_constant_lr.yaml", registry=registry)
    base = load_tune_spec(HERE / "tune_ar_gilr_steps6000.yaml", registry=registry).checked
    warmup = load_tune_spec(HERE / "tune_ar_gilr_steps6000_warmup3140.yaml", registry=registry).checked[0].training
    assert sorted(c.seed for c in follow.checked) == [0, 1, 2]
    assert follow.options.max_concurrent_trials == 1
    warmup_lrs = [warmup.lr * lr_factor(step, warmup) for step in range(warmup.warmup_steps)]
    for check in follow.checked:
        assert check.training.lr == pytest.approx(sum(warmup_lrs) / len(warmup_lrs), rel=1e-3)
        assert {lr_factor(step, check.training) for step in range(check.training.steps)} == {1.0}
    exclude = {"seed": True, "name": True, "output_dir": True, "training": {"lr", "warmup_steps", "min_lr_ratio"}}
    assert differing_only_in(exclude, *base, *follow.checked)


def test_the_gilr_half_lr_warmup_is_the_3140_step_warmup_follow_up_at_half_its_lr(registry):
    """tune_ar_gilr_warmup3140_lr1.5e-3.yaml is tune_ar_gilr_steps6000_warmup3140.yaml at half the peak
    lr, at seeds 0-5; nothing else differs (but the number of checkpoints kept), so the schedule (steps,
    warmup, floor) is the same and every step's lr is half of it."""
    follow = load_tune_spec(HERE / "tune_ar_gilr_warmup3140_lr1.5e-3.yaml", registry=registry).checked
    first = load_tune_spec(HERE / "tune_ar_gilr_steps6000_warmup3140.yaml", registry=registry).checked[0]
    assert sorted(c.seed for c in follow) == list(range(6))
    assert [c.training.lr for c in follow] == pytest.approx([first.training.lr / 2] * 6)
    exclude = {"seed": True, "name": True, "output_dir": True, "training": {"lr", "keep_checkpoints"}}
    assert differing_only_in(exclude, first, *follow)


def test_the_gilr_warmup_seeds_3_to_5_are_the_three_warmup_follow_ups_at_three_more_seeds(registry):
    """tune_ar_gilr_steps6000_warmups_seeds3to5.yaml is the 6000-step GILR follow-ups with warmups of
    300, 1000 and 3140 steps (seeds 0-2 each) at seeds 3-5; nothing else differs (but the number of
    checkpoints kept)."""
    more = load_tune_spec(HERE / "tune_ar_gilr_steps6000_warmups_seeds3to5.yaml", registry=registry).checked
    first = [c for stem in ("steps6000", "steps6000_warmup1000", "steps6000_warmup3140")
             for c in load_tune_spec(HERE / f"tune_ar_gilr_{stem}.yaml", registry=registry).checked]
    assert sorted((c.training.warmup_steps, c.seed) for c in [*first, *more]) == [
        (w, s) for w in (300, 1000, 3140) for s in range(6)]
    exclude = {"seed": True, "name": True, "output_dir": True, "training": {"warmup_steps", "keep_checkpoints"}}
    assert differing_only_in(exclude, *first, *more)


@pytest.mark.parametrize(("backbone", "at_a_time"), [("lstm", 1), ("lru", 2), ("rwkv", 2), ("s4d", 1)])
def test_the_ar_seqicl_recipe_checks_are_the_rows_trained_as_seq_icl_trained(backbone, at_a_time, registry):
    """tune_ar_{lstm,lru,rwkv,s4d}_seqicl_recipe.yaml are the associative-recall rows at seq_icl's own recipe:
    width 32, lr 5e-4, 62800 steps (400 epochs of 5000 sequences at batch 32) with 6280 warmup steps
    (10%), evaluated every 3140 steps, seeds 0-2 (LSTM and S4D one at a time, LRU and RWKV two); nothing else
    differs."""
    follow = load_tune_spec(HERE / f"tune_ar_{backbone}_seqicl_recipe.yaml", registry=registry)
    assert sorted(c.seed for c in follow.checked) == [0, 1, 2]
    assert follow.options.max_concurrent_trials == at_a_time
    assert {(c.backbone.d_model, c.training.lr, c.training.steps, c.training.warmup_steps, c.training.eval_every,
             c.training.batch_size, c.training.weight_decay, c.task.train_size) for c in follow.checked} == {
        (32, 5.0e-4, 62800, 6280, 3140, 32, 0.1, 5000)}
    row = row_as_written(f"associative_recall_{backbone}", registry)
    assert row.backbone.d_model == 64
    exclude = {"seed": True, "name": True, "output_dir": True, "backbone": {"d_model"},
               "training": {"lr", "steps", "warmup_steps", "eval_every"}}
    assert differing_only_in(exclude, row, *follow.checked)


def test_the_lru_decay_vectors_check_is_the_seqicl_recipe_with_every_parameter_decayed(registry):
    """tune_ar_lru_seqicl_recipe_decay_vectors.yaml is the LRU recipe check with weight decay on 1-D
    parameters too (seq_icl's AdamW decays every parameter), seeds 0-1, both at once; nothing else.
    Its _seed2 twin is the same at seed 2."""
    follow = load_tune_spec(HERE / "tune_ar_lru_seqicl_recipe_decay_vectors.yaml", registry=registry)
    recipe = load_tune_spec(HERE / "tune_ar_lru_seqicl_recipe.yaml", registry=registry)
    assert sorted(c.seed for c in follow.checked) == [0, 1]
    assert follow.options.max_concurrent_trials == 2
    assert {c.training.decay_vectors for c in follow.checked} == {True}
    assert {c.training.decay_vectors for c in recipe.checked} == {False}
    exclude = {"seed": True, "name": True, "output_dir": True, "training": {"decay_vectors"}}
    assert differing_only_in(exclude, *recipe.checked, *follow.checked)
    third = load_tune_spec(HERE / "tune_ar_lru_seqicl_recipe_decay_vectors_seed2.yaml", registry=registry)
    assert [c.seed for c in third.checked] == [2] and third.options.max_concurrent_trials == 1
    assert differing_only_in({"seed": True, "name": True, "output_dir": True}, *follow.checked, *third.checked)


def test_the_lru_kernel_gradient_check_is_the_seqicl_recipe_with_seq_icls_scan_gradient(registry):
    """tune_ar_lru_seqicl_recipe_kernel_gradient.yaml is the LRU recipe check trained with the gradient
    seq_icl's Triton scan computes (`scan_gradient: seq_icl_kernel`), seeds 0-2, one at a time; nothing else."""
    follow = load_tune_spec(HERE / "tune_ar_lru_seqicl_recipe_kernel_gradient.yaml", registry=registry)
    recipe = load_tune_spec(HERE / "tune_ar_lru_seqicl_recipe.yaml", registry=registry)
    assert sorted(c.seed for c in follow.checked) == [0, 1, 2]
    assert follow.options.max_concurrent_trials == 1
    assert {c.backbone.scan_gradient for c in follow.checked} == {"seq_icl_kernel"}
    assert {c.backbone.scan_gradient for c in recipe.checked} == {"exact"}
    exclude = {"seed": True, "name": True, "output_dir": True, "backbone": {"scan_gradient"}}
    assert differing_only_in(exclude, *recipe.checked, *follow.checked)


SEQ_ICL_OPTIMISER = ("grad_clip", "schedule", "min_lr_ratio", "decay_vectors")


def optimiser_details(configs) -> set:
    return {tuple(getattr(c.training, key) for key in SEQ_ICL_OPTIMISER) for c in configs}


@pytest.mark.parametrize(("full", "base", "at_a_time"), [
    ("ar_rwkv_seqicl_recipe_full", "ar_rwkv_seqicl_recipe", 2),
    ("ar_s4d_seqicl_recipe_full", "ar_s4d_seqicl_recipe", 1),
    ("ar_lru_seqicl_recipe_kernel_gradient_full", "ar_lru_seqicl_recipe_kernel_gradient", 1),
    ("ar_lru_seqicl_recipe_full", "ar_lru_seqicl_recipe", 2),
])
def test_the_full_recipe_checks_add_seq_icls_optimiser_details(full, base, at_a_time, registry):
    """tune_<full>.yaml is its recipe check with seq_icl's optimiser details: no gradient clipping,
    linear decay to 0, weight decay on every parameter; seeds 0-2; nothing else."""
    follow = load_tune_spec(HERE / f"tune_{full}.yaml", registry=registry)
    recipe = load_tune_spec(HERE / f"tune_{base}.yaml", registry=registry)
    assert sorted(c.seed for c in follow.checked) == [0, 1, 2]
    assert follow.options.max_concurrent_trials == at_a_time
    assert optimiser_details(follow.checked) == {(None, "linear", 0.0, True)}
    assert optimiser_details(recipe.checked) == {(1.0, "cosine", 0.1, False)}
    exclude = {"seed": True, "name": True, "output_dir": True, "training": set(SEQ_ICL_OPTIMISER)}
    assert differing_only_in(exclude, *recipe.checked, *follow.checked)


def test_the_lm_simple_lstm_check_is_seq_icls_published_lstm_at_its_whole_recipe(registry):
    """tune_ar_lstm_seqicl_recipe_lm_simple.yaml is the LSTM recipe check with seq_icl's published
    LSTM model (`lstm_mixer`: 2 pre-norm blocks of an LSTM and a 4x MLP, seq_icl variant, embedding
    dropout 0.1, head tied to the embeddings, width 32) and seq_icl's optimiser details; seeds 0-2,
    two at a time; nothing else."""
    follow = load_tune_spec(HERE / "tune_ar_lstm_seqicl_recipe_lm_simple.yaml", registry=registry)
    recipe = load_tune_spec(HERE / "tune_ar_lstm_seqicl_recipe.yaml", registry=registry)
    assert sorted(c.seed for c in follow.checked) == [0, 1, 2]
    assert follow.options.max_concurrent_trials == 2
    assert {(c.backbone.name, c.backbone.d_model, c.backbone.n_layers, c.backbone.mlp_ratio, c.backbone.variant,
             c.backbone.embed_dropout, c.backbone.dropout, c.backbone.tie_embeddings) for c in follow.checked} == {
        ("lstm_mixer", 32, 2, 4, "seq_icl", 0.1, 0.0, True)}
    assert {c.backbone.name for c in recipe.checked} == {"lstm"}
    assert optimiser_details(follow.checked) == {(None, "linear", 0.0, True)}
    exclude = {"seed": True, "name": True, "output_dir": True, "backbone": True, "training": set(SEQ_ICL_OPTIMISER)}
    assert differing_only_in(exclude, *recipe.checked, *follow.checked)


@pytest.mark.parametrize("backbone", ["rwkv", "s4d", "h3"])
def test_the_tied_checks_are_the_full_recipe_with_the_head_tied(backbone, registry):
    """tune_ar_<backbone>_seqicl_recipe_full_tied.yaml is that backbone's full recipe check with the
    output head tied to the embeddings (seq_icl's lm_simple), seeds 0-2, two at a time; nothing else
    but the trials at a time."""
    follow = load_tune_spec(HERE / f"tune_ar_{backbone}_seqicl_recipe_full_tied.yaml", registry=registry)
    full = load_tune_spec(HERE / f"tune_ar_{backbone}_seqicl_recipe_full.yaml", registry=registry)
    assert sorted(c.seed for c in follow.checked) == [0, 1, 2]
    assert follow.options.max_concurrent_trials == 2
    assert {c.backbone.tie_embeddings for c in follow.checked} == {True}
    assert {c.backbone.tie_embeddings for c in full.checked} == {False}
    exclude = {"seed": True, "name": True, "output_dir": True, "backbone": {"tie_embeddings"}}
    assert differing_only_in(exclude, *full.checked, *follow.checked)


def test_the_tied_lru_check_is_the_kernel_gradient_full_check_with_the_exact_gradient_and_the_head_tied(registry):
    """tune_ar_lru_seqicl_recipe_full_tied.yaml is seq_icl's whole LRU model and recipe without its
    kernel's bug: the kernel-gradient full check with the exact scan gradient and the tied head, seeds
    0-2, three at a time; nothing else."""
    follow = load_tune_spec(HERE / "tune_ar_lru_seqicl_recipe_full_tied.yaml", registry=registry)
    kernel = load_tune_spec(HERE / "tune_ar_lru_seqicl_recipe_kernel_gradient_full.yaml", registry=registry)
    assert sorted(c.seed for c in follow.checked) == [0, 1, 2]
    assert follow.options.max_concurrent_trials == 3
    assert {(c.backbone.scan_gradient, c.backbone.tie_embeddings) for c in follow.checked} == {("exact", True)}
    assert {(c.backbone.scan_gradient, c.backbone.tie_embeddings) for c in kernel.checked} == {("seq_icl_kernel", False)}
    exclude = {"seed": True, "name": True, "output_dir": True, "backbone": {"scan_gradient", "tie_embeddings"}}
    assert differing_only_in(exclude, *kernel.checked, *follow.checked)


@pytest.mark.parametrize(("backbone", "model_changes", "tied"), [
    ("transformer", {"d_model": 32, "n_heads": 1, "ffn_size": 128, "parallel_residual": False}, False),
    ("h3", {"d_model": 32, "head_dim": 1}, True),
])
def test_the_strong_models_recipe_checks_are_their_rows_at_seq_icls_whole_recipe(
        backbone, model_changes, tied, registry):
    """tune_ar_{transformer,h3}_seqicl_recipe_full*.yaml are the associative-recall rows at seq_icl's
    width, heads and block order, with seq_icl's recipe and optimiser details (the weak models' full
    checks); H3's head is tied as seq_icl ties it; seeds 0-2, two at a time; nothing else."""
    stem = f"ar_{backbone}_seqicl_recipe_full" + ("_tied" if tied else "")
    follow = load_tune_spec(HERE / f"tune_{stem}.yaml", registry=registry)
    row = row_as_written(f"associative_recall_{backbone}", registry)
    assert sorted(c.seed for c in follow.checked) == [0, 1, 2]
    assert follow.options.max_concurrent_trials == 2
    for config in follow.checked:
        assert {key: getattr(config.backbone, key) for key in model_changes} == model_changes
        assert getattr(config.backbone, "tie_embeddings", False) is tied
        assert (config.training.lr, config.training.steps, config.training.warmup_steps,
                config.training.eval_every, config.training.weight_decay) == (5.0e-4, 62800, 6280, 3140, 0.1)
    assert optimiser_details(follow.checked) == {(None, "linear", 0.0, True)}
    exclude = {"seed": True, "name": True, "output_dir": True,
               "backbone": {*model_changes, "tie_embeddings"},
               "training": {"lr", "steps", "warmup_steps", "eval_every", "keep_checkpoints", *SEQ_ICL_OPTIMISER}}
    assert differing_only_in(exclude, row, *follow.checked)


def test_the_transformer_seqicl_model_check_is_the_width_32_check_with_seq_icls_model(registry):
    """tune_ar_transformer_d32_seqicl_model.yaml is the width-32 transformer check with seq_icl's 1 head
    and sequential residual, the very model of the whole-recipe check, trained as the row; seeds 0-2."""
    follow = load_tune_spec(HERE / "tune_ar_transformer_d32_seqicl_model.yaml", registry=registry)
    width_32 = load_tune_spec(HERE / "tune_ar_transformer_d32_steps4000.yaml", registry=registry).checked
    whole_recipe = load_tune_spec(HERE / "tune_ar_transformer_seqicl_recipe_full.yaml", registry=registry).checked
    assert sorted(c.seed for c in follow.checked) == [0, 1, 2]
    assert {c.backbone.model_dump_json() for c in follow.checked} == {whole_recipe[0].backbone.model_dump_json()}
    assert {(c.backbone.n_heads, c.backbone.parallel_residual) for c in width_32} == {(4, True)}
    exclude = {"seed": True, "name": True, "output_dir": True, "backbone": {"n_heads", "parallel_residual"}}
    assert differing_only_in(exclude, *width_32, *follow.checked)


@pytest.mark.parametrize(("follow_up", "bases"), [
    ("ar_transformer_d32_seeds3to5", ["ar_transformer_d32_steps4000", "ar_transformer_d32_heads1"]),
    ("ar_transformer_d32_seqicl_model_seeds3to5", ["ar_transformer_d32_seqicl_model"])])
def test_the_width_32_transformer_seeds_3_to_5_are_their_checks_at_three_more_seeds(follow_up, bases, registry):
    """The width-32 transformer checks (4 heads and 1 head; seq_icl's model) again at seeds 3-5,
    two at a time: each base's setting at each of the new seeds, and nothing else."""
    follow = load_tune_spec(HERE / f"tune_{follow_up}.yaml", registry=registry)
    assert follow.options.max_concurrent_trials == 2
    exclude = {"seed": True, "name": True, "output_dir": True}
    wanted = sorted((base.model_dump_json(exclude=exclude), seed)
                    for stem in bases for base in load_tune_spec(HERE / f"tune_{stem}.yaml", registry=registry).checked[:1]
                    for seed in (3, 4, 5))
    assert sorted((c.model_dump_json(exclude=exclude), c.seed) for c in follow.checked) == wanted


def test_the_width_32_sequential_check_is_the_width_32_check_with_seq_icls_block_order(registry):
    """tune_ar_transformer_d32_sequential.yaml is the width-32 transformer check with the sequential
    pre-norm residual only (4 heads kept), seeds 0-5, two at a time; nothing else differs."""
    follow = load_tune_spec(HERE / "tune_ar_transformer_d32_sequential.yaml", registry=registry)
    width_32 = load_tune_spec(HERE / "tune_ar_transformer_d32_steps4000.yaml", registry=registry).checked
    assert follow.options.max_concurrent_trials == 2
    assert sorted(c.seed for c in follow.checked) == list(range(6))
    assert {(c.backbone.n_heads, c.backbone.parallel_residual) for c in follow.checked} == {(4, False)}
    exclude = {"seed": True, "name": True, "output_dir": True, "backbone": {"parallel_residual"}}
    assert differing_only_in(exclude, *width_32, *follow.checked)


def test_lru_memory_reads_lambda_from_nu_log_by_hand(tmp_path, capsys):
    """|lambda| = exp(-exp(nu_log)): nu_log = log(-log r) gives back r; the script reads a run's latest
    checkpoint and prints the quartiles, the share above 0.9 and the median memory 1 / (1 - |lambda|)."""
    memory = load_script("examples/seq_icl/lru_memory.py", "seq_icl_lru_memory")
    radii = torch.tensor([0.5, 0.8, 0.95, 0.99])
    state = {"backbone.blocks.0.mixer.nu_log": torch.log(-torch.log(radii)), "backbone.blocks.0.mixer.D": radii}
    (found,) = memory.recurrence_radii(state).values()
    torch.testing.assert_close(found, radii.double())
    run = tmp_path / "run"
    (run / "checkpoints").mkdir(parents=True)
    torch.save({"model": state}, run / "checkpoints" / "step_00000010.pt")
    torch.save({"model": {"x.nu_log": torch.zeros(2)}}, run / "checkpoints" / "step_00000005.pt")
    assert memory.main([str(run)]) == 0
    line = capsys.readouterr().out.strip()
    # median of (0.5, 0.8, 0.95, 0.99) is 0.875 -> memory 1 / 0.125 = 8 tokens; 2 of 4 above 0.9
    assert line.endswith("step_00000010 backbone.blocks.0.mixer: |lambda| quartiles 0.725 0.875 0.960, "
                         "50% above 0.9, median memory 8.0 tokens")
    (run / "checkpoints" / "step_00000020.pt").write_bytes(b"not a checkpoint")  # now the latest
    assert memory.main([str(run)]) == 2
    out, err = capsys.readouterr()
    assert out == "" and err.startswith("lru_memory: ") and "step_00000020.pt" in err and "Traceback" not in err
