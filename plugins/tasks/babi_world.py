"""bAbI-style stories (qa1-qa3) from a small world simulator, and BABILong-style distractor padding.

The world has bAbI's four actors, six rooms and three objects. Actors move
between rooms, grab objects that lie where they stand (or whose place was never
mentioned), and drop what they carry; a carried object moves with its carrier.
Sentences use bAbI's wording and, by default, its statistics (tasks.md, from the
real en files): a move picks one of five forms uniformly ("moved", "went",
"journeyed", "travelled", "went back", so "went back" is a fifth of the moves
whatever the actor's history, mostly on first visits); every grab ends with
"there", a drop with probability 0.18; a story asks a question after every two
statements (qa1) or after a geometric number of statements (qa2 mean 5.1, qa3
16.5), and an example is the story up to one of its first five questions, so
contexts average about 6 (qa1), 15.4 (qa2) and 50 (qa3) statements.

Distractor sentences (BABILong-style padding) come from a separate filler
vocabulary that never names an actor, a room or an object, so they cannot
change an answer.
"""

from __future__ import annotations

from collections.abc import Iterator
from dataclasses import dataclass, field

import numpy as np

from .babi_vocab import WordVocabulary

ACTORS = ("mary", "john", "daniel", "sandra")
ROOMS = ("bathroom", "bedroom", "garden", "hallway", "kitchen", "office")
OBJECTS = ("apple", "football", "milk")
MOVE_FORMS = (("moved",), ("went",), ("journeyed",), ("travelled",), ("went", "back"))
GRAB_VERBS = (("got",), ("grabbed",), ("picked", "up"), ("took",))
DROP_VERBS = (("dropped",), ("discarded",), ("put", "down"), ("left",))
FUNCTION_WORDS = ("the", "to", "back", "there", "where", "is", "was", "before")
#: share of drops followed by "there" in the real qa2 file (every grab has it)
THERE_AFTER_DROP = 0.18
#: questions per story in the bAbI files; an example stops at one of them
QUESTIONS_PER_STORY = 5
#: statements between two questions: exactly 2 in qa1, a geometric number with this mean in qa2/qa3
STATEMENTS_PER_QUESTION = {"qa1": 2.0, "qa2": 5.1, "qa3": 16.5}
SIMULATED_TASKS = ("qa1", "qa2", "qa3")

FILLER_ADJECTIVES = ("old", "young", "quiet", "dark", "bright", "small", "large", "cold", "warm", "strange")
FILLER_NOUNS = (
    "man", "woman", "child", "dog", "cat", "horse", "bird", "ship", "river", "road",
    "hill", "letter", "book", "song", "storm", "tree", "door", "village", "captain", "stranger",
)
FILLER_VERBS = ("saw", "found", "watched", "followed", "heard", "crossed", "remembered", "described")
FILLER_PREPOSITIONS = ("near", "behind", "beside", "across")
FILLER_WORDS = ("a", "it", "and", "seemed", *FILLER_ADJECTIVES, *FILLER_NOUNS, *FILLER_VERBS, *FILLER_PREPOSITIONS)

_VERB_WORDS = tuple(dict.fromkeys(w for verbs in (MOVE_FORMS, GRAB_VERBS, DROP_VERBS) for v in verbs for w in v))
#: every word a simulated story or a distractor can hold, in a fixed order
SIMULATOR_WORDS: tuple[str, ...] = tuple(
    dict.fromkeys((*FUNCTION_WORDS, *ACTORS, *ROOMS, *OBJECTS, *_VERB_WORDS, *FILLER_WORDS))
)
SIMULATOR_VOCABULARY = WordVocabulary(SIMULATOR_WORDS)


# --------------------------------------------------------------------------- world


