"""benchmarks/adaptive_compute.py runs every method at a tiny size (no timing asserted)."""

from __future__ import annotations

import subprocess
import sys
from pathlib import Path

BENCHMARKS = Path(__file__).resolve().parent.parent / "benchmarks"

METHODS = [
    "fixed depth", "calm", "layerskip fixed exit", "layerskip self-speculative", "mixture_of_depths",
    "mixture_of_depths masked", "mixture_of_recursions", "mixture_of_recursions masked",
    "mixture_of_recursions kv_sharing", "recurrent_depth",
]


def test_every_method_prints_a_row():
    command = [sys.executable, "adaptive_compute.py", "--d-model", "16", "--length", "12", "--batch", "2",
               "--vocab", "11", "--repeats", "1", "--warmup", "0", "--decode-prompt", "4", "--decode-new", "3",
               "--decode-rows", "1"]
    result = subprocess.run(command, cwd=BENCHMARKS, capture_output=True, text=True, timeout=300, check=True)
    lines = result.stdout.splitlines()
    assert "could not run" not in result.stdout, result.stdout
    for method in METHODS:
        rows = [line for line in lines if line.startswith(method + "  ") or line.startswith(method + " ")]
        assert rows, f"no row for {method}:\n{result.stdout}"
    fixed = next(line for line in lines if line.startswith("fixed depth"))
    assert fixed.split()[4] == "8.00"  # layers per token of fixed depth: every layer once


def test_training_steps_of_the_routing_methods():
    command = [sys.executable, "adaptive_compute.py", "--d-model", "16", "--length", "12", "--batch", "2",
               "--vocab", "11", "--repeats", "1", "--warmup", "0", "--train", "--only", "fixed depth",
               "mixture_of_depths", "mixture_of_recursions masked"]
    result = subprocess.run(command, cwd=BENCHMARKS, capture_output=True, text=True, timeout=300, check=True)
    assert "training step" in result.stdout and "could not run" not in result.stdout, result.stdout
    rows = [line.split()[0] for line in result.stdout.splitlines()[3:]]
    assert rows == ["fixed", "mixture_of_depths", "mixture_of_recursions"], result.stdout
    assert "self-speculative" not in result.stdout
