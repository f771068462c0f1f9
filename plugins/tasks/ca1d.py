"""`ca1d`: seed 000's one-dimensional cellular automaton task (arXiv 2508.16745).

Each example draws its own random rule over radius `radius` (a lookup table of
2**(2r+1) bits; for r=2 a random 32-bit rule number), a random `width`-cell
initial state, and runs `steps` states s_0 .. s_{steps-1} with a periodic
boundary. The neighbourhood (x[i-r], ..., x[i+r]) read as a binary number,
x[i-r] the most significant bit, indexes the table: bit k of the rule number is
the next value for neighbourhood k.

Layout (seed 000; the model must infer the rule from the context states):
    SEP s_0 SEP s_1 ... SEP s_{c-1} GEN s_{c-1+k}
with c = `context_states` (10) and shift k drawn per example from `shifts`
(default [1]; seed 000 uses 1..4). Length c*(width+1) + 1 + width = 231 by default.
Only the target state is scored: token accuracy is bit accuracy, exact match is
the whole state right. Metrics are reported per `shift`.

Vocabulary (128 ids, no tokenizer, shared with the binary tasks): cells 0 and 1
are tokens 0 and 1, SEP=100, GEN=101 (EOS=102 unused here).

Extrapolation: `test_shifts` (e.g. [2, 3, 4]) asks validation/test for states
further ahead than training. Defaults: width 20, radius 2, 20 steps, 10 context
states, 20000/500/1000 examples. Generated rows carry the rule table (`rule`,
list of bits) so analyses can re-run the automaton.

`source` loads the published trajectories instead: `hub` (irodkin/1dCA_r2s20T20,
splits 950k/50k/100k) or a local copy in its column layout (`input_ids_0` ..
`input_ids_19`, each a list of 20 cells = s_0 .. s_19; a `save_to_disk` folder
or data files such as train/validation/test .jsonl or .parquet).
"""

from __future__ import annotations

from typing import ClassVar, Literal

import numpy as np
from pydantic import Field, model_validator

from ponderlab.core.config import TaskConfig
from ponderlab.core.hookspecs import hookimpl
from ponderlab.core.interfaces import Task, TaskData
from ponderlab.core.tasks import disjoint_splits, lm_example, published_splits, split_sizes

from .binary import GEN, SEP, VOCAB_SIZE

HUB_ID = "irodkin/1dCA_r2s20T20"


class CA1DConfig(TaskConfig):
    name: Literal["ca1d"] = "ca1d"
    width: int = Field(20, ge=3, description="Cells per state.")
    radius: int = Field(2, ge=1, le=4, description="Neighbourhood radius r (2r+1 cells).")
    steps: int = Field(20, ge=2, description="States per trajectory, s_0 .. s_{steps-1}.")
    context_states: int = Field(10, ge=1, description="States shown before GEN.")
    shifts: list[int] = Field(default_factory=lambda: [1], min_length=1, description="Training shifts k.")
    test_shifts: list[int] | None = Field(
        None, min_length=1, description="Extrapolation: shifts for validation/test (default: shifts)."
    )
    train_size: int = Field(20000, ge=1)
    validation_size: int = Field(500, ge=1)
    test_size: int = Field(1000, ge=1)
    source: str = Field(
        "generate", description=f"generate | hub ({HUB_ID}) | path to a local copy in its layout."
    )

    @model_validator(mode="after")
    def _consistent(self):
        if 2 * self.radius + 1 > self.width:
            raise ValueError(f"radius {self.radius} needs at least {2 * self.radius + 1} cells, width is {self.width}")
        if self.context_states >= self.steps:
            raise ValueError(f"context_states {self.context_states} must be below steps {self.steps}")
        limit = self.steps - self.context_states
        for field in ("shifts", "test_shifts"):
            for k in getattr(self, field) or []:
                if not 1 <= k <= limit:
                    raise ValueError(
                        f"{field}: shift {k} outside 1..{limit} (steps {self.steps} - context_states "
                        f"{self.context_states})"
                    )
        return self


def neighbourhood_index(state: np.ndarray, radius: int) -> np.ndarray:
    """(W,) cells -> (W,) table index: x[i-r..i+r] as a binary number, x[i-r] most significant."""
    index = np.zeros_like(state)
    for offset in range(-radius, radius + 1):
        index = (index << 1) | np.roll(state, -offset)  # np.roll(x, -j)[i] = x[(i + j) % W]
    return index


def step(state: np.ndarray, rule: np.ndarray, radius: int) -> np.ndarray:
    """One synchronous update with a periodic boundary: (W,) -> (W,)."""
    return rule[neighbourhood_index(state, radius)]


def trajectory(initial: np.ndarray, rule: np.ndarray, radius: int, steps: int) -> np.ndarray:
    """(steps, W) states, row 0 = initial."""
    states = [np.asarray(initial, dtype=np.int64)]
    for _ in range(steps - 1):
        states.append(step(states[-1], rule, radius))
    return np.stack(states)


def random_trajectory(rng: np.random.Generator, width: int, radius: int, steps: int) -> tuple[np.ndarray, np.ndarray]:
    """A random rule table (2**(2r+1) bits) and its trajectory from a random initial state."""
    rule = rng.integers(0, 2, size=2 ** (2 * radius + 1), dtype=np.int64)
    initial = rng.integers(0, 2, size=width, dtype=np.int64)
    return rule, trajectory(initial, rule, radius, steps)


def ca_example(states: list[list[int]], context: int, shift: int) -> dict:
    """SEP s_0 ... SEP s_{c-1} GEN, target s_{c-1+shift}; scored on the target only."""
    prompt: list[int] = []
    for state in states[:context]:
        prompt += [SEP, *state]
    row = lm_example([*prompt, GEN], list(states[context - 1 + shift]))
    row["shift"] = shift
    return row


class CA1D(Task):
    config_class = CA1DConfig
    vocab_size = VOCAB_SIZE
    slice_columns: ClassVar[tuple[str, ...]] = ("shift",)

    def _shift(self, rng: np.random.Generator, split: str) -> int:
        cfg = self.config
        choices = cfg.test_shifts if split != "train" and cfg.test_shifts else cfg.shifts
        return int(choices[rng.integers(len(choices))])

    def build(self, seed: int) -> TaskData:
        cfg = self.config
        if cfg.source != "generate":
            columns = [f"input_ids_{i}" for i in range(cfg.steps)]

            def make_row(record: dict, rng: np.random.Generator, split: str) -> dict:
                states = [[int(c) for c in record[column]] for column in columns]
                return ca_example(states, cfg.context_states, self._shift(rng, split))

            return published_splits(cfg.source, HUB_ID, split_sizes(cfg), seed, make_row, columns)

        def make(rng: np.random.Generator, split: str) -> dict:
            rule, states = random_trajectory(rng, cfg.width, cfg.radius, cfg.steps)
            row = ca_example(states.tolist(), cfg.context_states, self._shift(rng, split))
            row["rule"] = rule.tolist()
            return row

        return disjoint_splits(make, split_sizes(cfg), seed)


@hookimpl
def ponderlab_register_tasks(register):
    register(CA1D)
