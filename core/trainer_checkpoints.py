"""Checkpoint-resume glue of the Trainer: its state, saving with rotation, and resuming
from the newest intact checkpoint (metrics.jsonl cut back to the checkpoint's step)."""

from __future__ import annotations

import sys
from pathlib import Path
from typing import Any

import torch

from . import checkpoint as ckpt
from .errors import CheckpointError, NonFiniteLossError
from .run_records import metric_lines


class TrainerCheckpoints:
    """The Trainer's checkpoints (a mixin: it reads the Trainer's model, optimizer, scheduler,
    curriculum, step, elapsed, config, run_dir, device, checkpoint_dir and final_step)."""

    def state_dict(self) -> dict[str, Any]:
        state = {
            "model": self.model.state_dict(),
            "optimizer": self.optimizer.state_dict(),
            "scheduler": self.scheduler.state_dict(),
            "step": self.step,
            "elapsed": self.elapsed,
            "torch_rng": torch.get_rng_state(),
        }
        if self.curriculum is not None:
            state["curriculum"] = self.curriculum.state_dict()
        if torch.cuda.is_available():
            state["cuda_rng"] = torch.cuda.get_rng_state_all()
        return state

    def save_checkpoint(self) -> Path | None:
        if self.checkpoint_dir is None:
            return None
        bad = [name for name, p in self.model.named_parameters() if not torch.isfinite(p).all()]
        if bad:  # never let a broken state replace the last good checkpoint
            raise NonFiniteLossError(
                f"non-finite parameters after step {self.step} ({', '.join(bad[:3])}"
                f"{', ...' if len(bad) > 3 else ''}); {ckpt.last_good(self.checkpoint_dir)}"
            )
        path = ckpt.checkpoint_path(self.checkpoint_dir, self.step)
        ckpt.save_checkpoint(self.state_dict(), path)
        ckpt.rotate_checkpoints(self.checkpoint_dir, self.config.keep_checkpoints)
        return path

    def load_state(self, state: dict[str, Any], source: str = "checkpoint") -> None:
        if not isinstance(state, dict):
            raise CheckpointError(f"{source}: not a ponderlab checkpoint (holds a {type(state).__name__})")
        try:
            self.model.load_state_dict(state["model"])
            if self.curriculum is not None:  # the stage's optimizer and schedule, then their states
                self.curriculum.load_state_dict(state["curriculum"], self)
            self.optimizer.load_state_dict(state["optimizer"])
            self.scheduler.load_state_dict(state["scheduler"])
            self.step = int(state["step"])
            self.elapsed = float(state.get("elapsed", 0.0))
            torch.set_rng_state(state["torch_rng"])
            if "cuda_rng" in state and torch.cuda.is_available():
                torch.cuda.set_rng_state_all(state["cuda_rng"])
        except (KeyError, RuntimeError, ValueError, TypeError) as exc:
            raise CheckpointError(f"{source}: does not match this model ({type(exc).__name__}: {exc})") from None

    def resume(self) -> bool:
        """Continue from the newest intact checkpoint in the run dir; False when there is none.

        A damaged newer checkpoint (cut short by a crash or a full disk) is reported on
        stderr and the one before it is used; none intact is a CheckpointError.
        """
        if self.checkpoint_dir is None:
            return False
        found = ckpt.list_checkpoints(self.checkpoint_dir)
        damaged = []
        for _, path in reversed(found):
            try:
                self.load_state(ckpt.load_checkpoint(path, self.device), str(path))
            except CheckpointError as exc:
                damaged.append(str(exc).strip().splitlines()[0])
                continue
            for reason in damaged:
                print(f"warning: skipped a damaged checkpoint: {reason}; resuming from {path}", file=sys.stderr)
            self._truncate_metrics()
            return True
        if damaged:
            raise CheckpointError(f"no intact checkpoint to resume from: {'; '.join(damaged)}")
        return False

    def _truncate_metrics(self) -> None:
        """Drop metrics.jsonl records the resumed run will write again (and lines cut short).

        Kept: records up to the checkpoint's step, except a finished run's final validation
        and test records, which `final_results` writes anew.
        """
        metrics_file = self.run_dir / "metrics.jsonl"
        if not metrics_file.exists():
            return
        finished = self.step >= self.final_step()

        def rewritten(record: dict[str, Any]) -> bool:
            final = finished and record["step"] == self.step and record.get("split") in ("validation", "test")
            return record["step"] > self.step or final

        kept = [line for line, record in metric_lines(metrics_file) if not rewritten(record)]
        ckpt.atomic_write_text(metrics_file, "".join(line + "\n" for line in kept))
