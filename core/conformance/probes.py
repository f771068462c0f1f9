"""Small probe plugins that stand in for the parts not under test."""

from __future__ import annotations

from typing import Literal

import torch
from pydantic import Field
from torch import Tensor, nn

from ..config import BackboneConfig, HaltingConfig, TaskConfig
from ..interfaces import (
    IGNORE_INDEX,
    Backbone,
    Block,
    BlockContext,
    HaltingStrategy,
    HopFn,
    PonderOutput,
    Task,
    TaskData,
)
from .base import VOCAB


class ProbeBackboneConfig(BackboneConfig):
    name: Literal["conformance_probe"] = "conformance_probe"
    d_model: int = Field(8, ge=1)
    n_layers: int = Field(2, ge=1)


class _ProbeBlock(Block):
    """Position-wise residual layer h + tanh(W h + b): causal by construction.

    It computes rows too (`forward_rows`), so depth-scope inference of a strategy
    under test takes the packed path where the strategy's loop has one, and serves
    routing strategies (`forward_routed`: with no token mixing, it is `forward`).
    """

    def __init__(self, d_model: int):
        super().__init__()
        self.linear = nn.Linear(d_model, d_model)

    def forward(self, hidden: Tensor, context: BlockContext) -> Tensor:  # (B, L, D)
        return hidden + torch.tanh(self.linear(hidden))

    def forward_rows(self, hidden: Tensor, rows: Tensor, states: Tensor, context: BlockContext) -> Tensor:
        return states + torch.tanh(self.linear(states))  # (K, D)

    def forward_routed(self, hidden: Tensor, routed: Tensor, context: BlockContext) -> Tensor:
        return self.forward(hidden, context)  # position-wise: no token mixing to restrict


class ProbeBackbone(Backbone):
    """The neighbour backbone used when checking a halting strategy or a task."""

    config_class = ProbeBackboneConfig

    def __init__(self, config: ProbeBackboneConfig, *, vocab_size: int):
        super().__init__(config, vocab_size=vocab_size)
        self.embedding = nn.Embedding(vocab_size, config.d_model)
        self.blocks = nn.ModuleList(_ProbeBlock(config.d_model) for _ in range(config.n_layers))
        self.norm = nn.LayerNorm(config.d_model)


class ProbeHaltingConfig(HaltingConfig):
    name: Literal["conformance_probe"] = "conformance_probe"


class ProbeHalting(HaltingStrategy):
    """The neighbour strategy used when checking a backbone: two hops (n_layers in depth
    scope), the last state.

    Hops after the first run only on a fixed half of the tokens, so a backbone is
    also exercised with `active` masks as real strategies pass them.
    """

    config_class = ProbeHaltingConfig

    def max_hops(self) -> int:
        return self.n_layers if self.config.scope == "depth" else 2

    def forward(self, state: Tensor, hop: HopFn) -> PonderOutput:
        batch, length = state.shape[:2]
        positions = torch.arange(length, device=state.device)
        rows = torch.arange(batch, device=state.device).unsqueeze(1)
        later = (positions.unsqueeze(0) + rows) % 2 == 0  # (B, L) tokens that keep going
        for n in range(self.max_hops()):
            state = hop(state, n, later if n else None)
        hops = 1.0 + (self.max_hops() - 1) * later.float()  # (B, L)
        zeros = torch.zeros_like(hops)
        return PonderOutput(output=state, hops=hops, ponder_cost=zeros, remainder=zeros)


class ProbeTaskConfig(TaskConfig):
    name: Literal["conformance_probe"] = "conformance_probe"


class ProbeTask(Task):
    """The neighbour task in the spec used for the YAML round trip."""

    config_class = ProbeTaskConfig
    vocab_size = VOCAB

    def build(self, seed: int) -> TaskData:
        import datasets

        rows = [{"input_ids": [1, 2, 3], "labels": [IGNORE_INDEX, 3, IGNORE_INDEX]}]
        split = datasets.Dataset.from_list(rows)
        return TaskData(train=split, validation=split, test=split)


PROBES = {"backbone": ProbeBackbone, "halting": ProbeHalting, "task": ProbeTask}
