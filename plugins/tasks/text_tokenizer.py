"""A real tokenizer for text tasks: bAbI / BABILong samples in a Hugging Face tokenizer's ids.

`tokenizer: <hub id or path>` on the babi task loads `AutoTokenizer` and
replaces the word vocabulary (babi_vocab.py) with `TokenizerVocabulary`, which
offers the same members (`size`, `encode`, `encode_words`, `decode`). Samples
then follow BABILong's fine-tuning code (booydar/recurrent-memory-transformer,
babilong-release: `babilong_utils.py` NoiseInjectionDataset and the collate
function of `run_finetuning_babilong_rmt.py`):

    context  = the fact sentences, in order, among noise sentences at random sentence
               boundaries, each sentence tokenized on its own (no special tokens), noise
               added while the prompt stays within the target length (babi_world.padded_prompt);
    sequence = context + question + [GEN] + answer + [eos],   GEN = the first token of "GEN";

scored on the answer tokens and the eos (labels[t] is the token predicted at t, so
the GEN position predicts the answer's first token). BABILong tables already hold
their noisy `input`, which is tokenized whole.
"""

from __future__ import annotations

from collections.abc import Iterable
from typing import TYPE_CHECKING

from ponderlab.core.errors import SpecError

if TYPE_CHECKING:  # transformers is imported where a tokenizer is loaded: listing plugins stays quick
    from transformers import PreTrainedTokenizerBase

GEN_TEXT = "GEN"


def load_tokenizer(source: str, where: str = "task.tokenizer") -> PreTrainedTokenizerBase:
    """AutoTokenizer of a hub id or local path; SpecError naming `where` when it cannot load."""
    from transformers import AutoTokenizer

    try:
        return AutoTokenizer.from_pretrained(source)
    except (OSError, ValueError, KeyError, TypeError) as error:
        raise SpecError(f"cannot load a tokenizer from {source!r}: {error}", path=where) from None


def sentence_text(words: Iterable[str]) -> str:
    """bAbI word lists as text: 'mary moved to the bathroom .' -> 'Mary moved to the bathroom.';
    words that end without `.`/`?` (an answer) stay as they are: 'bathroom'."""
    words = list(words)
    text = " ".join(words).replace(" .", ".").replace(" ?", "?")
    if words and words[-1] in (".", "?"):
        text = text[:1].upper() + text[1:]
    return text


class TokenizerVocabulary:
    """A Hugging Face tokenizer behind babi's vocabulary members, plus BABILong's answer framing."""

    def __init__(self, tokenizer: PreTrainedTokenizerBase):
        self.tokenizer = tokenizer
        self.gen = self.encode(GEN_TEXT)[0]
        if tokenizer.eos_token_id is None:
            raise SpecError("the tokenizer has no eos token (BABILong ends every answer with it)",
                            path="task.tokenizer")
        self.eos = int(tokenizer.eos_token_id)

    @classmethod
    def load(cls, source: str) -> TokenizerVocabulary:
        return cls(load_tokenizer(source))

    @property
    def size(self) -> int:
        return len(self.tokenizer)

    def encode(self, text: str) -> list[int]:
        return [int(t) for t in self.tokenizer.encode(text, add_special_tokens=False)]

    def encode_words(self, words: Iterable[str]) -> list[int]:
        """A sentence given as words (the simulator's facts, questions, distractors)."""
        return self.encode(sentence_text(words))

    def decode(self, ids: Iterable[int]) -> str:
        return self.tokenizer.decode(list(ids))

    def frame(self, prompt: list[int], answer: list[int]) -> tuple[list[int], list[int]]:
        """BABILong's layout: (prompt + [GEN], answer + [eos]); the second part is what is scored."""
        return prompt + [self.gen], answer + [self.eos]
