"""Curriculum over sample length: train on 2 segments, then 4, 8, ... (seed 001's ARMT on BABILong).

`training.curriculum: {segments: [2, 4, 8, 16, 32], steps_per_stage: N, until: 1.0}`. Stage k
trains on samples of at most `segments[k] * backbone.segment_size` tokens (more than
`segments[k] - 1` segments' worth): the task is rebuilt from the spec with
`lengths: [segments[k] * segment_size - answer_room]` (the prompt's target length; the answer
and its framing fill the room). As in the ARMT/RMT reference scripts, where every stage is a
run of its own started from the previous stage's weights, a stage ends after its steps or at
the first periodic validation whose `metric` reaches `until`, and it starts a fresh AdamW and
a fresh warmup + cosine schedule over its own steps. Periodic validation uses the stage's
samples; the final validation and test use the spec's task as written (its `test_lengths`).

The stage, the step it began at and whether `until` was reached are in every checkpoint, so
a resumed run continues inside the right stage with the same batches.
"""

from __future__ import annotations

from dataclasses import dataclass
from typing import TYPE_CHECKING, Any

from .config import CurriculumConfig
from .data import TensorDataset
from .errors import SpecError

if TYPE_CHECKING:
    from .trainer import Trainer


#: Validation metrics a stage's `until` may be compared with (core/metrics.py).
VALIDATION_METRICS = ("exact_match", "token_accuracy")


def check_curriculum(spec: Any, where: Any = None) -> None:
    """Spec-level checks: a segmented backbone and a task with target `lengths` (SpecError otherwise)."""
    curriculum = spec.training.curriculum
    if curriculum is None:
        return
    path = "training.curriculum"
    place = where(("training", "curriculum")) if where else None
    segment_size = getattr(spec.backbone, "segment_size", None)
    if not segment_size:
        raise SpecError(
            f"needs a backbone that splits its input into segments (segment_size set; rmt, armt); "
            f"backbone {spec.backbone.name!r} has none",
            path=path, where=place,
        )
    if not hasattr(spec.task, "lengths"):
        raise SpecError(
            f"needs a task with target `lengths` in tokens (e.g. babi); task {spec.task.name!r} has none",
            path=path, where=place,
        )
    if curriculum.metric not in VALIDATION_METRICS:
        raise SpecError(
            f"unknown metric {curriculum.metric!r} (one of: {', '.join(VALIDATION_METRICS)})",
            path=f"{path}.metric", where=place,
        )
    shortest = curriculum.segments[0] * segment_size
    if curriculum.answer_room >= shortest:
        raise SpecError(
            f"answer_room ({curriculum.answer_room}) leaves no room for a prompt in the first stage's "
            f"{shortest} tokens ({curriculum.segments[0]} segments of {segment_size})",
            path=f"{path}.answer_room", where=place,
        )


@dataclass
class StagePosition:
    """Where a run is in its curriculum (saved in every checkpoint)."""

    stage: int = 0
    start: int = 0  # the step the stage began at
    reached: bool = False  # a validation met `until` in this stage


class Curriculum:
    """Switches a Trainer's training data, optimizer and schedule from stage to stage."""

    def __init__(self, config: CurriculumConfig, segment_size: int):
        self.config = config
        self.segment_size = segment_size
        self.steps = config.stage_steps()
        self.position = StagePosition()
        self._entered: int | None = None  # the stage whose data and optimizer are in place

    # ------------------------------------------------------------------ schedule
    def stage_length(self, stage: int) -> int:
        """Most tokens of a stage's samples."""
        return self.config.segments[stage] * self.segment_size

    def stage_end(self) -> int:
        """The step the current stage ends at, given what validation has shown so far."""
        return self.position.start + self.steps[self.position.stage]

    def final_step(self, current: int) -> int:
        """The step the run ends at: later stages keep their full steps."""
        position = self.position
        end = current if position.reached else self.stage_end()
        return end + sum(self.steps[position.stage + 1 :])

    def fields(self) -> dict[str, int]:
        """What every metrics record carries: the stage and its segments."""
        stage = self.position.stage
        return {"stage": stage, "segments": self.config.segments[stage]}

    # ------------------------------------------------------------------ trainer hooks
    def before_step(self, trainer: Trainer) -> None:
        """Enter the first stage, or the next one once the current one is over."""
        position = self.position
        last = position.stage == len(self.steps) - 1
        if not last and (position.reached or trainer.step >= self.stage_end()):
            self.position = StagePosition(position.stage + 1, trainer.step)
        if self._entered != self.position.stage:
            self.enter(trainer)
        if trainer.step == self.position.start:  # a stage's first step (a resumed run is past it)
            # Logged as that step, which a run resumed before it drops and writes anew.
            stage = self.position.stage
            trainer._log({"step": trainer.step + 1, "split": "curriculum", **self.fields(),
                          "stage_steps": self.steps[stage], "sample_tokens": self.stage_length(stage)})

    def after_validation(self, trainer: Trainer, metrics: dict[str, float] | None) -> None:
        """Note whether this validation ended the stage (rank 0 decides for every worker)."""
        until = self.config.until
        value = (metrics or {}).get(self.config.metric)
        reached = until is not None and value is not None and value >= until
        if until is not None:
            reached = trainer.group.agree(reached)
        self.position.reached = self.position.reached or reached

    def enter(self, trainer: Trainer) -> None:
        """Stage data, a fresh AdamW and a fresh schedule over the stage's steps."""
        stage = self.position.stage
        stage_task, data = self.stage_data(trainer, stage)
        trainer.use_data(stage_task, data, first_step=self.position.start)  # each stage starts at its epoch 0
        trainer.fresh_optimizer(self.steps[stage])
        self._entered = stage

    def stage_data(self, trainer: Trainer, stage: int):
        """The task rebuilt for this stage's length; every sample must fit its segments."""
        task = trainer.task
        length = self.stage_length(stage)
        target = length - self.config.answer_room
        stage_task = type(task)(task.config.model_copy(update={"lengths": [target], "test_lengths": None}))
        data = stage_task.build(trainer.seed + stage)
        longest = max(len(ids) for split in (data.train, data.validation) for ids in split["input_ids"])
        if longest > length:
            raise SpecError(
                f"stage {stage} samples reach {longest} tokens, more than its {self.config.segments[stage]} "
                f"segments of {self.segment_size} ({length}); raise answer_room (now {self.config.answer_room})",
                path="training.curriculum",
            )
        return stage_task, data

    def finish(self, trainer: Trainer) -> None:
        """Back to the spec's own validation split for the final evaluation."""
        trainer.val_data = TensorDataset(trainer.data.validation, trainer.task.slice_columns)

    # ------------------------------------------------------------------ checkpoints
    def state_dict(self) -> dict[str, Any]:
        return {"stage": self.position.stage, "start": self.position.start, "reached": self.position.reached}

    def load_state_dict(self, state: dict[str, Any], trainer: Trainer) -> None:
        """Re-enter the saved stage (its data, optimizer and schedule) before their states load."""
        self.position = StagePosition(int(state["stage"]), int(state["start"]), bool(state["reached"]))
        if not 0 <= self.position.stage < len(self.steps):
            raise KeyError(f"curriculum stage {self.position.stage} (the spec has {len(self.steps)})")
        self.enter(trainer)

