"""The resnet_bk backbone: forward/backward, causality, MoE routing, active subsets, checkpoints."""

from __future__ import annotations

import pydantic
import pytest
import torch

import ponderlab
from ponderlab.core.errors import SpecError
from ponderlab.core.interfaces import BlockContext
from ponderlab.plugins.backbones.bk_moe import MoEFeedForward
from ponderlab.plugins.backbones.resnet_bk import ResNetBKBlock, ResNetBKConfig

VOCAB = 11


def tiny_backbone(**overrides) -> dict:
    config = {"name": "resnet_bk", "d_model": 16, "n_layers": 2, "ffn_size": 24, "max_positions": 32}
    config.update(overrides)
    return config


def tiny_model(seed: int = 0, halting: dict | None = None, **overrides):
    return ponderlab.build_model(
        backbone=tiny_backbone(**overrides), halting=halting or {"name": "none"}, vocab_size=VOCAB, seed=seed
    )


def random_ids(batch: int = 2, length: int = 12, seed: int = 0) -> torch.Tensor:
    generator = torch.Generator().manual_seed(seed)
    return torch.randint(0, VOCAB, (batch, length), generator=generator)


def test_registered_and_defaults_follow_seed_002(registry):
    info = registry.get("backbone", "resnet_bk")
    config = info.cls.config_class()
    assert (config.d_model, config.n_layers, config.n_experts, config.top_k) == (64, 4, 4, 1)
    assert config.causal is True and config.shift_imag > 0


def test_forward_backward_shapes_and_gradients():
    model = tiny_model()
    ids = random_ids()
    labels = random_ids(seed=1)
    out = model(ids, labels=labels)
    assert out.logits.shape == (2, 12, VOCAB)
    assert torch.isfinite(out.loss)
    out.loss.backward()
    block = model.backbone.blocks[0]
    for parameter in (block.spectral_scale, block.potential.weight, block.spectral_out.weight, block.moe.router.weight):
        assert parameter.grad is not None and parameter.grad.abs().sum() > 0
    grads = [p.grad for p in model.parameters() if p.grad is not None]
    assert all(torch.isfinite(g).all() for g in grads)
    assert torch.all(out.stats.layers == 2)


def test_causal_model_output_at_t_ignores_later_inputs():
    # float64: the MoE groups tokens differently for the two inputs, which moves float32 rounding.
    model = tiny_model(seed=1).double().eval()
    ids = random_ids(length=12, seed=2)
    changed = ids.clone()
    changed[:, 7:] = (changed[:, 7:] + 3) % VOCAB
    with torch.no_grad():
        before, after = model(ids).logits, model(changed).logits
    torch.testing.assert_close(after[:, :7], before[:, :7], rtol=0, atol=1e-12)
    assert (after[:, 7:] - before[:, 7:]).abs().max() > 1e-4


def test_bidirectional_model_leaks_future_tokens():
    model = tiny_model(seed=1, causal=False).double().eval()
    ids = random_ids(length=12, seed=2)
    changed = ids.clone()
    changed[:, 7:] = (changed[:, 7:] + 3) % VOCAB
    with torch.no_grad():
        before, after = model(ids).logits, model(changed).logits
    leak = (after[:, :7] - before[:, :7]).abs().amax(dim=(0, 2))  # (7,)
    assert torch.all(leak > 1e-9), leak  # every earlier position sees it (decaying with distance)


def test_causal_block_jacobian_is_lower_triangular_in_time():
    torch.manual_seed(0)
    for causal in (True, False):
        block = ResNetBKBlock(ResNetBKConfig(d_model=8, ffn_size=8, causal=causal)).double()
        hidden = torch.randn(1, 6, 8, dtype=torch.float64)
        jacobian = torch.autograd.functional.jacobian(lambda h, b=block: b(h, BlockContext()), hidden)
        influence = jacobian[0].abs().sum(dim=(1, 2, 4))  # (L_out, L_in)
        future = torch.triu(influence, diagonal=1)
        if causal:
            assert future.max() == 0
        else:
            assert future.max() > 1e-6


def reference_moe(moe: MoEFeedForward, x: torch.Tensor) -> torch.Tensor:
    """Token-by-token loop: sum over the k most likely experts of p_e * expert_e(x)."""
    rows = []
    for token in x:
        probs = torch.softmax(moe.router(token), dim=-1)
        top = torch.argsort(probs, descending=True)[: moe.top_k]
        rows.append(sum(probs[e] * moe.experts[int(e)](token) for e in top))
    return torch.stack(rows)


@pytest.mark.parametrize("top_k", [1, 2])
def test_moe_matches_token_loop(top_k):
    torch.manual_seed(top_k)
    moe = MoEFeedForward(8, 12, n_experts=4, top_k=top_k)
    x = torch.randn(2, 5, 8)
    torch.testing.assert_close(moe(x), reference_moe(moe, x.flatten(0, 1)).view_as(x))


