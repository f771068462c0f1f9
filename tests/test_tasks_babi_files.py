"""babi from files as users hold them: bAbI archives (all 20 tasks), the three BABILong layouts."""

from __future__ import annotations

import json
from pathlib import Path

import datasets
import pytest

from ponderlab.core.errors import SpecError
from ponderlab.core.interfaces import IGNORE_INDEX
from ponderlab.plugins.tasks.babi import Babi, BabiConfig
from ponderlab.plugins.tasks.babi_files import (
    babilong_files,
    is_hub_id,
    length_in_tokens,
    parse_babi_text,
)
from ponderlab.plugins.tasks.babi_world import ROOMS

BABI_TRAIN = """1 Mary moved to the bathroom.
2 John went to the hallway.
3 Where is Mary? \tbathroom\t1
4 Daniel went back to the hallway.
5 Sandra moved to the garden.
6 Where is Daniel? \thallway\t4
1 Sandra travelled to the office.
2 Sandra picked up the football there.
3 Where is Sandra? \toffice\t1
1 John journeyed to the kitchen.
2 Where is John? \tkitchen\t1
"""
BABI_TEST = """1 Mary went to the garden.
2 Where is Mary? \tgarden\t1
"""


def test_parse_babi_text_keeps_story_prefixes():
    questions = parse_babi_text(BABI_TRAIN)
    assert [q.answer for q in questions] == ["bathroom", "hallway", "office", "kitchen"]
    assert questions[1].story == [
        "Mary moved to the bathroom.",
        "John went to the hallway.",
        "Daniel went back to the hallway.",
        "Sandra moved to the garden.",
    ]
    assert questions[2].story == ["Sandra travelled to the office.", "Sandra picked up the football there."]
    assert [q.story_index for q in questions] == [0, 0, 1, 2]


def test_parse_babi_text_reports_bad_lines():
    with pytest.raises(SpecError, match=":2:"):
        parse_babi_text("1 Mary moved to the office.\nno number here\n")


def answers(task: Babi, rows) -> list[str]:
    """The scored words of each row, joined."""
    return [" ".join(task.vocabulary.words[y] for y in row["labels"] if y != IGNORE_INDEX) for row in rows]


def write_task(folder: Path, name: str, train: str, test: str, valid: str | None = None) -> None:
    folder.mkdir(parents=True, exist_ok=True)
    (folder / f"{name}_train.txt").write_text(train)
    (folder / f"{name}_test.txt").write_text(test)
    if valid is not None:
        (folder / f"{name}_valid.txt").write_text(valid)


def test_babi_text_files_load_with_padding(tmp_path):
    write_task(tmp_path / "tasks_1-20_v1-2" / "en", "qa1_single-supporting-fact", BABI_TRAIN, BABI_TEST)
    task = Babi(BabiConfig(source=str(tmp_path), lengths=[0], test_lengths=[40], validation_size=1))
    data = task.build(0)
    # validation = the last story of the train file; train = the stories before it
    assert answers(task, data.train) == ["bathroom", "hallway", "office"]
    assert answers(task, data.validation) == ["kitchen"]
    first = task.vocabulary.decode(data.train[0]["input_ids"])
    assert first == "mary moved to the bathroom . john went to the hallway . where is mary ? bathroom"
    test_row = data.test[0]
    assert answers(task, [test_row]) == ["garden"] and test_row["length"] == 40
    assert 30 <= len(test_row["input_ids"]) - 1 <= 40


def test_archive_root_with_en_and_en_10k_picks_a_folder(tmp_path):
    root = tmp_path / "tasks_1-20_v1-2"
    write_task(root / "en", "qa1_single-supporting-fact", BABI_TRAIN, BABI_TEST)
    ten_k_test = BABI_TEST.replace("garden", "office")
    write_task(root / "en-10k", "qa1_single-supporting-fact", BABI_TRAIN, ten_k_test)
    valid = "1 Sandra moved to the bedroom.\n2 Where is Sandra? \tbedroom\t1\n"
    write_task(root / "en-valid", "qa1", BABI_TRAIN, BABI_TEST, valid)  # short names: qa1_train.txt

    def test_answer(**options) -> tuple[list[str], list[str]]:
        task = Babi(BabiConfig(source=str(tmp_path), validation_size=1, **options))
        data = task.build(0)
        return answers(task, data.test), answers(task, data.validation)

    assert test_answer() == (["office"], ["kitchen"])  # en-10k by default, as BABILong
    assert test_answer(babi_folder="en") == (["garden"], ["kitchen"])
    assert test_answer(babi_folder="en-valid") == (["garden"], ["bedroom"])  # its own valid file
    with pytest.raises(SpecError, match="babi_folder") as error:
        test_answer(babi_folder="hn")
    assert "en-10k" in str(error.value)


