"""Tiny Hugging Face causal LMs of each supported layout, saved with `save_pretrained`."""

from __future__ import annotations

import os
from pathlib import Path

import numpy as np
import torch
from tokenizers import Tokenizer, models, pre_tokenizers, trainers
from transformers import (
    AutoModelForCausalLM,
    GPT2Config,
    GPTNeoXConfig,
    LlamaConfig,
    PreTrainedTokenizerFast,
    Qwen2Config,
)
from transformers.utils import logging as transformers_logging

os.environ.setdefault("HF_HUB_OFFLINE", "1")
transformers_logging.disable_progress_bar()

VOCAB = 23
WIDTH = 16

#: One tiny config per layout (n layers, default 2; width 16, vocabulary 23, no dropout). The layer
#: count goes to the constructor: configs such as Qwen2's derive per-layer fields (layer_types) from it.
CONFIGS = {
    "gpt2": lambda n=2: GPT2Config(vocab_size=VOCAB, n_embd=WIDTH, n_layer=n, n_head=2, n_positions=64,
                               resid_pdrop=0.0, embd_pdrop=0.0, attn_pdrop=0.0, bos_token_id=0, eos_token_id=0),
    "gpt_neox": lambda n=2: GPTNeoXConfig(vocab_size=VOCAB, hidden_size=WIDTH, num_hidden_layers=n,
                                      num_attention_heads=2, intermediate_size=32, rotary_pct=0.5,
                                      max_position_embeddings=64),
    "llama": lambda n=2: LlamaConfig(vocab_size=VOCAB, hidden_size=WIDTH, num_hidden_layers=n, num_attention_heads=2,
                                 num_key_value_heads=1, intermediate_size=32, max_position_embeddings=64),
    "qwen2": lambda n=2: Qwen2Config(vocab_size=VOCAB, hidden_size=WIDTH, num_hidden_layers=n, num_attention_heads=2,
                                 num_key_value_heads=1, intermediate_size=32, max_position_embeddings=64,
                                 tie_word_embeddings=True),
}


def save_tiny(layout: str, directory: Path, seed: int = 1234, n_layers: int = 2) -> Path:
    """A tiny randomly initialised model of `layout`, saved to `directory/layout`; returns the path."""
    torch.manual_seed(seed)
    config = CONFIGS[layout](n_layers)
    model = AutoModelForCausalLM.from_config(config)
    path = directory / layout
    model.save_pretrained(path)
    return path


def reference_logits(path: Path, input_ids: torch.Tensor) -> torch.Tensor:
    """The Hugging Face model's own forward on input_ids: (B, L, V)."""
    model = AutoModelForCausalLM.from_pretrained(path).eval()
    with torch.no_grad():
        return model(input_ids).logits


def babi_corpus(n_stories: int = 200):
    """bAbI qa1 stories, questions, answers and distractor sentences as text."""
    from ponderlab.plugins.tasks.babi_world import distractor, random_story
    from ponderlab.plugins.tasks.text_tokenizer import sentence_text

    rng = np.random.default_rng(0)
    draws = iter(lambda: int(rng.integers(0, 2**31)), None)
    for _ in range(n_stories):
        story = random_story(rng, "qa1", 2, 6)
        yield " ".join([sentence_text(f) for f in story.facts] + [sentence_text(story.question), story.answer])
        yield sentence_text(distractor(draws))


def save_tiny_tokenizer(directory: Path) -> Path:
    """A word-level tokenizer trained with `tokenizers` on bAbI text, saved for AutoTokenizer."""
    tokenizer = Tokenizer(models.WordLevel(unk_token="[UNK]"))
    tokenizer.pre_tokenizer = pre_tokenizers.Whitespace()
    tokenizer.train_from_iterator(babi_corpus(), trainers.WordLevelTrainer(special_tokens=["[UNK]", "<eos>", "GEN"]))
    PreTrainedTokenizerFast(tokenizer_object=tokenizer, eos_token="<eos>", unk_token="[UNK]").save_pretrained(directory)
    return directory
