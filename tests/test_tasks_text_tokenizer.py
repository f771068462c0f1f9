"""bAbI / BABILong with a real tokenizer (trained and saved here), samples laid out as BABILong's."""

from __future__ import annotations

import json

import pytest
from hf_models import save_tiny_tokenizer

from ponderlab.core.errors import SpecError
from ponderlab.core.interfaces import IGNORE_INDEX
from ponderlab.plugins.tasks.babi import Babi, BabiConfig
from ponderlab.plugins.tasks.text_tokenizer import sentence_text


@pytest.fixture(scope="module")
def tokenizer_path(tmp_path_factory):
    return save_tiny_tokenizer(tmp_path_factory.mktemp("tokenizer"))


def task(tokenizer_path, **options):
    sizes = {"train_size": 12, "validation_size": 4, "test_size": 4, "min_facts": 2, "max_facts": 4}
    return Babi(BabiConfig(tokenizer=str(tokenizer_path), **{**sizes, **options}))


def tokens_of(babi, ids):
    return babi.vocabulary.tokenizer.convert_ids_to_tokens([int(i) for i in ids])


def test_sentences_become_text_and_answers_stay_words():
    assert sentence_text(["mary", "moved", "to", "the", "bathroom", "."]) == "Mary moved to the bathroom."
    assert sentence_text(["where", "is", "mary", "?"]) == "Where is mary?"
    assert sentence_text(["bathroom"]) == "bathroom"


def test_samples_are_context_question_gen_answer_eos_scored_on_answer_and_eos(tokenizer_path):
    babi = task(tokenizer_path, lengths=[60])
    assert babi.vocab_size == len(babi.vocabulary.tokenizer)
    for row in babi.build(seed=0).train:
        ids, labels = row["input_ids"], row["labels"]
        tokens = tokens_of(babi, ids)
        gen = tokens.index("GEN")
        assert tokens[-1] == "<eos>" and tokens[gen - 4 : gen - 2] == ["Where", "is"] and tokens[gen - 1] == "?"
        scored = [t for t, label in enumerate(labels) if label != IGNORE_INDEX]
        assert scored == list(range(gen, len(ids) - 1))  # GEN predicts the answer, the answer predicts eos
        assert [labels[t] for t in scored] == ids[gen + 1 :]
        assert gen <= 60 + 1 and "[UNK]" not in tokens
        assert tokens[gen + 1] == tokens[gen + 1].lower()  # answers are not capitalised


def test_facts_keep_their_order_among_noise_within_the_target_length(tokenizer_path):
    babi = task(tokenizer_path, lengths=[80])
    vocabulary = babi.vocabulary
    for row in babi.build(seed=1).test:
        text = vocabulary.decode(row["input_ids"])
        context = text[: text.index("Where is")]
        assert len(vocabulary.encode(context)) <= 80 - 4  # the question (4 tokens) fits too
        facts = [s.strip() + "." for s in context.split(".") if s.strip() and s.split()[0].istitle()]
        stories = [s for s in facts if any(name in s for name in ("Mary", "John", "Sandra", "Daniel"))]
        assert stories  # facts are there, as sentences of their own
        assert len(vocabulary.encode(context)) > sum(len(vocabulary.encode(s)) for s in stories)  # and noise


def test_babilong_tables_are_tokenized_whole(tmp_path, tokenizer_path):
    folder = tmp_path / "data" / "qa1"
    folder.mkdir(parents=True)
    records = [{"input": f"Mary moved to the {room}. It seemed dark.", "question": "Where is Mary?", "target": room}
               for room in ("bathroom", "hallway", "office", "kitchen", "garden", "bedroom")]
    (folder / "1k.json").write_text(json.dumps(records))
    babi = task(tokenizer_path, source=str(tmp_path), train_size=2, validation_size=2, test_size=2,
                min_facts=None, max_facts=None)
    data = babi.build(seed=0)
    row = data.test[0]
    tokens = tokens_of(babi, row["input_ids"])
    room = tokens[tokens.index("GEN") + 1]
    assert " ".join(tokens) == f"Mary moved to the {room} . It seemed dark . Where is Mary ? GEN {room} <eos>"
    assert row["length"] == 1000 and len(data.train) == 2


def test_a_bad_tokenizer_path_is_one_clear_error(tmp_path):
    with pytest.raises(SpecError, match="task.tokenizer.*cannot load a tokenizer"):
        Babi(BabiConfig(tokenizer=str(tmp_path / "missing"))).build(seed=0)
