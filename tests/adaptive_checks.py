"""Shared pieces of the calm / layerskip / recurrent_depth tests: tiny models, marker hops,
and an independent per-token reference of confidence-based early exit."""

from __future__ import annotations

import torch
import torch.nn.functional as F
from torch import Tensor

from ponderlab.core.interfaces import BlockContext
from ponderlab.core.model import PonderModel
from ponderlab.plugins.backbones.transformer import TransformerBackbone, TransformerConfig

D, VOCAB, LAYERS = 8, 7, 3


def tiny_model(halting_cls, config, *, seed: int = 0, layers: int = LAYERS) -> PonderModel:
    """A GPT-NeoX backbone (width 8, 2 heads) with random, non-trivial weights."""
    torch.manual_seed(seed)
    backbone = TransformerBackbone(TransformerConfig(d_model=D, n_layers=layers, n_heads=2),
                                   vocab_size=VOCAB)
    model = PonderModel(backbone, halting_cls, config, vocab_size=VOCAB)
    with torch.no_grad():
        for parameter in model.parameters():
            parameter.add_(0.3 * torch.randn_like(parameter))
    return model


def table_hop(states: Tensor):
    """A hop returning precomputed per-hop states (N, B, L, D); inactive tokens keep theirs."""

    def hop(state, n, active):
        new = states[n].to(state.dtype)
        return new if active is None else torch.where(active.unsqueeze(-1), new, state)

    return hop


def per_layer_states(model: PonderModel, ids: Tensor) -> list[Tensor]:
    """Every layer's output, each layer run once on every token (no exit)."""
    hidden = model.backbone.embed(ids)
    states = []
    for index, block in enumerate(model.backbone.blocks):
        hidden = block(hidden, BlockContext(layer=index))
        states.append(hidden)
    return states


def per_layer_ce(model: PonderModel, states: list[Tensor], labels: Tensor) -> list[Tensor]:
    """CE of the shared head at each layer's output, mean over scored tokens."""
    return [
        F.cross_entropy(model.head(model.backbone.finalize(s)).flatten(0, 1).float(), labels.flatten(),
                        ignore_index=-100)
        for s in states
    ]


def exit_reference(model: PonderModel, ids: Tensor, confidence, thresholds) -> tuple[Tensor, Tensor]:
    """Token by token, layer by layer, with exited tokens' states copied to skipped layers.

    confidence(layer, new (D,), old (D,)) -> float; thresholds[t] per position.
    Returns final states (B, L, D) and layers run (B, L).
    """
    blocks = model.backbone.blocks
    batch, length = ids.shape
    embedded = model.backbone.embed(ids)
    out = torch.zeros_like(embedded)
    hops = torch.zeros(batch, length)
    for b in range(batch):
        inputs = [[None] * length for _ in blocks]  # inputs[i][t]: token t's input to layer i
        for t in range(length):
            state = embedded[b, t]
            for i, block in enumerate(blocks):
                inputs[i][t] = state
                prefix = torch.stack(inputs[i][: t + 1]).unsqueeze(0)  # (1, t+1, D)
                new = block(prefix, BlockContext(layer=i))[0, t]
                hops[b, t] += 1
                exits = i == len(blocks) - 1 or confidence(i, new, state) >= float(thresholds[t])
                state = new
                if exits:
                    for j in range(i + 1, len(blocks)):
                        inputs[j][t] = state  # copied to the skipped layers
                    break
            out[b, t] = state
    return out, hops
