"""S4D, H3, GILR, LRU and RetNet in both variants (seq_icl's layer, the paper's) against the
slow references of `seqicl_references` (float64, outputs and gradients, weights the test
sets); the variants' inits, dropouts, stack options, SSM optimizer group and config errors.
RWKV's two variants: test_seqicl_variant_rwkv.py.
"""

from __future__ import annotations

import math

import pytest
import seqicl_references as refs
import torch
from backbone_checks import assert_one_clear_error, contract_class
from pydantic import ValidationError

import ponderlab
from ponderlab.core.config import TrainingConfig
from ponderlab.core.trainer import make_optimizer
from ponderlab.plugins.backbones.mixer_stack import set_reference_mode

F64 = torch.float64
D_MODEL = 8
OPTIONS = {
    "s4d": {"d_state": 6},
    "h3": {"d_state": 4, "shift_size": 3, "head_dim": 2},
    "gilr": {},
    "lru": {},
    "retnet": {"n_heads": 2, "chunk_size": 3},
}
REFERENCES = {"s4d": refs.s4d, "h3": refs.h3, "gilr": refs.gilr, "lru": refs.lru, "retnet": refs.retnet}


def build(name, variant, **options):
    backbone = {"name": name, "d_model": D_MODEL, "n_layers": 1, "variant": variant, **OPTIONS[name], **options}
    return ponderlab.build_model(backbone=backbone, halting={"name": "none"}, vocab_size=5, seed=0)


def mixer_of(name, variant):
    return build(name, variant).backbone.blocks[0].mixer.double().eval()


@pytest.mark.parametrize("variant", ["seq_icl", "paper"])
@pytest.mark.parametrize("name", list(OPTIONS))
def test_mixer_matches_the_slow_reference(name, variant):
    mixer = mixer_of(name, variant)
    refs.set_weights(mixer, seed=1)
    x = torch.randn(2, 7, D_MODEL, dtype=F64, generator=torch.Generator().manual_seed(2), requires_grad=True)
    expected = REFERENCES[name](mixer, x, seq_icl=variant == "seq_icl")
    params = dict(mixer.named_parameters())
    upstream = torch.randn(expected.shape, dtype=F64, generator=torch.Generator().manual_seed(3))
    want = torch.autograd.grad(expected, [x, *params.values()], upstream)
    for reference in (False, True):  # the fast form and the layer's own step loop
        out = mixer.mix(x, reference=reference)
        torch.testing.assert_close(out, expected, rtol=1e-9, atol=1e-11)
        got = torch.autograd.grad(out, [x, *params.values()], upstream)
        for label, g_got, g_want in zip(["x", *params], got, want, strict=True):
            torch.testing.assert_close(g_got, g_want, rtol=1e-8, atol=1e-10, msg=f"gradient of {label}")


def test_the_variants_compute_different_layers_on_the_same_input():
    """A check that the option reaches the math: same seed, different outputs for each backbone."""
    ids = torch.randint(0, 5, (1, 6), generator=torch.Generator().manual_seed(0))
    for name in OPTIONS:
        seq_icl, paper = build(name, "seq_icl").eval(), build(name, "paper").eval()
        assert (seq_icl(ids).logits - paper(ids).logits).abs().max() > 1e-4, name


def test_s4d_seq_icl_init_is_s4d_inv_with_one_shared_a_and_a_normalised_b():
    ssm = build("s4d", "seq_icl", d_state=8).backbone.blocks[0].mixer.ssm
    n = torch.arange(4.0)
    torch.testing.assert_close(ssm.a_imag, 8 / math.pi * (8 / (2 * n + 1) - 1))  # (N/2,): shared
    torch.testing.assert_close(torch.exp(ssm.log_neg_a_real), torch.full((4,), 0.5001))
    assert ssm.c.shape == (D_MODEL, 4, 2)
    paper = build("s4d", "paper", d_state=8).backbone.blocks[0].mixer
    assert paper.ssm.a_imag.shape == (D_MODEL * 4,) and paper.out_proj.out_features == 2 * D_MODEL


def test_s4d_seq_icl_c_carries_the_normalised_random_b():
    """C = CN(0, 1) * B with 2 sum |B/A|^2 = 1: over many channels, 2 sum_n E|C_n/A_n|^2 = 1."""
    torch.manual_seed(0)
    ssm = build("s4d", "seq_icl", d_model=512, d_state=16).backbone.blocks[0].mixer.ssm
    a = torch.complex(-torch.exp(ssm.log_neg_a_real), ssm.a_imag)  # (N/2,)
    c = torch.view_as_complex(ssm.c.detach().contiguous())  # (H, N/2)
    a = a.detach()
    per_channel = 2 * (c / a).abs().square().sum(-1)  # (H,): mean 1 when B is normalised
    assert 0.85 < float(per_channel.mean()) < 1.15


