"""`babi`: bAbI qa1-qa3 hidden in distractor text, BABILong-style (arXiv 2402.10790, 1502.05698).

qa1 (single supporting fact) "where is mary ?"; qa2 (two supporting facts)
"where is the football ?"; qa3 (three supporting facts) "where was the football
before the kitchen ?". Stories come from a small world simulator (see
babi_world.py: bAbI's 4 actors, 6 rooms, 3 objects; moves, grabs, drops) with
U[min_facts, max_facts] sentences; each example asks one answerable question.
BABILong pads with book text (PG19), which cannot be fetched here: the facts are
spread, in order, among distractor sentences from a separate filler vocabulary
until the prompt reaches the target length in tokens (0: no padding).

Layout: story tokens, question tokens (ending `?`), then the answer word, the
only scored token: exact match = answer accuracy (ids are lower-case words).
Metrics per target `length`. Training draws a length per example from `lengths`
(batches share one length); validation/test from `test_lengths` when set (the
extrapolation option, e.g. train [0, 256], test [0, 1000, 2000, 4000]).

Vocabulary (babi_world.VOCAB_SIZE ids, no tokenizer): 0 = padding, `.`, `?`,
then bAbI's words and the filler words, one id each, then 64 ids that words
outside the list share by CRC32 hash (book text of BABILong files).

`source`: `generate`, or a folder holding published files:
  * bAbI text files `qa1_*_train.txt` / `qa1_*_test.txt`: their stories get the
    same distractor padding; validation is the last stories of the train file;
  * BABILong tables `<n>k/qa1*.parquet|json|jsonl` (columns input, question,
    target): used as given, `length` = n*1000; rows are shuffled by the seed
    and split test, validation, then train (the rest).
"""

from __future__ import annotations

from pathlib import Path
from typing import ClassVar, Literal

import datasets
import numpy as np
from pydantic import Field, model_validator

from ponderlab.core.config import TaskConfig
from ponderlab.core.errors import SpecError
from ponderlab.core.hookspecs import hookimpl
from ponderlab.core.interfaces import Task, TaskData
from ponderlab.core.tasks import disjoint_splits, lm_example, rng_for, split_sizes

from .babi_files import (
    find_babi_text_files,
    find_babilong_files,
    parse_babi_text,
    read_babilong_file,
)
from .babi_world import VOCAB_SIZE, padded_prompt, random_story, tokenize, word_id


class BabiConfig(TaskConfig):
    name: Literal["babi"] = "babi"
    qa: Literal["qa1", "qa2", "qa3"] = Field("qa1", description="qa1, qa2 or qa3.")
    min_facts: int = Field(2, ge=1, description="Fewest story sentences (before padding).")
    max_facts: int = Field(10, ge=1, description="Most story sentences (before padding).")
    lengths: list[int] = Field(
        default_factory=lambda: [0], min_length=1, description="Training target lengths in tokens (0: no padding)."
    )
    test_lengths: list[int] | None = Field(
        None, min_length=1, description="Extrapolation: target lengths for validation/test."
    )
    train_size: int = Field(10000, ge=1)
    validation_size: int = Field(500, ge=1)
    test_size: int = Field(1000, ge=1)
    source: str = Field("generate", description="generate | folder with bAbI .txt or BABILong files.")

    @model_validator(mode="after")
    def _ranges(self):
        if self.min_facts > self.max_facts:
            raise ValueError(f"min_facts {self.min_facts} is greater than max_facts {self.max_facts}")
        needed = {"qa1": 1, "qa2": 2, "qa3": 3}[self.qa]
        if self.max_facts < needed:
            raise ValueError(f"{self.qa} needs stories of at least {needed} facts; max_facts is {self.max_facts}")
        for field in ("lengths", "test_lengths"):
            if any(n < 0 for n in getattr(self, field) or []):
                raise ValueError(f"{field} must be non-negative token counts")
        return self


def babi_example(prompt: list[int], answer: list[int], length: int) -> dict:
    row = lm_example(prompt, answer)
    row["length"] = length
    return row


