"""bAbI / BABILong with a real tokenizer (trained and saved here), samples laid out as BABILong's."""

from __future__ import annotations

import json

import numpy as np
import pytest
from hf_models import save_tiny_tokenizer

from ponderlab.core.errors import SpecError
from ponderlab.core.interfaces import IGNORE_INDEX
from ponderlab.plugins.tasks.babi import Babi, BabiConfig


@pytest.fixture(scope="module")
def tokenizer_path(tmp_path_factory):
    return save_tiny_tokenizer(tmp_path_factory.mktemp("tokenizer"))


def task(tokenizer_path, **options):
    sizes = {"train_size": 12, "validation_size": 4, "test_size": 4, "max_facts": 4}
    return Babi(BabiConfig(tokenizer=str(tokenizer_path), **{**sizes, **options}))


def words(babi, ids):
    return [babi.text.tokenizer.convert_ids_to_tokens(int(i)) for i in ids]


def test_samples_are_context_question_gen_answer_eos_scored_on_answer_and_eos(tokenizer_path):
    babi = task(tokenizer_path, lengths=[60])
    assert babi.vocab_size == len(babi.text.tokenizer)
    for row in babi.build(seed=0).train:
        ids, labels = row["input_ids"], row["labels"]
        tokens = words(babi, ids)
        gen = tokens.index("GEN")
        assert tokens[-1] == "<eos>" and tokens[gen - 1] == "?"  # ... question ? GEN answer <eos>
        scored = [t for t, label in enumerate(labels) if label != IGNORE_INDEX]
        assert scored == list(range(gen, len(ids) - 1))  # GEN predicts the answer, the answer predicts eos
        assert [labels[t] for t in scored] == ids[gen + 1 :]
        assert tokens[gen - 4 : gen - 2] == ["Where", "is"] and len(ids) - gen <= 3 + 60  # qa1's question
        assert tokens.count("[UNK]") == 0


def test_facts_keep_their_order_among_noise_within_the_target_length(tokenizer_path):
    babi = task(tokenizer_path, lengths=[80])
    rng = np.random.default_rng(3)
    facts = ["Mary moved to the bathroom.", "John went to the hallway.", "Mary travelled to the office."]
    noise = iter(["It seemed quiet and dark."] * 100)
    context = babi.text.context(rng, facts, noise, 80)
    assert len(context) <= 80
    text = " ".join(words(babi, context))
    positions = [text.index(" ".join(words(babi, babi.text.encode(f)))) for f in facts]
    assert positions == sorted(positions)
    assert text.count("seemed") == (80 - sum(len(babi.text.encode(f)) for f in facts)) // 6  # 6-token noise
    # Without room for noise: the facts alone.
    assert babi.text.context(rng, facts, noise, 0) == [t for f in facts for t in babi.text.encode(f)]


def test_babilong_tables_are_tokenized_whole(tmp_path, tokenizer_path):
    folder = tmp_path / "1k"
    folder.mkdir()
    records = [{"input": f"Mary moved to the {room}. It seemed dark.", "question": "Where is Mary?", "target": room}
               for room in ("bathroom", "hallway", "office", "kitchen", "garden", "bedroom")]
    (folder / "qa1.jsonl").write_text("\n".join(json.dumps(r) for r in records))
    babi = task(tokenizer_path, source=str(tmp_path), train_size=2, validation_size=2, test_size=2)
    data = babi.build(seed=0)
    row = data.test[0]
    tokens = words(babi, row["input_ids"])
    room = tokens[tokens.index("GEN") + 1]
    assert " ".join(tokens) == f"Mary moved to the {room} . It seemed dark . Where is Mary ? GEN {room} <eos>"
    assert row["length"] == 1000 and len(data.train) == 2


def test_a_bad_tokenizer_path_is_one_clear_error(tmp_path):
    with pytest.raises(SpecError, match="task.tokenizer.*cannot load a tokenizer"):
        Babi(BabiConfig(tokenizer=str(tmp_path / "missing")))