def test_h3_seq_icl_starts_with_b_one_and_the_shift_b_at_e1():
    mixer = build("h3", "seq_icl").backbone.blocks[0].mixer
    torch.testing.assert_close(mixer.diag.b[..., 0], torch.ones(mixer.diag.shape))
    torch.testing.assert_close(mixer.diag.b[..., 1], torch.zeros(mixer.diag.shape))
    torch.testing.assert_close(mixer.shift.b, torch.eye(3)[0].repeat(D_MODEL, 1))
    torch.testing.assert_close(mixer.shift.kernel(torch.float32), mixer.shift.taps.detach())  # B = e_1
    assert mixer.shift.taps.abs().max() <= 1 / math.sqrt(3)  # U(-1/sqrt(N), 1/sqrt(N))


@pytest.mark.parametrize("name", ["gilr", "lru"])
def test_seq_icl_mixer_dropout_acts_in_training_only(name):
    mixer = mixer_of(name, "seq_icl")
    assert mixer.dropout.p == 0.2
    x = torch.randn(1, 5, D_MODEL, dtype=F64)
    mixed = mixer.mix_tokens(x, reference=False)
    torch.testing.assert_close(mixer.project(mixed, x), mixer.mix(x, reference=False))
    mixer.train()
    torch.manual_seed(0)
    assert (mixer.project(mixed, x) - mixer.eval().project(mixed, x)).abs().max() > 1e-6
    assert mixer_of(name, "paper").dropout.p == 0.0 if name == "gilr" else True


def test_seq_icl_stack_uses_tanh_gelu_and_embedding_dropout():
    model = build("gilr", "seq_icl", embed_dropout=0.1)
    assert model.backbone.blocks[0].ffn.act.approximate == "tanh"
    assert build("gilr", "paper").backbone.blocks[0].ffn.act.approximate == "none"
    ids = torch.randint(0, 5, (2, 40), generator=torch.Generator().manual_seed(0))
    backbone = model.backbone
    plain = backbone.embedding(ids)
    torch.testing.assert_close(backbone.eval().embed(ids), plain)
    dropped = backbone.train().embed(ids)
    zeros = float((dropped == 0).float().mean())
    assert 0.05 < zeros < 0.15  # p = 0.1
    torch.testing.assert_close(dropped[dropped != 0], (plain / 0.9)[dropped != 0])


def test_tied_embeddings_share_one_matrix_through_training_and_checkpoints(tmp_path):
    """`tie_embeddings` (seq_icl's lm_simple): the head's weight is the embedding matrix E, so the
    model has V x D parameters fewer, the rows of tokens absent from the input get gradient
    through the head (none when untied), an AdamW step keeps the one matrix, and a checkpoint
    loads back into one."""
    tied, untied = build("gilr", "seq_icl", tie_embeddings=True), build("gilr", "seq_icl")
    assert tied.head.weight is tied.backbone.embedding.weight
    assert untied.head.weight is not untied.backbone.embedding.weight
    count = sum(p.numel() for p in untied.parameters()) - sum(p.numel() for p in tied.parameters())
    assert count == 5 * D_MODEL
    ids = torch.randint(0, 3, (2, 7), generator=torch.Generator().manual_seed(0))  # tokens 3, 4 absent
    for model in (tied, untied):
        model(ids, labels=ids).loss.backward()
    assert tied.backbone.embedding.weight.grad[3:].abs().min() > 0  # through the head's softmax
    assert torch.equal(untied.backbone.embedding.weight.grad[3:], torch.zeros(2, D_MODEL))
    optimizer = make_optimizer(tied, TrainingConfig(lr=1e-2, weight_decay=0.1))
    optimizer.step()
    assert tied.head.weight is tied.backbone.embedding.weight
    torch.save(tied.state_dict(), tmp_path / "model.pt")
    again = build("gilr", "seq_icl", tie_embeddings=True)
    again.load_state_dict(torch.load(tmp_path / "model.pt", weights_only=True))
    assert again.head.weight is again.backbone.embedding.weight
    torch.testing.assert_close(again.head.weight, tied.backbone.embedding.weight)


