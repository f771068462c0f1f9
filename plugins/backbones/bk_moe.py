"""A position-wise top-k mixture-of-experts feed-forward that can skip tokens.

Router: `p = softmax(W_r x)` over E experts; each token goes to its k most likely
experts and their outputs are summed weighted by the router probabilities of the
chosen experts (Switch-Transformer style, not renormalised, so the router gets
gradients even with k = 1). No load-balancing loss (the block contract has no
auxiliary-loss channel).

`rows` restricts the computation to some tokens: the others get a zero output and
cost nothing, which is what makes early exit save compute in this layer.
"""

from __future__ import annotations

import torch
import torch.nn.functional as F
from torch import Tensor, nn


class Expert(nn.Module):
    """Linear -> GELU -> Linear: (T, D) -> (T, D)."""

    def __init__(self, d_model: int, ffn_size: int):
        super().__init__()
        self.up = nn.Linear(d_model, ffn_size)
        self.down = nn.Linear(ffn_size, d_model)

    def forward(self, x: Tensor) -> Tensor:
        return self.down(F.gelu(self.up(x)))


class MoEFeedForward(nn.Module):
    """Top-k routed experts, applied per token: (B, L, D) -> (B, L, D)."""

    def __init__(self, d_model: int, ffn_size: int, n_experts: int, top_k: int):
        super().__init__()
        self.top_k = top_k  # 1 <= top_k <= n_experts (ResNetBKConfig checks it)
        self.router = nn.Linear(d_model, n_experts, bias=False)
        self.experts = nn.ModuleList(Expert(d_model, ffn_size) for _ in range(n_experts))

    def mixture(self, x: Tensor) -> Tensor:
        """(T, D) tokens -> (T, D) mixture outputs."""
        probs = torch.softmax(self.router(x).float(), dim=-1)  # (T, E)
        # gates (T, k) router probabilities of the chosen experts (T, k)
        gates, chosen = probs.topk(self.top_k, dim=-1)
        output = torch.zeros_like(x)
        for index, expert in enumerate(self.experts):
            tokens, slots = (chosen == index).nonzero(as_tuple=True)  # (T_e,), (T_e,)
            if tokens.numel() == 0:
                continue
            weight = gates[tokens, slots].unsqueeze(-1)  # (T_e, 1)
            contribution = (expert(x[tokens]) * weight).to(output.dtype)  # (T_e, D), autocast-safe
            output = output.index_add(0, tokens, contribution)
        return output

    def forward(self, hidden: Tensor, active: Tensor | None = None) -> Tensor:
        """hidden (B, L, D); active (B, L) bool or None (all). Inactive tokens get zeros."""
        if active is None:
            return self.mixture(hidden.flatten(0, 1)).view_as(hidden)
        flat = hidden.flatten(0, 1)  # (B*L, D)
        rows = active.flatten().nonzero(as_tuple=True)[0]  # (T,)
        output = flat.new_zeros(flat.shape)
        if rows.numel():
            output = output.index_copy(0, rows, self.mixture(flat[rows]).to(output.dtype))
        return output.view_as(hidden)
