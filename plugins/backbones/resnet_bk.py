"""`resnet_bk`: ResNet-BK blocks, seed 002's backbone, with exact gradients and a causal mode.

Source: seed 002 (a ResNet-BK language model with threshold ACT across depth);
facts in /work/shared/reference/models.md ("ResNet-BK"). The spectral features
are diagonal entries of the resolvent of a tridiagonal (Birman-Schwinger /
Green's-function) operator, computed in O(N) (see `bk_core`).

Block: `x + BKLayer(LayerNorm(x))` (pre-norm), where

    f   = MoE(LayerNorm(x))                 4 experts, top-1 router (configurable k)
    v   = W_v f                             per-token scalar potential (K channels)
    G_i = [(H - z I)^{-1}]_ii,  H = tridiag(1, h0 + v, 1),  Im z > 0
    BKLayer = f + s * W_g [Re G, Im G]      s a learned scalar

Differences from the seed's code, on purpose:
* gradients are exact (autograd through the recursion), not the seed's
  heuristic "hybrid" backward;
* `causal: true` (default) uses only the forward sweep, `G_i = theta_{i-1} /
  theta_i` (last diagonal entry of the inverse of the leading i x i block), so
  no token sees its future; `causal: false` is the seed's full diagonal, which
  uses both sweeps and leaks later tokens into earlier ones in a language model;
* early exit saves work: the block reads `context.active`, so under a
  depth-scope halting strategy the MoE runs only on tokens still active, and the
  causal recursion stops at the last active position. Halted tokens still shape
  the potential that later tokens see: with `halted_tokens: compute` (default)
  the MoE still runs on every token, so early exit is exact but saves nothing in
  the MoE; with `skip` their feed-forward output counts as zero (their potential
  is W_v's bias), which saves the MoE work but changes what running tokens see
  (a different model, trained the same way it is evaluated).

Defaults: d_model 64, n_layers 4 (seed 002's ACT example), 4 experts, top-1,
expert width 2 * d_model (GELU), one spectral channel, h0 = -2 (discrete
Laplacian with unit hopping), z = 1j, spectral scale starts at 1, learned
absolute positions (up to 2048), no dropout.
"""

from __future__ import annotations

from typing import Literal

import torch
from pydantic import Field, model_validator
from torch import Tensor, nn

from ponderlab.core.config import BackboneConfig
from ponderlab.core.errors import SpecError
from ponderlab.core.hookspecs import hookimpl
from ponderlab.core.interfaces import Backbone, Block, BlockContext

from .bk_core import causal_resolvent_diagonal, resolvent_diagonal, tridiagonal_diagonal_shift
from .bk_moe import MoEFeedForward


class ResNetBKConfig(BackboneConfig):
    name: Literal["resnet_bk"] = "resnet_bk"
    d_model: int = Field(64, ge=1, description="Hidden width.")
    n_layers: int = Field(4, ge=1, description="Number of distinct ResNet-BK blocks.")
    ffn_size: int | None = Field(None, ge=1, description="Expert hidden width (default: 2 * d_model).")
    n_experts: int = Field(4, ge=1, description="Experts in the MoE feed-forward.")
    top_k: int = Field(1, ge=1, description="Experts per token.")
    spectral_channels: int = Field(1, ge=1, description="Potentials (and resolvent diagonals) per block.")
    causal: bool = Field(True, description="Forward sweep only (no token sees its future).")
    base_potential: float = Field(-2.0, description="h0, the diagonal of H before the potential.")
    shift_real: float = Field(0.0, description="Re z.")
    shift_imag: float = Field(1.0, gt=0, description="Im z (> 0 keeps the resolvent bounded by 1/Im z).")
    spectral_scale_init: float = Field(1.0, description="Initial learned scale of the spectral features.")
    halted_tokens: Literal["skip", "compute"] = Field(
        "compute",
        description="skip: no MoE for inactive tokens (their feed-forward counts as zero); "
        "compute: run the MoE on every token (exact, saves nothing).",
    )
    positional: bool = Field(True, description="Add learned absolute position embeddings.")
    max_positions: int = Field(2048, ge=1)
    dropout: float = Field(0.0, ge=0, lt=1)

    @model_validator(mode="after")
    def _top_k_fits(self):
        if self.top_k > self.n_experts:
            raise ValueError(f"top_k {self.top_k} is greater than n_experts {self.n_experts}")
        return self