# Lines in the form of the real files of four tasks past qa3 (two-word answers in qa8 and qa19)
OTHER_TASKS = {
    "qa4_two-arg-relations": (
        "1 The office is north of the kitchen.\n2 The garden is south of the kitchen.\n"
        "3 What is north of the kitchen?\toffice\t1\n"
    ),
    "qa8_lists-sets": (
        "1 Mary moved to the bathroom.\n2 Mary got the football there.\n3 Mary took the apple there.\n"
        "4 What is Mary carrying?\tfootball,apple\t2 3\n"
    ),
    "qa17_positional-reasoning": (
        "1 The triangle is to the right of the blue square.\n2 The red square is below the blue square.\n"
        "3 Is the red square to the left of the triangle?\tyes\t1 2\n"
    ),
    "qa19_path-finding": (
        "1 The office is east of the hallway.\n2 The kitchen is north of the office.\n"
        "3 How do you go from the hallway to the kitchen?\te,n\t1 2\n"
    ),
}


@pytest.mark.parametrize("name", sorted(OTHER_TASKS))
def test_tasks_past_qa3_load_with_their_own_words(tmp_path, name):
    text = OTHER_TASKS[name]
    write_task(tmp_path / "en-10k", name, text + text.replace("1 The", "1 Then the"), text)
    qa = name.split("_")[0]
    task = Babi(BabiConfig(qa=qa, source=str(tmp_path), validation_size=1, lengths=[0], test_lengths=[80]))
    data = task.build(0)
    answer = text.split("\t")[1]
    assert answers(task, data.test) == [answer.replace(",", " ")]
    words = task.vocabulary.words
    assert len(set(words)) == len(words) == task.vocab_size
    for word in answer.split(","):
        assert word in words  # its own id: no hashing into shared buckets
    row = data.test[0]
    assert max(row["input_ids"]) < task.vocab_size and row["length"] == 80


def test_config_accepts_the_twenty_tasks_and_generates_only_qa1_to_qa3(tmp_path):
    for i in range(1, 21):
        BabiConfig(qa=f"qa{i}", source=str(tmp_path))
    with pytest.raises(ValueError, match="qa21"):
        BabiConfig(qa="qa21")
    with pytest.raises(ValueError, match="simulator writes qa1-qa3"):
        BabiConfig(qa="qa4")


def test_yes_and_square_get_different_ids(tmp_path):
    text = OTHER_TASKS["qa17_positional-reasoning"] + "4 Is the triangle below the red square?\tno\t1 2\n"
    write_task(tmp_path, "qa17_positional-reasoning", text * 2, text)
    task = Babi(BabiConfig(qa="qa17", source=str(tmp_path), validation_size=1))
    ids = task.vocabulary.encode("yes square no")
    assert len(set(ids)) == 3


# --------------------------------------------------------------------------- BABILong


def babilong_records(length_name: str, n: int) -> list[dict]:
    filler = "The ship sailed far. Zanzibar was quiet, said the captain. "
    repeat = 1 + (length_in_tokens(length_name) or 0) // 1000
    return [
        {"input": filler * repeat + f"Mary moved to the {room}. " + filler, "question": "Where is Mary?", "target": room}
        for room in ROOMS[:n]
    ]


def write_current(root: Path, length_name: str, records: list[dict]) -> None:
    """RMT-team/babilong today: data/qa1/0k.json, a JSON list of records (create_tasks.py's json.dump)."""
    folder = root / "data" / "qa1"
    folder.mkdir(parents=True, exist_ok=True)
    (folder / f"{length_name}.json").write_text(json.dumps(records))


def write_older(root: Path, length_name: str, records: list[dict]) -> None:
    """RMT-team/babilong before: qa1/4k-00000-of-00001.parquet."""
    (root / "qa1").mkdir(parents=True, exist_ok=True)
    datasets.Dataset.from_list(records).to_parquet(str(root / "qa1" / f"{length_name}-00000-of-00001.parquet"))


