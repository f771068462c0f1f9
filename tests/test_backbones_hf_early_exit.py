"""Early exit on wrapped Hugging Face layers: halted tokens skip the MLP, queries and output
projection (`forward_rows`, plugins/backbones/hf_rows.py), for every supported layout.

Each check compares a model with its full-computation twin (same weights, blocks that
compute every token; tests/twin_checks.py).
"""

from __future__ import annotations

import pytest
import torch
from hf_models import CONFIGS, VOCAB, save_tiny
from transformers import AutoModelForCausalLM, MistralConfig
from twin_checks import (
    assert_same_inference,
    assert_same_logits_and_gradients,
    block_rows,
    halting_twins,
)

import ponderlab
from ponderlab.core.early_exit import computes_rows
from ponderlab.core.interfaces import BlockContext
from ponderlab.plugins.backbones.hf import HFBackbone
from ponderlab.plugins.backbones.hf_block import HFRowsBlock
from ponderlab.testing import check_plugin

LAYOUTS = ["gpt2", "gpt_neox", "llama", "qwen2"]
N_LAYERS = 4


@pytest.fixture(scope="module")
def saved(tmp_path_factory):
    """Every layout with 4 layers, saved once for the module: {layout: path}."""
    root = tmp_path_factory.mktemp("hf_early_exit")
    return {layout: save_tiny(layout, root, n_layers=N_LAYERS) for layout in LAYOUTS}


def tokens(batch=3, length=10, seed=4):
    return torch.randint(0, VOCAB, (batch, length), generator=torch.Generator().manual_seed(seed))


def twins(path, halting: dict, std: float, name: str = "hf", **options):
    """The model that skips halted tokens, its full-computation twin, and the fast one's MLP row counts."""
    backbone = {"name": name, "model": str(path), **options}
    fast, full = halting_twins(
        lambda: ponderlab.build_model(backbone=backbone, halting=halting, vocab_size=VOCAB, seed=0), std=std)
    return fast, full, block_rows(fast, lambda block: block.layer.mlp)


@pytest.mark.parametrize("layout", LAYOUTS)
def test_threshold_exit_at_inference_runs_the_mlp_only_for_running_tokens(saved, layout):
    """Depth scope, packed rows: the same layer counts and logits; the MLP sees exactly the running rows."""
    fast, full, mlp_rows = twins(saved[layout], {"name": "threshold", "threshold": 0.6, "halting_bias_init": 0.0},
                                 std=30.0)
    assert all(isinstance(block, HFRowsBlock) for block in fast.backbone.blocks)
    assert mlp_rows == assert_same_inference(fast, full, tokens())


@pytest.mark.parametrize("layout", LAYOUTS)
def test_graves_training_with_active_masks_gives_the_twins_gradients(saved, layout):
    """Layer scope, training: later hops compute a subset; logits and every gradient equal the twin's."""
    halting = {"name": "graves", "scope": "layer", "max_hops": 3, "epsilon": 0.1, "halting_bias_init": -1.0}
    fast, full, mlp_rows = twins(saved[layout], halting, std=30.0)
    ids = tokens(batch=2, length=9, seed=5)
    fast_out, full_out = fast.train()(ids), full.train()(ids)
    assert len(set(fast_out.stats.hops.flatten().tolist())) > 1  # tokens halt after different hops
    assert min(mlp_rows) < ids.numel()  # later hops computed the running tokens only
    assert_same_logits_and_gradients(fast, full, fast_out.logits, full_out.logits)


def test_depth_scope_training_uses_rows_and_matches_the_twin(saved):
    """Depth scope with autograd: no packing, the core's active-subset update with forward_rows."""
    fast, full, mlp_rows = twins(saved["llama"], {"name": "graves", "scope": "depth", "halting_bias_init": 0.0},
                                 std=30.0)
    ids = tokens(batch=2, length=9, seed=6)
    fast_out, full_out = fast.train()(ids), full.train()(ids)
    assert min(mlp_rows) < ids.numel()
    assert_same_logits_and_gradients(fast, full, fast_out.logits, full_out.logits)


@pytest.mark.parametrize("layout", LAYOUTS)
def test_the_conformance_kit_passes_for_each_layout(saved, layout):
    """Among the contracts: forward_rows equals forward at the rows (pretrained false: the kit
    also checks that initialisation follows the seed, which loaded weights do not)."""
    check_plugin(HFBackbone, {"model": str(saved[layout]), "pretrained": False})


def randomize_lora(model):
    """Non-zero LoRA B matrices, so that an adapter that skipped LoRA would be caught."""
    generator = torch.Generator().manual_seed(7)
    with torch.no_grad():
        for name, parameter in model.named_parameters():
            if "lora_B" in name:
                parameter.copy_(torch.randn(parameter.shape, generator=generator))


@pytest.mark.parametrize("layout", ["gpt2", "gpt_neox", "llama"])
def test_rows_of_lora_wrapped_layers_equal_the_full_layer(saved, layout):
    """A fused projection wrapped by LoRA is called as a module (no weight slices): still exact."""
    model = ponderlab.build_model(backbone={"name": "hf", "model": str(saved[layout]), "finetune": "lora",
                                            "lora_rank": 2}, vocab_size=VOCAB, seed=0).eval()
    hidden = torch.randn(2, 9, 16, generator=torch.Generator().manual_seed(8))  # (B, L, D)
    rows = torch.tensor([0, 3, 4, 8, 10, 17])  # (K,)
    block = model.backbone.blocks[1]
    with torch.no_grad():
        before = block(hidden, BlockContext(layer=1))
        randomize_lora(model)
        full = block(hidden, BlockContext(layer=1))
        packed = block.forward_rows(hidden, rows, hidden.reshape(-1, 16)[rows], BlockContext(layer=1))
    assert not torch.allclose(before, full, atol=1e-3)  # the adapters change the layer
    torch.testing.assert_close(packed, full.reshape(-1, 16)[rows])


