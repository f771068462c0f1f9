"""seq_icl backbones (s4d, h3, gilr, lru, rwkv, retnet, lstm_mixer) as whole plugins.

Per backbone: fast form against the recurrent reference (float64, forward and gradients),
causality, forward/backward, checkpoint round trip, every halting strategy and scope,
the conformance contracts, config errors.
"""

from __future__ import annotations

import pytest
import torch
from backbone_checks import assert_one_clear_error, contract_class
from pydantic import ValidationError
from twin_checks import (
    assert_same_inference,
    assert_same_logits_and_gradients,
    block_rows,
    halting_twins,
)

import ponderlab
from ponderlab.core import checkpoint as ckpt
from ponderlab.core.early_exit import hop_policy, layer_update
from ponderlab.core.errors import SpecError
from ponderlab.core.interfaces import BlockContext
from ponderlab.core.registry import get_registry
from ponderlab.plugins.backbones.mixer_stack import MixerBlock, SequenceMixer, set_reference_mode

VOCAB = 11
D_MODEL = 16
#: Tiny options per backbone; chunk_size 4 makes RetNet cross chunk boundaries at L = 13.
TINY = {
    "s4d": {"d_state": 8},
    "h3": {"d_state": 8, "shift_size": 5, "head_dim": 2},
    "gilr": {},
    "lru": {"d_state": 12},
    "rwkv": {},
    "retnet": {"n_heads": 2, "chunk_size": 4},
    "lstm_mixer": {},
}
NAMES = list(TINY)


def build(name, halting=None, seed=0, **options):
    backbone = {"name": name, "d_model": D_MODEL, "n_layers": 2, **TINY[name], **options}
    return ponderlab.build_model(
        backbone=backbone, halting=halting or {"name": "none"}, vocab_size=VOCAB, seed=seed
    )


def tokens(batch=2, length=13, seed=0):
    return torch.randint(0, VOCAB, (batch, length), generator=torch.Generator().manual_seed(seed))


def roughen(module, scale=0.3, seed=0):
    """Add noise to every parameter, so that mixer outputs are far from their small init."""
    generator = torch.Generator().manual_seed(seed)
    with torch.no_grad():
        for param in module.parameters():
            param.add_(scale * torch.randn(param.shape, generator=generator, dtype=param.dtype))


# --------------------------------------------------------------------------- fast vs reference


@pytest.mark.parametrize("name", NAMES)
def test_fast_mixer_matches_its_recurrent_reference(name):
    model = build(name).double()
    mixer = model.backbone.blocks[0].mixer
    roughen(mixer)
    params = list(mixer.parameters())
    x = torch.randn(2, 13, D_MODEL, dtype=torch.float64, generator=torch.Generator().manual_seed(1))
    x.requires_grad_()
    fast = mixer(x)
    set_reference_mode(mixer, True)
    reference = mixer(x)
    assert fast.abs().max() > 1e-2, "mixer output too small to compare meaningfully"
    torch.testing.assert_close(fast, reference, rtol=1e-9, atol=1e-10)
    upstream = torch.randn_like(fast)
    grads_fast = torch.autograd.grad(fast, [x, *params], upstream)
    grads_ref = torch.autograd.grad(reference, [x, *params], upstream)
    names = ["input", *(n for n, _ in mixer.named_parameters())]
    for label, g_fast, g_ref in zip(names, grads_fast, grads_ref, strict=True):
        torch.testing.assert_close(g_fast, g_ref, rtol=1e-8, atol=1e-10, msg=f"{name}: gradient of {label}")


@pytest.mark.parametrize("name", NAMES)
def test_whole_model_reference_mode_gives_the_same_logits_under_act(name):
    model = build(name, halting={"name": "graves", "max_hops": 3, "epsilon": 0.1}).double()
    roughen(model.backbone, scale=0.1)
    ids = tokens()
    fast = model(ids).logits
    set_reference_mode(model, True)
    reference = model(ids).logits
    torch.testing.assert_close(fast, reference, rtol=1e-5, atol=1e-6)  # Graves sums in float32


# --------------------------------------------------------------------------- causality


