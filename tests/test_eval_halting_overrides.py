"""`ponderlab eval RUN halting.<knob>=value`: inference-only halting options change the exit rule, nothing else."""

from __future__ import annotations

import json
from pathlib import Path

import pytest

import ponderlab
from ponderlab.core.cli import main as cli_main
from ponderlab.core.evaluation import evaluate_run
from ponderlab.plugins.halting.graves import GravesConfig


def train(path: Path, halting: dict) -> Path:
    spec = {
        "seed": 3,
        "task": {"name": "binary_reverse", "length": 5, "train_size": 200, "validation_size": 16, "test_size": 40},
        "backbone": {"name": "transformer", "d_model": 16, "n_layers": 3, "n_heads": 2, "ffn_size": 32},
        "halting": halting,
        "training": {"steps": 6, "batch_size": 16, "lr": 3e-3, "warmup_steps": 1, "eval_every": 6,
                     "log_every": 6, "num_threads": 1},
    }
    ponderlab.run(spec, output_dir=path)
    return path


@pytest.fixture(scope="module")
def calm_run(tmp_path_factory) -> Path:
    return train(tmp_path_factory.mktemp("calm") / "run", {"name": "calm", "scope": "depth", "threshold": 0.5})


def test_calm_threshold_override_moves_the_exit_and_the_compute(calm_run):
    results = json.loads((calm_run / "results.json").read_text())
    same = evaluate_run(calm_run)["results"]
    assert same["test/mean_layers"] == pytest.approx(results["test/mean_layers"])
    # the softmax response p1 - p2 is >= 0: a threshold of 1e-6 exits every token after the first layer;
    # it is < 1 for any finite logits: threshold 1 never exits early (every token runs all 3 layers)
    first = evaluate_run(calm_run, overrides=["halting.threshold=0.000001"])
    last = evaluate_run(calm_run, overrides=["halting.threshold=1.0"])
    assert first["results"]["test/mean_layers"] == pytest.approx(1.0)
    assert last["results"]["test/mean_layers"] == pytest.approx(3.0)
    assert first["overrides"] == ["halting.threshold=0.000001"]


def test_cli_writes_its_own_file_for_a_halting_override(calm_run, capsys):
    assert cli_main(["eval", str(calm_run), "halting.threshold=1.0", "--label", "t1"]) == 0
    record = json.loads((calm_run / "eval_test_t1.json").read_text())
    assert record["results"]["test/mean_layers"] == pytest.approx(3.0)
    assert "halting.threshold=1.0" in capsys.readouterr().out


@pytest.mark.parametrize(
    "override, message",
    [
        ("halting.lr=3", "halting.threshold, halting.decay_tau, halting.decay_length"),  # not an inference knob
        ("halting.layer_loss=false", "inference-only halting options"),  # a training-time option of calm
        ("halting.name=none", "may change the task only"),
        ("backbone.n_layers=2", "may change the task only"),
    ],
)
def test_other_overrides_are_one_clear_error(calm_run, capsys, override, message):
    assert cli_main(["eval", str(calm_run), override]) == 2
    assert message in capsys.readouterr().err


def test_a_strategy_without_inference_knobs_names_that(tmp_path, capsys):
    run = train(tmp_path / "graves", {"name": "graves", "scope": "depth"})
    assert cli_main(["eval", str(run), "halting.threshold=0.5"]) == 2
    assert "no halting option of 'graves'" in capsys.readouterr().err
    assert GravesConfig.inference_options == ()