@pytest.mark.parametrize("lr, expected_lr", [(3e-3, 1e-3), (5e-4, 5e-4)])
def test_trainer_gives_the_ssm_group_its_own_lr_and_no_weight_decay(lr, expected_lr):
    model = build("h3", "seq_icl")
    optimizer = make_optimizer(model, TrainingConfig(lr=lr, weight_decay=0.1))
    mixer = model.backbone.blocks[0].mixer
    ssm = {id(p) for p in (mixer.diag.log_dt, mixer.diag.log_neg_a_real, mixer.diag.a_imag, mixer.diag.b, mixer.shift.b)}
    special = [g for g in optimizer.param_groups if any(id(p) in ssm for p in g["params"])]
    assert len(special) == 1
    assert {id(p) for p in special[0]["params"]} == ssm
    assert special[0]["lr"] == expected_lr and special[0]["weight_decay"] == 0.0
    seen = [id(p) for g in optimizer.param_groups for p in g["params"]]
    assert len(seen) == len(set(seen)) == len(list(model.parameters()))  # each parameter once
    # The schedule scales every group alike (LambdaLR multiplies each group's own lr).
    torch.optim.lr_scheduler.LambdaLR(optimizer, lambda step: 0.5)  # sets lr = 0.5 x initial
    assert special[0]["lr"] == pytest.approx(0.5 * expected_lr)
    assert optimizer.param_groups[0]["lr"] == pytest.approx(0.5 * lr)


def test_paper_variant_declares_no_group():
    model = build("s4d", "paper")
    assert model.backbone.optimizer_groups(lr=1e-2, weight_decay=0.1) == []
    assert len(make_optimizer(model, TrainingConfig(lr=1e-2)).param_groups) == 2


@pytest.mark.parametrize(
    "backbone, key",
    [
        ({"name": "s4d", "variant": "seq-icl"}, "variant"),
        ({"name": "lru", "variant": "seq_icl", "d_model": 16, "d_state": 8}, "d_state"),
        ({"name": "retnet", "variant": "seq_icl", "d_model": 12, "n_heads": 4}, "even"),
        ({"name": "gilr", "embed_dropout": 1.5}, "embed_dropout"),
    ],
)
def test_bad_variant_options_get_one_clear_error(backbone, key):
    assert_one_clear_error(backbone, key)
    with pytest.raises(ValidationError):
        ponderlab.build_model(backbone=backbone, halting={"name": "none"}, vocab_size=5)


# --------------------------------------------------------------------------- whole models

SEQ_ICL_TINY = {**OPTIONS, "rwkv": {}, "retnet": {"n_heads": 2, "chunk_size": 3}}


@pytest.mark.parametrize("name", list(SEQ_ICL_TINY))
def test_seq_icl_model_is_causal_and_its_fast_form_matches_the_step_loops(name):
    backbone = {"name": name, "d_model": D_MODEL, "n_layers": 2, "variant": "seq_icl", **SEQ_ICL_TINY[name]}
    model = ponderlab.build_model(backbone=backbone, halting={"name": "none"}, vocab_size=5, seed=0)
    refs.set_weights(model.backbone, seed=4, scale=0.3)
    model = model.double().eval()
    ids = torch.randint(0, 5, (2, 9), generator=torch.Generator().manual_seed(5))
    changed = ids.clone()
    changed[:, 5:] = (changed[:, 5:] + 1) % 5
    with torch.no_grad():
        before, after = model(ids).logits, model(changed).logits
        set_reference_mode(model, True)
        stepwise = model(ids).logits
    assert (before[:, :5] - after[:, :5]).abs().max() < 1e-10
    assert (before[:, 5:] - after[:, 5:]).abs().max() > 1e-4
    torch.testing.assert_close(stepwise, before, rtol=1e-9, atol=1e-10)


def _seq_icl_contract(name):
    return contract_class(name, {**SEQ_ICL_TINY[name], "variant": "seq_icl"}, prefix="SeqIcl")


TestSeqIclS4DContract = _seq_icl_contract("s4d")
TestSeqIclH3Contract = _seq_icl_contract("h3")
TestSeqIclGILRContract = _seq_icl_contract("gilr")
TestSeqIclLRUContract = _seq_icl_contract("lru")
TestSeqIclRWKVContract = _seq_icl_contract("rwkv")
TestSeqIclRetNetContract = _seq_icl_contract("retnet")


@pytest.mark.parametrize("decay_vectors", [False, True])
def test_decay_vectors_puts_the_lru_recurrence_under_weight_decay(decay_vectors):
    """seq_icl's AdamW decays every parameter: with `decay_vectors` a zero-gradient step shrinks
    LRU's nu_log by lr * weight_decay (AdamW's decoupled decay, by hand), without it nu_log stays."""
    model = build("lru", "seq_icl")
    optimizer = make_optimizer(model, TrainingConfig(lr=0.5, weight_decay=0.1, decay_vectors=decay_vectors))
    recurrence = model.backbone.blocks[0].mixer.nu_log
    before = recurrence.detach().clone()
    for param in model.parameters():
        param.grad = torch.zeros_like(param)
    optimizer.step()
    expected = before * (1 - 0.5 * 0.1) if decay_vectors else before
    torch.testing.assert_close(recurrence.detach(), expected)
