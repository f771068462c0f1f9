"""dfa (RegBench): automata code, prompts, and the DFA-accuracy metric."""

from __future__ import annotations

import itertools
from types import SimpleNamespace

import numpy as np
import pytest
import torch
from torch import nn

from ponderlab.core.interfaces import IGNORE_INDEX
from ponderlab.core.model import PonderModel
from ponderlab.plugins.backbones.lstm import LSTMBackbone, LSTMConfig
from ponderlab.plugins.halting.none import NoHalting, NoHaltingConfig
from ponderlab.plugins.tasks.automata import DFA, minimize, random_minimal_dfa, reachable_states
from ponderlab.plugins.tasks.dfa import (
    DOT,
    N_LETTERS,
    SEP,
    VOCAB_SIZE,
    DFAConfig,
    RegBench,
    dfa_prediction_right,
    render,
)

SMALL = dict(train_size=12, validation_size=6, test_size=6, min_strings=2, max_strings=4, max_string_length=8)


def words_up_to(alphabet: list[int], length: int):
    for n in range(length + 1):
        yield from itertools.product(alphabet, repeat=n)


def same_language(a: DFA, b: DFA, alphabet: list[int], length: int = 6) -> bool:
    return all(a.accepts(list(w)) == b.accepts(list(w)) for w in words_up_to(alphabet, length))


def test_minimize_merges_equivalent_and_drops_unreachable_states():
    # 1 and 2 behave alike (only `c` back to 0); 3 is unreachable
    dfa = DFA(({0: 1, 1: 2}, {2: 0}, {2: 0}, {0: 0}))
    minimal = minimize(dfa)
    assert minimal.n_states == 2
    assert minimal.transitions == ({0: 1, 1: 1}, {2: 0})  # canonical breadth-first numbering
    assert same_language(dfa, minimal, [0, 1, 2])


def test_minimize_keeps_distinguishable_states():
    # a chain 0 -a-> 1 -a-> 2 (dead end): "aa" accepted, "aaa" not; all three states differ
    dfa = DFA(({0: 1}, {0: 2}, {}))
    assert minimize(dfa).n_states == 3
    assert dfa.accepts([0, 0]) and not dfa.accepts([0, 0, 0])


def test_canonical_form_ignores_state_names():
    a = DFA(({0: 1, 1: 2}, {0: 2}, {1: 0}))
    renamed = DFA(({0: 2, 1: 1}, {1: 0}, {0: 1}))  # states 1 and 2 swapped
    assert minimize(a) == minimize(renamed)


def test_random_minimal_dfas_have_regbench_properties():
    rng = np.random.default_rng(0)
    for _ in range(40):
        dfa = random_minimal_dfa(
            rng, min_states=4, max_states=12, alphabet_size=18, min_alphabet=4, max_alphabet=18, min_edges=1, max_edges=3
        )
        assert 4 <= dfa.n_states <= 12
        assert reachable_states(dfa) == list(range(dfa.n_states))
        assert minimize(dfa) == dfa
        letters = set()
        for state, edges in enumerate(dfa.transitions):
            assert 1 <= len(edges) <= 3
            assert state not in edges.values(), "no self loops"
            assert len(set(edges.values())) == len(edges), "distinct targets"
            letters |= set(edges)
        assert letters <= set(range(18))


def test_prompts_are_strings_the_dfa_accepts():
    data = RegBench(DFAConfig(**SMALL)).build(0)
    for row in data.train:
        dfa = DFA.from_table(row["dfa"], N_LETTERS)
        prompt = row["input_ids"] + [row["labels"][-1]]
        strings = render(prompt).split("|")
        assert len(strings) == row["strings"] and 2 <= row["strings"] <= 4
        assert row["states"] == dfa.n_states
        for text in strings:
            assert 1 <= len(text) <= 8
            assert dfa.accepts([ord(c) - ord("a") for c in text])
        assert row["labels"] == prompt[1:]


def test_splits_never_share_a_dfa():
    data = RegBench(DFAConfig(**SMALL)).build(1)
    tables = {split: {tuple(r["dfa"]) for r in data.split(split)} for split in ("train", "validation", "test")}
    assert not tables["train"] & tables["test"]
    assert not tables["train"] & tables["validation"]
    assert not tables["validation"] & tables["test"]


