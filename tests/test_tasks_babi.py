"""babi: simulated stories checked by an independent interpreter, padding, published layouts."""

from __future__ import annotations

import numpy as np
import pytest

from ponderlab.core.interfaces import IGNORE_INDEX
from ponderlab.plugins.tasks.babi import Babi, BabiConfig
from ponderlab.plugins.tasks.babi_vocab import WordVocabulary, split_words
from ponderlab.plugins.tasks.babi_world import (
    ACTORS,
    FILLER_WORDS,
    OBJECTS,
    ROOMS,
    SIMULATOR_VOCABULARY,
    padded_prompt,
    random_story,
)

VOCAB = SIMULATOR_VOCABULARY
WORD_ID = VOCAB.ids
WORDS = VOCAB.words
detokenize = VOCAB.decode


def word_id(word: str) -> int:
    return WORD_ID[word]

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
    cfg = BabiConfig(
        qa="qa1", min_facts=2, max_facts=10, lengths=[0], test_lengths=[0, 100, 400],
        train_size=40, validation_size=20, test_size=60,
    )
    task = Babi(cfg)
    data = task.build(0)
    assert task.vocab_size == VOCAB.size == len(WORDS)
    assert set(data.train["length"]) == {0}
    assert set(data.test["length"]) == {0, 100, 400}
    for row in data.test:
        scored = [(t, y) for t, y in enumerate(row["labels"]) if y != IGNORE_INDEX]
        assert len(scored) == 1
        t, answer = scored[0]
        assert row["input_ids"][t] == WORD_ID["?"] and WORDS[answer] in ROOMS
        assert len(row["input_ids"]) - 1 <= max(row["length"], 74)  # <= 10 facts of <= 7 tokens, a 4-token question
    assert Babi(BabiConfig(lengths=[0, 50])).batch_group_column() == "length"


def test_word_vocabulary_gives_every_word_its_own_id():
    vocabulary = WordVocabulary.from_texts(("the",), ["Mary moved to the Bathroom.", "Is the square yes? yes!"])
    assert vocabulary.words == ("<pad>", ".", "?", "the", "bathroom", "is", "mary", "moved", "square", "to", "yes")
    ids = vocabulary.encode("Yes, the square is yes?")
    assert vocabulary.decode(ids) == "yes the square is yes ?"
    assert ids[0] == ids[4] != ids[2]
    assert split_words("Don't go, John's dog!") == ["don't", "go", "john's", "dog"]
    with pytest.raises(KeyError, match="zanzibar"):
        vocabulary.encode("zanzibar")


# --------------------------------------------------------------------------- statistics of the real files

# ../shared/reference/tasks.md, measured on the real bAbI en files
REAL_QA1_WENT_BACK = 0.19  # share of qa1 sentences, mostly on first visits to the room
REAL_QA2_THERE_AFTER_DROP = 0.18  # "there" ends every grab and about this share of drops
REAL_QA2_STORY = (15.4, 56)  # statements before a question: mean, max
REAL_QA3_STORY = (50, 224)


def stories(qa: str, n: int, seed: int = 0) -> list:
    rng = np.random.default_rng(seed)
    return [random_story(rng, qa) for _ in range(n)]


def test_qa1_went_back_is_a_fifth_of_sentences_mostly_on_first_visits():
    went_back = first_visits = total = 0
    for story in stories("qa1", 600):
        been: dict[str, set[str]] = {}
        for words in story.facts:
            actor, room = words[0], words[-2]
            total += 1
            if words[1:3] == ["went", "back"]:
                went_back += 1
                first_visits += room not in been.get(actor, set())
            been.setdefault(actor, set()).add(room)
    share = went_back / total  # ~3600 sentences: standard deviation about 0.007
    assert abs(share - REAL_QA1_WENT_BACK) < 0.03, share
    assert first_visits > 0.5 * went_back


def test_qa2_there_ends_every_grab_and_some_drops():
    grabs = drops = drops_there = 0
    for story in stories("qa2", 300):
        for words in story.facts:
            if words[1] in GRABS:
                grabs += 1
                assert words[-2:] == ["there", "."], words
            elif words[1] in DROPS:
                drops += 1
                drops_there += words[-2] == "there"
    share = drops_there / drops  # ~900 drops: standard deviation about 0.013
    assert grabs > 500 and abs(share - REAL_QA2_THERE_AFTER_DROP) < 0.05, share


@pytest.mark.parametrize(("qa", "n", "real"), [("qa2", 1000, REAL_QA2_STORY), ("qa3", 250, REAL_QA3_STORY)])
def test_story_lengths_match_the_real_files(qa, n, real):
    lengths = np.array([len(story.facts) for story in stories(qa, n)])
    real_mean, real_max = real
    standard_error = lengths.std() / np.sqrt(n)
    assert abs(lengths.mean() - real_mean) < 4 * standard_error + 0.02 * real_mean, lengths.mean()
    assert 0.5 * real_max < lengths.max() < 1.5 * real_max, lengths.max()


@pytest.mark.parametrize("qa", ["qa1", "qa2", "qa3"])
def test_bounded_story_lengths_stay_within_the_bounds(qa):
    rng = np.random.default_rng(0)
    lengths = {len(random_story(rng, qa, 3, 5).facts) for _ in range(60)}
    assert lengths == {3, 4, 5}