@pytest.mark.parametrize("name", NAMES)
@pytest.mark.parametrize(
    "halting",
    [{"name": "none"}, {"name": "graves", "scope": "model", "max_hops": 3, "epsilon": 0.1}],
    ids=["none", "graves-model"],
)
def test_outputs_up_to_t_ignore_inputs_after_t(name, halting):
    model = build(name, halting=halting).double()
    roughen(model.backbone, scale=0.1)
    model.eval()
    ids = tokens(length=12)
    t = 6
    changed = ids.clone()
    changed[:, t + 1 :] = (changed[:, t + 1 :] + 1 + torch.arange(5).view(1, -1)) % VOCAB
    with torch.no_grad():
        before, after = model(ids).logits, model(changed).logits
    # float64 so that FFT round-off (which touches every position) stays below 1e-10.
    tol = 1e-10 if halting["name"] == "none" else 1e-6  # Graves accumulates in float32
    assert (before[:, : t + 1] - after[:, : t + 1]).abs().max() < tol
    assert (before[:, t + 1 :] - after[:, t + 1 :]).abs().max() > 1e-4, "later outputs should change"


@pytest.mark.parametrize("name", NAMES)
def test_block_input_at_t_only_reaches_outputs_from_t_on(name):
    model = build(name).double()
    roughen(model.backbone, scale=0.1)
    block = model.backbone.blocks[1]
    assert isinstance(block, MixerBlock)
    x = torch.randn(1, 10, D_MODEL, dtype=torch.float64, requires_grad=True)

    out = block(x, BlockContext(layer=1))
    (grad,) = torch.autograd.grad(out[0, 4].sum(), x)  # output at t = 4
    assert grad[0, 5:].abs().max() < 1e-12
    assert grad[0, :5].abs().sum(-1).min() > 0, "every earlier position should matter"


# --------------------------------------------------------------------------- training basics


@pytest.mark.parametrize("name", NAMES)
def test_forward_backward_reaches_every_parameter(name):
    model = build(name)
    ids = tokens()
    out = model(ids, labels=ids)
    assert out.logits.shape == (2, 13, VOCAB)
    out.loss.backward()
    for param_name, param in model.named_parameters():
        assert param.grad is not None, f"{name}: no gradient for {param_name}"
        assert torch.isfinite(param.grad).all(), f"{name}: non-finite gradient for {param_name}"
        assert param.grad.abs().sum() > 0, f"{name}: zero gradient for {param_name}"


@pytest.mark.parametrize("name", NAMES)
def test_bf16_autocast_keeps_the_recurrence_in_float32(name):
    model = build(name)
    ids = tokens()
    with torch.autocast("cpu", dtype=torch.bfloat16):  # CUDA runs use the same code path
        out = model(ids, labels=ids)
    out.loss.backward()
    full = model(ids).logits
    assert torch.isfinite(out.logits).all()
    torch.testing.assert_close(out.logits.float(), full, rtol=0.05, atol=0.05)


@pytest.mark.parametrize("name", NAMES)
def test_checkpoint_round_trip(name, tmp_path):
    model = build(name, seed=0)
    ids = tokens()
    path = tmp_path / "model.pt"
    ckpt.save_checkpoint({"model": model.state_dict()}, path)
    fresh = build(name, seed=1)
    assert not torch.equal(fresh(ids).logits, model(ids).logits)
    fresh.load_state_dict(ckpt.load_checkpoint(path)["model"])  # weights_only=True inside
    torch.testing.assert_close(fresh(ids).logits, model(ids).logits, rtol=0, atol=0)


def _halting_cases():
    """Every registered halting strategy in every scope it declares, with default options."""
    cases = []
    for name in get_registry().names("halting"):
        cls = get_registry().get("halting", name).cls
        for scope in sorted(cls.supported_scopes):
            cases.append({"name": name, "scope": scope})
    return cases


@pytest.mark.parametrize("name", NAMES)
def test_every_halting_strategy_and_scope_runs(name):
    ids = tokens(length=9)
    ran = []
    for halting in _halting_cases():
        try:
            model = build(name, halting=halting)
        except (ValueError, SpecError) as exc:  # a strategy that refuses this setting says so
            assert halting["name"] in str(exc) or halting["scope"] in str(exc), str(exc)
            continue
        out = model(ids, labels=ids)
        out.loss.backward()
        assert torch.isfinite(out.logits).all() and torch.isfinite(out.loss)
        assert out.stats.hops.shape == ids.shape
        ran.append(f"{halting['name']}/{halting['scope']}")
    assert "graves/layer" in ran and "graves/model" in ran and "graves/depth" in ran, ran


