"""The layer stack shared by the seq_icl backbones (S4D, H3, GILR, LRU, RWKV, RetNet).

Seed 003 (arXiv 2401.12973, adapted from safari) builds every model the same way: a token
embedding, `n_layers` pre-norm residual blocks `x + mixer(LN(x))`, `x + ffn(LN(x))` with an
MLP of width `mlp_ratio * d_model` (4 there), and a final LayerNorm. Only the sequence mixer
changes. Every block maps (B, L, D) -> (B, L, D) causally, so any halting strategy can
re-apply it in any scope.

Each mixer has a fast form (scan, FFT convolution or chunked matrix form) and an
obviously-correct step-by-step reference, both behind `mix(x, reference=...)`;
`set_reference_mode(model, True)` switches every mixer of a model to the reference, which
is how the tests check one against the other.

Early exit: a block computes its position-wise work (the FFN and the mixer's output
projection) only for the tokens still running (`forward_rows`, see
`ponderlab.core.early_exit`). The mixer's token mixing still runs over every token, since
running tokens read halted tokens' frozen states through it.
"""

from __future__ import annotations

import math
from typing import Any, Literal

from pydantic import Field
from torch import Tensor, nn

from ponderlab.core.config import BackboneConfig
from ponderlab.core.early_exit import gather_active
from ponderlab.core.interfaces import Backbone, Block, BlockContext


class MixerStackConfig(BackboneConfig):
    """Options shared by the seq_icl backbones (defaults: seed 003's lm_simple)."""

    n_layers: int = Field(2, ge=1, description="Number of distinct layers (seed 003: 2).")
    mlp_ratio: int = Field(4, ge=0, description="FFN width / d_model (seed 003: 4); 0 drops the FFN.")
    dropout: float = Field(0.0, ge=0, lt=1, description="Dropout on each residual branch.")
    init_std: float = Field(0.02, gt=0, description="Std of the GPT-style init of linear/embedding weights.")
    variant: Literal["paper", "seq_icl"] = Field(
        "paper",
        description="Mixer math: the paper's layer, or seq_icl's layer as seq_icl configures it "
        "(docs/seq_icl_backbones.md); seq_icl also uses tanh-approximate GELU in the MLP.",
    )
    embed_dropout: float = Field(
        0.0, ge=0, lt=1, description="Dropout on the embeddings (seq_icl: 0.1)."
    )
    tie_embeddings: bool = Field(
        False, description="The output head reuses the embedding matrix (seq_icl's lm_simple ties them)."
    )


class SequenceMixer(nn.Module):
    """(B, L, D) -> (B, L, D), causal, in two parts that subclasses implement:

    * `mix_tokens(x, reference=...)`: the token mixing, (B, L, D) -> (B, L, F); the fast
      form when `reference` is False, the step-by-step loop when it is True;
    * `project(mixed, x)`: the position-wise rest, (..., F) and the token's own input
      (..., D) -> (..., D), so that `mixer_rows` runs it for some tokens only.

    A subclass may implement `mix(x, reference=...)` alone instead (no row savings).
    """

    #: When True, `forward` runs the step-by-step reference instead of the fast form.
    reference_mode: bool = False

    def forward(self, x: Tensor) -> Tensor:
        return self.mix(x, reference=self.reference_mode)

    def mix(self, x: Tensor, *, reference: bool) -> Tensor:
        return self.project(self.mix_tokens(x, reference=reference), x)

    def mix_tokens(self, x: Tensor, *, reference: bool) -> Tensor:
        raise NotImplementedError

    def project(self, mixed: Tensor, x: Tensor) -> Tensor:
        return mixed


def set_reference_mode(module: nn.Module, enabled: bool = True) -> None:
    """Switch every SequenceMixer inside `module` to (or back from) its recurrent reference."""
    for sub in module.modules():
        if isinstance(sub, SequenceMixer):
            sub.reference_mode = enabled


class FeedForward(nn.Module):
    """Position-wise MLP: Linear(D, rD) -> GELU -> Linear(rD, D) (`approximate="tanh"`: seq_icl's
    tanh-approximate GELU)."""

    #: Each token's output depends on that token's input only, so a block may run it on
    #: any subset of rows. An FFN that also reads neighbouring tokens leaves this False and
    #: may implement `mix_rows(x (B, L, D), rows (K,)) -> (K, D)` instead.
    positionwise = True

    def __init__(self, d_model: int, ratio: int, approximate: str = "none"):
        super().__init__()
        self.up = nn.Linear(d_model, ratio * d_model)
        self.act = nn.GELU(approximate=approximate)
        self.out_proj = nn.Linear(ratio * d_model, d_model)

    def forward(self, x: Tensor) -> Tensor:  # (B, L, D) -> (B, L, D)
        return self.out_proj(self.act(self.up(x)))


