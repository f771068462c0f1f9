"""ponderlab.testing on halting strategies and tasks with one defect each (sound parents:
conformance_kit_plugins)."""

from __future__ import annotations

import random

import datasets
import torch
from conformance_kit_plugins import (
    KitHalting,
    KitTask,
    broken,
)

from ponderlab.core.interfaces import (
    IGNORE_INDEX,
    PonderOutput,
    TaskData,
)
from ponderlab.plugins.halting.threshold import ThresholdACT
from ponderlab.testing import (
    check_contract,
)

# --------------------------------------------------------------------------- halting


class ShrinkingHalting(KitHalting):
    def forward(self, state, hop):
        out = super().forward(state, hop)
        out.output = 0.9 * out.output
        return out


def test_weights_must_sum_to_one():
    broken(ShrinkingHalting, "halting weights", r"sum to values in \[0\.9000, 0\.9000\], not 1")


class LastHopWeightsHalting(KitHalting):
    """Reports hop_weights: all weight on each token's last hop, which is what its output is."""

    def forward(self, state, hop):
        out = super().forward(state, hop)
        out.hop_weights = [(out.hops == n + 1).float() for n in range(int(out.hops.max()))]
        return out


class FirstHopWeightsHalting(KitHalting):
    """Reports hop_weights that put everything on the first hop, which its output is not."""

    def forward(self, state, hop):
        out = super().forward(state, hop)
        out.hop_weights = [torch.ones_like(out.hops)] + [torch.zeros_like(out.hops)] * (int(out.hops.max()) - 1)
        return out


def test_hop_weights_must_reproduce_the_output():
    check_contract(LastHopWeightsHalting, "halting weights")
    broken(FirstHopWeightsHalting, "halting weights", "hop_weights do not give the output's combination")


class InputKeepingHalting(KitHalting):
    def forward(self, state, hop):
        out = super().forward(state, hop)
        out.output = 0.5 * state + 0.5 * out.output
        return out


def test_output_must_combine_hop_states_not_the_input():
    broken(InputKeepingHalting, "halting weights", "keeps weight 0.5000 on the input state")


class BoastingHalting(KitHalting):
    def forward(self, state, hop):
        out = super().forward(state, hop)
        out.hops = torch.full_like(out.hops, float(self.max_hops()))  # claims every hop ran
        return out


def test_hops_must_not_exceed_the_hops_run():
    broken(BoastingHalting, "halting stats", "hops exceed the hops actually run")


class StepSkippingHalting(KitHalting):
    def forward(self, state, hop):
        state = hop(state, 1, None)  # starts at hop 1
        return PonderOutput(
            output=state, hops=torch.ones(state.shape[:-1]), ponder_cost=torch.zeros(state.shape[:-1]),
            remainder=torch.zeros(state.shape[:-1]),
        )


def test_hops_must_be_called_with_steps_in_order():
    broken(StepSkippingHalting, "hop protocol", r"n=1 after hops \[\]; hops must be 0, 1, 2")


def test_packed_depth_must_give_what_forward_gives():
    check_contract(KitHalting, "packed depth")
    check_contract(ThresholdACT, "packed depth")


class DetachingHalting(KitHalting):
    def forward(self, state, hop):
        out = super().forward(state, hop)
        out.output = out.output.detach()
        return out


def test_output_must_carry_gradient_to_the_layers():
    broken(DetachingHalting, "gradient flow", "no gradient reaches the layers")


class PooledHalting(KitHalting):
    """Mixes two hops with a weight pooled over the whole sequence: leaks the future."""

    def forward(self, state, hop):
        first = hop(state, 0, None)
        second = hop(first, 1, None)
        p = torch.sigmoid(self.unit(first).mean(1, keepdim=True))  # (B, 1, 1)
        zeros = torch.zeros(state.shape[:-1])
        return PonderOutput(output=p * first + (1 - p) * second, hops=zeros + 2, ponder_cost=zeros, remainder=zeros)


def test_a_strategy_that_pools_over_the_sequence_breaks_causality():
    broken(PooledHalting, "causality", "must depend only on tokens <= t")


# --------------------------------------------------------------------------- tasks


class LeakyTask(KitTask):
    def build(self, seed: int) -> TaskData:
        rng = random.Random(seed)
        rows = [self.example(rng) for _ in range(self.config.size)]
        split = datasets.Dataset.from_list(rows)
        return TaskData(train=split, validation=split.select(range(5)), test=split.select(range(5, 10)))


def test_test_examples_must_not_appear_in_train():
    broken(LeakyTask, "split overlap", "5 of 5 validation examples also appear in train")


class UnseededTask(KitTask):
    def build(self, seed: int) -> TaskData:
        return super().build(random.randrange(10**9))


def test_the_same_seed_must_give_the_same_splits():
    broken(UnseededTask, "determinism", "two builds with seed 0 give different train splits")


class OutOfVocabularyTask(KitTask):
    vocab_size = 9  # but SEP is token 9


def test_token_ids_must_fit_the_vocabulary():
    broken(OutOfVocabularyTask, "task data", r"train example 0: input_ids must be ints in \[0, vocab_size=9\)")


class UnscoredTask(KitTask):
    def example(self, rng: random.Random) -> dict:
        row = super().example(rng)
        row["labels"] = [IGNORE_INDEX] * len(row["labels"])
        return row


def test_every_example_must_score_something():
    broken(UnscoredTask, "task data", "no position is scored")


# --------------------------------------------------------------------------- reports
