"""The `hf` backbone: any Hugging Face causal LM, its layers as blocks, under every scope."""

from __future__ import annotations

import pytest
import torch
from hf_models import CONFIGS, VOCAB, reference_logits, save_tiny

import ponderlab
from ponderlab.core.errors import SpecError
from ponderlab.plugins.backbones.hf import HFConfig

LAYOUTS = sorted(CONFIGS)


@pytest.fixture(scope="module")
def saved(tmp_path_factory):
    """Every layout saved once for the module: {layout: path}."""
    root = tmp_path_factory.mktemp("hf")
    return {layout: save_tiny(layout, root) for layout in LAYOUTS}


def build(path, halting=None, **options):
    backbone = {"name": "hf", "model": str(path), **options}
    return ponderlab.build_model(backbone=backbone, halting=halting or {"name": "none"}, vocab_size=VOCAB, seed=0)


def tokens(batch=2, length=7, seed=0):
    return torch.randint(0, VOCAB, (batch, length), generator=torch.Generator().manual_seed(seed))


@pytest.mark.parametrize("layout", LAYOUTS)
def test_logits_equal_the_hugging_face_forward(saved, layout):
    x = tokens()
    model = build(saved[layout]).eval()
    with torch.no_grad():
        logits = model(x).logits
    torch.testing.assert_close(logits, reference_logits(saved[layout], x), rtol=1e-5, atol=1e-5)
    assert len(model.backbone.blocks) == 2 and model.backbone.d_model == 16


def test_tied_embeddings_stay_tied_and_untied_heads_are_the_models_own(saved):
    gpt2 = build(saved["gpt2"])
    assert gpt2.head.weight is gpt2.backbone.embedding.weight  # GPT-2 ties wte and lm_head
    llama = build(saved["llama"])
    assert llama.head.weight is llama.backbone.lm_head.weight
    assert llama.head.weight is not llama.backbone.embedding.weight
    names = {name for name, _ in gpt2.named_parameters()}  # shared: listed once, trained once
    assert sum(1 for p in gpt2.parameters() if p is gpt2.head.weight) == 1 and names


def test_pretrained_false_keeps_the_config_but_not_the_weights(saved):
    loaded, fresh = build(saved["llama"]), build(saved["llama"], pretrained=False)
    assert fresh.backbone.hf_config.hidden_size == loaded.backbone.hf_config.hidden_size
    assert not torch.equal(fresh.backbone.embedding.weight, loaded.backbone.embedding.weight)


def test_dtype_option_sets_the_parameter_dtype(saved):
    model = build(saved["gpt_neox"], dtype="bfloat16")
    assert model.backbone.embedding.weight.dtype == torch.bfloat16
    assert model.backbone.blocks[0].layer.mlp.dense_h_to_4h.weight.dtype == torch.bfloat16
    halting = build(saved["gpt_neox"], {"name": "graves", "scope": "layer", "max_hops": 2}, dtype="bfloat16")
    with torch.autocast("cpu", dtype=torch.bfloat16):  # as training.precision bf16 runs it
        logits = halting(tokens()).logits
    assert logits.dtype == torch.bfloat16 and torch.isfinite(logits.float()).all()


def test_a_different_task_vocabulary_resizes_embedding_and_head(saved):
    model = ponderlab.build_model(backbone={"name": "hf", "model": str(saved["gpt2"])}, vocab_size=9, seed=0)
    full = build(saved["gpt2"])
    assert model.backbone.embedding.weight.shape == (9, 16) and model.head.weight is model.backbone.embedding.weight
    torch.testing.assert_close(model.backbone.embedding.weight, full.backbone.embedding.weight[:9])
    assert model(tokens(length=5) % 9).logits.shape == (2, 5, 9)


def test_without_model_it_builds_the_gpt_neox_of_the_transformer_options():
    model = ponderlab.build_model(backbone={"name": "hf", "d_model": 16, "n_layers": 4}, vocab_size=VOCAB)
    assert model.backbone.hf_config.model_type == "gpt_neox" and len(model.backbone.blocks) == 4


def test_bad_model_path_or_clashing_options_are_one_clear_error(tmp_path, saved):
    with pytest.raises(SpecError, match="backbone.model.*cannot load a model config from"):
        build(tmp_path / "missing")
    with pytest.raises(ValueError, match="d_model apply only without `model`"):
        build(saved["gpt2"], d_model=32)
    # A saved spec lists every default: it must validate again (resume, evaluate).
    config = HFConfig(model=str(saved["gpt2"]))
    assert HFConfig.model_validate(config.model_dump()) == config


