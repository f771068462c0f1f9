"""A real tokenizer for text tasks: bAbI / BABILong samples built as BABILong builds them.

`tokenizer: <hub id or path>` on a text task loads `AutoTokenizer` and replaces
the task's word ids. A sample follows BABILong's fine-tuning code
(booydar/recurrent-memory-transformer, babilong-release: `babilong_utils.py`
NoiseInjectionDataset and the collate function of `run_finetuning_babilong_rmt.py`):

    context  = noise sentences with the fact sentences inserted, in order, at sorted
               random sentence boundaries (each sentence tokenized on its own, without special tokens),
               noise added while the context stays within the target length;
    sequence = context + question + [GEN] + answer + [eos],   GEN = the first token of "GEN";

scored on the answer tokens and the eos (labels[t] is the token predicted at t, so
the GEN position predicts the answer's first token). Noise here is the task's own
distractor text (PG19 cannot be fetched); BABILong tables already hold their noisy
`input`, which is tokenized whole.
"""

from __future__ import annotations

from collections.abc import Iterator
from dataclasses import dataclass
from pathlib import Path

import datasets
import numpy as np
from transformers import AutoTokenizer, PreTrainedTokenizerBase

from ponderlab.core.errors import SpecError
from ponderlab.core.interfaces import TaskData

from .babi_files import find_babilong_files, read_babilong_file
from .babi_world import distractor, random_story
from .common import disjoint_splits, lm_example, rng_for, split_sizes

GEN_TEXT = "GEN"


def load_tokenizer(source: str, where: str = "task.tokenizer") -> PreTrainedTokenizerBase:
    """AutoTokenizer of a hub id or local path; SpecError naming `where` when it cannot load."""
    try:
        return AutoTokenizer.from_pretrained(source)
    except (OSError, ValueError, KeyError, TypeError) as error:
        raise SpecError(f"cannot load a tokenizer from {source!r}: {error}", path=where) from None


def sentence_text(words: list[str]) -> str:
    """bAbI word lists as text: 'mary moved to the bathroom .' -> 'Mary moved to the bathroom.'"""
    text = " ".join(words).replace(" .", ".").replace(" ?", "?")
    return text[:1].upper() + text[1:]


@dataclass
class TextSamples:
    """Builds BABILong-style samples with one tokenizer."""

    tokenizer: PreTrainedTokenizerBase

    def __post_init__(self):
        self.gen = self.encode(GEN_TEXT)[0]
        eos = self.tokenizer.eos_token_id
        if eos is None:
            raise SpecError("the tokenizer has no eos token (BABILong ends every answer with it)",
                            path="task.tokenizer")
        self.eos = int(eos)

    @property
    def vocab_size(self) -> int:
        return len(self.tokenizer)

    def encode(self, text: str) -> list[int]:
        return [int(t) for t in self.tokenizer.encode(text, add_special_tokens=False)]

    def context(self, rng: np.random.Generator, facts: list[str], noise: Iterator[str], length: int) -> list[int]:
        """Facts, in order, between noise sentences at sorted random boundaries; within `length` tokens."""
        fact_tokens = [self.encode(fact) for fact in facts]
        budget = length - sum(len(f) for f in fact_tokens)
        background: list[list[int]] = []
        while True:
            sentence = self.encode(next(noise))
            if len(sentence) > budget:
                break
            background.append(sentence)
            budget -= len(sentence)
        positions = np.sort(rng.choice(len(background) + 1, size=len(fact_tokens)))  # as BABILong
        slots: list[list[list[int]]] = [[] for _ in range(len(background) + 1)]
        for fact, position in zip(fact_tokens, positions, strict=True):
            slots[int(position)].append(fact)
        for index, sentence in enumerate(background):
            slots[index].append(sentence)
        return [token for slot in slots for sentence in slot for token in sentence]

    def example(self, context: list[int], question: str, answer: str, length: int) -> dict:
        """context + question + [GEN] + answer + [eos]; scored on answer and eos."""
        prompt = context + self.encode(question) + [self.gen]
        row = lm_example(prompt, self.encode(answer) + [self.eos])
        row["length"] = length
        return row


# --------------------------------------------------------------------------- bAbI / BABILong


def noise_sentences(rng: np.random.Generator) -> Iterator[str]:
    """The bAbI task's distractor sentences as text, endlessly."""
    draws = iter(lambda: int(rng.integers(0, 2**31)), None)
    while True:
        yield sentence_text(distractor(draws))


def build_babi_text(config, samples: TextSamples, seed: int, length_of) -> TaskData:
    """The babi task's splits with a real tokenizer: generated stories or BABILong tables.

    length_of(rng, split) draws a target length (the task's own rule).
    """
    if config.source == "generate":

        def make(rng: np.random.Generator, split: str) -> dict:
            story = random_story(rng, config.qa, config.min_facts, config.max_facts)
            length = length_of(rng, split)
            facts = [sentence_text(words) for words in story.facts]
            context = samples.context(rng, facts, noise_sentences(rng), length)
            return samples.example(context, sentence_text(story.question), story.answer, length)

        return disjoint_splits(make, split_sizes(config), seed)
    root = Path(config.source)
    tables = find_babilong_files(root, config.qa) if root.is_dir() else []
    if not tables:
        raise SpecError(f"with a tokenizer, source must be generate or a folder of BABILong tables "
                        f"(<n>k/{config.qa}*.parquet); {root} holds none", path="task.source")
    rows = [
        samples.example(samples.encode(str(record["input"])), str(record["question"]), str(record["target"]), n)
        for n, path in tables
        for record in read_babilong_file(path)
    ]
    return shuffled_splits(rows, split_sizes(config), rng_for(seed, "babilong"))


def shuffled_splits(rows: list[dict], sizes: dict[str, int], rng: np.random.Generator) -> TaskData:
    """Rows shuffled, deduplicated and dealt to test, validation, then train."""
    built: dict[str, list[dict]] = {"test": [], "validation": [], "train": []}
    seen: set[tuple] = set()
    for index in rng.permutation(len(rows)):
        row = rows[index]
        key = tuple(row["input_ids"])
        if key in seen:
            continue
        seen.add(key)
        split = next((s for s in ("test", "validation", "train") if len(built[s]) < sizes[s]), None)
        if split is not None:
            built[split].append(row)
    empty = [split for split, items in built.items() if not items]
    if empty:
        raise SpecError(f"the BABILong files leave no {empty[0]} rows (test, validation, then train)",
                        path="task.source")
    return TaskData(**{split: datasets.Dataset.from_list(items) for split, items in built.items()})
