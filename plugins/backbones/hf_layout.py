"""Loading a Hugging Face causal LM and finding its parts (the `hf` backbone's layouts).

A decoder-only causal LM in `transformers` is an embedding, optional learned
position embeddings (GPT-2's `wpe`), a list of decoder layers, a final norm,
optional rotary embeddings shared by the layers, and an output head. The
attribute names differ per family; `find_parts` looks them up on the model's base
model so that GPT-2, GPT-NeoX, Llama-family and Qwen-family models (and others
that use the same names) load the same way. Anything else fails with one clear
message naming the model.
"""

from __future__ import annotations

from dataclasses import dataclass
from pathlib import Path
from typing import TYPE_CHECKING

import torch
from torch import nn

from ponderlab.core.errors import SpecError

if TYPE_CHECKING:  # transformers is imported where a model is built: listing plugins stays quick
    from transformers import PretrainedConfig, PreTrainedModel

#: Attribute names, per part, tried in order on the base model (`model.base_model`).
LAYER_NAMES = ("h", "layers", "blocks")
FINAL_NORM_NAMES = ("ln_f", "norm", "final_layer_norm", "final_layernorm")
POSITION_NAMES = ("wpe", "embed_positions")
DROPOUT_NAMES = ("drop", "emb_dropout", "embed_dropout")

DTYPES = {"float32": torch.float32, "bfloat16": torch.bfloat16, "float16": torch.float16}


@dataclass
class ModelParts:
    """The pieces of a causal LM that the `hf` backbone runs one by one.

    embedding: token embedding (V, D); positions: learned absolute positions or None
    (rotary models); dropout: embedding dropout or None; layers: the decoder layers;
    norm: the final norm; rotary: the shared rotary embedding or None; head: the
    output projection (D -> V), tied to the embedding where the model ties them.
    """

    embedding: nn.Embedding
    positions: nn.Embedding | None
    dropout: nn.Module | None
    layers: nn.ModuleList
    norm: nn.Module
    rotary: nn.Module | None
    head: nn.Linear


def _first_attribute(module: nn.Module, names: tuple[str, ...]) -> nn.Module | None:
    for name in names:
        found = getattr(module, name, None)
        if isinstance(found, nn.Module):
            return found
    return None


def find_parts(model: PreTrainedModel, where: str) -> ModelParts:
    """The parts of `model`; SpecError naming `where` when its layout is unknown."""
    base = model.base_model
    layers = _first_attribute(base, LAYER_NAMES)
    norm = _first_attribute(base, FINAL_NORM_NAMES)
    head = model.get_output_embeddings()
    if not isinstance(layers, nn.ModuleList) or norm is None or not isinstance(head, nn.Linear):
        raise SpecError(
            f"{type(model).__name__} has no known decoder layout (layers as one of {LAYER_NAMES}, "
            f"a final norm as one of {FINAL_NORM_NAMES}, a linear output head); supported: GPT-2, "
            "GPT-NeoX, Llama- and Qwen-family causal LMs",
            where=where,
        )
    positions = _first_attribute(base, POSITION_NAMES)
    return ModelParts(
        embedding=model.get_input_embeddings(),
        positions=positions if isinstance(positions, nn.Embedding) else None,
        dropout=_first_attribute(base, DROPOUT_NAMES),
        layers=layers,
        norm=norm,
        rotary=getattr(base, "rotary_emb", None),
        head=head,
    )


def load_config(source: str, where: str) -> PretrainedConfig:
    """AutoConfig of a hub id or local path, offline errors turned into one message."""
    from transformers import AutoConfig

    try:
        return AutoConfig.from_pretrained(source)
    except (OSError, ValueError, KeyError) as error:
        kind = "local path" if Path(source).exists() else "hub id or local path"
        raise SpecError(f"cannot load a model config from {kind} {source!r}: {error}", where=where) from None


def load_causal_lm(
    source: str, *, pretrained: bool, dtype: str, vocab_size: int | None, where: str
) -> PreTrainedModel:
    """The causal LM at `source`: its weights (pretrained) or its config freshly initialised.

    vocab_size, when it differs from the model's, resizes the embedding and head
    (`resize_token_embeddings`: rows kept, new rows initialised, tying kept).
    """
    from transformers import AutoModelForCausalLM

    config = load_config(source, where)
    config._attn_implementation = "sdpa"
    torch_dtype = DTYPES[dtype]
    try:
        if pretrained:
            model = AutoModelForCausalLM.from_pretrained(source, config=config, dtype=torch_dtype)
        else:
            model = AutoModelForCausalLM.from_config(config, dtype=torch_dtype)
    except (OSError, ValueError, KeyError) as error:
        raise SpecError(f"cannot load causal LM {source!r}: {error}", where=where) from None
    if vocab_size is not None and vocab_size != model.get_input_embeddings().num_embeddings:
        model.resize_token_embeddings(vocab_size, mean_resizing=False)
    return model


def build_causal_lm(config: PretrainedConfig, *, dtype: str = "float32") -> PreTrainedModel:
    """A freshly initialised causal LM for an in-memory config (e.g. RMT/ARMT's GPT-NeoX)."""
    from transformers import AutoModelForCausalLM

    config._attn_implementation = "sdpa"
    return AutoModelForCausalLM.from_config(config, dtype=DTYPES[dtype])
