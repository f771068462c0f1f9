"""`dfa`: RegBench, in-context learning of regular languages (seq_icl; arXiv 2401.12973).

Every example is one random DFA and a prompt of strings it accepts:
  * the DFA: n ~ U[4, 12] states, an alphabet of U[4, 18] letters drawn from a-r,
    1-3 outgoing edges per state with distinct letters and distinct targets, no
    self loops, all states accepting, minimal (redrawn until no state is
    unreachable or redundant), start state 0;
  * the prompt: U[10, 19] strings of U[1, 49] letters, each a uniform random walk
    from the start state, joined by `|`.
5000 train DFAs, 250 validation, 250 test; no DFA (up to renaming its states)
appears in two splits.

Vocabulary (20 ids, no tokenizer): letters a-r are 0-17, `|` = 18, `.` = 19
(seq_icl's no-op; never generated). Next-token layout: input_ids = prompt[:-1],
labels[t] = prompt[t+1] at every position (train and test), so token accuracy
is teacher-forced next-letter accuracy.

DFA accuracy (`extra_metrics`, reported as `<split>/dfa_accuracy` and per number
of states): at every scored position, the model's greedy prediction is appended
to the current string (the letters since the last `|`); a letter counts as right
when the DFA still accepts the extended string, `|` when the current string is
non-empty (all states accept), `.` never.

Extrapolation: `test_max_strings` (more in-context strings at validation/test).
Metrics per `states` (the DFA's size). Rows also carry `strings` and the DFA
(`dfa`, a flattened states x 18 transition table with -1 for missing edges).
"""

from __future__ import annotations

from collections import defaultdict
from typing import ClassVar, Literal

import datasets
import numpy as np
import torch
from pydantic import Field, model_validator
from torch import nn

from ponderlab.core.config import TaskConfig
from ponderlab.core.data import TensorDataset
from ponderlab.core.hookspecs import hookimpl
from ponderlab.core.interfaces import IGNORE_INDEX, Task, TaskData
from ponderlab.core.tasks import disjoint_splits, next_token_example, split_sizes

from .automata import DFA, random_minimal_dfa

N_LETTERS = 18
SEP = 18  # `|`
DOT = 19  # `.`
VOCAB_SIZE = 20
LETTERS = "abcdefghijklmnopqr"


class DFAConfig(TaskConfig):
    name: Literal["dfa"] = "dfa"
    min_states: int = Field(4, ge=2)
    max_states: int = Field(12, ge=2)
    min_alphabet: int = Field(4, ge=1, le=N_LETTERS)
    max_alphabet: int = Field(N_LETTERS, ge=1, le=N_LETTERS)
    min_edges: int = Field(1, ge=1, description="Outgoing edges per state, lower bound.")
    max_edges: int = Field(3, ge=1, description="Outgoing edges per state, upper bound.")
    min_strings: int = Field(10, ge=1, description="Strings per prompt, lower bound.")
    max_strings: int = Field(19, ge=1, description="Strings per prompt, upper bound.")
    test_max_strings: int | None = Field(
        None, ge=1, description="Extrapolation: upper bound on strings for validation/test."
    )
    min_string_length: int = Field(1, ge=1)
    max_string_length: int = Field(49, ge=1)
    train_size: int = Field(5000, ge=1)
    validation_size: int = Field(250, ge=1)
    test_size: int = Field(250, ge=1)
    eval_batch_size: int = Field(32, ge=1, description="Batch size of the DFA-accuracy pass.")

    @model_validator(mode="after")
    def _ranges(self):
        for low, high in (
            ("min_states", "max_states"),
            ("min_alphabet", "max_alphabet"),
            ("min_edges", "max_edges"),
            ("min_strings", "max_strings"),
            ("min_string_length", "max_string_length"),
        ):
            if getattr(self, low) > getattr(self, high):
                raise ValueError(f"{low} {getattr(self, low)} is greater than {high} {getattr(self, high)}")
        if self.test_max_strings is not None and self.test_max_strings < self.min_strings:
            raise ValueError(f"test_max_strings {self.test_max_strings} is below min_strings {self.min_strings}")
        return self


def render(tokens: list[int]) -> str:
    """Readable form of a DFA prompt: letters, `|` and `.`."""
    return "".join(LETTERS[t] if t < N_LETTERS else "|" if t == SEP else "." for t in tokens)


