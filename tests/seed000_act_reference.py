"""Helpers of the `seed000_act` tests: two hops and a slow per-token reference of seed 000's
ACT written from act.md section 3 (Python branches, one token at a time)."""

from __future__ import annotations

import math

import torch
from torch import Tensor, nn

D64 = torch.float64


class MixingHop(nn.Module):
    """Causal attention + tanh, layer-normed: every token reads the tokens before it."""

    def __init__(self, d_model: int):
        super().__init__()
        self.query, self.key, self.value = (nn.Linear(d_model, d_model) for _ in range(3))
        self.norm = nn.LayerNorm(d_model)

    def forward(self, state: Tensor, n: int, active: Tensor | None) -> Tensor:  # (B, L, D)
        length = state.shape[1]
        scores = self.query(state) @ self.key(state).transpose(1, 2) / math.sqrt(state.shape[-1])
        future = torch.triu(torch.ones(length, length, dtype=torch.bool), 1)
        mixed = scores.masked_fill(future, float("-inf")).softmax(-1) @ self.value(state)  # (B, L, D)
        new = self.norm(state + torch.tanh(mixed))
        return new if active is None else torch.where(active.unsqueeze(-1), new, state)


def table_hop(table: Tensor):
    """Hop n returns table[n + 1] (the core freezes inactive tokens): table (hops + 1, B, L, D)."""

    def hop(state: Tensor, n: int, active: Tensor | None) -> Tensor:
        new = table[n + 1]
        return new if active is None else torch.where(active.unsqueeze(-1), new, state)

    return hop


def reference_seed_act(
    state: Tensor,
    hop,
    weight: Tensor,
    bias: Tensor,
    *,
    threshold: float = 0.9,
    max_hop: int = 4,
    cap_remainder: bool = False,
    freeze: bool = False,
    from_entering: bool = True,
    combine: str = "interpolate",
    noise: list[Tensor] | None = None,
) -> dict:
    """act.md section 3, one token at a time with Python branches; the hop sees the whole sequence.

    Per token: p from the state entering the hop (or produced by it); a running token halts
    when H + p > threshold (strict), with R = 1 - H and weight R; otherwise H += p, weight p;
    a halted token has weight 0; N counts the hops a token ran. Output y = w s + (1 - w) y
    from y = 0 (or y + w s). The loop runs while some token is running with H < threshold and
    N < max_hop. Halted tokens are transformed by later hops unless `freeze`.
    """
    batch, length, _ = state.shape
    tokens = [(b, t) for b in range(batch) for t in range(length)]
    zero = state.new_zeros(())
    halting = dict.fromkeys(tokens, zero)
    remainder = dict.fromkeys(tokens, zero)
    hops = dict.fromkeys(tokens, 0)
    halted = dict.fromkeys(tokens, False)
    output = {k: state.new_zeros(state.shape[-1]) for k in tokens}
    n = 0
    while any(not halted[k] and float(halting[k].detach()) < threshold and hops[k] < max_hop for k in tokens):
        active = None
        if freeze:
            active = torch.tensor([[not halted[(b, t)] for t in range(length)] for b in range(batch)])
        new = hop(state, n, active)
        for k in tokens:
            source = state if from_entering else new
            p = torch.sigmoid(source[k] @ weight + bias)
            if noise is not None:
                p = p + noise[n][k]
            if halted[k]:
                w = zero
            elif float((halting[k] + p).detach()) > threshold or (cap_remainder and n == max_hop - 1):
                remainder[k] = 1.0 - halting[k]
                halting[k] = halting[k] + remainder[k]
                hops[k] += 1
                halted[k] = True
                w = remainder[k]
            else:
                halting[k] = halting[k] + p
                hops[k] += 1
                w = p
            output[k] = w * new[k] + (1.0 - w) * output[k] if combine == "interpolate" else output[k] + w * new[k]
        state = new
        n += 1

    def grid(values: dict) -> Tensor:
        return torch.stack([torch.as_tensor(values[k], dtype=D64) for k in tokens]).view(batch, length, -1).squeeze(-1)

    return {"output": grid(output), "hops": grid(hops), "remainder": grid(remainder)}
