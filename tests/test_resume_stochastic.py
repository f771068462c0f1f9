"""Resuming a SIGKILLed run that draws from torch's RNG (dropout, random halting) reproduces the
uninterrupted run exactly: the checkpoint restores the RNG state along with the weights.
(test_core_trainer.py kills and resumes a deterministic graves/LSTM run, which never draws.)"""

from __future__ import annotations

import pytest
from resume_checks import assert_resume_reproduces_the_uninterrupted_run

STOCHASTIC = {
    "seed": 4,
    "task": {"name": "binary_reverse", "length": 5, "train_size": 128, "validation_size": 16, "test_size": 16},
    "backbone": {"name": "lstm", "d_model": 8, "n_layers": 2, "dropout": 0.3},
    "halting": {"name": "random", "mean_hops": 1.5, "max_hops": 3},  # draws in training and evaluation
    "training": {
        "steps": 64, "batch_size": 8, "lr": 0.01, "warmup_steps": 2, "eval_every": 16, "checkpoint_every": 8,
        "log_every": 8, "keep_checkpoints": 3, "num_threads": 1,
    },
}


@pytest.mark.slow
def test_resume_after_kill_of_a_run_with_dropout_and_random_halting_is_exact(tmp_path):
    assert_resume_reproduces_the_uninterrupted_run(STOCHASTIC, tmp_path, kill_at=8)
