"""LayerSkip self-speculative decoding: exactly the full model's greedy output for every exit
layer E and draft length d, the counts of a round by hand, and the refused settings."""

from __future__ import annotations

import pytest
import torch
from adaptive_checks import VOCAB, tiny_model

from ponderlab.plugins.halting.layerskip import LayerSkip, LayerSkipConfig
from ponderlab.plugins.halting.layerskip_decoding import (
    greedy_decode,
    layer_logits,
    self_speculative_decode,
)
from ponderlab.plugins.halting.ut import UniversalTransformerACT, UTConfig

LAYERS = 4


def model(seed: int = 0):
    return tiny_model(LayerSkip, LayerSkipConfig(), seed=seed, layers=LAYERS).double().eval()


def prompts(seed: int, batch: int = 3, length: int = 5) -> torch.Tensor:
    return torch.randint(0, VOCAB, (batch, length), generator=torch.Generator().manual_seed(seed))


def test_layer_logits_of_every_layer_are_the_models_logits():
    net = model()
    ids = prompts(0)
    with torch.no_grad():
        torch.testing.assert_close(layer_logits(net, ids, LAYERS), net(ids).logits)


def test_greedy_decode_appends_the_argmax_of_the_full_model_one_token_at_a_time():
    net = model()
    ids = prompts(1, batch=2)
    tokens, stats = greedy_decode(net, ids, 3)
    assert torch.equal(tokens[:, :5], ids)
    with torch.no_grad():
        for position in range(5, 8):
            assert torch.equal(tokens[:, position], net(tokens[:, :position]).logits[:, -1].argmax(-1))
    assert (stats.generated, stats.layer_passes, stats.token_layers) == (6, 6 * LAYERS, 6 * LAYERS)


@pytest.mark.parametrize("seed", [0, 1, 2])
@pytest.mark.parametrize(("exit_layer", "draft_tokens"), [(1, 1), (1, 4), (2, 3), (3, 2), (3, 5)])
def test_output_is_exactly_the_full_models_greedy_output(seed, exit_layer, draft_tokens):
    net = model(seed)
    ids = prompts(seed + 10)
    expected, _ = greedy_decode(net, ids, 9)
    tokens, stats = self_speculative_decode(net, ids, 9, exit_layer=exit_layer, draft_tokens=draft_tokens)
    assert torch.equal(tokens, expected)
    assert stats.generated == 27
    assert stats.accepted + stats.rounds == stats.generated  # each round: k accepted + 1 from the verifier
    assert 0.0 <= stats.acceptance_rate <= 1.0


def test_random_drafts_are_both_accepted_and_rejected():
    stats = [self_speculative_decode(model(seed), prompts(seed + 10), 9, exit_layer=2, draft_tokens=3)[1]
             for seed in range(3)]
    assert sum(s.accepted for s in stats) > 0
    assert sum(s.drafted - s.accepted for s in stats) > 0  # so the rejection path ran


def test_counts_when_the_draft_is_the_full_model():
    # E = N: every draft is the full model's greedy token, so all are accepted.
    # 7 tokens with d = 2: rounds make 3, 3 and 1 (d shrinks to 0 for the last token).
    net = model()
    _, stats = self_speculative_decode(net, prompts(3, batch=1), 7, exit_layer=LAYERS, draft_tokens=2)
    assert (stats.generated, stats.drafted, stats.accepted, stats.rounds) == (7, 4, 4, 3)
    assert stats.acceptance_rate == 1.0
    assert stats.layer_passes == 2 * (2 * LAYERS + LAYERS) + LAYERS  # d E + N per round
    assert stats.token_layers == 2 * (2 * LAYERS + 3 * LAYERS) + LAYERS  # d E + (d + 1) N


def test_refused_settings():
    net = model()
    ids = prompts(0, batch=1)
    for bad in ({"exit_layer": 0, "draft_tokens": 2}, {"exit_layer": LAYERS + 1, "draft_tokens": 2},
                {"exit_layer": 1, "draft_tokens": 0}):
        with pytest.raises(ValueError):
            self_speculative_decode(net, ids, 3, **bad)
    with pytest.raises(ValueError, match="eval mode"):
        self_speculative_decode(model().train(), ids, 3, exit_layer=1, draft_tokens=2)
    shared = tiny_model(UniversalTransformerACT, UTConfig(scope="model"), layers=2).eval()
    with pytest.raises(ValueError, match="depth scope"):
        self_speculative_decode(shared, ids, 3, exit_layer=1, draft_tokens=2)