def test_test_max_strings_extrapolates():
    data = RegBench(DFAConfig(**{**SMALL, "test_max_strings": 9, "min_strings": 7, "max_strings": 7})).build(0)
    assert set(data.train["strings"]) == {7}
    assert max(data.test["strings"]) > 7


def test_dfa_accuracy_hand_computed():
    # 0 -a-> 1, 1 -b-> 0 ; prompt "ab|a" -> input "ab|", positions: after "a", after "ab", after "ab|"
    dfa = DFA(({0: 1}, {1: 0}))
    a, b = 0, 1
    inputs, labels = [a, b, SEP], [b, SEP, a]
    assert dfa_prediction_right(dfa, inputs, [b, a, a], labels) == (3, 3)  # ab, aba, a: all accepted
    assert dfa_prediction_right(dfa, inputs, [a, SEP, b], labels) == (1, 3)  # aa no, "ab|" yes, "b" no
    assert dfa_prediction_right(dfa, inputs, [SEP, DOT, SEP], labels) == (1, 3)  # "a|" yes, `.` never, "|" empty no
    assert dfa_prediction_right(dfa, inputs, [b, a, a], [IGNORE_INDEX, SEP, a]) == (2, 2)


class OracleModel(nn.Module):
    """Puts all mass on the smallest letter the DFA allows next (an honest upper bound)."""

    def __init__(self, rows: list[dict], invalid: bool = False):
        super().__init__()
        self.by_prompt = {tuple(r["input_ids"]): DFA.from_table(r["dfa"], N_LETTERS) for r in rows}
        self.invalid = invalid

    def forward(self, input_ids, mask=None):
        logits = torch.zeros(*input_ids.shape, VOCAB_SIZE)
        for b in range(input_ids.shape[0]):
            length = int(mask[b].sum())
            dfa = self.by_prompt[tuple(input_ids[b, :length].tolist())]
            state = 0
            for t in range(length):
                token = int(input_ids[b, t])
                state = 0 if token == SEP else dfa.transitions[state][token]
                allowed = sorted(dfa.transitions[state])
                logits[b, t, DOT if self.invalid else allowed[0]] = 1.0
        return SimpleNamespace(logits=logits)


def test_extra_metrics_bounds_with_oracle_and_invalid_models():
    task = RegBench(DFAConfig(**SMALL))
    test = task.build(0).test
    rows = list(test)
    assert task.extra_metrics(OracleModel(rows), test, torch.device("cpu"))["dfa_accuracy"] == 1.0
    assert task.extra_metrics(OracleModel(rows, invalid=True), test, torch.device("cpu"))["dfa_accuracy"] == 0.0


def test_extra_metrics_match_unbatched_reference_on_a_real_model():
    torch.manual_seed(0)
    task = RegBench(DFAConfig(**{**SMALL, "eval_batch_size": 4}))
    test = task.build(2).test
    backbone = LSTMBackbone(LSTMConfig(d_model=16, n_layers=1), vocab_size=VOCAB_SIZE)
    model = PonderModel(backbone, NoHalting, NoHaltingConfig(), vocab_size=VOCAB_SIZE)
    metrics = task.extra_metrics(model, test, torch.device("cpu"))
    right = scored = 0
    per_states: dict[int, list[int]] = {}
    with torch.no_grad():
        for row in test:  # one row at a time: no padding at all
            logits = model(torch.tensor([row["input_ids"]])).logits[0]
            guess = logits.argmax(-1).tolist()
            r, s = dfa_prediction_right(DFA.from_table(row["dfa"], N_LETTERS), row["input_ids"], guess, row["labels"])
            right, scored = right + r, scored + s
            entry = per_states.setdefault(row["states"], [0, 0])
            entry[0] += r
            entry[1] += s
    assert metrics["dfa_accuracy"] == pytest.approx(right / scored)
    for states, (r, s) in per_states.items():
        assert metrics[f"states={states}/dfa_accuracy"] == pytest.approx(r / s)
    assert model.training, "extra_metrics restores the training mode"


def test_config_rejects_inverted_ranges():
    with pytest.raises(ValueError, match="min_states"):
        DFAConfig(min_states=9, max_states=5)
