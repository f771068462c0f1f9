"""Failure paths of `ponderlab run`, `validate`, `eval` and the plugin registry, driven as a user would.

Every test runs the real CLI in a subprocess (`python -m ponderlab.core.cli`) and checks the exit
code, the one-line message and what is (not) left on disk.
"""

from __future__ import annotations

import json
import os
import subprocess
import sys
from pathlib import Path

import yaml

from ponderlab.core.spec import read_yaml

TINY = {
    "seed": 5,
    "task": {"name": "binary_reverse", "length": 6, "train_size": 64, "validation_size": 16, "test_size": 16},
    "backbone": {"name": "lstm", "d_model": 8, "n_layers": 1},
    "halting": {"name": "graves", "max_steps": 3},
    "training": {"steps": 4, "batch_size": 16, "warmup_steps": 1, "eval_every": 2, "log_every": 2,
                 "keep_checkpoints": 2, "num_threads": 1},
}


def cli(*args, cwd: Path | None = None, env: dict | None = None, timeout: float = 300, **kwargs):
    """Run `ponderlab ARGS` in a fresh interpreter; a CompletedProcess with text output."""
    return subprocess.run(
        [sys.executable, "-m", "ponderlab.core.cli", *map(str, args)], cwd=cwd,
        env={**os.environ, **(env or {})}, capture_output=True, text=True, timeout=timeout, **kwargs,
    )


def write_spec(path: Path, **changes) -> Path:
    data = json.loads(json.dumps(TINY))
    for key, value in changes.items():
        section, _, field = key.partition("__")
        if field:
            data[section][field] = value
        else:
            data[section] = value
    path.write_text(yaml.safe_dump(data))
    return path


def one_error(result: subprocess.CompletedProcess, exit_code: int = 2) -> str:
    """The single `error: ...` line of a failed command (no traceback)."""
    assert result.returncode == exit_code, (result.returncode, result.stderr[-2000:])
    errors = [line for line in result.stderr.splitlines() if line.strip() and not line.startswith("warning:")]
    assert len(errors) == 1 and errors[0].startswith("error: "), result.stderr[-2000:]
    return errors[0]


def alias_bomb(depth: int) -> str:
    """A few hundred bytes of YAML whose aliases expand to 9**(depth + 1) values."""
    lines = ["a0: &a0 [x, x, x, x, x, x, x, x, x]"]
    lines += [f"a{i}: &a{i} [" + ", ".join([f"*a{i - 1}"] * 9) + "]" for i in range(1, depth + 1)]
    return "\n".join(lines) + "\n"


def test_yaml_alias_bomb_is_refused_with_a_clear_error(tmp_path):
    (tmp_path / "bomb.yaml").write_text(alias_bomb(9))
    error = one_error(cli("validate", "bomb.yaml", cwd=tmp_path, timeout=60))
    assert "bomb.yaml" in error and "expands to more than" in error and "aliases" in error
    assert sorted(p.name for p in tmp_path.iterdir()) == ["bomb.yaml"]


def test_a_few_aliases_still_load_with_line_numbers():
    text = yaml.safe_dump({k: v for k, v in TINY.items() if k != "training"})
    text += "training: {steps: &n 4, eval_every: *n, log_every: *n, warmup_steps: 1}\n"
    data, source = read_yaml(text, "spec.yaml")
    assert data["training"] == {"steps": 4, "eval_every": 4, "log_every": 4, "warmup_steps": 1}
    assert source.where(("training", "log_every")) == f"spec.yaml:{text.count(chr(10))}"