@dataclass
class World:
    """Where every actor is, who holds what, and each object's history of rooms."""

    actor_room: dict[str, str | None] = field(default_factory=lambda: dict.fromkeys(ACTORS))
    holder: dict[str, str | None] = field(default_factory=lambda: dict.fromkeys(OBJECTS))
    object_room: dict[str, str | None] = field(default_factory=lambda: dict.fromkeys(OBJECTS))
    history: dict[str, list[str]] = field(default_factory=lambda: {o: [] for o in OBJECTS})

    def _place(self, obj: str, room: str) -> None:
        self.object_room[obj] = room
        if not self.history[obj] or self.history[obj][-1] != room:
            self.history[obj].append(room)

    def move(self, actor: str, room: str) -> None:
        self.actor_room[actor] = room
        for obj, holder in self.holder.items():
            if holder == actor:
                self._place(obj, room)

    def grab(self, actor: str, obj: str) -> None:
        self.holder[obj] = actor
        self._place(obj, self.actor_room[actor])

    def drop(self, actor: str, obj: str) -> None:
        self.holder[obj] = None

    # ---- which actions are possible now
    def moves(self) -> list[tuple[str, str]]:
        return [(a, r) for a in ACTORS for r in ROOMS if r != self.actor_room[a]]

    def grabs(self) -> list[tuple[str, str]]:
        return [
            (a, o)
            for a in ACTORS
            for o in OBJECTS
            if self.actor_room[a] is not None
            and self.holder[o] is None
            and self.object_room[o] in (None, self.actor_room[a])
        ]

    def drops(self) -> list[tuple[str, str]]:
        return [(h, o) for o, h in self.holder.items() if h is not None]


@dataclass
class Story:
    facts: list[list[str]]  # one word list per sentence, ending with "."
    question: list[str]  # ending with "?"
    answer: str


def _pick(rng: np.random.Generator, options):
    return options[int(rng.integers(len(options)))]


def _sentence(rng: np.random.Generator, kind: str, who: str, what: str) -> list[str]:
    if kind == "move":
        return [who, *_pick(rng, MOVE_FORMS), "to", "the", what, "."]
    if kind == "grab":
        return [who, *_pick(rng, GRAB_VERBS), "the", what, "there", "."]
    there = ["there"] if rng.random() < THERE_AFTER_DROP else []
    return [who, *_pick(rng, DROP_VERBS), "the", what, *there, "."]


class StoryWriter:
    """A story told one random possible action at a time (moves only for qa1)."""

    def __init__(self, qa: str):
        self.world = World()
        self.facts: list[list[str]] = []
        self.weights = {"move": 1.0} if qa == "qa1" else {"move": 0.5, "grab": 0.3, "drop": 0.2}

    def step(self, rng: np.random.Generator) -> None:
        world = self.world
        options = {"move": world.moves(), "grab": world.grabs(), "drop": world.drops()}
        kinds = [k for k in self.weights if options[k]]
        point = rng.random() * sum(self.weights[k] for k in kinds)
        for kind in kinds:  # weighted choice among the possible kinds
            point -= self.weights[kind]
            if point < 0:
                break
        who, what = _pick(rng, options[kind])
        self.facts.append(_sentence(rng, kind, who, what))
        getattr(world, kind)(who, what)


def babi_story_length(rng: np.random.Generator, qa: str) -> int:
    """Statements before a question, as in the bAbI files: the question is one of a story's first five.

    qa1 asks after every two statements; in qa2/qa3 the statements between two
    questions are 1 + a negative binomial count (shape 2) with mean
    STATEMENTS_PER_QUESTION[qa], a tail between Poisson's and geometric's.
    """
    question = int(rng.integers(1, QUESTIONS_PER_STORY + 1))
    mean = STATEMENTS_PER_QUESTION[qa]
    if qa == "qa1":
        return int(mean) * question
    extra = mean - 1
    return question + int(rng.negative_binomial(2, 2 / (2 + extra), size=question).sum())


def ask(rng: np.random.Generator, world: World, qa: str) -> tuple[list[str], str] | None:
    """A question the story answers, or None when it has none of this kind."""
    if qa == "qa1":
        options = [
            (["where", "is", a, "?"], world.actor_room[a])
            for a in ACTORS
            if world.actor_room[a] is not None
        ]
    elif qa == "qa2":
        # the object's place follows from where it was grabbed or carried (two facts)
        options = [
            (["where", "is", "the", o, "?"], world.object_room[o])
            for o in OBJECTS
            if world.history[o]
        ]
    else:
        # qa3: the room an object was in just before a room it visited once
        options = [
            (["where", "was", "the", o, "before", "the", room, "?"], world.history[o][i - 1])
            for o in OBJECTS
            for i, room in enumerate(world.history[o])
            if i >= 1 and world.history[o].count(room) == 1
        ]
    return _pick(rng, options) if options else None


