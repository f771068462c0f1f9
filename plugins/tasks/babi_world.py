"""bAbI-style stories (qa1-qa3) from a small world simulator, their word vocabulary and distractors.

The world has bAbI's four actors, six rooms and three objects. Actors move
between rooms, grab objects that lie where they stand (or whose place was never
mentioned), and drop what they carry; a carried object moves with its carrier.
Sentences use bAbI's wording ("mary journeyed to the office .", "john picked up
the milk there ."), so the published files tokenize into the same ids.

Distractor sentences (BABILong-style padding) come from a separate filler
vocabulary that never names an actor, a room or an object, so they cannot
change an answer.
"""

from __future__ import annotations

import re
import zlib
from collections.abc import Iterator
from dataclasses import dataclass, field

import numpy as np

ACTORS = ("mary", "john", "daniel", "sandra")
ROOMS = ("bathroom", "bedroom", "garden", "hallway", "kitchen", "office")
OBJECTS = ("apple", "football", "milk")
MOVE_VERBS = (("moved",), ("went",), ("journeyed",), ("travelled",))
GRAB_VERBS = (("got",), ("grabbed",), ("picked", "up"), ("took",))
DROP_VERBS = (("dropped",), ("discarded",), ("put", "down"), ("left",))
FUNCTION_WORDS = ("the", "to", "back", "there", "where", "is", "was", "before")

FILLER_ADJECTIVES = ("old", "young", "quiet", "dark", "bright", "small", "large", "cold", "warm", "strange")
FILLER_NOUNS = (
    "man", "woman", "child", "dog", "cat", "horse", "bird", "ship", "river", "road",
    "hill", "letter", "book", "song", "storm", "tree", "door", "village", "captain", "stranger",
)
FILLER_VERBS = ("saw", "found", "watched", "followed", "heard", "crossed", "remembered", "described")
FILLER_PREPOSITIONS = ("near", "behind", "beside", "across")
FILLER_WORDS = ("a", "it", "and", "seemed", *FILLER_ADJECTIVES, *FILLER_NOUNS, *FILLER_VERBS, *FILLER_PREPOSITIONS)

#: Words outside the vocabulary (e.g. BABILong's book text) hash into this many ids.
UNKNOWN_BUCKETS = 64

PAD = 0
SPECIAL = ("<pad>", ".", "?")
_VERB_WORDS = tuple(dict.fromkeys(w for verbs in (MOVE_VERBS, GRAB_VERBS, DROP_VERBS) for v in verbs for w in v))
WORDS: tuple[str, ...] = tuple(
    dict.fromkeys(
        (*SPECIAL, *FUNCTION_WORDS, *ACTORS, *ROOMS, *OBJECTS, *_VERB_WORDS, *FILLER_WORDS)
    )
) + tuple(f"<w{i}>" for i in range(UNKNOWN_BUCKETS))
WORD_ID = {word: i for i, word in enumerate(WORDS)}
VOCAB_SIZE = len(WORDS)
_FIRST_BUCKET = WORD_ID["<w0>"]
_TOKEN_PATTERN = re.compile(r"[a-z0-9]+(?:'[a-z]+)?|[.?]")


def word_id(word: str) -> int:
    """The id of a lower-case word; unknown words share UNKNOWN_BUCKETS ids by CRC32."""
    found = WORD_ID.get(word)
    if found is not None:
        return found
    return _FIRST_BUCKET + zlib.crc32(word.encode()) % UNKNOWN_BUCKETS


def tokenize(text: str) -> list[int]:
    """Lower-case words and `.`/`?` to ids; other punctuation is dropped."""
    return [word_id(w) for w in _TOKEN_PATTERN.findall(text.lower())]


def detokenize(ids: list[int]) -> str:
    return " ".join(WORDS[i] for i in ids)


# --------------------------------------------------------------------------- world


