"""Readers for the published bAbI text files and BABILong tables (local copies).

bAbI (Weston et al. 2015; tasks_1-20_v1-2/en/qa1_single-supporting-fact_train.txt):
numbered lines, numbering restarting at 1 for every story; statements
"1 Mary moved to the bathroom." and questions
"3 Where is Mary? <TAB>bathroom<TAB>1" (answer, supporting line numbers). Each
question becomes one example whose story is the statements before it.

BABILong (Kuratov et al. 2024; RMT-team/babilong-1k-samples): one folder per
length ("0k", "1k", "2k", ...) holding "qa1-*.parquet" (or .json/.jsonl) with
columns `input` (facts hidden in book text), `question` and `target`.
"""

from __future__ import annotations

import re
from dataclasses import dataclass
from pathlib import Path

import datasets

from ponderlab.core.errors import SpecError


@dataclass
class BabiQuestion:
    story: list[str]  # statement sentences, in order
    question: str
    answer: str
    story_index: int  # which story of the file (0-based)


def parse_babi_text(text: str, where: str = "<text>") -> list[BabiQuestion]:
    """Every question of a bAbI file with the statements of its story before it."""
    questions: list[BabiQuestion] = []
    story: list[str] = []
    story_index = -1
    for line_number, raw in enumerate(text.splitlines(), start=1):
        if not raw.strip():
            continue
        match = re.match(r"\s*(\d+)\s+(.*)$", raw)
        if match is None:
            raise SpecError(f"{where}:{line_number}: expected '<number> <sentence>', got {raw!r}", path="task.source")
        number, body = int(match.group(1)), match.group(2)
        if number == 1:
            story = []
            story_index += 1
        if "\t" in body:
            parts = body.split("\t")
            if len(parts) < 2 or not parts[1].strip():
                raise SpecError(f"{where}:{line_number}: question line without an answer: {raw!r}", path="task.source")
            questions.append(BabiQuestion(list(story), parts[0].strip(), parts[1].strip(), story_index))
        else:
            story.append(body.strip())
    return questions


def find_babi_text_files(root: Path, qa: str) -> dict[str, Path]:
    """{"train": ..., "test": ...} for files named like `qa1_*_train.txt` under `root`."""
    found = {}
    for split in ("train", "test"):
        matches = sorted(root.rglob(f"{qa}_*_{split}.txt"))
        if len(matches) > 1:
            listed = ", ".join(str(m) for m in matches[:4])
            raise SpecError(f"several bAbI {qa} {split} files under {root}: {listed}; point at one folder", path="task.source")
        if matches:
            found[split] = matches[0]
    return found


def _length_of(folder_name: str) -> int | None:
    match = re.fullmatch(r"(\d+)k", folder_name)
    return int(match.group(1)) * 1000 if match else None


def find_babilong_files(root: Path, qa: str) -> list[tuple[int, Path]]:
    """(length in tokens, file) for every `<n>k/<qa>*.{parquet,json,jsonl}` under `root`."""
    found = []
    for path in sorted(root.rglob(f"{qa}*")):
        if path.suffix not in (".parquet", ".json", ".jsonl") or not re.match(rf"{qa}(?!\d)", path.name):
            continue
        length = _length_of(path.parent.name)
        found.append((0 if length is None else length, path))
    return found


def read_babilong_file(path: Path) -> datasets.Dataset:
    """A BABILong table (parquet or JSON lines) with input/question/target columns."""
    builder = "parquet" if path.suffix == ".parquet" else "json"
    try:
        table = datasets.load_dataset(builder, data_files=str(path), split="train")
    except Exception as exc:
        raise SpecError(f"cannot read {path}: {type(exc).__name__}: {exc}", path="task.source") from None
    missing = [c for c in ("input", "question", "target") if c not in table.column_names]
    if missing:
        raise SpecError(f"{path} lacks column(s) {missing} (BABILong has input, question, target)", path="task.source")
    return table
