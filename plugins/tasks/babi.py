"""`babi`: the 20 bAbI tasks, hidden in distractor text BABILong-style (arXiv 2402.10790, 1502.05698).

`source: generate` (default) writes qa1-qa3 stories with a small world
simulator (babi_world.py: bAbI's 4 actors, 6 rooms, 3 objects, moves, grabs,
drops, with the real files' wording statistics and story lengths): qa1 "where
is mary ?"; qa2 "where is the football ?"; qa3 "where was the football before
the kitchen ?". BABILong pads with book text (PG19), which cannot be fetched
here: the facts are spread, in order, among distractor sentences from a
separate filler vocabulary until the prompt reaches the target length in tokens
(0: no padding).

Layout: story tokens, question tokens (ending `?`), then the answer words, the
only scored tokens: exact match = answer accuracy (ids are lower-case words).
Metrics per target `length`. Training draws a length per example from `lengths`
(batches share one length); validation/test from `test_lengths` when set (the
extrapolation option, e.g. train [0, 256], test [0, 1000, 2000, 4000]).

Vocabulary (babi_vocab.py, no tokenizer): one id per word, built from the data
(0 = padding, `.`, `?`, the simulator's words, then every other word of the
files read, sorted); no two words share an id.

`source` may also be a local folder or a hub id (`RMT-team/babilong`):
  * bAbI text files `qaN_*_train.txt` / `qaN_*_test.txt` (all 20 tasks; in an
    archive root holding en/, en-10k/, ..., `babi_folder` picks one): their
    stories get the same distractor padding; validation is the `_valid.txt`
    file where the folder has one (en-valid/), else the last stories of the
    train file;
  * BABILong tables (babi_files.py: `data/qaN/0k.json`, `qaN/4k-*.parquet`,
    `0k/qaN-*.parquet`; lengths 0k ... 1M, 10M), used as given, `length` in
    tokens (`babilong_lengths` picks which); rows are shuffled by the seed and
    split test, validation, then train (the rest).
"""

from __future__ import annotations

from functools import cached_property
from typing import ClassVar, Literal

import datasets
import numpy as np
from pydantic import Field, NonNegativeInt, model_validator

from ponderlab.core.config import TaskConfig
from ponderlab.core.errors import SpecError
from ponderlab.core.hookspecs import hookimpl
from ponderlab.core.interfaces import Task, TaskData
from ponderlab.core.tasks import disjoint_splits, lm_example, rng_for, split_sizes

from .babi_sources import BabilongTables, BabiText, load_source
from .babi_vocab import WordVocabulary
from .babi_world import SIMULATED_TASKS, SIMULATOR_VOCABULARY, padded_prompt, random_story
from .text_tokenizer import TokenizerVocabulary

BABI_TASKS = tuple(f"qa{i}" for i in range(1, 21))


class BabiConfig(TaskConfig):
    name: Literal["babi"] = "babi"
    qa: Literal[BABI_TASKS] = Field("qa1", description="qa1 .. qa20 (generate: qa1-qa3).")  # type: ignore[valid-type]
    min_facts: int | None = Field(
        None, ge=1, description="Fewest story sentences; unset: bAbI's own story lengths (set both or neither)."
    )
    max_facts: int | None = Field(None, ge=1, description="Most story sentences (with min_facts).")
    lengths: list[NonNegativeInt] = Field(
        default_factory=lambda: [0], min_length=1, description="Training target lengths in tokens (0: no padding)."
    )
    test_lengths: list[NonNegativeInt] | None = Field(
        None, min_length=1, description="Extrapolation: target lengths for validation/test."
    )
    train_size: int = Field(10000, ge=1)
    validation_size: int = Field(500, ge=1)
    test_size: int = Field(1000, ge=1)
    source: str = Field(
        "generate", description="generate | folder with bAbI .txt or BABILong files | BABILong hub id."
    )
    babi_folder: str = Field(
        "en-10k", description="bAbI archive folder to read where several hold the task (en, en-10k, en-valid, ...)."
    )
    babilong_lengths: list[str] | None = Field(
        None, min_length=1, description="BABILong lengths to read (0k, 4k, 1M, ...); all found if unset."
    )
    tokenizer: str | None = Field(
        None, description="Hub id or path of a tokenizer: its ids, samples laid out as BABILong's (text_tokenizer.py)."
    )

    @model_validator(mode="after")
    def _ranges(self):
        if (self.min_facts is None) != (self.max_facts is None):
            raise ValueError("set both min_facts and max_facts, or neither (bAbI's story lengths)")
        if self.min_facts is not None and self.min_facts > self.max_facts:
            raise ValueError(f"min_facts {self.min_facts} is greater than max_facts {self.max_facts}")
        if self.source == "generate":
            if self.qa not in SIMULATED_TASKS:
                raise ValueError(f"the simulator writes qa1-qa3; {self.qa} needs source: a folder or hub id")
            needed = {"qa1": 1, "qa2": 2, "qa3": 3}[self.qa]
            if self.max_facts is not None and self.max_facts < needed:
                raise ValueError(f"{self.qa} needs stories of at least {needed} facts; max_facts is {self.max_facts}")
        return self