def dfa_prompt(rng: np.random.Generator, dfa: DFA, n_strings: int, min_length: int, max_length: int) -> list[int]:
    """`n_strings` random walks of U[min_length, max_length] letters joined by `|`."""
    prompt: list[int] = []
    for i in range(n_strings):
        if i:
            prompt.append(SEP)
        prompt += dfa.walk(rng, int(rng.integers(min_length, max_length + 1)))
    return prompt


def dfa_prediction_right(dfa: DFA, input_ids: list[int], predictions: list[int], labels: list[int]) -> tuple[int, int]:
    """(right, scored): greedy predictions appended to the current string, checked against the DFA."""
    right = scored = 0
    state: int | None = 0
    current = 0  # letters in the current string
    for t, token in enumerate(input_ids):
        if token == SEP:
            state, current = 0, 0
        else:
            state = None if state is None else dfa.transitions[state].get(token)
            current += 1
        if labels[t] == IGNORE_INDEX:
            continue
        scored += 1
        guess = predictions[t]
        if guess == SEP:
            right += int(current > 0 and state is not None)
        elif guess < N_LETTERS:
            right += int(state is not None and guess in dfa.transitions[state])
    return right, scored


@torch.no_grad()
def greedy_predictions(model: nn.Module, dataset: datasets.Dataset, device: torch.device, batch_size: int) -> list[list[int]]:
    """Teacher-forced argmax at every position of every row (padding trimmed)."""
    data = TensorDataset(dataset)
    was_training = model.training
    model.eval()
    predictions: list[list[int]] = []
    try:
        for batch in data.sequential_batches(batch_size):
            logits = model(batch["input_ids"].to(device), mask=batch["mask"].to(device)).logits  # (B, L, V)
            lengths = batch["mask"].sum(1).tolist()
            for row, length in zip(logits.argmax(-1).cpu().tolist(), lengths, strict=True):
                predictions.append(row[:length])
    finally:
        model.train(was_training)
    return predictions


class RegBench(Task):
    config_class = DFAConfig
    vocab_size = VOCAB_SIZE
    slice_columns: ClassVar[tuple[str, ...]] = ("states",)

    def build(self, seed: int) -> TaskData:
        cfg = self.config

        def make(rng: np.random.Generator, split: str) -> dict:
            dfa = random_minimal_dfa(
                rng,
                min_states=cfg.min_states,
                max_states=cfg.max_states,
                alphabet_size=N_LETTERS,
                min_alphabet=cfg.min_alphabet,
                max_alphabet=cfg.max_alphabet,
                min_edges=cfg.min_edges,
                max_edges=cfg.max_edges,
            )
            top = cfg.test_max_strings if split != "train" and cfg.test_max_strings else cfg.max_strings
            n_strings = int(rng.integers(cfg.min_strings, top + 1))
            prompt = dfa_prompt(rng, dfa, n_strings, cfg.min_string_length, cfg.max_string_length)
            if len(prompt) < 2:  # a one-letter prompt has no next token to score
                prompt = prompt + [SEP] + dfa.walk(rng, 1)
            row = next_token_example(prompt, "all")
            row.update(states=dfa.n_states, strings=n_strings, dfa=dfa.to_table(N_LETTERS))
            return row

        # DFAs are canonical (minimal, breadth-first numbered), so the table identifies the language
        return disjoint_splits(make, split_sizes(cfg), seed, key=lambda row: tuple(row["dfa"]))

    def extra_metrics(self, model: nn.Module, dataset: datasets.Dataset, device: torch.device) -> dict[str, float]:
        predictions = greedy_predictions(model, dataset, device, self.config.eval_batch_size)
        totals = [0, 0]
        per_states: dict[int, list[int]] = defaultdict(lambda: [0, 0])
        for row, guess in zip(dataset, predictions, strict=True):
            dfa = DFA.from_table(row["dfa"], N_LETTERS)
            right, scored = dfa_prediction_right(dfa, row["input_ids"], guess, row["labels"])
            totals[0] += right
            totals[1] += scored
            per_states[row["states"]][0] += right
            per_states[row["states"]][1] += scored
        out = {"dfa_accuracy": totals[0] / totals[1] if totals[1] else float("nan")}
        for states, (right, scored) in sorted(per_states.items()):
            out[f"states={states}/dfa_accuracy"] = right / scored if scored else float("nan")
        return out


@hookimpl
def ponderlab_register_tasks(register):
    register(RegBench)
