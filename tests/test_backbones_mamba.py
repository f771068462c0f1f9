"""Mamba: the fast selective scan against the sequential reference, the block against transformers."""

from __future__ import annotations

import pytest
import torch
from transformers.models.mamba.modeling_mamba import MambaMixer
from twin_checks import (
    assert_same_inference,
    assert_same_logits_and_gradients,
    block_rows,
    halting_twins,
)

import ponderlab
from ponderlab.plugins.backbones.mamba import (
    MambaConfig,
    _use_kernels,
    hf_mamba_config,
    mixer_forward,
)
from ponderlab.plugins.backbones.selective_scan import (
    cuda_kernels,
    selective_scan,
    selective_scan_reference,
)


def scan_inputs(batch, length, channels, n_state, dtype=torch.float64, seed=0, device="cpu"):
    """Random u, delta (> 0), A (< 0), B, C, D, z; all leaves requiring grad."""
    g = torch.Generator().manual_seed(seed)

    def rand(*shape):
        return torch.randn(*shape, generator=g, dtype=dtype)

    u = rand(batch, length, channels)
    delta = torch.nn.functional.softplus(rand(batch, length, channels) - 1.0)
    A = -torch.exp(rand(channels, n_state) * 0.5)
    B = rand(batch, length, n_state)
    C = rand(batch, length, n_state)
    D = rand(channels)
    z = rand(batch, length, channels)
    return [x.to(device).requires_grad_() for x in (u, delta, A, B, C, D, z)]


@pytest.mark.parametrize(
    "shape", [(2, 7, 5, 3), (1, 1, 4, 2), (3, 16, 6, 4)], ids=["odd", "one-step", "longer"]
)
@pytest.mark.parametrize("gated", [True, False], ids=["D+z", "plain"])
def test_fast_scan_matches_sequential_reference_forward_and_gradients(shape, gated):
    inputs = scan_inputs(*shape)
    args = inputs if gated else inputs[:5]
    expected = selective_scan_reference(*args)
    actual = selective_scan(*args)
    assert actual.dtype == torch.float64
    torch.testing.assert_close(actual, expected, rtol=1e-10, atol=1e-10)
    upstream = torch.randn_like(expected)
    grads_ref = torch.autograd.grad(expected, args, upstream)
    grads_fast = torch.autograd.grad(actual, args, upstream)
    for name, g_fast, g_ref in zip("u delta A B C D z".split(), grads_fast, grads_ref, strict=False):
        torch.testing.assert_close(g_fast, g_ref, rtol=1e-9, atol=1e-10, msg=f"gradient of {name}")


@pytest.mark.parametrize("keep_decays", [True, False], ids=["saved-decays", "recomputed-decays"])
def test_fast_scan_passes_gradcheck(keep_decays):
    u, delta, A, B, C, D, z = scan_inputs(1, 4, 3, 2, seed=3)
    assert torch.autograd.gradcheck(
        lambda *a: selective_scan(*a, keep_decays=keep_decays), (u, delta, A, B, C, D, z)
    )


def test_recomputed_decays_give_the_same_gradients():
    inputs = scan_inputs(2, 9, 5, 3, seed=4)
    upstream = torch.randn(2, 9, 5, dtype=torch.float64)
    kept = torch.autograd.grad(selective_scan(*inputs, keep_decays=True), inputs, upstream)
    recomputed = torch.autograd.grad(selective_scan(*inputs, keep_decays=False), inputs, upstream)
    for a, b in zip(kept, recomputed, strict=True):
        torch.testing.assert_close(a, b, rtol=1e-12, atol=1e-12)


def test_scan_recurrence_on_a_hand_computed_case():
    # One channel, one state: h_t = exp(d A) h_{t-1} + d B u ; y = C h + D u.
    u = torch.tensor([[[1.0], [2.0]]], dtype=torch.float64)
    delta = torch.full_like(u, 0.5)
    A = torch.tensor([[-2.0]], dtype=torch.float64)
    B = torch.tensor([[[1.0], [3.0]]], dtype=torch.float64)
    C = torch.tensor([[[2.0], [1.0]]], dtype=torch.float64)
    D = torch.tensor([0.25], dtype=torch.float64)
    h1 = 0.5 * 1.0 * 1.0
    h2 = torch.exp(torch.tensor(-1.0, dtype=torch.float64)) * h1 + 0.5 * 3.0 * 2.0
    expected = torch.tensor([[[2.0 * h1 + 0.25], [h2 + 0.5]]], dtype=torch.float64)
    torch.testing.assert_close(selective_scan(u, delta, A, B, C, D), expected)
    torch.testing.assert_close(selective_scan_reference(u, delta, A, B, C, D), expected)


def test_float32_fast_scan_stays_close_to_float64_reference():
    inputs64 = scan_inputs(4, 24, 8, 4, seed=5)
    inputs32 = [x.detach().float() for x in inputs64]
    torch.testing.assert_close(
        selective_scan(*inputs32).double(), selective_scan_reference(*inputs64).detach(), rtol=1e-4, atol=1e-5
    )


def test_fast_scan_keeps_low_precision_inputs_dtype():
    inputs = [x.detach().to(torch.bfloat16) for x in scan_inputs(2, 5, 4, 2)]
    assert selective_scan(*inputs).dtype == torch.bfloat16


# --------------------------------------------------------------------------- the block


