"""tensor2tensor's ACT bookkeeping for one hop (Dehghani et al. 2018; act.md sections 2-3).

Shared by `ut` and `seed000_act`, which differ in where the halting probability comes from,
how capped tokens end and how hop states are combined, not in this update.
"""

from __future__ import annotations

from torch import Tensor


def t2t_hop_update(
    p: Tensor, reached: Tensor, running: Tensor, halting: Tensor, remainder: Tensor, n_updates: Tensor
) -> tuple[Tensor, Tensor, Tensor, Tensor]:
    """One hop: (halting H, remainder R, updates N, hop weight w), each (B, L).

    p: this hop's halting probability; reached: tokens whose H + p passes the threshold (or
    that must stop now); running: tokens still running before this hop (bool).
    `new_halted` tokens get R = 1 - H and H = 1; `still` running ones add p to H.
    """
    dtype = halting.dtype
    new_halted = (reached & running).to(dtype)
    still = (~reached & running).to(dtype)
    halting = halting + p * still
    remainder = remainder + new_halted * (1.0 - halting)
    halting = halting + new_halted * remainder
    n_updates = n_updates + still + new_halted
    weight = p * still + new_halted * remainder
    return halting, remainder, n_updates, weight
