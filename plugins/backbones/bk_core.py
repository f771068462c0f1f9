"""Diagonal of a tridiagonal resolvent in O(N): the spectral core of ResNet-BK.

For a tridiagonal `H` with diagonal `d` and unit off-diagonals, and a complex
shift `z` with `Im z > 0`, write `a = d - z` (the diagonal of `H - z I`).
The leading principal minors `theta` obey

    theta_0 = 1,  theta_1 = a_1,  theta_i = a_i theta_{i-1} - theta_{i-2},

and the trailing minors `phi` the same recursion from the end. Then

    G_ii = [(H - z I)^{-1}]_ii = theta_{i-1} phi_{i+1} / theta_n

(the classical minor formula for the inverse of a tridiagonal matrix, e.g.
Usmani 1994, "Inversion of a tridiagonal Jacobi matrix", Linear Algebra Appl.).

The minors themselves grow or shrink geometrically and overflow float32 after a
few hundred tokens, so both sweeps run on normalised ratios instead (one
division per step; no minor is ever formed):

    g_i = theta_{i-1} / theta_i = 1 / (a_i - g_{i-1}),      g_0 = 0      (forward)
    h_i = phi_{i+1} / phi_i     = 1 / (a_i - h_{i+1}),      h_{n+1} = 0  (backward)
    G_ii = 1 / (a_i - g_{i-1} - h_{i+1}).

`g_i` is itself a resolvent entry: the last diagonal entry of the inverse of the
leading i x i block of `H - z I`, which depends on `a_1..a_i` only. It is the
causal analogue of `G_ii` (the full diagonal uses the backward sweep, so entry i
sees every later token). Because `Im a_i = -Im z < 0`, every denominator has
imaginary part at most `-Im z`: the ratios never blow up and
`|g_i|, |G_ii| <= 1 / Im z`.

Gradients are exact: autograd differentiates through the recursion.
"""

from __future__ import annotations

import torch
from torch import Tensor


def causal_resolvent_diagonal(a: Tensor, length: int | None = None) -> Tensor:
    """g_i = last diagonal entry of (A[:i, :i])^{-1}, A = tridiag(1, a, 1).

    a: (..., L) complex diagonal of `H - z I`. Only the first `length` entries
    are computed (the rest are zero): entry i never depends on later ones.
    Returns (..., L) complex.
    """
    total = a.shape[-1]
    length = total if length is None else max(0, min(length, total))
    ratios = [torch.zeros_like(a[..., 0])]  # g_0
    for a_i in a[..., :length].unbind(-1):
        ratios.append(torch.reciprocal(a_i - ratios[-1]))
    ratios.extend(torch.zeros_like(a[..., 0]) for _ in range(total - length))  # the zero tail
    return torch.stack(ratios, dim=-1)[..., 1:]  # (..., L)


def resolvent_diagonal(a: Tensor) -> Tensor:
    """G_ii = [(A)^{-1}]_ii for A = tridiag(1, a, 1): (..., L) complex -> (..., L) complex.

    Uses both sweeps: entry i depends on every entry of `a` (not causal).
    """
    forward = causal_resolvent_diagonal(a)  # g_i
    # h_i = phi_{i+1} / phi_i: the same recursion from the end of the sequence
    backward = causal_resolvent_diagonal(a.flip(-1)).flip(-1)
    zero = torch.zeros_like(a[..., :1])
    before = torch.cat([zero, forward[..., :-1]], dim=-1)  # g_{i-1}
    after = torch.cat([backward[..., 1:], zero], dim=-1)  # h_{i+1}
    return torch.reciprocal(a - before - after)


def tridiagonal_diagonal_shift(potential: Tensor, *, base: float, shift: complex) -> Tensor:
    """a = (base + v) - z as a complex tensor: (..., L) real -> (..., L) complex.

    Half-precision potentials are promoted to float32 (complex64); float64 stays float64.
    """
    real = potential.to(torch.promote_types(potential.dtype, torch.float32)) + base - shift.real
    imag = torch.full_like(real, -shift.imag)
    return torch.complex(real, imag)