def last_active_length(active: Tensor) -> int:
    """1 + the last position where any row is active: (B, L) bool -> int (0 if none)."""
    positions = active.any(dim=0).nonzero()
    return int(positions[-1]) + 1 if positions.numel() else 0


class ResNetBKBlock(Block):
    """Pre-norm ResNet-BK block: (B, L, D) -> (B, L, D)."""

    def __init__(self, config: ResNetBKConfig):
        super().__init__()
        d_model, channels = config.d_model, config.spectral_channels
        self.causal = config.causal
        self.skip_halted = config.halted_tokens == "skip"
        self.base_potential = config.base_potential
        self.shift = complex(config.shift_real, config.shift_imag)
        self.norm = nn.LayerNorm(d_model)
        self.moe = MoEFeedForward(
            d_model, config.ffn_size or 2 * d_model, config.n_experts, config.top_k
        )
        self.potential = nn.Linear(d_model, channels)
        self.spectral_out = nn.Linear(2 * channels, d_model)
        self.spectral_scale = nn.Parameter(torch.tensor(float(config.spectral_scale_init)))
        self.dropout = nn.Dropout(config.dropout)

    def spectral_features(self, potential: Tensor, length: int | None = None) -> Tensor:
        """(B, L, K) potential -> (B, L, 2K) features [Re G, Im G]."""
        a = tridiagonal_diagonal_shift(
            potential.transpose(1, 2), base=self.base_potential, shift=self.shift
        )  # (B, K, L) complex
        green = causal_resolvent_diagonal(a, length) if self.causal else resolvent_diagonal(a)
        return torch.cat([green.real, green.imag], dim=1).transpose(1, 2)  # (B, L, 2K)

    def forward(self, hidden: Tensor, context: BlockContext) -> Tensor:
        active = context.active
        if active is not None and bool(active.all()):
            active = None
        normed = self.norm(hidden)  # (B, L, D)
        feed_forward = self.moe(normed, active if self.skip_halted else None)  # (B, L, D)
        potential = self.potential(feed_forward)  # (B, L, K)
        length = last_active_length(active) if active is not None and self.causal else None
        features = self.spectral_features(potential, length).to(feed_forward.dtype)  # (B, L, 2K)
        update = feed_forward + self.spectral_scale * self.spectral_out(features)
        return hidden + self.dropout(update)


class ResNetBKBackbone(Backbone):
    config_class = ResNetBKConfig
    #: The conformance suite routes every token to every expert: with top-1 routing an
    #: expert that no token of a small batch picks gets no gradient, as in any switch MoE.
    conformance_config = {"n_experts": 2, "top_k": 2}

    def __init__(self, config: ResNetBKConfig, *, vocab_size: int):
        super().__init__(config, vocab_size=vocab_size)
        self.embedding = nn.Embedding(vocab_size, config.d_model)
        self.positions = nn.Embedding(config.max_positions, config.d_model) if config.positional else None
        self.blocks = nn.ModuleList(ResNetBKBlock(config) for _ in range(config.n_layers))
        self.norm = nn.LayerNorm(config.d_model)
        for module in self.modules():
            if isinstance(module, nn.Embedding):
                nn.init.normal_(module.weight, std=0.02)

    def embed(self, input_ids: Tensor) -> Tensor:  # (B, L) -> (B, L, D)
        hidden = self.embedding(input_ids)
        if self.positions is None:
            return hidden
        length = input_ids.shape[1]
        if length > self.config.max_positions:
            raise SpecError(
                f"sequence length {length} exceeds max_positions {self.config.max_positions}",
                path="backbone.max_positions",
            )
        return hidden + self.positions.weight[:length]


@hookimpl
def ponderlab_register_backbones(register):
    register(ResNetBKBackbone)