# --------------------------------------------------------------------------- early exit


def early_exit_twins(name, halting, unit_std):
    """(fast, full, ffn_rows, projection_rows or None): the same 3-layer depth-scope model with subset
    blocks and with full ones; halting units with random weights (std `unit_std`), so that
    tokens exit at different layers. The lists record how many tokens each call of the fast
    model's FFN and mixer output projection computes."""
    def rough_model():
        model = build(name, halting={**halting, "scope": "depth"}, n_layers=3).double()
        roughen(model.backbone)
        return model

    fast, full = halting_twins(rough_model, std=unit_std)
    # RWKV: the channel mix's first linear
    ffn_rows = block_rows(fast, lambda block: block.ffn.key if name == "rwkv" else block.ffn)
    # The LSTM mixer has no output projection: its whole output is token mixing.
    projection_rows = None if name == "lstm_mixer" else block_rows(fast, lambda block: block.mixer.out_proj)
    return fast, full, ffn_rows, projection_rows


@pytest.mark.parametrize("name", NAMES)
def test_depth_early_exit_runs_the_ffn_only_for_running_tokens(name):
    fast, full, ffn_rows, projection_rows = early_exit_twins(
        name, {"name": "threshold", "threshold": 0.6}, unit_std=5.0)
    ids = tokens(batch=3, length=13, seed=4)
    assert ffn_rows == assert_same_inference(fast, full, ids)
    if name == "rwkv":  # its channel mix reads the previous token's mixer output, halted or not
        assert projection_rows == [ids.numel()] * len(ffn_rows)
    elif projection_rows is not None:
        assert projection_rows == ffn_rows


@pytest.mark.parametrize("name", NAMES)
def test_active_subset_path_gives_the_full_layers_gradients(name):
    fast, full, ffn_rows, _ = early_exit_twins(
        name, {"name": "graves", "epsilon": 0.4, "halting_bias_init": 0.0}, unit_std=0.1)
    ids = tokens(batch=2, length=11, seed=5)
    a, b = fast.train()(ids), full.train()(ids)
    assert 1 < len(set(a.stats.layers.flatten().tolist()))
    assert min(ffn_rows) < ids.numel()  # later layers computed a subset
    assert_same_logits_and_gradients(fast, full, a.logits, b.logits)


@pytest.mark.parametrize("name", NAMES)
def test_block_without_host_reads_gives_the_subset_result(name):
    """Under speculative hops (a GPU's loops) a layer update computes every token and keeps
    the rows of inactive ones: the same output as the row path."""
    model = build(name).double()
    roughen(model)
    block = model.backbone.blocks[0]
    hidden = torch.randn(2, 13, D_MODEL, dtype=torch.float64, generator=torch.Generator().manual_seed(6))
    active = torch.rand(2, 13, generator=torch.Generator().manual_seed(7)) > 0.5
    context = BlockContext(active=active)
    with torch.no_grad():
        exact = layer_update(block, hidden, hidden, context)
        with hop_policy("speculative"):
            speculative = layer_update(block, hidden, hidden, context)
    torch.testing.assert_close(speculative, exact)
    assert torch.equal(speculative[~active], hidden[~active])


class CumulativeMeanMixer(SequenceMixer):
    """A third-party style mixer that implements `mix` alone: the running mean of x."""

    def mix(self, x, *, reference):
        counts = torch.arange(1, x.shape[1] + 1, dtype=x.dtype).view(1, -1, 1)
        return x.cumsum(1) / counts


class PlainCumulativeMean(torch.nn.Module):
    """The same mixer as a plain module, not a SequenceMixer."""

    def forward(self, x):
        return CumulativeMeanMixer().mix(x, reference=False)


class ShiftFeedForward(torch.nn.Module):
    """An FFN that reads the previous token and declares neither `positionwise` nor rows."""

    def __init__(self):
        super().__init__()
        self.linear = torch.nn.Linear(D_MODEL, D_MODEL)

    def forward(self, x):
        return self.linear(torch.cat([torch.zeros_like(x[:, :1]), x[:, :-1]], dim=1)) + x