class Babi(Task):
    config_class = BabiConfig
    vocab_size = VOCAB_SIZE
    slice_columns: ClassVar[tuple[str, ...]] = ("length",)

    def batch_group_column(self) -> str | None:
        return "length" if len(set(self.config.lengths)) > 1 else None

    def _length(self, rng: np.random.Generator, split: str) -> int:
        cfg = self.config
        choices = cfg.test_lengths if split != "train" and cfg.test_lengths else cfg.lengths
        return int(choices[rng.integers(len(choices))])

    def _padded(self, rng: np.random.Generator, split: str, facts: list[list[int]], question: list[int], answer: list[int]) -> dict:
        length = self._length(rng, split)
        return babi_example(padded_prompt(rng, facts, question, length), answer, length)

    def build(self, seed: int) -> TaskData:
        cfg = self.config
        if cfg.source != "generate":
            return self._from_files(Path(cfg.source), seed)

        def make(rng: np.random.Generator, split: str) -> dict:
            story = random_story(rng, cfg.qa, cfg.min_facts, cfg.max_facts)
            facts = [[word_id(w) for w in sentence] for sentence in story.facts]
            question = [word_id(w) for w in story.question]
            return self._padded(rng, split, facts, question, [word_id(story.answer)])

        return disjoint_splits(make, split_sizes(cfg), seed)

    # ------------------------------------------------------------------ published files
    def _from_files(self, root: Path, seed: int) -> TaskData:
        if not root.is_dir():
            raise SpecError(f"{root} is not a folder with bAbI or BABILong files", path="task.source")
        text_files = find_babi_text_files(root, self.config.qa)
        if text_files:
            if set(text_files) != {"train", "test"}:
                raise SpecError(f"{root}: found only the {sorted(text_files)} file for {self.config.qa}", path="task.source")
            return self._from_babi_text(text_files, seed)
        tables = find_babilong_files(root, self.config.qa)
        if tables:
            return self._from_babilong(tables, seed)
        raise SpecError(
            f"{root} holds neither bAbI files ({self.config.qa}_*_train.txt) nor BABILong tables "
            f"(<n>k/{self.config.qa}*.parquet)",
            path="task.source",
        )

    def _from_babi_text(self, files: dict[str, Path], seed: int) -> TaskData:
        sizes = split_sizes(self.config)
        train = parse_babi_text(files["train"].read_text(), str(files["train"]))
        test = parse_babi_text(files["test"].read_text(), str(files["test"]))
        # validation: whole stories from the end of the train file
        validation: list = []
        while train and (len(validation) < sizes["validation"] or validation[0].story_index == train[-1].story_index):
            validation.insert(0, train.pop())
        questions = {"train": train, "validation": validation, "test": test}
        built = {}
        for split, items in questions.items():
            rng = rng_for(seed, "babi-text", split)
            rows = []
            for item in items[: sizes[split]]:
                facts = [tokenize(sentence) for sentence in item.story]
                question = tokenize(item.question)
                if not question or question[-1] != word_id("?"):
                    question.append(word_id("?"))
                rows.append(self._padded(rng, split, facts, question, tokenize(item.answer)))
            if not rows:
                raise SpecError(f"no {split} questions in {files.get(split, files['train'])}", path="task.source")
            built[split] = datasets.Dataset.from_list(rows)
        return TaskData(**built)

    def _from_babilong(self, tables: list[tuple[int, Path]], seed: int) -> TaskData:
        rows = []
        for length, path in tables:
            for record in read_babilong_file(path):
                prompt = tokenize(record["input"]) + tokenize(record["question"])
                rows.append(babi_example(prompt, tokenize(str(record["target"])), length))
        order = rng_for(seed, "babilong").permutation(len(rows))
        sizes = split_sizes(self.config)
        built: dict[str, list[dict]] = {"test": [], "validation": [], "train": []}
        seen: set[tuple] = set()
        for index in order:
            row = rows[index]
            key = tuple(row["input_ids"])
            if key in seen:
                continue
            seen.add(key)
            for split in ("test", "validation", "train"):
                if len(built[split]) < sizes[split]:
                    built[split].append(row)
                    break
        for split, items in built.items():
            if not items:
                raise SpecError(f"the BABILong files leave no {split} rows (test, validation, then train)", path="task.source")
        return TaskData(**{split: datasets.Dataset.from_list(items) for split, items in built.items()})


@hookimpl
def ponderlab_register_tasks(register):
    register(Babi)
