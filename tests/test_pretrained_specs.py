"""The ready specs of examples/pretrained run end to end on CPU, a tiny saved model and tokenizer standing in."""

from __future__ import annotations

from pathlib import Path

import pytest
from hf_models import save_tiny, save_tiny_tokenizer
from transformers import PreTrainedTokenizerFast

import ponderlab

EXAMPLES = Path(__file__).resolve().parent.parent / "examples" / "pretrained"
#: spec -> (the layout of the real model it names, overrides that shrink the memory options)
SPECS = {
    "armt_gpt2_babilong_qa1": ("gpt2", ["backbone.segment_size=16", "backbone.memory_size=2", "backbone.d_mem=4",
                                        "training.curriculum.segments=[2,4]",
                                        "training.curriculum.steps_per_stage=1",
                                        "training.curriculum.answer_room=8"]),
    "rmt_gpt2_babilong_qa1": ("gpt2", ["backbone.segment_size=16", "backbone.memory_size=2"]),
    "early_exit_pythia": ("gpt_neox", []),
}
TINY = [
    "task.lengths=[24]", "task.test_lengths=[24]", "task.min_facts=1", "task.max_facts=2", "task.train_size=8",
    "task.validation_size=4", "task.test_size=4", "training.steps=2", "training.batch_size=4",
    "training.eval_every=2", "training.warmup_steps=1", "training.log_every=1", "training.device=cpu",
    "training.num_threads=1",
]


@pytest.mark.slow
@pytest.mark.parametrize("name", sorted(SPECS))
def test_ready_spec_runs_end_to_end_on_a_tiny_stand_in(tmp_path, name):
    layout, memory = SPECS[name]
    path = save_tiny(layout, tmp_path)
    tokenizer = save_tiny_tokenizer(tmp_path / "tokenizer")
    spec = ponderlab.load_spec(EXAMPLES / f"{name}.yaml")
    assert spec.backbone.model and spec.task.tokenizer  # the spec names the real model and tokenizer
    overrides = [f"backbone.model={path}", f"task.tokenizer={tokenizer}", *memory, *TINY]
    results = ponderlab.run(EXAMPLES / f"{name}.yaml", overrides=overrides, output_dir=tmp_path / "run")
    assert results["train/steps"] == 2 and results["backbone"] == spec.backbone.name
    assert 0.0 <= results["test/exact_match"] <= 1.0 and (tmp_path / "run" / "results.json").exists()
    rebuilt = ponderlab.build_model(ponderlab.load_spec(EXAMPLES / f"{name}.yaml", overrides))
    assert rebuilt.head.weight.shape[0] == len(PreTrainedTokenizerFast.from_pretrained(tokenizer))


def test_a_missing_model_path_is_one_message_exit_2_and_nothing_written(tmp_path, capsys):
    from ponderlab.core.cli import main

    output = tmp_path / "run"
    code = main(["run", str(EXAMPLES / "rmt_gpt2_babilong_qa1.yaml"), f"backbone.model={tmp_path / 'missing'}",
                 "task.tokenizer=null", "task.train_size=4", "task.validation_size=2", "task.test_size=2",
                 "task.lengths=[0]", "task.test_lengths=[0]", "--output-dir", str(output), "--no-progress"])
    error = capsys.readouterr().err
    assert code == 2 and not output.exists()
    assert error.count("\n") == 1 and "backbone.model" in error and "missing" in error