@pytest.mark.parametrize(
    "layout, halting",
    [
        ("gpt2", {"name": "graves", "scope": "layer", "max_hops": 3, "halting_bias_init": 10.0}),
        ("llama", {"name": "ut", "scope": "layer", "max_hops": 3, "halting_bias_init": 10.0}),
        ("gpt_neox", {"name": "graves", "scope": "model", "max_hops": 3, "halting_bias_init": 10.0}),
        ("qwen2", {"name": "graves", "scope": "depth", "halting_bias_init": -30.0}),
        ("gpt2", {"name": "threshold", "scope": "depth", "halting_bias_init": -30.0}),
        ("llama", {"name": "pondernet", "scope": "depth", "halting_bias_init": -30.0}),
    ],
    ids=lambda v: v if isinstance(v, str) else f"{v['name']}-{v['scope']}",
)
def test_halting_init_preserves_the_pretrained_function_at_step_zero(saved, layout, halting):
    """Layer/model scope: every token halts after its first hop; depth: every token runs every layer."""
    x = tokens(seed=3)
    model = build(saved[layout], halting).eval()
    with torch.no_grad():
        out = model(x)
    torch.testing.assert_close(out.logits, reference_logits(saved[layout], x), rtol=1e-5, atol=1e-5)
    expected_layers = 2.0
    assert torch.all(out.stats.layers == expected_layers), out.stats.layers
    # The check is sensitive: the default bias (1.0) mixes hops and changes the logits.
    default = {key: value for key, value in halting.items() if key != "halting_bias_init"}
    with torch.no_grad():
        changed = build(saved[layout], default).eval()(x).logits
    assert not torch.allclose(changed, out.logits, atol=1e-3)


@pytest.mark.parametrize("scope", ["layer", "model", "depth"])
def test_gradients_reach_halting_units_and_layers_in_every_scope(saved, scope):
    halting = {"name": "graves", "scope": scope, **({} if scope == "depth" else {"max_hops": 2})}
    model = build(saved["qwen2"], halting)
    out = model(tokens(), labels=tokens(seed=1))
    out.loss.backward()
    assert model.sites[0].units[0].linear.weight.grad.abs().sum() > 0
    assert model.backbone.blocks[0].layer.self_attn.q_proj.weight.grad.abs().sum() > 0


def trainable(model):
    return {name for name, parameter in model.named_parameters() if parameter.requires_grad}


def test_frozen_trains_only_what_ponderlab_adds(saved):
    model = build(saved["llama"], {"name": "graves", "scope": "layer", "max_hops": 2}, finetune="frozen")
    assert trainable(model) == {f"sites.{i}.units.0.linear.{p}" for i in range(2) for p in ("weight", "bias")}
    rmt = ponderlab.build_model(backbone={"name": "rmt", "model": str(saved["gpt2"]), "finetune": "frozen",
                                          "segment_size": 4, "memory_size": 2}, vocab_size=VOCAB)
    assert trainable(rmt) == {"backbone.initial_memory"}


@pytest.mark.parametrize("layout, adapted", [("llama", "self_attn.q_proj"), ("gpt2", "attn.c_attn")])
def test_lora_adds_trainable_adapters_and_starts_as_the_pretrained_model(saved, layout, adapted):
    model = build(saved[layout], finetune="lora", lora_rank=2).eval()
    names = trainable(model)
    assert names and all("lora_" in name for name in names)
    assert f"backbone.blocks.0.layer.{adapted}.lora_A.default.weight" in names
    x = tokens()
    with torch.no_grad():
        logits = model(x).logits
    torch.testing.assert_close(logits, reference_logits(saved[layout], x), rtol=1e-5, atol=1e-5)  # B starts at 0
    optimizer = torch.optim.SGD([p for p in model.parameters() if p.requires_grad], lr=0.5)
    before = model.backbone.embedding.weight.detach().clone()
    ponderlab.train_step(model, optimizer, x, tokens(seed=1))
    assert torch.equal(model.backbone.embedding.weight, before)
    with torch.no_grad():
        assert not torch.allclose(model(x).logits, logits)  # the adapters learned something


def test_lora_with_unknown_targets_is_one_clear_error(saved):
    with pytest.raises(SpecError, match="LoRA"):
        build(saved["llama"], finetune="lora", lora_targets=["no_such_module"])