def tiny_mixer(d_model=16, d_state=4, seed=0):
    torch.manual_seed(seed)
    config = MambaConfig(d_model=d_model, d_state=d_state, n_layers=1)
    return MambaMixer(hf_mamba_config(config, vocab_size=7), layer_idx=0).double()


@pytest.mark.parametrize("scan", ["torch", "reference"])
def test_mixer_forward_matches_transformers_mamba_mixer(scan):
    mixer = tiny_mixer()
    hidden = torch.randn(2, 9, 16, dtype=torch.float64)
    expected = mixer(hidden)  # transformers' own forward (sequential fallback on CPU)
    torch.testing.assert_close(mixer_forward(mixer, hidden, scan), expected, rtol=1e-9, atol=1e-10)


def test_mixer_gradients_match_between_fast_and_reference_scans():
    mixer = tiny_mixer(seed=1)
    hidden = torch.randn(2, 9, 16, dtype=torch.float64, requires_grad=True)
    grads = {}
    for scan in ("torch", "reference"):
        out = mixer_forward(mixer, hidden, scan)
        grads[scan] = torch.autograd.grad(out.pow(2).sum(), [hidden, *mixer.parameters()])
    for fast, ref in zip(grads["torch"], grads["reference"], strict=True):
        torch.testing.assert_close(fast, ref, rtol=1e-9, atol=1e-10)


def test_scan_choice_on_cpu():
    cpu = torch.zeros(1)
    assert not _use_kernels("auto", cpu)
    assert not _use_kernels("torch", cpu)
    with pytest.raises(RuntimeError, match="scan='cuda' needs mamba-ssm"):
        _use_kernels("cuda", cpu)


def test_mamba_backbone_is_causal_and_config_defaults():
    config = MambaConfig()
    assert (config.d_state, config.expand, config.d_conv, config.scan) == (32, 2, 4, "auto")
    model = ponderlab.build_model(
        backbone={"name": "mamba", "d_model": 16, "n_layers": 2, "d_state": 4}, vocab_size=9, seed=0
    ).eval()
    x = torch.randint(0, 9, (2, 10))
    y = x.clone()
    y[:, 6] = (y[:, 6] + 1) % 9
    with torch.no_grad():
        a, b = model(x).logits, model(y).logits
    torch.testing.assert_close(a[:, :6], b[:, :6])
    assert not torch.allclose(a[:, 6:], b[:, 6:])


@pytest.mark.gpu
def test_cuda_kernels_match_torch_scan_on_gpu():
    if cuda_kernels() is None:
        pytest.skip("mamba-ssm / causal-conv1d are not installed (pip install ponderlab[cuda])")
    torch.manual_seed(0)
    config = MambaConfig(d_model=64, d_state=16, n_layers=1)
    mixer = MambaMixer(hf_mamba_config(config, vocab_size=7), layer_idx=0).cuda()
    hidden = torch.randn(4, 128, 64, device="cuda", requires_grad=True)
    results = {}
    for scan in ("cuda", "torch"):
        out = mixer_forward(mixer, hidden, scan)
        grads = torch.autograd.grad(out.pow(2).mean(), [hidden, *mixer.parameters()])
        results[scan] = (out.detach(), grads)
    torch.testing.assert_close(results["cuda"][0], results["torch"][0], rtol=2e-3, atol=2e-4)
    for kernel_grad, torch_grad in zip(results["cuda"][1], results["torch"][1], strict=True):
        torch.testing.assert_close(kernel_grad, torch_grad, rtol=5e-3, atol=5e-4)


def test_fast_scan_without_gradients_gives_the_same_output():
    inputs = scan_inputs(2, 6, 4, 3, seed=7)
    with torch.no_grad():
        no_grad = selective_scan(*inputs)
    torch.testing.assert_close(no_grad, selective_scan(*inputs).detach())


# --------------------------------------------------------------------------- early exit


def mamba_early_exit_twins(halting):
    """(fast, full, projection_rows): a 3-layer depth-scope Mamba whose layers skip halted tokens'
    output projection, and the same weights computing every token; random halting units."""
    fast, full = halting_twins(lambda: ponderlab.build_model(
        backbone={"name": "mamba", "d_model": 16, "n_layers": 3, "d_state": 4, "scan": "torch"},
        halting={**halting, "scope": "depth"}, vocab_size=11, seed=0,
    ).double(), std=3.0)
    return fast, full, block_rows(fast, lambda block: block.mixer.out_proj)


def test_mamba_depth_early_exit_projects_only_running_tokens():
    fast, full, projection_rows = mamba_early_exit_twins({"name": "threshold", "threshold": 0.6})
    ids = torch.randint(0, 11, (3, 12), generator=torch.Generator().manual_seed(4))
    assert projection_rows == assert_same_inference(fast, full, ids)


def test_mamba_active_subset_path_gives_the_full_layers_gradients():
    fast, full, projection_rows = mamba_early_exit_twins(
        {"name": "graves", "epsilon": 0.4, "halting_bias_init": 0.0})
    ids = torch.randint(0, 11, (3, 12), generator=torch.Generator().manual_seed(4))
    a, b = fast.train()(ids), full.train()(ids)
    assert 1 < len(set(a.stats.layers.flatten().tolist()))
    assert min(projection_rows) < ids.numel()  # later layers projected a subset
    assert_same_logits_and_gradients(fast, full, a.logits, b.logits)
