"""Staged sample-length curriculum (seed 001: 2 -> 32 segments): schedule, sample lengths, resume, bad values."""

from __future__ import annotations

import copy
import json

import pytest
from resume_checks import assert_resume_reproduces_the_uninterrupted_run

import ponderlab
from ponderlab.core.cli import main
from ponderlab.core.curriculum import StagePosition
from ponderlab.core.errors import SpecError
from ponderlab.core.run import build_model_from_spec, build_task, execute
from ponderlab.core.spec import resolve_spec, validate_spec
from ponderlab.core.trainer import Trainer

SEGMENT = 16
SPEC = {
    "seed": 3,
    "task": {"name": "babi", "qa": "qa1", "min_facts": 1, "max_facts": 2, "lengths": [0], "test_lengths": [48],
             "train_size": 16, "validation_size": 4, "test_size": 4},
    "backbone": {"name": "armt", "d_model": 16, "n_layers": 1, "memory_size": 2, "segment_size": SEGMENT,
                 "d_mem": 4},
    "halting": {"name": "none"},
    "training": {"batch_size": 4, "eval_every": 2, "log_every": 1, "warmup_steps": 1, "device": "cpu",
                 "num_threads": 1,
                 "curriculum": {"segments": [2, 4, 8], "steps_per_stage": [3, 3, 2], "answer_room": 4}},
}


def spec_with(**curriculum) -> dict:
    spec = copy.deepcopy(SPEC)
    spec["training"]["curriculum"].update(curriculum)
    return spec


def records(run_dir) -> list[dict]:
    return [json.loads(line) for line in (run_dir / "metrics.jsonl").read_text().splitlines()]


def test_steps_are_the_stages_total_and_the_schedule_is_the_hand_checked_one(tmp_path):
    spec = ponderlab.load_spec(None, [])  # the quickstart, to make sure the default has no curriculum
    assert spec.training.curriculum is None
    results = ponderlab.run(SPEC, output_dir=tmp_path / "run", progress=False)
    assert results["train/steps"] == 8  # 3 + 3 + 2
    logged = records(tmp_path / "run")
    train = {r["step"]: (r["stage"], r["segments"]) for r in logged if r["split"] == "train"}
    # steps 1-3: stage 0 (2 segments); 4-6: stage 1 (4); 7-8: stage 2 (8), worked out by hand
    assert train == {1: (0, 2), 2: (0, 2), 3: (0, 2), 4: (1, 4), 5: (1, 4), 6: (1, 4), 7: (2, 8), 8: (2, 8)}
    starts = [(r["step"], r["stage"], r["sample_tokens"]) for r in logged if r["split"] == "curriculum"]
    assert starts == [(1, 0, 32), (4, 1, 64), (7, 2, 128)]
    periodic = [(r["step"], r["stage"]) for r in logged if r["split"] == "validation" and "stage" in r]
    assert periodic == [(2, 0), (4, 1), (6, 1)]  # validation on the stage's own samples


def test_until_ends_each_stage_at_its_first_validation_that_reaches_it(tmp_path):
    # exact_match >= 0 holds at every validation: each stage ends at its first one (eval_every 2).
    spec = spec_with(steps_per_stage=[5, 5, 5], until=0.0)
    results = ponderlab.run(spec, output_dir=tmp_path / "run", progress=False)
    logged = records(tmp_path / "run")
    starts = [(r["step"], r["stage"]) for r in logged if r["split"] == "curriculum"]
    # stage 0: steps 1-2 (validated at 2); stage 1: 3-4; stage 2: 5-6, and the run ends there
    assert starts == [(1, 0), (3, 1), (5, 2)]
    assert results["train/steps"] == 6
    assert [r["stage"] for r in logged if r["split"] == "train"] == [0, 0, 1, 1, 2, 2]


def test_a_validation_that_ends_the_run_is_handed_on_once_with_the_final_results(tmp_path):
    # A Tune trial reports each validation it is handed: the one at step 6 ended the run (until),
    # so it must reach the callback once, from the final results, not also as a periodic one.
    seen = []
    spec = validate_spec(spec_with(steps_per_stage=[5, 5, 5], until=0.0))
    execute(spec, output_dir=tmp_path / "run", progress=False, on_validation=lambda step, _: seen.append(step))
    assert seen == [2, 4, 6]


