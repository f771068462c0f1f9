"""`hf`: any Hugging Face causal LM, its decoder layers as ponderlab blocks.

    backbone: {name: hf, model: gpt2}                     # hub id (weights must be reachable)
    backbone: {name: hf, model: /models/qwen2-0.5b}       # a local save_pretrained directory
    backbone: {name: hf, model: gpt2, pretrained: false}  # the config only, trained from scratch

The model is loaded with `AutoModelForCausalLM`; its embedding (plus GPT-2's
learned positions and the embedding dropout), decoder layers, final norm and
output head become the backbone's `embed`, `blocks`, `finalize` and the model's
head (bound to the LM head's weight, so tied embeddings stay tied). Every halting
strategy and scope then applies: ACT around each layer (`layer`), around the
stack (`model`), early exit across the layers (`depth`). With halting `none` the
logits are the Hugging Face model's own. Halted tokens skip their layers' work
for GPT-2, GPT-NeoX, Llama and Qwen2 layouts (`hf_rows`); other layouts compute
every token.

Starting ACT on a pretrained model without changing what it computes: halting
units start with zero weights, so at step 0 h = sigmoid(halting_bias_init) for
every token. Layer scope (graves, ut): a bias above logit(1 - epsilon) makes every
token halt after its first hop with weight 1 (bias 10 is safe). Depth scope
(graves, threshold, pondernet): a bias of -30 makes every token run every layer
with weights below 1e-13 on the intermediate states (see docs/pretrained.md).

Without `model`, a GPT-NeoX model is built from the `transformer` options
(d_model, n_layers, n_heads, ...): the same stack as `transformer`, through this path.
The vocabulary follows the task: a model whose vocabulary differs is resized
(`resize_token_embeddings`: the first rows are kept).
"""

from __future__ import annotations

from typing import Literal

import torch
from pydantic import Field, model_validator
from torch import Tensor, nn

from ponderlab.core.hookspecs import hookimpl
from ponderlab.core.interfaces import Backbone

from .hf_block import make_block
from .hf_finetune import add_lora, freeze
from .hf_layout import build_causal_lm, find_parts, load_causal_lm
from .transformer import TransformerConfig, neox_config

#: Options that build the from-scratch GPT-NeoX; a loaded model has its own.
NEOX_OPTIONS = ("d_model", "n_layers", "n_heads", "ffn_size", "rotary_pct", "parallel_residual", "dropout",
                "max_positions")


class HFConfig(TransformerConfig):
    name: Literal["hf"] = "hf"
    model: str | None = Field(
        None, description="Hub id or local path of a causal LM (None: a GPT-NeoX from the transformer options)."
    )
    pretrained: bool = Field(True, description="Load the weights (false: the config only, freshly initialised).")
    dtype: Literal["float32", "bfloat16", "float16"] = Field(
        "float32", description="Parameter dtype (bfloat16/float16 run under autocast: training.precision bf16)."
    )
    device: str | None = Field(None, description="Device to load the weights on (default: CPU; training moves them).")
    finetune: Literal["full", "frozen", "lora"] = Field(
        "full", description="full: train everything; frozen: only added parameters; lora: LoRA adapters too."
    )
    lora_rank: int = Field(8, ge=1)
    lora_alpha: float = Field(16.0, gt=0)
    lora_dropout: float = Field(0.0, ge=0, lt=1)
    lora_targets: list[str] | None = Field(None, description="Linear modules LoRA adapts (default: peft's per family).")

    @model_validator(mode="after")
    def _loaded_model_has_its_own_shape(self):
        if self.model is not None:
            defaults = {key: type(self).model_fields[key].default for key in NEOX_OPTIONS}
            clashing = [key for key in NEOX_OPTIONS
                        if key in self.model_fields_set and getattr(self, key) != defaults[key]]
            if clashing:
                raise ValueError(f"{', '.join(clashing)} apply only without `model` (a loaded model has its own)")
        return self


class HFBackbone(Backbone):
    """A Hugging Face causal LM run block by block."""

    config_class = HFConfig

    def __init__(self, config: HFConfig, *, vocab_size: int):
        super().__init__(config, vocab_size=vocab_size)
        where = f"backbone.model ({config.model})" if config.model else "backbone"
        if config.model is None:
            model = build_causal_lm(neox_config(config, vocab_size), dtype=config.dtype)
        else:
            model = load_causal_lm(config.model, pretrained=config.pretrained, dtype=config.dtype,
                                   vocab_size=vocab_size, where=where)
        if config.finetune == "lora":
            add_lora(model, rank=config.lora_rank, alpha=config.lora_alpha, dropout=config.lora_dropout,
                     targets=config.lora_targets, where=where)
        elif config.finetune == "frozen":
            freeze(model)
        if config.device is not None:
            model.to(torch.device(config.device))
        self.hf_config = model.config
        parts = find_parts(model, where)
        self.embedding = parts.embedding
        self.positions = parts.positions
        self.dropout = parts.dropout if parts.dropout is not None else nn.Identity()
        self.blocks = nn.ModuleList(
            make_block(layer, index=i, config=model.config, rotary=parts.rotary) for i, layer in enumerate(parts.layers)
        )
        self.norm = parts.norm
        # Not a submodule: its parameters belong to the model's head once bound (bind_output_head).
        self._lm_head = (parts.head,)

    @property
    def d_model(self) -> int:
        return int(self.hf_config.hidden_size)

    def token_embeddings(self, input_ids: Tensor) -> Tensor:  # (B, L) -> (B, L, D)
        return self.embedding(input_ids)

    def position_embeddings(self, hidden: Tensor) -> Tensor:  # (B, L, D) -> (B, L, D)
        """Learned absolute positions 0..L-1 (GPT-2) and the embedding dropout, as the model adds them."""
        if self.positions is not None:
            positions = torch.arange(hidden.shape[1], device=hidden.device)  # (L,)
            hidden = hidden + self.positions(positions).unsqueeze(0).to(hidden.dtype)
        return self.dropout(hidden)

    def embed(self, input_ids: Tensor) -> Tensor:  # (B, L) -> (B, L, D)
        return self.position_embeddings(self.token_embeddings(input_ids))

    @property
    def lm_head(self) -> nn.Linear:
        """The Hugging Face model's output head (tied to `embedding` where the model ties them)."""
        return self._lm_head[0]

    def bind_output_head(self, head: nn.Linear) -> None:
        """Make the model's head the LM head: the same weight (and bias) parameters."""
        head.weight = self.lm_head.weight
        if self.lm_head.bias is not None:
            head.bias = self.lm_head.bias


@hookimpl
def ponderlab_register_backbones(register):
    register(HFBackbone)
