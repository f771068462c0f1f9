"""Helpers for tests that drive the `ponderlab` CLI in a subprocess, as a user would."""

from __future__ import annotations

import os
import resource
import subprocess
import sys
from pathlib import Path

import yaml

TINY = {
    "seed": 5,
    "task": {"name": "binary_reverse", "length": 6, "train_size": 64, "validation_size": 16, "test_size": 16},
    "backbone": {"name": "lstm", "d_model": 8, "n_layers": 1},
    "halting": {"name": "graves", "max_hops": 3},
    "training": {"steps": 4, "batch_size": 16, "warmup_steps": 1, "eval_every": 2, "log_every": 2,
                 "keep_checkpoints": 2, "num_threads": 1},
}


def limits(*, file_size: int | None = None, umask: int | None = None):
    """A preexec_fn: a real per-file size limit (writes past it fail with EFBIG) and/or a umask."""

    def apply() -> None:
        if file_size is not None:
            resource.setrlimit(resource.RLIMIT_FSIZE, (file_size, file_size))
        if umask is not None:
            os.umask(umask)

    return apply


def cli(*args, cwd: Path | None = None, env: dict | None = None, timeout: float = 300, **kwargs):
    """Run `ponderlab ARGS` in a fresh interpreter; a CompletedProcess with text output."""
    return subprocess.run(
        [sys.executable, "-m", "ponderlab.core.cli", *map(str, args)], cwd=cwd,
        env={**os.environ, **(env or {})}, capture_output=True, text=True, timeout=timeout, **kwargs,
    )


def write_spec(path: Path) -> Path:
    """TINY as a YAML spec file."""
    path.write_text(yaml.safe_dump(TINY))
    return path


def one_error(result: subprocess.CompletedProcess, exit_code: int = 2) -> str:
    """The single `error: ...` line of a failed command (no traceback)."""
    assert result.returncode == exit_code, (result.returncode, result.stderr[-2000:])
    errors = [line for line in result.stderr.splitlines() if line.strip() and not line.startswith("warning:")]
    assert len(errors) == 1 and errors[0].startswith("error: "), result.stderr[-2000:]
    return errors[0]


def every_file(folder: Path) -> list[str]:
    """Every path below `folder`, relative to it, sorted."""
    return sorted(str(p.relative_to(folder)) for p in folder.rglob("*"))


def resume_saved_with_old_key(tmp_path: Path, spec: dict, new: str, old: str) -> tuple[subprocess.CompletedProcess, Path]:
    """Run `spec` to its end (in this process), make it a run saved before a key's rename (`new`
    -> `old` in its spec.yaml) stopped after its step-2 checkpoint, and resume it with the CLI:
    (the resume, run dir)."""
    import ponderlab
    from ponderlab.core import checkpoint as ckpt

    run_dir = tmp_path / "run"
    ponderlab.run(spec, output_dir=run_dir)
    saved = (run_dir / "spec.yaml").read_text()
    assert new in saved
    (run_dir / "spec.yaml").write_text(saved.replace(new, old))
    for step, checkpoint in ckpt.list_checkpoints(run_dir / "checkpoints"):
        if step > 2:
            checkpoint.unlink()
    (run_dir / "results.json").unlink()
    return cli("run", "--resume", "--output-dir", run_dir, "--no-progress"), run_dir