def test_every_stage_builds_samples_of_its_number_of_segments():
    spec = resolve_spec(spec_with(segments=[2, 3, 8], steps_per_stage=1))
    task = build_task(spec)
    trainer = Trainer(model=build_model_from_spec(spec, task.vocab_size), task=task, data=task.build(spec.seed),
                      config=spec.training, seed=spec.seed, progress=False)
    for stage, segments in enumerate([2, 3, 8]):
        trainer.curriculum.position = StagePosition(stage, 0)
        trainer.curriculum.enter(trainer)
        for split in (trainer.train_data, trainer.val_data):
            lengths = [len(ids) for ids in split.input_ids]
            # more than segments - 1 segments, at most `segments` of them
            assert all((segments - 1) * SEGMENT < n <= segments * SEGMENT for n in lengths), (stage, lengths)
        batch = trainer.plan.batch(0)["input_ids"]
        assert batch.shape[1] <= segments * SEGMENT


@pytest.mark.slow
def test_resume_in_the_middle_of_a_stage_reproduces_the_uninterrupted_run(tmp_path):
    spec = spec_with(steps_per_stage=[4, 8, 4])
    spec["training"].update({"steps": 16, "checkpoint_every": 1, "keep_checkpoints": 20})
    # killed once its step-6 checkpoint exists: inside stage 1 (steps 5-12), with a fresh optimizer there
    assert_resume_reproduces_the_uninterrupted_run(spec, tmp_path, kill_at=6)


@pytest.mark.parametrize(
    ("override", "expected"),
    [
        ("training.curriculum.segments=[4,2]", "training.curriculum: segments must not decrease"),
        ("training.curriculum.steps_per_stage=[1,2]", "steps_per_stage lists 2 stages but segments lists 3"),
        ("training.steps=5", "training: steps (5) must equal the curriculum's total (8"),
        ("training.curriculum.segments=[0,2,4]", "training.curriculum.segments.0"),
        ("training.curriculum.metric=accuracy", "training.curriculum.metric: unknown metric 'accuracy'"),
        ("training.curriculum.answer_room=32", "training.curriculum.answer_room: answer_room (32) leaves no room"),
        ("backbone.segment_size=null", "training.curriculum: needs a backbone that splits its input"),
    ],
)
def test_bad_curriculum_values_are_one_message_exit_2_and_nothing_written(tmp_path, capsys, override, expected):
    import yaml

    spec_path = tmp_path / "spec.yaml"
    spec_path.write_text(yaml.safe_dump(SPEC))
    output = tmp_path / "run"
    code = main(["run", str(spec_path), override, "--output-dir", str(output), "--no-progress"])
    error = capsys.readouterr().err
    assert code == 2 and not output.exists()
    assert error.count("\n") == 1 and expected in error, error


def test_a_task_without_target_lengths_cannot_take_a_curriculum():
    spec = copy.deepcopy(SPEC)
    spec["task"] = {"name": "parity", "size": 8}
    with pytest.raises(SpecError, match="needs a task with target `lengths`.*'parity'"):
        resolve_spec(spec)


def test_a_stage_whose_samples_cannot_fit_is_one_message_before_anything_is_written(tmp_path, capsys):
    import yaml

    spec = copy.deepcopy(SPEC)
    spec["task"].update({"min_facts": 8, "max_facts": 8})  # 8 facts alone are longer than 2 segments of 16
    spec_path = tmp_path / "spec.yaml"
    spec_path.write_text(yaml.safe_dump(spec))
    output = tmp_path / "run"
    code = main(["run", str(spec_path), "--output-dir", str(output), "--no-progress"])
    error = capsys.readouterr().err
    assert code == 2 and not output.exists()
    assert error.count("\n") == 1 and "training.curriculum: stage 0 samples reach" in error
    assert "more than its 2 segments of 16 (32); raise answer_room (now 4)" in error
