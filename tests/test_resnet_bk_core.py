"""The O(N) tridiagonal resolvent recursions of ResNet-BK against dense inverses."""

from __future__ import annotations

import pytest
import torch

from ponderlab.plugins.backbones.bk_core import (
    causal_resolvent_diagonal,
    resolvent_diagonal,
    tridiagonal_diagonal_shift,
)


def dense_operator(a: torch.Tensor) -> torch.Tensor:
    """(..., L) diagonal -> (..., L, L) tridiagonal matrix with unit off-diagonals."""
    n = a.shape[-1]
    off = torch.ones(n - 1, dtype=a.dtype)
    return torch.diag_embed(a) + torch.diag_embed(off, 1) + torch.diag_embed(off, -1)


def random_diagonal(batch: int, length: int, seed: int, scale: float = 2.0) -> torch.Tensor:
    generator = torch.Generator().manual_seed(seed)
    potential = scale * torch.randn(batch, length, dtype=torch.float64, generator=generator)
    return tridiagonal_diagonal_shift(potential, base=-2.0, shift=0.3 + 0.7j)  # (B, L) complex128


def test_shift_builds_h0_plus_v_minus_z():
    potential = torch.tensor([[0.5, -1.0]], dtype=torch.float64)
    a = tridiagonal_diagonal_shift(potential, base=-2.0, shift=0.25 + 1.5j)
    assert a.dtype == torch.complex128
    expected = torch.tensor([[-1.75 - 1.5j, -3.25 - 1.5j]], dtype=torch.complex128)
    torch.testing.assert_close(a, expected)


def test_two_by_two_matches_hand_inverse():
    # [[a1, 1], [1, a2]]^{-1} has diagonal [a2, a1] / (a1 a2 - 1); causal: [1/a1, a1/(a1 a2 - 1)].
    a1, a2 = complex(-1.0, -1.0), complex(0.5, -2.0)
    a = torch.tensor([[a1, a2]], dtype=torch.complex128)
    det = a1 * a2 - 1
    full = torch.tensor([[a2 / det, a1 / det]], dtype=torch.complex128)
    causal = torch.tensor([[1 / a1, a1 / det]], dtype=torch.complex128)
    torch.testing.assert_close(resolvent_diagonal(a), full)
    torch.testing.assert_close(causal_resolvent_diagonal(a), causal)


@pytest.mark.parametrize("length", [1, 2, 3, 8, 17])
def test_full_diagonal_matches_dense_inverse(length):
    a = random_diagonal(3, length, seed=length)
    dense = torch.linalg.inv(dense_operator(a)).diagonal(dim1=-2, dim2=-1)  # (B, L)
    torch.testing.assert_close(resolvent_diagonal(a), dense, rtol=1e-10, atol=1e-12)


@pytest.mark.parametrize("length", [1, 2, 5, 13])
def test_causal_entry_is_last_diagonal_of_leading_block_inverse(length):
    a = random_diagonal(2, length, seed=100 + length)
    matrix = dense_operator(a)
    expected = torch.stack(
        [torch.linalg.inv(matrix[:, :i, :i])[:, i - 1, i - 1] for i in range(1, length + 1)], dim=-1
    )
    torch.testing.assert_close(causal_resolvent_diagonal(a), expected, rtol=1e-10, atol=1e-12)


def test_causal_last_entry_equals_full_last_entry_and_differs_elsewhere():
    a = random_diagonal(2, 9, seed=7)
    causal, full = causal_resolvent_diagonal(a), resolvent_diagonal(a)
    torch.testing.assert_close(causal[:, -1], full[:, -1])
    assert (causal[:, :-1] - full[:, :-1]).abs().min() > 1e-6


def test_causal_prefix_ignores_later_entries_and_full_does_not():
    a = random_diagonal(1, 10, seed=3)
    changed = a.clone()
    changed[:, 6:] += 1.5
    torch.testing.assert_close(causal_resolvent_diagonal(changed)[:, :6], causal_resolvent_diagonal(a)[:, :6])
    assert (resolvent_diagonal(changed)[:, :6] - resolvent_diagonal(a)[:, :6]).abs().max() > 1e-4


def test_truncated_length_computes_prefix_and_zero_tail():
    a = random_diagonal(2, 9, seed=11)
    truncated = causal_resolvent_diagonal(a, length=4)
    torch.testing.assert_close(truncated[:, :4], causal_resolvent_diagonal(a)[:, :4])
    assert torch.all(truncated[:, 4:] == 0)
    assert torch.all(causal_resolvent_diagonal(a, length=0) == 0)


def test_long_sequences_stay_finite_and_bounded_by_one_over_im_z():
    # The raw minors theta_i overflow float32 within a few hundred steps here.
    generator = torch.Generator().manual_seed(0)
    potential = 4.0 * torch.randn(2, 3000, generator=generator)  # float32
    a = tridiagonal_diagonal_shift(potential, base=-2.0, shift=0.5j)
    theta_before, theta = torch.ones_like(a[:, 0]), a[:, 0]
    for step in range(1, 300):  # the unnormalised recursion, for contrast
        theta_before, theta = theta, a[:, step] * theta - theta_before
    assert not torch.isfinite(torch.view_as_real(theta)).all()
    for green in (causal_resolvent_diagonal(a), resolvent_diagonal(a)):
        assert green.dtype == torch.complex64
        assert torch.isfinite(torch.view_as_real(green)).all()
        assert green.abs().max() <= 1 / 0.5 + 1e-4
        assert (green.imag >= 0).all()  # Im G > 0 for Im z > 0 (Herglotz)


def test_gradients_match_finite_differences():
    generator = torch.Generator().manual_seed(5)
    potential = torch.randn(2, 6, dtype=torch.float64, generator=generator, requires_grad=True)

    def features(v, causal):
        a = tridiagonal_diagonal_shift(v, base=-2.0, shift=0.2 + 0.9j)
        green = causal_resolvent_diagonal(a) if causal else resolvent_diagonal(a)
        return torch.view_as_real(green)

    assert torch.autograd.gradcheck(lambda v: features(v, True), (potential,))
    assert torch.autograd.gradcheck(lambda v: features(v, False), (potential,))


def test_gradient_matches_dense_inverse_gradient():
    # dG_ii/dv_j = -G_ij G_ji: compare autograd through the recursion with the dense formula.
    a = random_diagonal(1, 7, seed=9)[0]
    potential = torch.zeros(7, dtype=torch.float64, requires_grad=True)
    green = resolvent_diagonal(a + potential)
    target = 3  # d Re G_33 / d v
    green[target].real.backward()
    inverse = torch.linalg.inv(dense_operator(a))
    expected = (-inverse[target, :] * inverse[:, target]).real
    torch.testing.assert_close(potential.grad, expected, rtol=1e-9, atol=1e-12)