class Babi(Task):
    config_class = BabiConfig
    slice_columns: ClassVar[tuple[str, ...]] = ("length",)

    @cached_property
    def _source(self) -> BabiText | BabilongTables | None:
        """The published files, read once (None when generating)."""
        cfg = self.config
        if cfg.source == "generate":
            return None
        return load_source(
            cfg.source,
            cfg.qa,
            babi_folder=cfg.babi_folder,
            babilong_lengths=cfg.babilong_lengths,
            validation_size=cfg.validation_size,
        )

    @cached_property
    def _tokenizer(self) -> TokenizerVocabulary | None:
        return TokenizerVocabulary.load(self.config.tokenizer) if self.config.tokenizer else None

    @property
    def vocabulary(self) -> WordVocabulary | TokenizerVocabulary:
        """Word ids: the tokenizer's, the simulator's words, or every word of the source's files."""
        if self._tokenizer is not None:
            return self._tokenizer
        return SIMULATOR_VOCABULARY if self._source is None else self._source.vocabulary

    def _example(self, prompt: list[int], answer: list[int], length: int) -> dict:
        if self._tokenizer is not None:  # BABILong's layout: prompt + [GEN], answer + [eos]
            prompt, answer = self._tokenizer.frame(prompt, answer)
        return {**lm_example(prompt, answer), "length": length}

    @property
    def vocab_size(self) -> int:  # type: ignore[override]
        return self.vocabulary.size

    def batch_group_column(self) -> str | None:
        return "length" if len(set(self.config.lengths)) > 1 else None

    def _padded(self, rng: np.random.Generator, split: str, facts: list[list[int]], question: list[int], answer: list[int]) -> dict:
        """An example padded to a target length drawn from the split's lengths."""
        cfg = self.config
        lengths = cfg.test_lengths if split != "train" and cfg.test_lengths else cfg.lengths
        length = int(lengths[rng.integers(len(lengths))])
        return self._example(padded_prompt(rng, facts, question, length, self.vocabulary), answer, length)

    def build(self, seed: int) -> TaskData:
        cfg = self.config
        source = self._source
        if isinstance(source, BabiText):
            return self._from_babi_text(source, seed)
        if isinstance(source, BabilongTables):
            return self._from_babilong(source, seed)
        words = self.vocabulary.encode_words

        def make(rng: np.random.Generator, split: str) -> dict:
            story = random_story(rng, cfg.qa, cfg.min_facts, cfg.max_facts)
            facts = [words(sentence) for sentence in story.facts]
            return self._padded(rng, split, facts, words(story.question), words([story.answer]))

        return disjoint_splits(make, split_sizes(cfg), seed)

    # ------------------------------------------------------------------ published files
    def _from_babi_text(self, source: BabiText, seed: int) -> TaskData:
        sizes = split_sizes(self.config)
        encode = self.vocabulary.encode
        built = {}
        for split, items in source.questions.items():
            rng = rng_for(seed, "babi-text", split)
            rows = []
            for item in items[: sizes[split]]:
                question = encode(item.question)
                if not question or question[-1] != encode("?")[0]:
                    question += encode("?")
                rows.append(self._padded(rng, split, [encode(s) for s in item.story], question, encode(item.answer)))
            if not rows:
                raise SpecError(f"no {split} questions in the {self.config.qa} files of {self.config.source}", path="task.source")
            built[split] = datasets.Dataset.from_list(rows)
        return TaskData(**built)

    def _from_babilong(self, source: BabilongTables, seed: int) -> TaskData:
        encode = self.vocabulary.encode
        rows = []
        for length, table in sorted(source.tables.items()):
            for record in table:
                prompt = encode(record["input"]) + encode(record["question"])
                rows.append(self._example(prompt, encode(str(record["target"])), length))
        unique: dict[tuple, dict] = {}  # shuffled, each input once
        for index in rng_for(seed, "babilong").permutation(len(rows)):
            unique.setdefault(tuple(rows[index]["input_ids"]), rows[index])
        pool = list(unique.values())
        sizes = split_sizes(self.config)
        built = {}
        for split in ("test", "validation", "train"):  # each takes its size from what is left
            if not pool:
                raise SpecError(f"the BABILong files leave no {split} rows (test, validation, then train)", path="task.source")
            built[split] = datasets.Dataset.from_list(pool[: sizes[split]])
            pool = pool[sizes[split] :]
        return TaskData(**built)


@hookimpl
def ponderlab_register_tasks(register):
    register(Babi)
