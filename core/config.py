"""Pydantic base models for plugin configurations and training options."""

from __future__ import annotations

from typing import Annotated, ClassVar, Literal

from pydantic import BaseModel, ConfigDict, Field, model_validator


class StrictModel(BaseModel):
    """A config model that rejects unknown keys and validates on assignment."""

    model_config = ConfigDict(extra="forbid", validate_assignment=True, protected_namespaces=())


class PluginConfig(StrictModel):
    """Every plugin config carries a `name` discriminator (narrowed to a Literal by subclasses)."""

    name: str


class BackboneConfig(PluginConfig):
    """Options every backbone understands."""

    d_model: int = Field(128, ge=1, description="Hidden width (embedding width equals it).")
    n_layers: int = Field(1, ge=1, description="Number of distinct layers.")


Scope = Literal["layer", "model", "depth"]


class HaltingConfig(PluginConfig):
    """Options every halting strategy understands."""

    #: options that act at inference only (no parameter, no effect on training): `ponderlab eval
    #: RUN halting.<option>=value` may change them to re-test a trained run at another exit rule
    inference_options: ClassVar[tuple[str, ...]] = ()

    scope: Scope = Field(
        "layer",
        description="layer: a ponder loop around every layer; model: around the whole stack; "
        "depth: across the distinct layers once each, with early exit.",
    )


class TaskConfig(PluginConfig):
    """Options every task understands."""


Beta = Annotated[float, Field(ge=0, lt=1)]


class CurriculumConfig(StrictModel):
    """Staged training on longer and longer samples (seed 001's 2 -> 32 segments); core/curriculum.py."""

    segments: list[Annotated[int, Field(ge=1)]] = Field(
        ..., min_length=1, description="Segments per sample at each stage, e.g. [2, 4, 8, 16, 32]."
    )
    steps_per_stage: Annotated[int, Field(ge=1)] | list[Annotated[int, Field(ge=1)]] = Field(
        ..., description="Most steps of each stage (one number for all, or one per stage)."
    )
    until: float | None = Field(
        None, description="End a stage early once a periodic validation's `metric` reaches this."
    )
    metric: str = Field("exact_match", description="Validation metric compared with `until`.")
    answer_room: int = Field(
        16, ge=0, description="Tokens of a stage's length kept for the question's answer and framing."
    )

    @model_validator(mode="after")
    def _stages(self):
        if any(b < a for a, b in zip(self.segments, self.segments[1:], strict=False)):
            raise ValueError(f"segments must not decrease from one stage to the next, got {self.segments}")
        if isinstance(self.steps_per_stage, list) and len(self.steps_per_stage) != len(self.segments):
            raise ValueError(
                f"steps_per_stage lists {len(self.steps_per_stage)} stages but segments lists "
                f"{len(self.segments)}"
            )
        return self

    def stage_steps(self) -> list[int]:
        steps = self.steps_per_stage
        return list(steps) if isinstance(steps, list) else [steps] * len(self.segments)


class TrainingConfig(StrictModel):
    """Optimiser, schedule, evaluation and checkpointing options."""

    steps: int = Field(1000, ge=1, description="Optimizer steps.")
    batch_size: int = Field(64, ge=1)
    eval_batch_size: int | None = Field(None, ge=1, description="Defaults to batch_size.")
    lr: float = Field(1e-3, gt=0)
    weight_decay: float = Field(0.01, ge=0)
    decay_vectors: bool = Field(
        False,
        description="Weight decay on 1-D parameters too (biases, norms, recurrence parameters), as "
        "codebases that decay every parameter do (seq_icl); by default only matrices decay.",
    )
    betas: tuple[Beta, Beta] = Field((0.9, 0.999), description="AdamW's betas, each in [0, 1).")
    warmup_steps: int = Field(100, ge=0)
    schedule: Literal["cosine", "linear"] = Field(
        "cosine",
        description="Decay after the warmup, to min_lr_ratio at the last step: cosine, or linear "
        "(with min_lr_ratio 0, transformers' get_linear_schedule_with_warmup, which seq_icl uses).",
    )
    min_lr_ratio: float = Field(0.1, ge=0, le=1, description="The decay's floor as a fraction of lr.")
    grad_clip: float | None = Field(1.0, gt=0)
    eval_every: int = Field(200, ge=1, description="Validate every N steps.")
    eval_max_examples: int | None = Field(
        None, ge=1, description="Cap on validation examples per periodic evaluation."
    )
    checkpoint_every: int | None = Field(
        None, ge=1, description="Checkpoint every N steps (defaults to eval_every)."
    )
    keep_checkpoints: int = Field(2, ge=1, description="How many recent checkpoints to keep.")
    log_every: int = Field(20, ge=1)
    device: Literal["auto", "cpu", "cuda"] = "auto"
    precision: Literal["auto", "fp32", "bf16"] = Field(
        "auto", description="auto: bf16 autocast on CUDA, fp32 on CPU."
    )
    num_threads: int | None = Field(None, ge=1, description="torch CPU threads (default: torch's).")
    curriculum: CurriculumConfig | None = Field(
        None, description="Stages of growing sample length; `steps` is then their total (docs/pretrained.md)."
    )

    @model_validator(mode="after")
    def _curriculum_steps(self):
        if self.curriculum is None:
            return self
        total = sum(self.curriculum.stage_steps())
        if "steps" in self.model_fields_set and self.steps != total:
            raise ValueError(
                f"steps ({self.steps}) must equal the curriculum's total ({total} = sum of steps_per_stage); "
                "leave steps out to take the total"
            )
        object.__setattr__(self, "steps", total)  # bypasses validate_assignment (would rerun this)
        return self


class DistributedConfig(StrictModel):
    """One run over several data-parallel workers (Ray Train, DDP); see docs/scale.md."""

    workers: int = Field(1, ge=1, description="Data-parallel workers (1: one process, no Ray).")
    gpus_per_worker: float = Field(0, ge=0, description="GPUs per worker (0: CPU workers on gloo).")
    cpus_per_worker: float = Field(1, gt=0, description="CPUs Ray reserves per worker.")
    address: str | None = Field(None, description="Join this Ray cluster (e.g. auto, 10.0.0.1:6379).")
    max_failures: int = Field(
        0, ge=-1, description="Worker-group restarts Ray Train may make (-1: unlimited), each from "
        "the last checkpoint."
    )