def test_moe_on_active_rows_only():
    torch.manual_seed(3)
    moe = MoEFeedForward(8, 12, n_experts=4, top_k=1)
    x = torch.randn(2, 5, 8)
    active = torch.tensor([[True, False, True, False, False], [False, True, True, True, False]])
    out = moe(x, active)
    torch.testing.assert_close(out[active], moe(x)[active])
    assert torch.all(out[~active] == 0)


def test_active_subset_compute_mode_is_exact_on_active_tokens():
    torch.manual_seed(4)
    block = ResNetBKBlock(ResNetBKConfig(d_model=8, ffn_size=8, halted_tokens="compute"))
    hidden = torch.randn(2, 7, 8)
    active = torch.tensor([[True, True, False, True, False, False, False], [False, True, False, False, True, False, False]])
    full = block(hidden, BlockContext())
    subset = block(hidden, BlockContext(active=active))
    torch.testing.assert_close(subset[active], full[active])


def test_active_subset_skip_mode_treats_halted_feed_forward_as_zero():
    torch.manual_seed(5)
    block = ResNetBKBlock(ResNetBKConfig(d_model=8, ffn_size=8, spectral_channels=2, halted_tokens="skip"))
    hidden = torch.randn(2, 7, 8)
    active = torch.tensor([[True, False, False, True, True, False, False], [False, True, True, False, True, True, False]])
    # Slow reference: every token through the MoE, then zero the halted ones' feed-forward.
    feed_forward = block.moe(block.norm(hidden)) * active.unsqueeze(-1)
    features = block.spectral_features(block.potential(feed_forward))
    expected = hidden + feed_forward + block.spectral_scale * block.spectral_out(features)
    subset = block(hidden, BlockContext(active=active))
    torch.testing.assert_close(subset[active], expected[active])


def test_bf16_autocast_with_active_subset_tracks_float32():
    torch.manual_seed(6)
    block = ResNetBKBlock(ResNetBKConfig(d_model=8, ffn_size=8, top_k=2, halted_tokens="skip"))
    hidden = torch.randn(2, 6, 8)
    active = torch.tensor([[True, False, True, True, False, True], [False, True, True, False, True, True]])
    reference = block(hidden, BlockContext(active=active))
    with torch.autocast("cpu", dtype=torch.bfloat16):
        mixed = block(hidden, BlockContext(active=active))
    torch.testing.assert_close(mixed[active].float(), reference[active], rtol=0.05, atol=0.05)


def test_threshold_like_early_exit_under_graves_layer_scope_runs():
    # Graves passes halted tokens as inactive to later hops: exercises the subset path in a model.
    model = tiny_model(halting={"name": "graves", "scope": "layer", "max_hops": 3, "epsilon": 0.1})
    out = model(random_ids(), labels=random_ids(seed=1))
    out.loss.backward()
    assert torch.isfinite(out.loss)


def test_checkpoint_round_trip(tmp_path):
    model = tiny_model(seed=0, spectral_channels=2)
    optimizer = torch.optim.AdamW(model.parameters(), lr=1e-2)
    ponderlab.train_step(model, optimizer, random_ids(), random_ids(seed=1))
    path = tmp_path / "model.pt"
    torch.save({"model": model.state_dict()}, path)
    restored = tiny_model(seed=123, spectral_channels=2)
    restored.load_state_dict(torch.load(path, weights_only=True)["model"])
    model.eval(), restored.eval()
    ids = random_ids(seed=9)
    with torch.no_grad():
        torch.testing.assert_close(restored(ids).logits, model(ids).logits, rtol=0, atol=0)


def test_bad_config_and_too_long_input_are_clear_errors():
    with pytest.raises(pydantic.ValidationError, match="top_k 3 is greater than n_experts 2"):
        ResNetBKConfig(n_experts=2, top_k=3)
    with pytest.raises(pydantic.ValidationError, match="shift_imag"):
        ResNetBKConfig(shift_imag=0.0)
    model = tiny_model(max_positions=8)
    with pytest.raises(SpecError, match="backbone.max_positions"):
        model(random_ids(length=9))


def test_run_checkpoint_reloads_to_the_same_test_metrics(tmp_path):
    spec = {
        "name": "bk_roundtrip",
        "seed": 0,
        "task": {"name": "binary_copy", "length": 8, "train_size": 40, "validation_size": 8, "test_size": 8},
        "backbone": tiny_backbone(),
        "halting": {"name": "none", "scope": "depth"},
        "training": {"steps": 3, "batch_size": 8, "warmup_steps": 0, "eval_every": 3, "num_threads": 1},
    }
    results = ponderlab.run(spec, output_dir=tmp_path / "run")
    checkpoint = tmp_path / "run" / "checkpoints" / "step_00000003.pt"
    model = ponderlab.build_model(ponderlab.load_spec(tmp_path / "run" / "spec.yaml"))
    model.load_state_dict(torch.load(checkpoint, weights_only=True)["model"])
    task = ponderlab.build_task(name="binary_copy", length=8, train_size=40, validation_size=8, test_size=8)
    metrics = ponderlab.evaluate(model, task, "test", seed=0)
    assert metrics["loss"] == pytest.approx(results["test/loss"], rel=1e-6)
    assert metrics["token_accuracy"] == pytest.approx(results["test/token_accuracy"])
