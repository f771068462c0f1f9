"""Parameter-efficient fine-tuning of a wrapped Hugging Face model.

finetune: full    every parameter trains (the default);
          frozen  the Hugging Face model's parameters are frozen: only what ponderlab
                  adds (halting units, memory tokens, associative memories) trains;
          lora    LoRA adapters (`peft`, the `peft` extra) on the layers' linear
                  projections train, with what ponderlab adds; the rest is frozen.
"""

from __future__ import annotations

from typing import TYPE_CHECKING

from torch import nn

from ponderlab.core.errors import SpecError

if TYPE_CHECKING:  # transformers is imported where a model is built: listing plugins stays quick
    from transformers import PreTrainedModel


def freeze(module: nn.Module) -> None:
    for parameter in module.parameters():
        parameter.requires_grad_(False)


def lora_targets(model: PreTrainedModel, targets: list[str] | None, where: str) -> list[str]:
    """The module names LoRA adapts: given, or peft's default for the model family."""
    if targets:
        return list(targets)
    from peft.utils.constants import TRANSFORMERS_MODELS_TO_LORA_TARGET_MODULES_MAPPING as DEFAULTS

    found = DEFAULTS.get(model.config.model_type)
    if not found:
        raise SpecError(
            f"no default LoRA targets for model type {model.config.model_type!r}; set lora_targets "
            "(names of linear modules inside the layers, e.g. [q_proj, v_proj])",
            where=where,
        )
    return list(found)


def add_lora(model: PreTrainedModel, *, rank: int, alpha: float, dropout: float, targets: list[str] | None,
             where: str) -> None:
    """Freeze `model` and inject trainable LoRA adapters into it (in place)."""
    try:
        from peft import LoraConfig, inject_adapter_in_model
    except ImportError:
        raise SpecError("finetune: lora needs peft (pip install 'ponderlab[peft]')", where=where) from None
    from transformers.pytorch_utils import Conv1D

    freeze(model)
    names = lora_targets(model, targets, where)
    conv1d = any(isinstance(module, Conv1D) and name.split(".")[-1] in names for name, module in model.named_modules())
    config = LoraConfig(r=rank, lora_alpha=alpha, lora_dropout=dropout, target_modules=names,
                        fan_in_fan_out=conv1d)  # GPT-2 style Conv1D stores its weight transposed
    try:
        inject_adapter_in_model(config, model)
    except ValueError as error:  # no module matched the targets
        raise SpecError(f"LoRA: {error}", where=where) from None