@pytest.mark.parametrize("mixer", [CumulativeMeanMixer, PlainCumulativeMean], ids=["mix-only", "plain-module"])
@pytest.mark.parametrize("ffn", ["shift", "none"])
def test_block_rows_fall_back_for_parts_without_a_row_form(mixer, ffn):
    torch.manual_seed(0)
    block = MixerBlock(mixer(), ShiftFeedForward() if ffn == "shift" else None, D_MODEL, 0.0)
    block = block.double()
    hidden = torch.randn(2, 9, D_MODEL, dtype=torch.float64, generator=torch.Generator().manual_seed(8))
    active = torch.rand(2, 9, generator=torch.Generator().manual_seed(9)) > 0.4
    rows = active.reshape(-1).nonzero().squeeze(1)
    with torch.no_grad():
        full = block(hidden, BlockContext())
        subset = layer_update(block, hidden, hidden, BlockContext(active=active))
        packed = block.forward_rows(hidden, rows, hidden.reshape(-1, D_MODEL)[rows], BlockContext())
    torch.testing.assert_close(subset[active], full[active])
    assert torch.equal(subset[~active], hidden[~active])
    torch.testing.assert_close(packed, full.reshape(-1, D_MODEL)[rows])


# --------------------------------------------------------------------------- configs


@pytest.mark.parametrize(
    "backbone, key",
    [
        ({"name": "s4d", "d_state": 7}, "d_state"),
        ({"name": "h3", "d_model": 16, "head_dim": 3}, "head_dim"),
        ({"name": "retnet", "d_model": 16, "n_heads": 3}, "n_heads"),
        ({"name": "lru", "r_min": 0.9, "r_max": 0.5}, "r_min"),
        ({"name": "rwkv", "chunk": 4}, "chunk"),
    ],
)
def test_bad_options_get_one_clear_error(backbone, key):
    assert_one_clear_error(backbone, key)
    config_class = get_registry().get("backbone", backbone["name"]).cls.config_class
    with pytest.raises(ValidationError):
        config_class.model_validate(backbone)


def test_retnet_default_heads_divide_the_width():
    cls = get_registry().get("backbone", "retnet").cls
    assert cls.config_class(d_model=32).heads == 4
    assert cls.config_class(d_model=6).heads == 2
    assert cls.config_class(d_model=7).heads == 1


def test_lstm_mixer_by_hand_and_as_seq_icl_builds_it():
    """One LSTM unit with zero weights, biases i = o = 0, f = ln 3 (sigmoid 0.75), g = ln 2
    (tanh 0.6): c1 = 0.5 * 0.6 = 0.3, h1 = 0.5 tanh(0.3); c2 = 0.75 * 0.3 + 0.3 = 0.525,
    h2 = 0.5 tanh(0.525),
    for the fast form and the reference alike. The model is seq_icl's lm_simple around it:
    pre-norm blocks with a 4x MLP, PyTorch's LSTM init (|w| <= 1/sqrt(D)), tanh GELU as seq_icl."""
    model = build("lstm_mixer", variant="seq_icl")
    mixer = model.backbone.blocks[0].mixer
    bound = 1 / D_MODEL**0.5
    assert 0.5 * bound < mixer.lstm.weight_hh_l0.abs().max() <= bound
    block = model.backbone.blocks[0]
    assert block.ffn.up.out_features == 4 * D_MODEL and block.ffn.act.approximate == "tanh"
    unit = type(mixer)(1)
    with torch.no_grad():
        for param in unit.parameters():
            param.zero_()
        unit.lstm.bias_ih_l0[1] = torch.log(torch.tensor(3.0))  # gate order: i, f, g, o
        unit.lstm.bias_ih_l0[2] = torch.log(torch.tensor(2.0))
    expected = torch.tensor([0.5 * torch.tanh(torch.tensor(0.3)), 0.5 * torch.tanh(torch.tensor(0.525))])
    x = torch.randn(1, 2, 1)
    for reference in (False, True):
        torch.testing.assert_close(unit.mix(x, reference=reference).flatten(), expected)


# --------------------------------------------------------------------------- conformance


TestS4DContract = contract_class("s4d", TINY["s4d"])
TestH3Contract = contract_class("h3", TINY["h3"])
TestGILRContract = contract_class("gilr", TINY["gilr"])
TestLRUContract = contract_class("lru", TINY["lru"])
TestRWKVContract = contract_class("rwkv", TINY["rwkv"])
TestRetNetContract = contract_class("retnet", TINY["retnet"])
TestLSTMMixerContract = contract_class("lstm_mixer", TINY["lstm_mixer"])
