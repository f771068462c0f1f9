"""RMT and ARMT over pretrained Hugging Face models (the `hf` path), against independent references."""

from __future__ import annotations

import math

import pytest
import torch
from hf_models import VOCAB, reference_logits, save_tiny
from test_backbones_memory import assert_memory_carries_token_forward
from transformers import AutoModelForCausalLM

import ponderlab

SEGMENT, MEMORY = 4, 3


@pytest.fixture(scope="module")
def saved(tmp_path_factory):
    root = tmp_path_factory.mktemp("hf_memory")
    return {layout: save_tiny(layout, root) for layout in ("gpt2", "llama")}


def build(kind, path, halting=None, **options):
    backbone = {"name": kind, "model": str(path), "segment_size": SEGMENT, "memory_size": MEMORY, **options}
    return ponderlab.build_model(backbone=backbone, halting=halting or {"name": "none"}, vocab_size=VOCAB, seed=0)


def tokens(length=10, seed=0):
    return torch.randint(0, VOCAB, (2, length), generator=torch.Generator().manual_seed(seed))


def literal_rmt(model, memory, input_ids):
    """RMT as the reference runs it: the whole HF model on [memory ; segment ; memory] per segment,
    the next memory from its last hidden state at the write positions. Returns logits (B, L, V)."""
    logits = []
    memory = memory.unsqueeze(0).expand(input_ids.shape[0], -1, -1)
    for start in range(0, input_ids.shape[1], SEGMENT):
        segment = input_ids[:, start : start + SEGMENT]
        embeds = torch.cat([memory, model.get_input_embeddings()(segment), memory], dim=1)
        out = model(inputs_embeds=embeds, output_hidden_states=True)
        logits.append(out.logits[:, MEMORY : MEMORY + segment.shape[1]])
        memory = out.hidden_states[-1][:, -MEMORY:]
    return torch.cat(logits, dim=1)


def test_rmt_on_gpt2_matches_the_literal_reference_logits_and_every_gradient(saved):
    ours = build("rmt", saved["gpt2"]).double().train()
    reference = AutoModelForCausalLM.from_pretrained(saved["gpt2"], dtype=torch.float64).train()
    memory = ours.backbone.initial_memory.detach().clone().requires_grad_()
    x = tokens(10)  # segments of 4, 4, 2
    weights = torch.randn(2, 10, VOCAB, dtype=torch.float64, generator=torch.Generator().manual_seed(5))
    mine = ours(x).logits
    theirs = literal_rmt(reference, memory, x)
    torch.testing.assert_close(mine, theirs, rtol=1e-12, atol=1e-12)
    (mine * weights).sum().backward()
    (theirs * weights).sum().backward()
    torch.testing.assert_close(ours.backbone.initial_memory.grad, memory.grad)
    base = dict(reference.transformer.named_parameters())
    pairs = {"embedding.weight": "wte.weight", "positions.weight": "wpe.weight", "norm.weight": "ln_f.weight",
             "norm.bias": "ln_f.bias"}
    for name, parameter in ours.backbone.named_parameters():
        if name == "initial_memory":
            continue
        key = pairs.get(name, name.replace("blocks.", "h.").replace(".layer.", ".", 1))
        torch.testing.assert_close(parameter.grad, base[key].grad, rtol=1e-10, atol=1e-12, msg=name)
    assert ours.backbone.initial_memory.grad.abs().sum() > 0


def test_memory_tokens_are_drawn_as_the_references_draw_them(saved):
    """randn * std(token embeddings): their spread follows the embedding's, not a fixed 0.02."""
    rmt = build("rmt", saved["gpt2"], memory_size=400)
    embedding_std = float(rmt.backbone.embedding.weight.detach().std())
    assert math.isclose(float(rmt.backbone.initial_memory.detach().std()), embedding_std, rel_tol=0.1)
    armt = build("armt", saved["gpt2"], memory_size=400)
    assert math.isclose(float(armt.backbone.memory_tokens.detach().std()), embedding_std, rel_tol=0.1)


@pytest.mark.parametrize("variant, normalize, delta", [("paper", False, 1e-5), ("seed000", True, 0.0)])
def test_armt_variants_default_to_their_references_formulas_and_init(saved, variant, normalize, delta):
    memory = build("armt", saved["gpt2"], variant=variant, d_mem=4).backbone.memories[0]
    assert memory.normalize is normalize and memory.gamma_delta == delta and memory.eps == 1e-5
    bound = 1 / math.sqrt(16)  # PyTorch's default Linear init: uniform(+-1/sqrt(fan_in))
    for linear in (memory.query, memory.key, memory.beta):
        weight = linear.weight.detach()
        assert float(weight.abs().max()) <= bound and float(weight.std()) > 0.5 * bound / math.sqrt(3)
    assert float(memory.beta.bias.detach().abs().sum()) > 0  # the bias is drawn too (beta != 0.5 everywhere)
    assert float(memory.value.weight.detach().abs().sum()) == 0.0  # W_v starts at zero, as in both references


def test_armt_with_zero_values_computes_the_pretrained_model_on_each_segment(saved):
    """W_v = 0 at init: nothing is stored, so each segment's logits are the HF model's on that segment."""
    model = build("armt", saved["llama"], memory_heads=2, d_mem=4).eval()
    x = tokens(8)
    with torch.no_grad():
        logits = model(x).logits
    expected = torch.cat([reference_logits(saved["llama"], x[:, :4]), reference_logits(saved["llama"], x[:, 4:])], 1)
    torch.testing.assert_close(logits, expected, rtol=1e-5, atol=1e-5)


def test_armt_memory_on_a_pretrained_model_carries_information_across_segments(saved):
    model = build("armt", saved["llama"], {"name": "graves", "scope": "layer", "max_hops": 2}).eval()
    for memory in model.backbone.memories:
        torch.nn.init.normal_(memory.value.weight, std=0.3, generator=torch.Generator().manual_seed(1))
    assert_memory_carries_token_forward(model, tokens(8), vocab=VOCAB)
