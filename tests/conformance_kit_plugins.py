"""The sound plugins of the conformance-kit tests (a backbone, a halting strategy and a task that
pass every contract), and `broken`: a subclass with one defect breaks exactly that contract."""

from __future__ import annotations

import random
from typing import ClassVar, Literal

import datasets
import pytest
import torch
from pydantic import Field
from torch import Tensor, nn

from ponderlab.core.config import BackboneConfig, HaltingConfig, TaskConfig
from ponderlab.core.interfaces import (
    IGNORE_INDEX,
    Backbone,
    Block,
    BlockContext,
    HaltingStrategy,
    PonderOutput,
    Task,
    TaskData,
)
from ponderlab.testing import (
    ContractError,
    check_contract,
)


class KitBackboneConfig(BackboneConfig):
    name: Literal["kit_backbone"] = "kit_backbone"
    d_model: int = Field(8, ge=1)


class KitBlock(Block):
    """Causal: position-wise MLP plus a running mean over earlier positions."""

    def __init__(self, d_model: int):
        super().__init__()
        self.mix = nn.Linear(d_model, d_model)
        self.mlp = nn.Linear(d_model, d_model)

    def running_mean(self, x: Tensor) -> Tensor:  # (B, L, D) -> (B, L, D), causal
        counts = torch.arange(1, x.shape[1] + 1, dtype=x.dtype).view(1, -1, 1)
        return x.cumsum(1) / counts

    def forward(self, hidden: Tensor, context: BlockContext) -> Tensor:
        return hidden + torch.tanh(self.mlp(hidden) + self.running_mean(self.mix(hidden)))


class KitBackbone(Backbone):
    config_class = KitBackboneConfig
    block_class: ClassVar[type[Block]] = KitBlock

    def __init__(self, config, *, vocab_size: int):
        super().__init__(config, vocab_size=vocab_size)
        self.embedding = nn.Embedding(vocab_size, config.d_model)
        self.blocks = nn.ModuleList(self.block_class(config.d_model) for _ in range(config.n_layers))
        self.norm = nn.LayerNorm(config.d_model)


class KitHaltingConfig(HaltingConfig):
    name: Literal["kit_halting"] = "kit_halting"
    max_hops: int = Field(3, ge=1)
    time_penalty: float = 0.01


class KitHalting(HaltingStrategy):
    """Per-token halting at h >= 0.5 with a (1 - h) ponder cost; output = the last state."""

    config_class = KitHaltingConfig

    def __init__(self, config, *, d_model: int, n_layers: int):
        super().__init__(config, d_model=d_model, n_layers=n_layers)
        self.unit = nn.Linear(d_model, 1)

    def halting(self, state: Tensor) -> Tensor:  # (B, L, D) -> (B, L)
        return torch.sigmoid(self.unit(state).squeeze(-1).float())

    def forward(self, state, hop):
        running = torch.ones(state.shape[:-1], dtype=torch.bool)
        hops = torch.zeros(state.shape[:-1])
        cost = torch.zeros(state.shape[:-1])
        for n in range(self.max_hops()):
            state = hop(state, n, None if bool(running.all()) else running)
            h = self.halting(state)
            hops = hops + running.float()
            cost = cost + torch.where(running, 1.0 - h, torch.zeros_like(h))
            running = running & (h < 0.5)
            if not bool(running.any()):
                break
        return PonderOutput(output=state, hops=hops, ponder_cost=cost, remainder=torch.zeros_like(hops))


class KitTaskConfig(TaskConfig):
    name: Literal["kit_task"] = "kit_task"
    size: int = Field(20, ge=1)


class KitTask(Task):
    """Copy 6 random symbols; test strings never occur in train."""

    config_class = KitTaskConfig
    vocab_size = 10

    def example(self, rng: random.Random) -> dict:
        symbols = [rng.randrange(8) for _ in range(6)]
        ids = [8, *symbols, 9, *symbols]
        labels = [IGNORE_INDEX] * 7 + symbols + [IGNORE_INDEX]
        return {"input_ids": ids, "labels": labels}

    def build(self, seed: int) -> TaskData:
        rng = random.Random(seed)
        splits: dict[str, list[dict]] = {"test": [], "validation": [], "train": []}
        seen: set[tuple] = set()
        for split in splits:
            while len(splits[split]) < self.config.size:
                row = self.example(rng)
                key = tuple(row["input_ids"])
                if split != "train" and key in seen:
                    continue
                if split == "train" and key in seen:
                    continue
                seen.add(key)
                splits[split].append(row)
        return TaskData(**{s: datasets.Dataset.from_list(rows) for s, rows in splits.items()})


SOUND = [KitBackbone, KitHalting, KitTask]


def broken(plugin: type, contract: str, message: str) -> ContractError:
    """Assert `plugin` breaks `contract` with `message` (a regex); the sound parent passes it."""
    sound = next(s for s in SOUND if issubclass(plugin, s))
    check_contract(sound, contract)
    with pytest.raises(ContractError, match=message) as info:
        check_contract(plugin, contract)
    assert info.value.contract == contract
    assert f"broke the {contract!r} contract" in str(info.value)
    return info.value
