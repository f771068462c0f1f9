"""What a `babi` source holds before it becomes rows: questions or tables, and their vocabulary.

`load_source` reads a local folder or hub id once: bAbI text files (questions
per split) or BABILong tables (one per length), and builds the word vocabulary
from every word they contain (plus the simulator's words, which the distractor
padding of bAbI text uses).
"""

from __future__ import annotations

from dataclasses import dataclass
from pathlib import Path

import datasets

from ponderlab.core.errors import SpecError

from .babi_files import (
    BabiQuestion,
    babilong_files,
    find_babi_text_files,
    is_hub_id,
    length_in_tokens,
    list_source_files,
    parse_babi_text,
    read_babilong_tables,
)
from .babi_vocab import WordVocabulary
from .babi_world import SIMULATOR_WORDS


@dataclass
class BabiText:
    """Questions of a bAbI task per split ("train", "validation", "test")."""

    questions: dict[str, list[BabiQuestion]]
    vocabulary: WordVocabulary


@dataclass
class BabilongTables:
    """BABILong tables of one task, by length in tokens."""

    tables: dict[int, datasets.Dataset]
    vocabulary: WordVocabulary


def load_babi_text(files: dict[str, Path], validation_size: int) -> BabiText:
    """Parse the files; without a `valid` file, validation is whole stories from the end of train."""
    parsed = {split: parse_babi_text(path.read_text(), str(path)) for split, path in files.items()}
    train = parsed["train"]
    validation = parsed.get("valid")
    if validation is None:
        validation = []
        while train and (len(validation) < validation_size or validation[0].story_index == train[-1].story_index):
            validation.insert(0, train.pop())
    questions = {"train": train, "validation": validation, "test": parsed["test"]}
    texts = [t for items in questions.values() for q in items for t in (*q.story, q.question, q.answer)]
    return BabiText(questions, WordVocabulary.from_texts(SIMULATOR_WORDS, texts))


def load_babilong(source: str, qa: str, length_names: list[str] | None) -> BabilongTables:
    """The task's tables under `source` (all lengths found, or `length_names`)."""
    files = babilong_files(list_source_files(source), qa)
    if length_names is not None:
        files = [f for f in files if f.length_name in length_names]
        missing = sorted(set(length_names) - {f.length_name for f in files})
        if missing:
            raise SpecError(f"{source} has no {qa} tables of length(s) {missing}", path="task.babilong_lengths")
    tables = read_babilong_tables(source, files)
    texts = (str(record[c]) for table in tables.values() for record in table for c in ("input", "question", "target"))
    vocabulary = WordVocabulary.from_texts((), texts)
    return BabilongTables({length_in_tokens(name): table for name, table in tables.items()}, vocabulary)


def load_source(source: str, qa: str, *, babi_folder: str, babilong_lengths: list[str] | None, validation_size: int):
    """A folder or hub id -> BabiText or BabilongTables; one clear error where neither is found."""
    if is_hub_id(source):
        if babilong_lengths is None:
            raise SpecError(
                f"{source!r} is no local folder, so it names a hub dataset: list the BABILong lengths to "
                "read from it in task.babilong_lengths (e.g. ['0k', '4k']); a 10M table alone is gigabytes",
                path="task.babilong_lengths",
            )
        return load_babilong(source, qa, babilong_lengths)
    root = Path(source)
    if not root.is_dir():
        raise SpecError(f"{root} is neither a folder with bAbI or BABILong files nor a hub id", path="task.source")
    text_files = find_babi_text_files(root, qa, babi_folder)
    if text_files:
        if not {"train", "test"} <= set(text_files):
            raise SpecError(f"{root}: found only the {sorted(text_files)} file(s) for {qa}", path="task.source")
        return load_babi_text(text_files, validation_size)
    if babilong_files(list_source_files(source), qa):
        return load_babilong(source, qa, babilong_lengths)
    raise SpecError(
        f"{root} holds neither bAbI files ({qa}_*_train.txt) nor BABILong tables "
        f"(data/{qa}/0k.json, {qa}/4k-*.parquet or 0k/{qa}-*.parquet)",
        path="task.source",
    )
