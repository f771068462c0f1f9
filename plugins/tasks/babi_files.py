"""Readers for the published bAbI text files and BABILong tables, as users hold them.

bAbI (Weston et al. 2015; tasks_1-20_v1-2/en/qa1_single-supporting-fact_train.txt):
numbered lines, numbering restarting at 1 for every story; statements
"1 Mary moved to the bathroom." and questions
"3 Where is Mary? <TAB>bathroom<TAB>1" (answer, supporting line numbers). Each
question becomes one example whose story is the statements before it (earlier
questions dropped, as BABILong's babilong_utils.get_dataset_df does). The
archive holds en/, en-10k/, en-valid/, ... side by side: `folder` picks one.

BABILong (Kuratov et al. 2024), columns `input` (facts hidden in book text),
`question` and `target`, in three layouts:
  * RMT-team/babilong (current): `data/qa1/0k.json` (a JSON list of records);
  * RMT-team/babilong (older): `qa1/4k-00000-of-00001.parquet`;
  * RMT-team/babilong-1k-samples: `0k/qa1-00000-of-00001.parquet`.
Lengths are named 0k, 1k, ..., 512k, 1M, 10M (k = 1000, M = 1000000 tokens).
A source is a local folder or a hub id; either way the tables are read by
`datasets.load_dataset(source, data_files=...)`.
"""

from __future__ import annotations

import re
from collections import defaultdict
from dataclasses import dataclass
from pathlib import Path, PurePosixPath

import datasets

from ponderlab.core.errors import SpecError

TABLE_SUFFIXES = (".json", ".jsonl", ".parquet")
BABILONG_COLUMNS = ("input", "question", "target")
_HUB_ID = re.compile(r"[A-Za-z0-9][\w.-]*/[\w.-]+")
_LENGTH = re.compile(r"(\d+)([kM])")


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


def _task_files(folder: Path, qa: str, split: str, recursive: bool) -> list[Path]:
    """`qa1_<name>_<split>.txt` and `qa1_<split>.txt` files in `folder` (or anywhere under it)."""
    glob = folder.rglob if recursive else folder.glob
    return sorted({*glob(f"{qa}_*_{split}.txt"), *glob(f"{qa}_{split}.txt")})


def find_babi_text_files(root: Path, qa: str, folder: str) -> dict[str, Path]:
    """{"train": ..., "test": ...[, "valid": ...]}: one folder's files of task `qa` under `root`.

    Files are named `qa1_<name>_<split>.txt` (en/, en-10k/) or `qa1_<split>.txt`.
    Where several folders hold the task (en/, en-10k/, ...), the one named
    `folder` is taken; the other splits come from the train file's folder.
    """
    matches = _task_files(root, qa, "train", recursive=True)
    if len(matches) > 1:
        chosen = [m for m in matches if m.parent.name == folder]
        if len(chosen) != 1:
            listed = ", ".join(str(m.parent) for m in matches[:8])
            raise SpecError(
                f"several bAbI {qa} train files under {root} ({listed}) and {len(chosen)} in a folder "
                f"named {folder!r}; set task.babi_folder to one of those folder names",
                path="task.babi_folder",
            )
        matches = chosen
    if not matches:
        return {}
    train = matches[0]
    found = {"train": train}
    for split in ("valid", "test"):
        candidates = _task_files(train.parent, qa, split, recursive=False)
        if candidates:
            found[split] = candidates[0]
    return found


# --------------------------------------------------------------------------- BABILong


def length_in_tokens(name: str) -> int | None:
    """`0k` -> 0, `4k` -> 4000, `1M` -> 1000000, `10M` -> 10000000; None for other names."""
    match = _LENGTH.fullmatch(name)
    if match is None:
        return None
    return int(match.group(1)) * (1000 if match.group(2) == "k" else 1_000_000)


@dataclass(frozen=True)
class BabilongFile:
    path: str  # relative to the source, `/`-separated
    length_name: str  # 0k, 1k, ..., 1M, 10M


def babilong_files(relative_paths: list[str], qa: str) -> list[BabilongFile]:
    """The tables of task `qa` among `relative_paths`, in any of the three BABILong layouts."""
    found = []
    own = re.compile(rf"{qa}(?!\d)")
    for path in relative_paths:
        file = PurePosixPath(path)
        name, parent = file.name, file.parent.name
        if file.suffix not in TABLE_SUFFIXES:
            continue
        if parent == qa:  # data/qa1/0k.json or qa1/4k-00000-of-00001.parquet
            length_name = file.stem.split("-")[0]
        elif own.match(name) and length_in_tokens(parent) is not None:  # 0k/qa1-00000-of-00001.parquet
            length_name = parent
        else:
            continue
        if length_in_tokens(length_name) is None:
            raise SpecError(f"{path}: cannot read a length (0k, 4k, 1M, ...) from its name", path="task.source")
        found.append(BabilongFile(path, length_name))
    return sorted(found, key=lambda f: (length_in_tokens(f.length_name), f.path))


def is_hub_id(source: str) -> bool:
    return not Path(source).exists() and _HUB_ID.fullmatch(source) is not None


def list_source_files(source: str) -> list[str]:
    """Every file under a local folder or a hub dataset, relative to its root."""
    if not is_hub_id(source):
        root = Path(source)
        return sorted(p.relative_to(root).as_posix() for p in root.rglob("*") if p.is_file())
    from huggingface_hub import HfFileSystem

    root = f"datasets/{source}"
    try:
        listed = HfFileSystem().find(root)
    except Exception as exc:  # network, unknown repository
        raise SpecError(f"cannot list hub dataset {source!r}: {type(exc).__name__}: {exc}", path="task.source") from None
    return sorted(p[len(root) + 1 :] for p in listed)


def read_babilong_tables(source: str, files: list[BabilongFile]) -> dict[str, datasets.Dataset]:
    """{length name: table} with every file of one length read together through `datasets`."""
    by_length: dict[str, list[str]] = defaultdict(list)
    for file in files:
        by_length[file.length_name].append(file.path)
    tables = {}
    for length_name, paths in by_length.items():
        try:
            table = datasets.load_dataset(source, data_files=paths, split="train")
        except Exception as exc:
            raise SpecError(f"cannot read {paths} of {source}: {type(exc).__name__}: {exc}", path="task.source") from None
        missing = [c for c in BABILONG_COLUMNS if c not in table.column_names]
        if missing:
            raise SpecError(
                f"{paths} of {source} lack column(s) {missing} (BABILong has input, question, target)",
                path="task.source",
            )
        tables[length_name] = table
    return tables
