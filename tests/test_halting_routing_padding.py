"""Routing strategies on a padded batch: capacity counts each sequence's real tokens, so every
real token gets the logits and hops it gets alone (training-time top-k and inference)."""

from __future__ import annotations

import pytest
import torch

from ponderlab.core.model import PonderModel
from ponderlab.plugins.backbones.transformer import TransformerBackbone, TransformerConfig
from ponderlab.plugins.halting.mixture_of_depths import MixtureOfDepths, MixtureOfDepthsConfig
from ponderlab.plugins.halting.mixture_of_recursions import (
    MixtureOfRecursions,
    MixtureOfRecursionsConfig,
)

VOCAB = 11
CASES = [
    (MixtureOfDepths, MixtureOfDepthsConfig(capacity=0.5)),
    (MixtureOfRecursions, MixtureOfRecursionsConfig()),
    (MixtureOfRecursions, MixtureOfRecursionsConfig(kv_sharing=True, causal="predictor")),
    (MixtureOfRecursions, MixtureOfRecursionsConfig(routing="token_choice")),
]


@pytest.mark.parametrize("training", [True, False])
@pytest.mark.parametrize(("cls", "config"), CASES, ids=["mod", "mor-expert", "mor-expert-kv", "mor-token"])
def test_padded_batch_matches_each_sequence_alone(cls, config, training):
    torch.manual_seed(0)
    backbone = TransformerBackbone(TransformerConfig(d_model=16, n_layers=2, n_heads=2), vocab_size=VOCAB)
    model = PonderModel(backbone, cls, config, vocab_size=VOCAB).train(training)
    for name, parameter in model.sites.named_parameters():  # mixed routing decisions
        torch.nn.init.normal_(parameter, std=0.0 if name.endswith("bias") else 40.0)
    ids = torch.randint(1, VOCAB, (2, 8), generator=torch.Generator().manual_seed(1))
    mask = torch.ones(2, 8, dtype=torch.bool)
    mask[1, 5:] = False
    with torch.no_grad():
        batch = model(ids, mask=mask)
        for b, length in enumerate((8, 5)):
            alone = model(ids[b : b + 1, :length])
            torch.testing.assert_close(batch.logits[b, :length], alone.logits[0], atol=1e-5, rtol=1e-5)
            assert torch.equal(batch.stats.hops[b, :length], alone.stats.hops[0])