def write_samples(root: Path, length_name: str, records: list[dict]) -> None:
    """RMT-team/babilong-1k-samples: 0k/qa1-00000-of-00001.parquet."""
    (root / length_name).mkdir(parents=True, exist_ok=True)
    datasets.Dataset.from_list(records).to_parquet(str(root / length_name / "qa1-00000-of-00001.parquet"))


@pytest.mark.parametrize("write", [write_current, write_older, write_samples])
def test_babilong_layouts_load_with_their_lengths(tmp_path, write):
    for length_name in ("0k", "4k", "1M", "10M"):
        write(tmp_path, length_name, babilong_records(length_name, 6))
    (tmp_path / "qa10").mkdir()
    (tmp_path / "qa10" / "0k.json").write_text("not read: another task")
    task = Babi(BabiConfig(source=str(tmp_path), train_size=100, validation_size=2, test_size=4))
    data = task.build(0)
    every = [*data.train, *data.validation, *data.test]
    assert (len(data.test), len(data.validation), len(every)) == (4, 2, 24)
    assert {r["length"] for r in every} == {0, 4000, 1_000_000, 10_000_000}
    for row in every:
        text = task.vocabulary.decode(row["input_ids"][:-1])  # the last input is the answer itself
        assert text.endswith("where is mary ?")
        (answer,) = answers(task, [row])
        assert answer in ROOMS and f"mary moved to the {answer} ." in text
        assert "zanzibar" in text.split(), "book words keep their own ids"
    if write is not write_current:
        return
    picked = Babi(BabiConfig(source=str(tmp_path), babilong_lengths=["1M"], validation_size=1, test_size=1))
    assert set(picked.build(0).train["length"]) == {1_000_000}
    with pytest.raises(SpecError, match="2k"):
        Babi(BabiConfig(source=str(tmp_path), babilong_lengths=["2k"])).build(0)


def test_babilong_file_names_are_read_by_layout():
    paths = [
        "data/qa1/0k.json", "data/qa1/1M.json", "data/qa10/0k.json", "qa1/4k-00000-of-00002.parquet",
        "qa1/4k-00001-of-00002.parquet", "10M/qa1-00000-of-00001.parquet", "16k/qa12-00000-of-00001.parquet",
        "README.md", "qa1/notes.txt",
    ]
    found = [(f.path, f.length_name) for f in babilong_files(paths, "qa1")]
    assert found == [
        ("data/qa1/0k.json", "0k"),
        ("qa1/4k-00000-of-00002.parquet", "4k"),
        ("qa1/4k-00001-of-00002.parquet", "4k"),
        ("data/qa1/1M.json", "1M"),
        ("10M/qa1-00000-of-00001.parquet", "10M"),
    ]
    with pytest.raises(SpecError, match="length"):
        babilong_files(["qa1/latest.json"], "qa1")


def test_hub_ids_are_told_apart_from_folders_and_need_lengths(tmp_path):
    assert is_hub_id("RMT-team/babilong") and is_hub_id("RMT-team/babilong-1k-samples")
    assert not is_hub_id(str(tmp_path)) and not is_hub_id("/no/such/folder")
    with pytest.raises(SpecError, match="babilong_lengths"):
        Babi(BabiConfig(source="RMT-team/babilong")).build(0)


def test_source_without_files_is_a_clear_error(tmp_path):
    with pytest.raises(SpecError, match="neither bAbI"):
        Babi(BabiConfig(source=str(tmp_path))).build(0)
    with pytest.raises(SpecError, match="neither a folder"):
        Babi(BabiConfig(source=str(tmp_path / "missing"))).build(0)


def test_bad_babilong_tables_are_clear_errors(tmp_path):
    write_current(tmp_path, "0k", [{"input": "Mary moved to the office.", "question": "Where is Mary?"}])
    with pytest.raises(SpecError, match=r"data/qa1/0k.json.*lack column\(s\) \['target'\]"):
        Babi(BabiConfig(source=str(tmp_path))).build(0)
    (tmp_path / "data" / "qa1" / "0k.json").write_text("{not json")
    with pytest.raises(SpecError, match=r"cannot read \['data/qa1/0k.json'\]"):
        Babi(BabiConfig(source=str(tmp_path))).build(0)