def random_story(
    rng: np.random.Generator,
    qa: str,
    min_facts: int | None = None,
    max_facts: int | None = None,
    max_extra_facts: int = 50,
    max_attempts: int = 1000,
) -> Story:
    """A story with one answerable question at its end.

    Its length is bAbI's (`babi_story_length`) or, with both bounds given,
    U[min_facts, max_facts]; where no question of this kind is answerable yet,
    a bAbI-length story goes on until one is (bAbI asks only answerable
    questions), or starts again after `max_extra_facts` more statements; a
    bounded story starts again at once, so it keeps within the bounds.
    """
    if qa not in SIMULATED_TASKS:
        raise ValueError(f"the simulator writes {SIMULATED_TASKS} stories, not {qa}")
    bounded = min_facts is not None and max_facts is not None
    for _ in range(max_attempts):
        n_facts = int(rng.integers(min_facts, max_facts + 1)) if bounded else babi_story_length(rng, qa)
        writer = StoryWriter(qa)
        for _ in range(n_facts):
            writer.step(rng)
        for extra in range(max_extra_facts + 1):  # a qa3 story can run out of questions: then start again
            asked = ask(rng, writer.world, qa)
            if asked is not None:
                return Story(writer.facts, *asked)
            if bounded or extra == max_extra_facts:
                break
            writer.step(rng)
    raise RuntimeError(f"no {qa} question in {max_attempts} stories")


# --------------------------------------------------------------------------- padding


#: a distractor has at least this many tokens and uses at most DRAWS_PER_DISTRACTOR random numbers
MIN_DISTRACTOR_TOKENS = 6
DRAWS_PER_DISTRACTOR = 9


def distractor(draws: Iterator[int]) -> list[str]:
    """One filler sentence that names no actor, room or object (`draws`: random non-negative ints)."""

    def pick(options):
        return options[next(draws) % len(options)]

    form = next(draws) % 3
    if form == 0:
        return ["the", pick(FILLER_ADJECTIVES), pick(FILLER_NOUNS), pick(FILLER_VERBS), "the", pick(FILLER_NOUNS), "."]
    if form == 1:
        return ["a", pick(FILLER_NOUNS), pick(FILLER_VERBS), "a", pick(FILLER_ADJECTIVES), pick(FILLER_NOUNS),
                pick(FILLER_PREPOSITIONS), "the", pick(FILLER_NOUNS), "."]
    return ["it", "seemed", pick(FILLER_ADJECTIVES), "and", pick(FILLER_ADJECTIVES), "."]


def padded_prompt(
    rng: np.random.Generator,
    facts: list[list[int]],
    question: list[int],
    target_length: int,
    vocabulary: WordVocabulary = SIMULATOR_VOCABULARY,
) -> list[int]:
    """Facts in order with distractor sentences at random gaps, then the question.

    Distractors are added while the prompt stays within `target_length` tokens
    (0: none); facts longer than the target are kept whole.
    """
    used = sum(len(f) for f in facts) + len(question)
    budget = max(target_length - used, 0) // MIN_DISTRACTOR_TOKENS + 1
    draws = iter(rng.integers(0, 2**31, size=DRAWS_PER_DISTRACTOR * budget).tolist())
    fillers: list[list[int]] = []
    while True:
        sentence = vocabulary.encode_words(distractor(draws))
        if used + len(sentence) > target_length:
            break
        fillers.append(sentence)
        used += len(sentence)
    gaps = np.sort(rng.integers(0, len(facts) + 1, size=len(fillers)))  # filler i goes before fact gaps[i]
    sentences = list(facts)
    # the last filler first, so the gaps of the earlier ones stay valid
    for gap, filler in reversed(list(zip(gaps.tolist(), fillers, strict=True))):
        sentences.insert(gap, filler)
    return [token for sentence in sentences for token in sentence] + question
