"""`dfa`: RegBench, in-context learning of regular languages (seq_icl; arXiv 2401.12973).

Every example is one random DFA and a prompt of strings it accepts, as seq_icl's
src/dataloaders/dfa.py (HEAD; the task is not in commit ec42595) draws them:
  * the DFA: n ~ U[4, 12] states, an alphabet of U[4, 18] letters drawn from a-r,
    1-3 outgoing edges per state with distinct letters and distinct targets, no
    self loops, all states accepting, start state 0, then minimised ONCE
    (`sampling: seq_icl`; final sizes 2-12, about half shrink). The older
    `sampling: minimal_redraw` redraws the edges until the DFA is minimal with
    exactly n states (not seq_icl's: it skews out-degrees towards 3);
  * the prompt: U[10, 19] strings of U[1, 49] letters, each a uniform random walk
    from the start state, joined by `|`.
5000 train DFAs, 250 validation, 250 test; no DFA (up to renaming its states)
appears in two splits (seq_icl does not deduplicate).

Vocabulary (20 ids, no tokenizer): letters a-r are 0-17, `|` = 18, `.` = 19
(seq_icl's padding; never generated). Next-token layout: input_ids = prompt[:-1],
labels[t] = prompt[t+1], with `|` targets masked (-100) in every split as seq_icl
does, so token accuracy is teacher-forced next-letter accuracy
(`score_separator: true` scores them too, as ponderlab did before).

DFA accuracy (`extra_metrics`, reported as `<split>/dfa_accuracy` and per number
of states), seq_icl's eval.py `_get_dfa_accuracy`: at every position whose next
token is a letter, the model's greedy prediction is appended to the current
string (the letters since the last `|`) and counts as right when the DFA accepts
the result; `|` and `.` are never right. Always `|` scores 0.0, the true next
token 1.0, a random letter about 0.26.

Extrapolation: `test_max_strings` (more in-context strings at validation/test).
Metrics per `states` (the DFA's final size). Rows also carry `strings`,
`drawn_states` (n before minimising), the drawn `alphabet` and the DFA (`dfa`, a
flattened states x 18 transition table with -1 for missing edges).
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

from .automata import DFA, draw_size_and_alphabet, minimised_random_dfa, random_minimal_dfa

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
    score_separator: bool = Field(
        False, description="Also score `|` targets (seq_icl masks them; ponderlab did before issue 22)."
    )
    sampling: Literal["seq_icl", "minimal_redraw"] = Field(
        "seq_icl",
        description="seq_icl: minimise one random DFA (2-12 states); minimal_redraw: redraw until minimal with n states.",
    )

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
    """(right, scored), seq_icl's DFA accuracy on one row.

    Positions whose next token is a letter are scored (labels -100 or `|` are
    skipped); the greedy prediction is appended to the current string and is
    right when it is a letter the DFA accepts there.
    """
    right = scored = 0
    state: int | None = 0
    for t, token in enumerate(input_ids):
        if token == SEP:
            state = 0
        elif state is not None:
            state = dfa.transitions[state].get(token)
        if labels[t] == IGNORE_INDEX or labels[t] == SEP:
            continue
        scored += 1
        guess = predictions[t]
        right += int(state is not None and guess < N_LETTERS and guess in dfa.transitions[state])
    return right, scored


def _accuracy(count: np.ndarray) -> float:
    """right / scored from (right, scored); NaN when nothing was scored."""
    right, scored = count.tolist()
    return right / scored if scored else float("nan")


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
            n_states, alphabet = draw_size_and_alphabet(
                rng,
                min_states=cfg.min_states,
                max_states=cfg.max_states,
                alphabet_size=N_LETTERS,
                min_alphabet=cfg.min_alphabet,
                max_alphabet=cfg.max_alphabet,
            )
            sample = minimised_random_dfa if cfg.sampling == "seq_icl" else random_minimal_dfa
            dfa = sample(rng, n_states=n_states, alphabet=alphabet, min_edges=cfg.min_edges, max_edges=cfg.max_edges)
            top = cfg.test_max_strings if split != "train" and cfg.test_max_strings else cfg.max_strings
            n_strings = int(rng.integers(cfg.min_strings, top + 1))
            prompt = dfa_prompt(rng, dfa, n_strings, cfg.min_string_length, cfg.max_string_length)
            if len(prompt) < 2:  # a one-letter prompt has no next token to score
                prompt = prompt + [SEP] + dfa.walk(rng, 1)
            scored = [t for t, token in enumerate(prompt[1:]) if token != SEP or cfg.score_separator]
            row = next_token_example(prompt, scored)
            row.update(
                states=dfa.n_states, drawn_states=n_states, strings=n_strings, dfa=dfa.to_table(N_LETTERS), alphabet=alphabet
            )
            return row

        # DFAs are canonical (minimal, breadth-first numbered), so the table identifies the language
        return disjoint_splits(make, split_sizes(cfg), seed, key=lambda row: tuple(row["dfa"]))

    def extra_metrics(self, model: nn.Module, dataset: datasets.Dataset, device: torch.device) -> dict[str, float]:
        predictions = greedy_predictions(model, dataset, device, self.config.eval_batch_size)
        # (right, scored) per number of states
        counts: dict[int, np.ndarray] = defaultdict(lambda: np.zeros(2, dtype=np.int64))
        for row, guess in zip(dataset, predictions, strict=True):
            dfa = DFA.from_table(row["dfa"], N_LETTERS)
            right_and_scored = dfa_prediction_right(dfa, row["input_ids"], guess, row["labels"])
            counts[row["states"]] += right_and_scored
        out = {"dfa_accuracy": _accuracy(sum(counts.values(), np.zeros(2, dtype=np.int64)))}
        for states, count in sorted(counts.items()):
            out[f"states={states}/dfa_accuracy"] = _accuracy(count)
        return out


@hookimpl
def ponderlab_register_tasks(register):
    register(RegBench)
