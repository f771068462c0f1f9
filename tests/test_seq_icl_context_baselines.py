"""examples/seq_icl/context_baselines.py: query-blind guesses on associative recall, checked by hand
and against independent formulas, and a trained run's answers read back as the run scored them."""

from __future__ import annotations

import functools
import json
import shutil
import statistics
from pathlib import Path

import pytest
from script_modules import load_script

import ponderlab

# V=8: keys 0-2, values 3-5, `=>` = 6. Context 0 3 1 4 2 4 0 3 1 4, then `=> 0`; the answer is 3.
INPUT = [0, 3, 1, 4, 2, 4, 0, 3, 1, 4, 6, 0]
ANSWER = 3


@functools.cache
def script():
    return load_script("examples/seq_icl/context_baselines.py", "context_baselines")


def test_candidates_by_hand():
    assert script().candidates(INPUT, vocab_size=8) == {
        "any value": [3, 4, 5],
        "a value in the context": [3, 4],  # 3 twice, 4 three times; 5 never
        "most frequent value": [4],
        "last value": [4],
    }


def test_expected_hits_by_hand():
    hits = {name: script().expected_hit(choices, ANSWER) for name, choices in script().candidates(INPUT, 8).items()}
    assert hits == {"any value": 1 / 3, "a value in the context": 1 / 2, "most frequent value": 0.0, "last value": 0.0}


def test_a_tie_for_most_frequent_splits_the_guess():
    tied = [0, 3, 1, 4, 6, 1]  # 3 and 4 once each; the answer is 4
    choices = script().candidates(tied, 8)["most frequent value"]
    assert choices == [3, 4]
    assert script().expected_hit(choices, 4) == 0.5


def test_guesses_on_the_task_against_independent_formulas():
    task = ponderlab.build_task(name="associative_recall", train_size=10, validation_size=10, test_size=300)
    inputs, answers = script().inputs_and_answers(task.build(3).split("test"))
    guesses = script().guess_accuracies([script().candidates(ids, task.vocab_size) for ids in inputs], answers)
    assert guesses["any value"] == pytest.approx(1 / 9)
    # the query key always appeared, so its value is in the context: a uniform pick among the
    # distinct values shown is right with probability 1 / (their number)
    distinct = [len(set(ids[1:40:2])) for ids in inputs]
    assert guesses["a value in the context"] == pytest.approx(statistics.mean(1 / d for d in distinct))
    assert guesses["last value"] == pytest.approx(statistics.mean(ids[39] == a for ids, a in zip(inputs, answers, strict=True)))


def test_answer_profile_by_hand():
    tied = [0, 3, 1, 4, 6, 1]
    options = [script().candidates(ids, 8) for ids in (INPUT, tied, INPUT)]
    profile = script().answer_profile(options, [ANSWER, 4, ANSWER], [4, 4, 3])
    assert profile == {
        "accuracy": 2 / 3,
        "answers a value in the context": 1.0,
        "answers a most frequent value": 2 / 3,  # 4 is INPUT's mode and one of `tied`'s two
        "accuracy where the answer is the one mode": None,  # no row has its answer as the one mode
        "accuracy elsewhere": 2 / 3,
        "sequences where the answer is the one mode": 0.0,
    }


@pytest.fixture(scope="module")
def trained_run(tmp_path_factory) -> Path:
    path = tmp_path_factory.mktemp("context") / "run"
    ponderlab.run({
        "seed": 1,
        "task": {"name": "associative_recall", "train_size": 64, "validation_size": 16, "test_size": 40},
        "backbone": {"name": "lstm", "d_model": 16, "n_layers": 1},
        "halting": {"name": "none"},
        "training": {"steps": 30, "batch_size": 16, "lr": 1e-2, "warmup_steps": 2, "eval_every": 30,
                     "log_every": 10, "num_threads": 1},
    }, output_dir=path)
    return path


def test_a_run_read_back_scores_as_the_run_did(trained_run, tmp_path, capsys):
    out = tmp_path / "report" / "context.md"
    assert script().main([str(trained_run), "--out", str(out)]) == 0
    rows = json.loads(out.with_suffix(".json").read_text())
    assert len(rows) == 1 and rows[0]["seed"] == 1
    results = json.loads((trained_run / "results.json").read_text())
    assert rows[0]["answers"]["accuracy"] == pytest.approx(results["test/exact_match"])
    assert "| 1 |" in out.read_text() and "most frequent value" in capsys.readouterr().out
    assert f"`python examples/seq_icl/context_baselines.py {trained_run}`" in out.read_text()  # how to rewrite it


def test_a_directory_without_runs_is_one_clear_error(tmp_path, capsys):
    out = tmp_path / "context.md"
    assert script().main([str(tmp_path), "--out", str(out)]) == 2
    assert "no finished run" in capsys.readouterr().err
    assert not out.exists()


def test_an_unfinished_run_is_passed_over_in_a_tune_directory_and_refused_alone(trained_run, tmp_path, capsys):
    storage = tmp_path / "search"
    shutil.copytree(trained_run, storage / "runs" / "done")
    shutil.copytree(trained_run, storage / "runs" / "training")
    (storage / "runs" / "training" / "results.json").unlink()
    assert [p.name for p in script().finished_runs([storage])] == ["done"]
    assert "training: not finished, passed over" in capsys.readouterr().err
    out = tmp_path / "context.md"
    assert script().main([str(storage / "runs" / "training"), "--out", str(out)]) == 2
    assert "no finished run" in capsys.readouterr().err
    assert not out.exists()


def test_without_arguments_it_reads_the_recipe_checks_and_not_their_budget_files(trained_run, tmp_path, monkeypatch):
    tried = tmp_path / "runs" / "seq_icl" / "tried"
    shutil.copytree(trained_run, tried / "ar_lstm_seqicl_recipe" / "runs" / "r0")
    (tried / "ar_lstm_seqicl_recipe.budget.json").write_text("{}")
    monkeypatch.setattr(script(), "ROOT", tmp_path)
    out = tmp_path / "page.md"
    assert script().main(["--out", str(out)]) == 0
    assert [row["run"] for row in json.loads(out.with_suffix(".json").read_text())] == ["r0"]
    assert "`python examples/seq_icl/context_baselines.py`" in out.read_text()
