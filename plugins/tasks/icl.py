"""In-context recall tasks: `associative_recall`, `induction_head` (seq_icl) and `mqar` (zoology).

associative_recall and induction_head follow seq_icl (Akyürek et al. 2024,
"In-Context Language Learning: Architectures and Algorithms", arXiv 2401.12973):

Vocabulary (`vocab_size` V ids, no tokenizer): symbols 0 .. V-3, ARROW (`=>`) = V-2,
DOT (`.`) = V-1 (kept for seq_icl's vocabulary size; never generated here).

* associative_recall (defaults V=20, T=40): keys are the first half of the
  symbols, values the second half; every sequence draws its own key -> value map.
  T/2 key-value pairs are sampled with replacement, then `=> k v` where k always
  appeared earlier. Chance is 1 / #values (1/9 at V=20).
* induction_head (defaults V=20, T=30): T random symbols, one position p < T-2
  turned into `=>`; the sequence ends with `=> x` where x is the symbol that
  followed the first `=>`. Chance is 1 / (V-2).

Both use the next-token layout (input_ids = sequence[:-1], labels[t] =
sequence[t+1]). Training rows score every position (the LM loss on all
positions); validation and test rows score only the final token, so exact match
is the final-answer accuracy seq_icl reports. Defaults 5000 train / 500
validation / 500 test. Extrapolation: `test_seq_len` (longer T at test).

mqar follows zoology (Arora et al. 2023, "Zoology: Measuring and Improving Recall
in Efficient Language Models", arXiv 2312.04927): vocabulary `vocab_size` ids
(default 8192), 0 = filler, keys 1 .. V/2-1, values V/2 .. V-1; k distinct keys
with distinct values as `k1 v1 ... kk vk`, then every key queried once at a gap
drawn from a power law (p(g) ~ g^(a-1), a = `power_a`) in the remaining space,
random tokens elsewhere (`random_non_queries`, True as in zoology; False
leaves the filler 0 there). Only the value predicted at each query is scored (train and
test); token accuracy is per-query accuracy, exact match all queries right.
Defaults (T, k) = (64, 4); zoology also runs (128, 8) and (256, 16), listed in
`settings` to mix them (batches then share one length). Extrapolation:
`test_settings`. Metrics per `length` (and per `pairs` for mqar).
"""

from __future__ import annotations

from collections.abc import Callable
from typing import ClassVar, Literal

import numpy as np
from pydantic import Field, model_validator

from ponderlab.core.config import TaskConfig
from ponderlab.core.hookspecs import hookimpl
from ponderlab.core.interfaces import Task, TaskData
from ponderlab.core.tasks import disjoint_splits, next_token_example, split_sizes


def arrow_id(vocab_size: int) -> int:
    """The `=>` token of a seq_icl vocabulary."""
    return vocab_size - 2


# --------------------------------------------------------------------------- seq_icl


class _SeqICLConfig(TaskConfig):
    vocab_size: int = Field(20, ge=6, description="V: V-2 symbols plus `=>` and `.`.")
    train_size: int = Field(5000, ge=1)
    validation_size: int = Field(500, ge=1)
    test_size: int = Field(500, ge=1)
    #: declared here for the field order; each task redeclares it with its seq_len's lower bound
    test_seq_len: int | None = Field(None, description="Extrapolation: T at validation/test.")


class AssociativeRecallConfig(_SeqICLConfig):
    name: Literal["associative_recall"] = "associative_recall"
    seq_len: int = Field(40, ge=2, description="T: the context holds T // 2 key-value pairs.")
    test_seq_len: int | None = Field(None, ge=2, description="Extrapolation: T at validation/test.")


class InductionHeadConfig(_SeqICLConfig):
    name: Literal["induction_head"] = "induction_head"
    seq_len: int = Field(30, ge=3, description="T random symbols before the final `=> x`.")
    test_seq_len: int | None = Field(None, ge=3, description="Extrapolation: T at validation/test.")


