"""The contracts between the core and its plugins.

Shapes: B batch, L sequence length, D model width, V vocabulary, N hops.

* A `Backbone` owns the token embedding, a list of distinct `blocks` (each maps
  `(B, L, D) -> (B, L, D)` given a `BlockContext`) and a final norm. Memory
  backbones (RMT, ARMT) also implement the segment hooks used by
  `ponderlab.core.segments`.
* A `HaltingStrategy` is one *ponder site*: given a state and a hop function it
  decides, per token, how many hops to take and how to combine their states.
  The model creates one site per layer (`scope: layer`), one around the whole
  stack (`scope: model`), or one across the distinct layers (`scope: depth`).
* A `Task` builds deterministic train/validation/test `datasets.Dataset`s with
  `input_ids` and `labels` (already aligned: `labels[t]` is the token the model
  must predict at position `t`, -100 where nothing is scored).
"""

from __future__ import annotations

import warnings
from collections.abc import Callable
from dataclasses import dataclass, field
from typing import TYPE_CHECKING, Any, ClassVar

import torch
from torch import Tensor, nn

from .config import BackboneConfig, HaltingConfig, TaskConfig

if TYPE_CHECKING:
    import datasets

IGNORE_INDEX = -100


# --------------------------------------------------------------------------- blocks


@dataclass
class BlockContext:
    """What a block may need besides the hidden state.

    layer:  index of the distinct layer being applied.
    hop:    hop index n inside the current ponder loop (0-based); a block may add a
            depth signal from it (the Universal Transformer does). `step` is its
            deprecated old name, read-only (not a field: the core builds contexts, and
            `BlockContext(step=n)` is a TypeError).
    active: optional (B, L) bool mask of the tokens that still take this hop (None: all).
            The core keeps the others' previous state whatever the block returns for
            them; a block may skip their work. To compute a subset of tokens by rows,
            implement `forward_rows` (see `ponderlab.core.early_exit.RowsBlock`).
    memory: the backbone's segment memory (None outside segment recurrence).
    mixing: what the active tokens read in token mixing: "all" (every token's state),
            "routed" (active tokens only) or "shared_kv" (keys/values of the site's
            first hop); the last two call `forward_routed` (`ponderlab.core.halting.routing`).
    kv_cache: per layer, what a "shared_kv" block stored at the site's first hop.
    """

    layer: int = 0
    hop: int = 0
    active: Tensor | None = None
    memory: Any = None
    mixing: str = "all"
    kv_cache: dict | None = None

    @property
    def step(self) -> int:
        """Deprecated name of `hop`."""
        warnings.warn("BlockContext.step is deprecated; read BlockContext.hop", DeprecationWarning, stacklevel=2)
        return self.hop


class Block(nn.Module):
    """One backbone layer applied to a whole sequence (or segment): (B, L, D) -> (B, L, D)."""

    def forward(self, hidden: Tensor, context: BlockContext) -> Tensor:  # (B, L, D) -> (B, L, D)
        raise NotImplementedError


# --------------------------------------------------------------------------- backbones


class Backbone(nn.Module):
    """Embedding + distinct blocks + final norm, with optional segment recurrence.

    Subclasses set `config_class`, build `self.embedding`, `self.blocks` and
    `self.norm` in `__init__(config, *, vocab_size)`.
    """

    config_class: ClassVar[type[BackboneConfig]]
    #: True when the backbone splits the input into segments with recurrent memory.
    uses_segments: ClassVar[bool] = False

    blocks: nn.ModuleList

    def __init__(self, config: BackboneConfig, *, vocab_size: int):
        super().__init__()
        self.config = config
        self.vocab_size = vocab_size

    @property
    def d_model(self) -> int:
        return self.config.d_model

    def embed(self, input_ids: Tensor) -> Tensor:  # (B, L) -> (B, L, D)
        return self.embedding(input_ids)

    def finalize(self, hidden: Tensor) -> Tensor:  # (B, L, D) -> (B, L, D)
        return self.norm(hidden)

    def bind_output_head(self, head: nn.Linear) -> None:
        """Called once by the model with its output head (D -> V). A backbone that brings its
        own head (a pretrained LM's) makes `head` use those parameters here; default: nothing."""

    def optimizer_groups(self, *, lr: float, weight_decay: float) -> list[dict[str, Any]]:
        """Parameters that need their own optimizer options, as AdamW parameter groups:
        `[{"params": [...], "lr": ..., "weight_decay": ...}, ...]`, given the run's lr and
        weight decay. The Trainer gives these groups their options (scaled by the same lr
        schedule) and every other parameter the defaults. Default: none."""
        return []

    # ---- segment recurrence hooks (used only when uses_segments is True) ----
    segment_size: int | None = None
    #: Truncated BPTT: gradients through memory reach at most the last k segments (None: all).
    bptt_depth: int | None = None

    def init_memory(self, batch_size: int, device: torch.device, dtype: torch.dtype) -> Any:
        return None

    def wrap_segment(self, hidden: Tensor, memory: Any) -> Tensor:
        """(B, Ls, D) -> (B, Lw, D): add memory tokens around a segment."""
        return hidden

    def unwrap_segment(self, hidden: Tensor, memory: Any, segment_length: int) -> tuple[Tensor, Any]:
        """(B, Lw, D) -> ((B, Ls, D), new memory): strip memory tokens, update token memory."""
        return hidden, memory

    def token_mask(self, memory: Any, segment_length: int, device: torch.device) -> Tensor | None:
        """(Lw,) bool: which wrapped positions are real tokens (None: all of them)."""
        return None

    def read_memory(self, layer: int, hidden: Tensor, memory: Any) -> Tensor:
        """Before every hop of `layer`: inject what memory holds into the hidden state."""
        return hidden

    def write_memory(self, layer: int, hidden: Tensor, memory: Any) -> Any:
        """Once per segment, after `layer`'s ponder loop: update memory from its output."""
        return memory

    def detach_memory(self, memory: Any) -> Any:
        """Cut the autograd graph of a memory state (truncated BPTT)."""
        return _detach_tree(memory)