class MixerBlock(Block):
    """Pre-norm residual layer: x + mixer(LN(x)), then x + ffn(LN(x)) when there is an FFN.

    With an active subset (or packed rows) the FFN and the mixer's projection run for those
    tokens only; the mixer's token mixing runs over the whole sequence.
    """

    def __init__(self, mixer: nn.Module, ffn: nn.Module | None, d_model: int, dropout: float):
        super().__init__()
        self.mixer_norm = nn.LayerNorm(d_model)
        self.mixer = mixer
        self.ffn_norm = nn.LayerNorm(d_model) if ffn is not None else None
        self.ffn = ffn
        self.dropout = nn.Dropout(dropout)

    def forward(self, hidden: Tensor, context: BlockContext) -> Tensor:  # (B, L, D) -> (B, L, D)
        hidden = hidden + self.dropout(self.mixer(self.mixer_norm(hidden)))
        if self.ffn is not None:
            hidden = hidden + self.dropout(self.ffn(self.ffn_norm(hidden)))
        return hidden

    def forward_rows(self, hidden: Tensor, rows: Tensor, states: Tensor, context: BlockContext) -> Tensor:
        normed = self.mixer_norm(hidden)  # (B, L, D): the mixer reads every token
        if self.ffn is None or getattr(self.ffn, "positionwise", False):
            updated = states + self.dropout(mixer_rows(self.mixer, normed, rows))  # (K, D)
            if self.ffn is None:
                return updated
            return updated + self.dropout(self.ffn(self.ffn_norm(updated)))
        # The FFN reads neighbouring tokens (RWKV's channel mix): it needs every token's state.
        mixed = self.dropout(self.mixer(normed))  # (B, L, D)
        every = hidden + mixed
        updated = states + gather_active(mixed, rows)  # (K, D)
        if hasattr(self.ffn, "mix_rows"):
            return updated + self.dropout(self.ffn.mix_rows(self.ffn_norm(every), rows))
        return updated + self.dropout(gather_active(self.ffn(self.ffn_norm(every)), rows))


def mixer_rows(mixer: nn.Module, x: Tensor, rows: Tensor) -> Tensor:
    """A mixer's output at the tokens of rows (K,) (flat b * L + t) only: x (B, L, D) -> (K, D).
    The token mixing of a SequenceMixer still reads every token; its projection runs for those
    rows. A plain module, or a SequenceMixer with `mix` only, runs whole."""
    if not isinstance(mixer, SequenceMixer) or type(mixer).mix_tokens is SequenceMixer.mix_tokens:
        return gather_active(mixer(x), rows)
    mixed = mixer.mix_tokens(x, reference=mixer.reference_mode)  # (B, L, F)
    return mixer.project(gather_active(mixed, rows), gather_active(x, rows))


def gpt_init(module: nn.Module, std: float, n_layers: int) -> None:
    """Normal(0, std) linear/embedding weights, zero biases; every `out_proj` scaled by
    1/sqrt(2 n_layers) (GPT-2), so the residual stream does not grow with depth, unless
    its parent sets `plain_output_init` (seq_icl's layers whose output linear is not named
    out_proj, which seq_icl's init leaves unscaled). Mixer-specific parameters (SSM poles,
    decays, mixing ratios) keep their own init."""
    modules = dict(module.named_modules())
    for name, sub in modules.items():
        if isinstance(sub, (nn.Linear, nn.Embedding)):
            parent = modules.get(name.rpartition(".")[0])
            scaled = name.endswith("out_proj") and not getattr(parent, "plain_output_init", False)
            scale = 1 / math.sqrt(2 * n_layers) if scaled else 1.0
            nn.init.normal_(sub.weight, std=std * scale)
            if getattr(sub, "bias", None) is not None:
                nn.init.zeros_(sub.bias)


class MixerBackbone(Backbone):
    """Embedding + `n_layers` MixerBlocks + final LayerNorm.

    Subclasses set `config_class` and implement `make_mixer(layer)`; they may override
    `make_ffn(layer)` (RWKV uses its channel-mix instead of the MLP).
    """

    config: MixerStackConfig

    def __init__(self, config: MixerStackConfig, *, vocab_size: int):
        super().__init__(config, vocab_size=vocab_size)
        self.embedding = nn.Embedding(vocab_size, config.d_model)
        self.embed_dropout = nn.Dropout(config.embed_dropout)
        self.blocks = nn.ModuleList(
            MixerBlock(self.make_mixer(i), self.make_ffn(i), config.d_model, config.dropout)
            for i in range(config.n_layers)
        )
        self.norm = nn.LayerNorm(config.d_model)
        gpt_init(self, config.init_std, config.n_layers)

    @property
    def seq_icl(self) -> bool:
        """True for `variant: seq_icl` (seq_icl's layers, docs/seq_icl_backbones.md)."""
        return self.config.variant == "seq_icl"

    def embed(self, input_ids: Tensor) -> Tensor:  # (B, L) -> (B, L, D)
        return self.embed_dropout(self.embedding(input_ids))

    def bind_output_head(self, head: nn.Linear) -> None:
        """With `tie_embeddings`, the head's weight (V, D) is the embedding matrix itself."""
        if self.config.tie_embeddings:
            head.weight = self.embedding.weight

    def optimizer_groups(self, *, lr: float, weight_decay: float) -> list[dict[str, Any]]:
        """seq_icl's SSM group: with `variant: seq_icl`, every `ssm_parameters()` of a
        submodule (A, dt, B of S4D's and H3's SSMs) trains at lr min(1e-3, lr), no decay."""
        if not self.seq_icl:
            return []
        owners = [sub for sub in self.modules() if hasattr(sub, "ssm_parameters")]
        params = [param for sub in owners for param in sub.ssm_parameters()]
        return [{"params": params, "lr": min(1e-3, lr), "weight_decay": 0.0}] if params else []

    def make_mixer(self, layer: int) -> nn.Module:
        raise NotImplementedError

    def make_ffn(self, layer: int) -> nn.Module | None:
        ratio = self.config.mlp_ratio
        approximate = "tanh" if self.seq_icl else "none"
        return FeedForward(self.config.d_model, ratio, approximate) if ratio else None