def associative_recall_sequence(rng: np.random.Generator, vocab_size: int, seq_len: int) -> list[int]:
    """k1 v1 ... k_{T/2} v_{T/2} => k v, with a fresh key -> value map and k seen before."""
    n_symbols = vocab_size - 2
    keys = np.arange(n_symbols // 2)
    values = np.arange(n_symbols // 2, n_symbols)
    mapping = rng.choice(values, size=len(keys))  # key i -> mapping[i]
    chosen = rng.choice(keys, size=seq_len // 2)
    sequence: list[int] = []
    for key in chosen:
        sequence += [int(key), int(mapping[key])]
    query = int(rng.choice(np.unique(chosen)))
    return sequence + [arrow_id(vocab_size), query, int(mapping[query])]


def induction_head_sequence(rng: np.random.Generator, vocab_size: int, seq_len: int) -> list[int]:
    """T random symbols with `=>` at p < T-2, then `=> x`, x = the symbol after the first `=>`."""
    tokens = rng.integers(0, vocab_size - 2, size=seq_len)
    position = int(rng.integers(seq_len - 2))
    tokens[position] = arrow_id(vocab_size)
    return [int(t) for t in tokens] + [arrow_id(vocab_size), int(tokens[position + 1])]


class _SeqICLTask(Task):
    slice_columns: ClassVar[tuple[str, ...]] = ("length",)
    #: (rng, vocab_size, seq_len) -> the task's sequence, answer last
    sequence: ClassVar[Callable[[np.random.Generator, int, int], list[int]]]

    def __init__(self, config):
        super().__init__(config)
        self.vocab_size = config.vocab_size

    def build(self, seed: int) -> TaskData:
        cfg = self.config

        def make(rng: np.random.Generator, split: str) -> dict:
            seq_len = cfg.test_seq_len if split != "train" and cfg.test_seq_len else cfg.seq_len
            sequence = self.sequence(rng, cfg.vocab_size, seq_len)
            row = next_token_example(sequence, "all" if split == "train" else "last")
            row["length"] = seq_len
            return row

        # the key includes the answer, so two splits never share a whole sequence
        return disjoint_splits(make, split_sizes(cfg), seed, key=lambda row: (*row["input_ids"], row["labels"][-1]))


class AssociativeRecall(_SeqICLTask):
    config_class = AssociativeRecallConfig
    sequence = staticmethod(associative_recall_sequence)


class InductionHead(_SeqICLTask):
    config_class = InductionHeadConfig
    sequence = staticmethod(induction_head_sequence)


# --------------------------------------------------------------------------- zoology MQAR


class MQARConfig(TaskConfig):
    name: Literal["mqar"] = "mqar"
    vocab_size: int = Field(8192, ge=8, description="V: 0 filler, keys 1..V/2-1, values V/2..V-1.")
    settings: list[tuple[int, int]] = Field(
        default_factory=lambda: [(64, 4)],
        min_length=1,
        description="(T, k) pairs for training: sequence length and key-value pairs, one drawn per example.",
    )
    test_settings: list[tuple[int, int]] | None = Field(
        None, min_length=1, description="Extrapolation: (T, k) pairs for validation/test."
    )
    power_a: float = Field(0.01, gt=0, le=1, description="Power-law exponent of the query gaps (1 = uniform).")
    random_non_queries: bool = Field(
        True, description="Fill non-query positions with random tokens, not 0 (zoology's default)."
    )
    train_size: int = Field(100_000, ge=1)
    validation_size: int = Field(500, ge=1)
    test_size: int = Field(3_000, ge=1)

    @model_validator(mode="after")
    def _settings(self):
        for field in ("settings", "test_settings"):
            for seq_len, pairs in getattr(self, field) or []:
                if seq_len % 2:
                    raise ValueError(f"{field}: sequence length {seq_len} must be even")
                if pairs < 1 or 4 * pairs > seq_len:
                    raise ValueError(f"{field}: {pairs} pairs need 1 <= 4 * pairs <= T = {seq_len}")
                if pairs > self.vocab_size // 2 - 1:
                    raise ValueError(f"{field}: {pairs} distinct keys exceed the {self.vocab_size // 2 - 1} keys of V")
        return self


def power_law(space: int, power_a: float) -> np.ndarray:
    """p(g) proportional to a * g^(a-1) for gaps g = 1..space (normalised)."""
    p = power_a * np.arange(1, space + 1) ** (power_a - 1)
    return p / p.sum()


def mqar_example(
    rng: np.random.Generator, vocab_size: int, seq_len: int, pairs: int, power_a: float, random_non_queries: bool
) -> dict:
    """Zoology's MQAR row: input_ids (T,), labels = value at each query key's position."""
    half = vocab_size // 2
    keys = rng.choice(np.arange(1, half), size=pairs, replace=False)
    values = rng.choice(np.arange(half, vocab_size), size=pairs, replace=False)
    context = 2 * pairs
    space = (seq_len - context) // 2
    gaps = rng.choice(space, size=pairs, replace=False, p=power_law(space, power_a))
    input_ids = np.zeros(seq_len, dtype=np.int64)
    input_ids[0:context:2] = keys
    input_ids[1:context:2] = values
    query_positions = context + 2 * gaps  # query keys; the value is predicted there
    input_ids[query_positions] = keys
    if random_non_queries:
        filler = input_ids == 0
        input_ids[filler] = rng.integers(vocab_size, size=int(filler.sum()))
    labels = np.full(seq_len, -100, dtype=np.int64)
    labels[query_positions] = values
    return {"input_ids": input_ids.tolist(), "labels": labels.tolist(), "length": seq_len, "pairs": pairs}


class MQAR(Task):
    config_class = MQARConfig
    slice_columns: ClassVar[tuple[str, ...]] = ("length", "pairs")

    def __init__(self, config: MQARConfig):
        super().__init__(config)
        self.vocab_size = config.vocab_size

    def batch_group_column(self) -> str | None:
        return "length" if len({t for t, _ in self.config.settings}) > 1 else None

    def build(self, seed: int) -> TaskData:
        cfg = self.config

        def make(rng: np.random.Generator, split: str) -> dict:
            settings = cfg.test_settings if split != "train" and cfg.test_settings else cfg.settings
            seq_len, pairs = settings[int(rng.integers(len(settings)))]
            return mqar_example(rng, cfg.vocab_size, seq_len, pairs, cfg.power_a, cfg.random_non_queries)

        return disjoint_splits(make, split_sizes(cfg), seed)


@hookimpl
def ponderlab_register_tasks(register):
    register(AssociativeRecall)
    register(InductionHead)
    register(MQAR)
