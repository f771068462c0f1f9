"""Word-level tokenisation of bAbI and BABILong text: the one place that turns text into ids.

`split_words` lower-cases text and keeps words (letters, digits, an inner
apostrophe) and the two marks `.` and `?`; every other character is dropped.
`WordVocabulary` gives each word of its list one id (0 is padding), so two words
never share an id. A task builds its vocabulary from the words its data can
hold (the simulator's words, or every word of the files it reads) and encodes
and decodes through it (`Babi.vocabulary`); another tokenizer can replace it by
offering the same members: `size`, `encode(text)`, `encode_words(words)` (the
simulator's sentences and the distractors come as word lists) and `decode(ids)`.
"""

from __future__ import annotations

import re
from collections.abc import Iterable

PAD = "<pad>"
MARKS = (".", "?")
_WORD_PATTERN = re.compile(r"[a-z0-9]+(?:'[a-z]+)?|[.?]")


def split_words(text: str) -> list[str]:
    """Lower-case words and `.`/`?` of `text`; other punctuation is dropped."""
    return _WORD_PATTERN.findall(text.lower())


class WordVocabulary:
    """One id per word: 0 = padding, then `.` and `?`, then the words in the order given."""

    def __init__(self, words: Iterable[str]):
        self.words: tuple[str, ...] = tuple(dict.fromkeys((PAD, *MARKS, *words)))
        self.ids = {word: i for i, word in enumerate(self.words)}

    @classmethod
    def from_texts(cls, fixed: Iterable[str], texts: Iterable[str]) -> WordVocabulary:
        """`fixed` words first (in order), then every other word of `texts`, sorted."""
        fixed = tuple(fixed)
        seen = set(fixed)
        found = {word for text in texts for word in split_words(text)} - seen
        return cls((*fixed, *sorted(found)))

    @property
    def size(self) -> int:
        return len(self.words)

    def encode_words(self, words: Iterable[str]) -> list[int]:
        """Ids of words already split; a word outside the vocabulary is a KeyError naming it."""
        try:
            return [self.ids[w] for w in words]
        except KeyError as missing:
            raise KeyError(f"word {missing.args[0]!r} is not in the vocabulary") from None

    def encode(self, text: str) -> list[int]:
        return self.encode_words(split_words(text))

    def decode(self, ids: Iterable[int]) -> str:
        return " ".join(self.words[i] for i in ids)