def test_sliding_window_layers_mask_keys_outside_the_window(tmp_path):
    """Qwen2 with sliding-window layers: rows see only the last `sliding_window` keys, as the layer does."""
    config = CONFIGS["qwen2"]()
    config.num_hidden_layers = 2
    config.use_sliding_window, config.sliding_window, config.max_window_layers = True, 3, 0
    config.layer_types = ["sliding_attention"] * 2
    torch.manual_seed(0)
    AutoModelForCausalLM.from_config(config).save_pretrained(tmp_path / "qwen2_sliding")
    model = ponderlab.build_model(backbone={"name": "hf", "model": str(tmp_path / "qwen2_sliding")},
                                  vocab_size=VOCAB, seed=0).eval()
    assert model.backbone.blocks[0].adapter.window == 3
    hidden = torch.randn(2, 9, 16, generator=torch.Generator().manual_seed(9))
    rows = torch.tensor([1, 5, 8, 9, 16])
    block = model.backbone.blocks[0]
    with torch.no_grad():
        full = block(hidden, BlockContext(layer=0)).reshape(-1, 16)
        packed = block.forward_rows(hidden, rows, hidden.reshape(-1, 16)[rows], BlockContext(layer=0))
        block.adapter.window = None  # full causal attention: rows past the window differ
        unwindowed = block.forward_rows(hidden, rows, hidden.reshape(-1, 16)[rows], BlockContext(layer=0))
    torch.testing.assert_close(packed, full[rows])
    assert not torch.allclose(unwindowed, full[rows], atol=1e-4)


def test_an_unknown_layout_computes_every_token(tmp_path):
    """A layout without a rows adapter (Mistral here) gets plain blocks: the core keeps halted rows."""
    config = MistralConfig(vocab_size=VOCAB, hidden_size=16, num_hidden_layers=2, num_attention_heads=2,
                           num_key_value_heads=1, intermediate_size=32, max_position_embeddings=64)
    torch.manual_seed(0)
    AutoModelForCausalLM.from_config(config).save_pretrained(tmp_path / "mistral")
    fast, full, mlp_rows = twins(tmp_path / "mistral", {"name": "threshold", "threshold": 0.6,
                                                        "halting_bias_init": 0.0}, std=30.0)
    assert not any(computes_rows(block) for block in fast.backbone.blocks)
    ids = tokens()
    with torch.no_grad():
        torch.testing.assert_close(fast.eval()(ids).logits, full.eval()(ids).logits)
    assert set(mlp_rows) == {ids.numel()}  # every layer computed every token


@pytest.mark.parametrize("name", ["rmt", "armt"])
def test_memory_backbones_on_rows_match_the_twin(saved, name):
    """RMT and ARMT run the same wrapped layers segment by segment: rows there too, exactly."""
    memory = {"segment_size": 4, "memory_size": 2}
    fast, full, mlp_rows = twins(saved["gpt2"], {"name": "graves", "scope": "layer", "max_hops": 3,
                                                 "epsilon": 0.1, "halting_bias_init": -1.0},
                                 std=30.0, name=name, **memory)
    full_rows = block_rows(full, lambda block: block.layer.mlp)
    ids = tokens(batch=2, length=9, seed=5)
    fast_out, full_out = fast.train()(ids), full.train()(ids)
    assert len(mlp_rows) == len(full_rows) and sum(mlp_rows) < sum(full_rows)  # later hops: running rows only
    assert_same_logits_and_gradients(fast, full, fast_out.logits, full_out.logits)


@pytest.mark.parametrize("layout", ["gpt2", "llama"])
def test_rows_under_bf16_autocast_match_the_full_layers(saved, layout):
    """Mixed precision as the trainer runs it: projections in bf16, frozen rows in float32."""
    fast, full, mlp_rows = twins(saved[layout], {"name": "threshold", "threshold": 0.6, "halting_bias_init": 0.0},
                                 std=30.0)
    ids = tokens()
    with torch.no_grad(), torch.autocast("cpu", dtype=torch.bfloat16):
        fast_out, full_out = fast.eval()(ids), full.eval()(ids)
    assert min(mlp_rows) < ids.numel()  # the rows path ran
    assert torch.equal(fast_out.stats.layers, full_out.stats.layers)
    torch.testing.assert_close(fast_out.logits.float(), full_out.logits.float(), rtol=0.02, atol=0.02)


def test_grouped_keys_and_values_serve_their_own_query_heads(tmp_path):
    """Llama with 4 query heads over 2 key/value heads: each key/value head serves its two
    consecutive query heads, as the layer's repeat_kv pairs them."""
    config = CONFIGS["llama"]()
    config.num_attention_heads, config.num_key_value_heads, config.head_dim = 4, 2, 4
    torch.manual_seed(0)
    AutoModelForCausalLM.from_config(config).save_pretrained(tmp_path / "llama_gqa")
    model = ponderlab.build_model(backbone={"name": "hf", "model": str(tmp_path / "llama_gqa")},
                                  vocab_size=VOCAB, seed=0).eval()
    hidden = torch.randn(2, 9, 16, generator=torch.Generator().manual_seed(10))  # (B, L, D)
    rows = torch.tensor([0, 2, 7, 9, 12, 17])  # (K,)
    for index, block in enumerate(model.backbone.blocks):
        with torch.no_grad():
            full = block(hidden, BlockContext(layer=index)).reshape(-1, 16)
            packed = block.forward_rows(hidden, rows, hidden.reshape(-1, 16)[rows], BlockContext(layer=index))
        torch.testing.assert_close(packed, full[rows])
