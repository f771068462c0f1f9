"""babi: simulated stories checked by an independent interpreter, padding, published layouts."""

from __future__ import annotations

import datasets
import numpy as np
import pytest

from ponderlab.core.errors import SpecError
from ponderlab.core.interfaces import IGNORE_INDEX
from ponderlab.plugins.tasks.babi import Babi, BabiConfig
from ponderlab.plugins.tasks.babi_files import parse_babi_text
from ponderlab.plugins.tasks.babi_world import (
    ACTORS,
    FILLER_WORDS,
    OBJECTS,
    ROOMS,
    UNKNOWN_BUCKETS,
    VOCAB_SIZE,
    WORD_ID,
    WORDS,
    detokenize,
    padded_prompt,
    random_story,
    tokenize,
    word_id,
)

MOVES = {"moved", "went", "journeyed", "travelled"}
GRABS = {"got", "grabbed", "picked", "took"}
DROPS = {"dropped", "discarded", "put", "left"}


def interpret(sentences: list[list[str]], question: list[str]) -> str:
    """A separate reading of the story: who is where, who holds what, where each object has been."""
    where: dict[str, str] = {}
    holder: dict[str, str | None] = {}
    trail: dict[str, list[str]] = {}

    def note(obj, room):
        if not trail.setdefault(obj, []) or trail[obj][-1] != room:
            trail[obj].append(room)

    for words in sentences:
        actor, verb, last = words[0], words[1], [w for w in words if w not in (".", "there")][-1]
        if verb in MOVES:
            where[actor] = last
            for obj, h in holder.items():
                if h == actor:
                    note(obj, last)
        elif verb in GRABS:
            holder[last] = actor
            note(last, where[actor])
        elif verb in DROPS:
            holder[last] = None
        else:
            raise AssertionError(f"unexpected sentence {words}")
    if question[1] == "is" and question[2] in ACTORS:
        return where[question[2]]
    if question[1] == "is":
        obj = question[3]
        return where[holder[obj]] if holder.get(obj) else trail[obj][-1]
    obj, room = question[3], question[6]
    i = trail[obj].index(room)
    return trail[obj][i - 1]


@pytest.mark.parametrize("qa", ["qa1", "qa2", "qa3"])
def test_simulated_answers_match_an_independent_reading(qa):
    rng = np.random.default_rng(0)
    kinds = set()
    for _ in range(300):
        story = random_story(rng, qa, 2, 12)
        assert story.answer == interpret(story.facts, story.question)
        assert story.question[-1] == "?" and all(f[-1] == "." for f in story.facts)
        kinds |= {f[1] for f in story.facts}
    if qa == "qa1":
        assert kinds <= MOVES
    else:
        assert kinds & GRABS and kinds & DROPS


def test_qa3_asks_a_room_visited_once():
    rng = np.random.default_rng(1)
    for _ in range(100):
        story = random_story(rng, "qa3", 3, 12)
        assert story.question[:3] == ["where", "was", "the"] and story.question[4:6] == ["before", "the"]
        assert story.answer in ROOMS and story.answer != story.question[6]


def test_distractors_never_name_the_world():
    fact_words = {*ACTORS, *ROOMS, *OBJECTS}
    rng = np.random.default_rng(0)
    prompt = padded_prompt(rng, [[word_id("mary")]], [word_id("?")], 2000)
    words = detokenize(prompt).split()
    assert words.count("mary") == 1
    assert not (set(words) - {"mary", "?", "."}) & fact_words
    assert set(words) - {"mary", "?", "."} <= set(FILLER_WORDS) | {"the"}


def test_padding_reaches_the_target_and_keeps_fact_order():
    rng = np.random.default_rng(3)
    story = random_story(rng, "qa2", 6, 6)
    facts = [[word_id(w) for w in f] for f in story.facts]
    question = [word_id(w) for w in story.question]
    for target in (0, 50, 300, 1000):
        prompt = padded_prompt(rng, facts, question, target)
        size = sum(map(len, facts)) + len(question)
        assert len(prompt) <= max(target, size)
        assert len(prompt) > target - 11  # a distractor has at most 10 tokens
        world = {*ACTORS, *OBJECTS, *ROOMS}
        kept = [w for w in detokenize(prompt).split(" ") if w in world]
        assert kept == [w for f in story.facts + [story.question] for w in f if w in world]  # facts in order
        start = 0
        for fact in facts:  # every fact stays one contiguous sentence
            found = next(i for i in range(start, len(prompt)) if prompt[i : i + len(fact)] == fact)
            start = found + len(fact)
        assert prompt[-len(question) :] == question