@dataclass
class World:
    """Where every actor is, who holds what, and each object's history of rooms."""

    actor_room: dict[str, str | None] = field(default_factory=lambda: dict.fromkeys(ACTORS))
    visited: dict[str, set[str]] = field(default_factory=lambda: {a: set() for a in ACTORS})
    holder: dict[str, str | None] = field(default_factory=lambda: dict.fromkeys(OBJECTS))
    object_room: dict[str, str | None] = field(default_factory=lambda: dict.fromkeys(OBJECTS))
    history: dict[str, list[str]] = field(default_factory=lambda: {o: [] for o in OBJECTS})

    def _place(self, obj: str, room: str) -> None:
        self.object_room[obj] = room
        if not self.history[obj] or self.history[obj][-1] != room:
            self.history[obj].append(room)

    def move(self, actor: str, room: str) -> None:
        self.actor_room[actor] = room
        self.visited[actor].add(room)
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


def _sentence(rng: np.random.Generator, kind: str, world: World, who: str, what: str) -> list[str]:
    if kind == "move":
        if what in world.visited[who] and rng.random() < 0.3:
            return [who, "went", "back", "to", "the", what, "."]
        return [who, *_pick(rng, MOVE_VERBS), "to", "the", what, "."]
    verbs = GRAB_VERBS if kind == "grab" else DROP_VERBS
    there = ["there"] if rng.random() < 0.5 else []
    return [who, *_pick(rng, verbs), "the", what, *there, "."]


def simulate(rng: np.random.Generator, n_facts: int, qa: str) -> tuple[list[list[str]], World]:
    """`n_facts` sentences of random possible actions (moves only for qa1)."""
    world = World()
    facts = []
    weights = {"move": 1.0} if qa == "qa1" else {"move": 0.5, "grab": 0.3, "drop": 0.2}
    for _ in range(n_facts):
        options = {"move": world.moves(), "grab": world.grabs(), "drop": world.drops()}
        kinds = [k for k in weights if options[k]]
        point = rng.random() * sum(weights[k] for k in kinds)
        for kind in kinds:  # weighted choice among the possible kinds
            point -= weights[kind]
            if point < 0:
                break
        who, what = _pick(rng, options[kind])
        facts.append(_sentence(rng, kind, world, who, what))
        getattr(world, kind)(who, what)
    return facts, world


def ask(rng: np.random.Generator, world: World, qa: str) -> tuple[list[str], str] | None:
    """A question the story answers, or None when it has none of this kind."""
    if qa == "qa1":
        placed = [a for a in ACTORS if world.actor_room[a] is not None]
        if not placed:
            return None
        actor = _pick(rng, placed)
        return ["where", "is", actor, "?"], world.actor_room[actor]
    if qa == "qa2":
        # the object's place follows from where it was grabbed or carried (two facts)
        placed = [o for o in OBJECTS if world.history[o]]
        if not placed:
            return None
        obj = _pick(rng, placed)
        return ["where", "is", "the", obj, "?"], world.object_room[obj]
    # qa3: the room an object was in just before a room it visited once
    options = [
        (o, i)
        for o in OBJECTS
        for i, room in enumerate(world.history[o])
        if i >= 1 and world.history[o].count(room) == 1
    ]
    if not options:
        return None
    obj, i = _pick(rng, options)
    return ["where", "was", "the", obj, "before", "the", world.history[obj][i], "?"], world.history[obj][i - 1]


def random_story(
    rng: np.random.Generator, qa: str, min_facts: int, max_facts: int, max_attempts: int = 1000
) -> Story:
    """A story of U[min_facts, max_facts] sentences with one answerable question."""
    for _ in range(max_attempts):
        facts, world = simulate(rng, int(rng.integers(min_facts, max_facts + 1)), qa)
        asked = ask(rng, world, qa)
        if asked is not None:
            return Story(facts, *asked)
    raise RuntimeError(f"no {qa} question in {max_attempts} stories of {min_facts}-{max_facts} facts")


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
    rng: np.random.Generator, facts: list[list[int]], question: list[int], target_length: int
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
        sentence = [word_id(w) for w in distractor(draws)]
        if used + len(sentence) > target_length:
            break
        fillers.append(sentence)
        used += len(sentence)
    gaps = np.sort(rng.integers(0, len(facts) + 1, size=len(fillers)))  # filler i goes before fact gaps[i]
    prompt: list[int] = []
    next_filler = 0
    for index in range(len(facts) + 1):
        while next_filler < len(fillers) and gaps[next_filler] == index:
            prompt += fillers[next_filler]
            next_filler += 1
        if index < len(facts):
            prompt += facts[index]
    return prompt + question
