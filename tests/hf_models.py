"""Tiny Hugging Face causal LMs of each supported layout, saved with `save_pretrained`."""

from __future__ import annotations

import os
from pathlib import Path

import torch
from transformers import AutoModelForCausalLM, GPT2Config, GPTNeoXConfig, LlamaConfig, Qwen2Config
from transformers.utils import logging as transformers_logging

os.environ.setdefault("HF_HUB_OFFLINE", "1")
transformers_logging.disable_progress_bar()

VOCAB = 23
WIDTH = 16

#: One tiny config per layout (2 layers, width 16, vocabulary 23, no dropout).
CONFIGS = {
    "gpt2": lambda: GPT2Config(vocab_size=VOCAB, n_embd=WIDTH, n_layer=2, n_head=2, n_positions=64,
                               resid_pdrop=0.0, embd_pdrop=0.0, attn_pdrop=0.0, bos_token_id=0, eos_token_id=0),
    "gpt_neox": lambda: GPTNeoXConfig(vocab_size=VOCAB, hidden_size=WIDTH, num_hidden_layers=2,
                                      num_attention_heads=2, intermediate_size=32, rotary_pct=0.5,
                                      max_position_embeddings=64),
    "llama": lambda: LlamaConfig(vocab_size=VOCAB, hidden_size=WIDTH, num_hidden_layers=2, num_attention_heads=2,
                                 num_key_value_heads=1, intermediate_size=32, max_position_embeddings=64),
    "qwen2": lambda: Qwen2Config(vocab_size=VOCAB, hidden_size=WIDTH, num_hidden_layers=2, num_attention_heads=2,
                                 num_key_value_heads=1, intermediate_size=32, max_position_embeddings=64,
                                 tie_word_embeddings=True),
}


def save_tiny(layout: str, directory: Path, seed: int = 1234, n_layers: int = 2) -> Path:
    """A tiny randomly initialised model of `layout`, saved to `directory/layout`; returns the path."""
    torch.manual_seed(seed)
    config = CONFIGS[layout]()
    config.num_hidden_layers = n_layers
    model = AutoModelForCausalLM.from_config(config)
    path = directory / layout
    model.save_pretrained(path)
    return path


def reference_logits(path: Path, input_ids: torch.Tensor) -> torch.Tensor:
    """The Hugging Face model's own forward on input_ids: (B, L, V)."""
    model = AutoModelForCausalLM.from_pretrained(path).eval()
    with torch.no_grad():
        return model(input_ids).logits
