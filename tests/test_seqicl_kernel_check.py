"""seq_icl's kernels beside ponderlab's layers. `scan_gradient: seq_icl_kernel`, the LRU gradient that
seq_icl's Triton scan computes inside its LRULayer: checked by hand, and against a scan whose backward
reads each output gradient from its storage as a contiguous array, as a kernel handed raw pointers
does. examples/seq_icl/seqicl_kernel_check.py (which runs seq_icl's own kernels where triton and a
seq_icl checkout are at hand): its plumbing, with stand-ins for the kernels."""

from __future__ import annotations

import functools
import math

import pytest
import torch
from pydantic import ValidationError
from script_modules import load_script

from ponderlab.plugins.backbones.linear_recurrence import linear_scan_reference
from ponderlab.plugins.backbones.lru import LRUConfig, SeqIclKernelGradient, SeqIclLRUMixer
from ponderlab.plugins.backbones.rwkv import wkv_recurrent

F64 = torch.float64


@functools.cache
def load_check():
    """The check script as a module, loaded once."""
    return load_script("examples/seq_icl/seqicl_kernel_check.py", "seqicl_kernel_check")


class PointerReadingScan(torch.autograd.Function):
    """The step loop; its backward reads each output gradient from the first element of its view
    onward as a contiguous (B, L, N) array, whatever the view's strides."""

    @staticmethod
    def forward(ctx, v_real, v_imag, f_real, f_imag):
        ctx.save_for_backward(v_real, v_imag, f_real, f_imag)
        return load_check().step_loop(v_real, v_imag, f_real, f_imag)

    @staticmethod
    def backward(ctx, grad_real, grad_imag):
        batch, length, width = grad_real.shape
        read = [torch.as_strided(g, (batch, length, width), (length * width, width, 1), g.storage_offset())
                for g in (grad_real, grad_imag)]
        with torch.enable_grad():
            inputs = [t.detach().requires_grad_() for t in ctx.saved_tensors]
            return torch.autograd.grad(load_check().step_loop(*inputs), inputs, read)


def test_the_kernel_gradient_reads_the_flat_gradient_buffer_by_hand():
    # B=2, L=1, N=2; each row is [Re grad, Re grad, Im grad, Im grad] of one sequence
    upstream = torch.tensor([[[1.0, 2.0, 3.0, 4.0]], [[5.0, 6.0, 7.0, 8.0]]])
    states = torch.randn(2, 1, 4, requires_grad=True)
    out = SeqIclKernelGradient.apply(states)
    torch.testing.assert_close(out, states)
    (out * upstream).sum().backward()
    # real half: flat[0:4] -> sequence 0 [1, 2], sequence 1 [3, 4] (sequence 0's imaginary part);
    # imaginary half: flat[2:6] -> sequence 0 [3, 4], sequence 1 [5, 6] (sequence 1's real part)
    assert states.grad.tolist() == [[[1.0, 2.0, 3.0, 4.0]], [[3.0, 4.0, 5.0, 6.0]]]


def test_the_kernel_gradient_matches_a_pointer_reading_scan_and_leaves_the_forward_alone():
    torch.manual_seed(0)
    mixer = SeqIclLRUMixer(6, 0.9, 0.999, 2 * math.pi, dropout=0.0).to(F64)
    x = torch.randn(3, 7, 6, dtype=F64)
    upstream = torch.randn(3, 7, 6, dtype=F64)

    def grads(output):
        return torch.autograd.grad((output * upstream).sum(), list(mixer.parameters()))

    exact_out = mixer(x)
    exact = grads(exact_out)
    pointer_out = load_check().kernel_mixer_output(mixer, x, PointerReadingScan.apply)
    pointer = grads(pointer_out)
    mixer.kernel_gradient = True
    emulated_out = mixer(x)
    emulated = grads(emulated_out)
    torch.testing.assert_close(emulated_out, exact_out, rtol=1e-12, atol=1e-12)
    torch.testing.assert_close(pointer_out, exact_out, rtol=1e-12, atol=1e-12)
    for got, want in zip(emulated, pointer, strict=True):
        torch.testing.assert_close(got, want, rtol=1e-10, atol=1e-12)
    # the recurrence's own parameters get a gradient far from the exact one
    nu_log = [name for name, _ in mixer.named_parameters()].index("nu_log")
    gap = (emulated[nu_log] - exact[nu_log]).norm() / exact[nu_log].norm()
    assert gap > 0.5


def test_the_kernel_gradient_needs_the_seq_icl_variant():
    assert LRUConfig(d_model=8, variant="seq_icl", scan_gradient="seq_icl_kernel").scan_gradient == "seq_icl_kernel"
    with pytest.raises(ValidationError, match="scan_gradient seq_icl_kernel needs variant seq_icl"):
        LRUConfig(d_model=8, variant="paper", scan_gradient="seq_icl_kernel")


def test_the_kernel_check_names_a_missing_checkout(tmp_path, capsys):
    assert load_check().main(["--seq-icl", str(tmp_path)]) == 2
    err = capsys.readouterr().err
    assert err.startswith("seqicl_kernel_check: cannot load seq_icl's LRU kernel") and str(tmp_path) in err


def test_the_rwkv_check_passes_a_kernel_with_seq_icls_growing_past_and_fails_a_decaying_one(capsys):
    """check_rwkv's plumbing, with the step loop standing in for seq_icl's WKV kernel (w = +exp(time_decay)
    added to the log-state, as seq_icl passes it): the same past passes, the opposite sign fails."""
    check = load_check()

    def growing(w, u, k, v, state):
        return wkv_recurrent(-w, u, k, v), state

    def decaying(w, u, k, v, state):
        return wkv_recurrent(w, u, k, v), state

    assert check.check_rwkv(growing, 2, 6) is True
    assert check.check_rwkv(decaying, 2, 6) is False
    assert capsys.readouterr().out.count("RWKV WKV kernel, B=2, L=6, C=32") == 2


def test_the_gilr_check_passes_a_kernel_of_seq_icls_recurrence_and_fails_another(capsys):
    """check_gilr's plumbing, with the step loop of h_t = s h_{t-1} + (1 - s) v_t, s = sigmoid(f_t),
    standing in for seq_icl's fused scan; a loop that forgets the sigmoid fails."""
    check = load_check()

    def fused(v, f):
        gate = torch.sigmoid(f)
        return linear_scan_reference(gate, (1 - gate) * v)

    def without_sigmoid(v, f):
        return linear_scan_reference(f, (1 - f) * v)

    assert check.check_gilr(fused, 2, 6) is True
    assert check.check_gilr(without_sigmoid, 2, 6) is False
    assert capsys.readouterr().out.count("GILR scan kernel, B=2, L=6, C=32") == 2