def _detach_tree(value: Any) -> Any:
    if isinstance(value, Tensor):
        return value.detach()
    if isinstance(value, dict):
        return {k: _detach_tree(v) for k, v in value.items()}
    if isinstance(value, (list, tuple)):
        return type(value)(_detach_tree(v) for v in value)
    return value


# --------------------------------------------------------------------------- halting

#: hop(state (B, L, D), n (hop index, 0-based), active (B, L) bool | None) -> new state (B, L, D)
HopFn = Callable[[Tensor, int, "Tensor | None"], Tensor]


@dataclass
class PonderOutput:
    """What one ponder site returns.

    output:      (B, L, D) combined state.
    hops:        (B, L) float, hops executed per token (N).
    ponder_cost: (B, L) differentiable per-token cost (e.g. N + R); zeros if none.
    remainder:   (B, L) remainder R (zeros where the strategy has none).
    hop_states:  per-hop states, for strategies whose loss is an expectation over hops.
    hop_probs:   (B, L, N) halting distribution matching hop_states.
    aux_loss:    scalar, already weighted, added to the training loss (e.g. PonderNet KL).
    hop_weights: per executed hop, (B, L) weights w_n with output = sum_n w_n * s_n, for
                 strategies that combine hop states; None when the output is each
                 token's state after its last hop. The core combines per-layer
                 states with them for memory writes in model scope.
    """

    output: Tensor
    hops: Tensor
    ponder_cost: Tensor
    remainder: Tensor
    hop_states: list[Tensor] | None = None
    hop_probs: Tensor | None = None
    aux_loss: Tensor | None = None
    hop_weights: list[Tensor] | None = None


class HaltingStrategy(nn.Module):
    """One ponder site. Subclasses implement `forward(state, hop, mask=None)`.

    `max_hops()` is the number of hops available: the strategy's own cap for
    `layer`/`model` scopes, the number of distinct layers for `depth`.
    `mask` (B, L) bool is True at real tokens and is given only for padded batches:
    padding should halt after its first hop (so it neither costs compute nor keeps
    the loop running) and stay out of auxiliary losses. A strategy whose `forward`
    has no `mask` parameter is called without it. The toolkit for writing one is
    `ponderlab.core.halting`.
    """

    config_class: ClassVar[type[HaltingConfig]]
    supported_scopes: ClassVar[frozenset[str]] = frozenset({"layer", "model", "depth"})

    def __init__(self, config: HaltingConfig, *, d_model: int, n_layers: int):
        super().__init__()
        self.config = config
        self.d_model = d_model
        self.n_layers = n_layers

    def max_hops(self) -> int:
        """Hops available at this site: the number of layers in depth scope, else the cap."""
        if self.config.scope == "depth":
            return self.n_layers
        return int(getattr(self.config, "max_hops", getattr(self.config, "max_steps", 1)))  # old name

    def forward(self, state: Tensor, hop: HopFn, mask: Tensor | None = None) -> PonderOutput:
        raise NotImplementedError

    def loss_weight(self) -> float:
        """Weight of the mean ponder cost in the loss (tau / lambda)."""
        return float(getattr(self.config, "time_penalty", 0.0))


@dataclass
class HaltingStats:
    """Halting statistics of a forward pass, aggregated over ponder sites.

    hops:        (B, L) hops per token, averaged over sites (N per site).
    layers:      (B, L) layer applications per token (the compute actually spent).
    ponder_cost: (B, L) differentiable ponder cost, summed over sites.
    remainder:   (B, L) remainder R, averaged over sites.
    site_hops:   per site, (B, L) hops.
    regularizer: scalar added to the task loss (weighted ponder cost + auxiliary losses).
    """

    hops: Tensor
    layers: Tensor
    ponder_cost: Tensor
    remainder: Tensor
    site_hops: list[Tensor] = field(default_factory=list)
    regularizer: Tensor | None = None


# --------------------------------------------------------------------------- tasks


@dataclass
class TaskData:
    """The three splits of a task. Each has `input_ids` and `labels` columns."""

    train: datasets.Dataset
    validation: datasets.Dataset
    test: datasets.Dataset

    def split(self, name: str) -> datasets.Dataset:
        if name not in ("train", "validation", "test"):
            raise KeyError(f"unknown split {name!r} (train, validation, test)")
        return getattr(self, name)


class Task:
    """A sequence task: vocabulary, deterministic splits, scored positions, metrics.

    Subclasses set `config_class`, `vocab_size` and implement `build(seed)`.
    `slice_columns` names integer columns whose values split the metrics
    (e.g. `length`, `shift`); they are reported as `<split>/<column>=<value>/<metric>`.
    """

    config_class: ClassVar[type[TaskConfig]]
    slice_columns: ClassVar[tuple[str, ...]] = ()
    vocab_size: int

    def __init__(self, config: TaskConfig):
        self.config = config

    def build(self, seed: int) -> TaskData:
        raise NotImplementedError

    def batch_group_column(self) -> str | None:
        """Column whose value every example of a training batch shares (e.g. `length`)."""
        return None

    def extra_metrics(
        self, model: nn.Module, dataset: datasets.Dataset, device: torch.device
    ) -> dict[str, float]:
        """Task-specific metrics that need the model (e.g. DFA accuracy). Default: none."""
        return {}