def test_task_rows_score_only_the_answer_per_length():
    cfg = BabiConfig(qa="qa1", lengths=[0], test_lengths=[0, 100, 400], train_size=40, validation_size=20, test_size=60)
    task = Babi(cfg)
    data = task.build(0)
    assert task.vocab_size == VOCAB_SIZE == len(WORDS)
    assert set(data.train["length"]) == {0}
    assert set(data.test["length"]) == {0, 100, 400}
    for row in data.test:
        scored = [(t, y) for t, y in enumerate(row["labels"]) if y != IGNORE_INDEX]
        assert len(scored) == 1
        t, answer = scored[0]
        assert row["input_ids"][t] == WORD_ID["?"] and WORDS[answer] in ROOMS
        assert len(row["input_ids"]) - 1 <= max(row["length"], 60)  # qa1 stories of <= 10 facts fit in 60 tokens
    assert Babi(BabiConfig(lengths=[0, 50])).batch_group_column() == "length"


def test_tokenize_maps_unknown_words_to_stable_buckets():
    ids = tokenize("Mary moved to the Bathroom. Zanzibar? zanzibar!")
    first_bucket = WORD_ID["<w0>"]
    assert ids[:6] == [WORD_ID[w] for w in ["mary", "moved", "to", "the", "bathroom", "."]]
    assert first_bucket <= ids[6] < first_bucket + UNKNOWN_BUCKETS and ids[6] == ids[8]
    assert ids[7] == WORD_ID["?"] and len(ids) == 9


# --------------------------------------------------------------------------- published layouts

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


def test_babi_text_files_load_with_padding(tmp_path):
    folder = tmp_path / "tasks_1-20_v1-2" / "en"
    folder.mkdir(parents=True)
    (folder / "qa1_single-supporting-fact_train.txt").write_text(BABI_TRAIN)
    (folder / "qa1_single-supporting-fact_test.txt").write_text(BABI_TEST)
    task = Babi(BabiConfig(source=str(tmp_path), lengths=[0], test_lengths=[40], validation_size=1))
    data = task.build(0)
    # validation = the last story of the train file; train = the stories before it
    assert [WORDS[r["labels"][-2]] for r in data.train] == ["bathroom", "hallway", "office"]
    assert [WORDS[r["labels"][-2]] for r in data.validation] == ["kitchen"]
    first = detokenize(data.train[0]["input_ids"])
    assert first == "mary moved to the bathroom . john went to the hallway . where is mary ? bathroom"
    test_row = data.test[0]
    assert WORDS[test_row["labels"][-2]] == "garden" and test_row["length"] == 40
    assert 30 <= len(test_row["input_ids"]) - 1 <= 40


def test_babilong_tables_load_by_length(tmp_path):
    for length, n in (("0k", 6), ("1k", 6)):
        (tmp_path / length).mkdir()
        rows = [
            {
                "input": f"The ship sailed far. Mary moved to the {room}. Zanzibar was quiet." * (1 if length == "0k" else 3),
                "question": "Where is Mary?",
                "target": room,
            }
            for room in ROOMS[:n]
        ]
        datasets.Dataset.from_list(rows).to_parquet(str(tmp_path / length / "qa1-00000-of-00001.parquet"))
    (tmp_path / "1k" / "qa10-00000-of-00001.parquet").write_text("not read: another task")
    data = Babi(BabiConfig(source=str(tmp_path), train_size=100, validation_size=2, test_size=4)).build(0)
    assert (len(data.test), len(data.validation), len(data.train)) == (4, 2, 6)
    every = [*data.train, *data.validation, *data.test]
    assert {r["length"] for r in every} == {0, 1000}
    for row in every:
        text = detokenize(row["input_ids"][:-1])  # the last input is the answer itself
        assert text.endswith("where is mary ?")
        answer = WORDS[row["labels"][-2]]
        assert answer in ROOMS and f"mary moved to the {answer} ." in text
        assert any(w.startswith("<w") for w in text.split()), "unknown book words fall in hash buckets"


def test_source_without_files_is_a_clear_error(tmp_path):
    with pytest.raises(SpecError, match="neither bAbI"):
        Babi(BabiConfig(source=str(tmp_path))).build(0)
    with pytest.raises(SpecError, match="not a folder"):
        Babi(BabiConfig(source=str(tmp_path / "missing"))).build(0)
