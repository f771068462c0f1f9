"""Partial deterministic finite automata with every state accepting (RegBench's DFAs).

A DFA here is a tuple of per-state transition dicts `{symbol: next_state}`,
start state 0. A missing transition leads to an implicit rejecting sink, so a
word is accepted exactly when its walk from the start never falls off.
"""

from __future__ import annotations

from collections import deque
from dataclasses import dataclass

import numpy as np


@dataclass(frozen=True)
class DFA:
    """transitions[s] maps a symbol to the next state; state 0 starts; all states accept."""

    transitions: tuple[dict[int, int], ...]

    @property
    def n_states(self) -> int:
        return len(self.transitions)

    def run(self, word: list[int], state: int = 0) -> int | None:
        """The state reached after `word`, or None where a transition is missing."""
        for symbol in word:
            state = self.transitions[state].get(symbol)
            if state is None:
                return None
        return state

    def accepts(self, word: list[int]) -> bool:
        return self.run(word) is not None

    def walk(self, rng: np.random.Generator, length: int) -> list[int]:
        """A word of `length` symbols: each step picks one outgoing edge uniformly."""
        state, word = 0, []
        for _ in range(length):
            edges = sorted(self.transitions[state])
            symbol = edges[int(rng.integers(len(edges)))]
            word.append(symbol)
            state = self.transitions[state][symbol]
        return word

    def to_table(self, alphabet_size: int) -> list[int]:
        """Flattened (n_states * alphabet_size) table, -1 for a missing transition."""
        return [edges.get(a, -1) for edges in self.transitions for a in range(alphabet_size)]

    @classmethod
    def from_table(cls, table: list[int], alphabet_size: int) -> DFA:
        rows = [table[i : i + alphabet_size] for i in range(0, len(table), alphabet_size)]
        return cls(tuple({a: t for a, t in enumerate(row) if t >= 0} for row in rows))


def reachable_states(dfa: DFA) -> list[int]:
    """States reachable from the start, in breadth-first order over sorted symbols."""
    order, seen, queue = [], {0}, deque([0])
    while queue:
        state = queue.popleft()
        order.append(state)
        for symbol in sorted(dfa.transitions[state]):
            target = dfa.transitions[state][symbol]
            if target not in seen:
                seen.add(target)
                queue.append(target)
    return order


def minimize(dfa: DFA) -> DFA:
    """The minimal equivalent DFA (unreachable states dropped, equivalent ones merged).

    Moore's partition refinement: with all states accepting, two states differ
    when some symbol is defined in one and not the other, or leads to states of
    different classes. The result is numbered canonically (breadth-first from
    the start over sorted symbols), so equal languages give equal DFAs.
    """
    states = reachable_states(dfa)
    block = dict.fromkeys(states, 0)
    while True:
        signatures = {
            s: (block[s], tuple((a, block[t]) for a, t in sorted(dfa.transitions[s].items())))
            for s in states
        }
        numbering: dict[tuple, int] = {}
        refined = {s: numbering.setdefault(signatures[s], len(numbering)) for s in states}
        if len(numbering) == len(set(block.values())):
            break
        block = refined
    merged: dict[int, dict[int, int]] = {}
    for s in states:
        merged.setdefault(block[s], {a: block[t] for a, t in dfa.transitions[s].items()})
    # Classes are numbered by their first state in the breadth-first order `states`
    # (so the start's class is 0), and that is the breadth-first order of the merged
    # DFA: the first state of a class has the class's edges and is the earliest of
    # its class to reach any other class. So the numbering is already canonical.
    return DFA(tuple(merged.values()))


def random_dfa(
    rng: np.random.Generator,
    *,
    n_states: int,
    alphabet: list[int],
    min_edges: int,
    max_edges: int,
) -> DFA:
    """Each state gets 1..max_edges outgoing edges: distinct symbols, distinct targets, no self loops."""
    transitions = []
    for state in range(n_states):
        others = [s for s in range(n_states) if s != state]
        count = int(rng.integers(min_edges, max_edges + 1))
        count = max(1, min(count, len(alphabet), len(others)))
        symbols = rng.choice(alphabet, size=count, replace=False)
        targets = rng.choice(others, size=count, replace=False)
        transitions.append({int(a): int(t) for a, t in zip(symbols, targets, strict=True)})
    return DFA(tuple(transitions))


def draw_size_and_alphabet(
    rng: np.random.Generator, *, min_states: int, max_states: int, alphabet_size: int, min_alphabet: int, max_alphabet: int
) -> tuple[int, list[int]]:
    """n ~ U[min_states, max_states] and a sorted random subset of U[min_alphabet, max_alphabet] symbols."""
    n_states = int(rng.integers(min_states, max_states + 1))
    size = int(rng.integers(min_alphabet, max_alphabet + 1))
    return n_states, sorted(int(a) for a in rng.choice(alphabet_size, size=size, replace=False))


def minimised_random_dfa(
    rng: np.random.Generator, *, n_states: int, alphabet: list[int], min_edges: int, max_edges: int
) -> DFA:
    """seq_icl's sampling: one random DFA of `n_states` states, minimised once.

    No redraw: unreachable states are dropped and equivalent ones merged, so the
    result may be smaller (about half of seq_icl's default draws shrink, rarely
    down to 1 state) and a merged state keeps its out-degree.
    """
    return minimize(random_dfa(rng, n_states=n_states, alphabet=alphabet, min_edges=min_edges, max_edges=max_edges))


def random_minimal_dfa(
    rng: np.random.Generator,
    *,
    n_states: int,
    alphabet: list[int],
    min_edges: int,
    max_edges: int,
    max_attempts: int = 1000,
) -> DFA:
    """A random DFA that is already minimal with exactly `n_states` states.

    The edges are redrawn until the DFA is minimal (every state reachable, no
    two equivalent), so it keeps n states, no self loops and distinct targets
    per state. Not seq_icl's sampling: the redraw favours states with more
    edges (see `minimised_random_dfa`).
    """
    for _ in range(max_attempts):
        dfa = random_dfa(rng, n_states=n_states, alphabet=alphabet, min_edges=min_edges, max_edges=max_edges)
        minimal = minimize(dfa)
        if minimal.n_states == n_states:
            return minimal
    raise RuntimeError(
        f"no minimal {n_states}-state DFA over {len(alphabet)} symbols in {max_attempts} draws; "
        "widen the alphabet or the edge range"
    )
