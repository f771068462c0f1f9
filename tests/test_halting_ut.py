"""Universal-Transformer ACT (tensor2tensor rules): hand-computed cases, reference loop, gradients."""

from __future__ import annotations

import pytest
import torch
from torch.func import functional_call

from ponderlab.core.errors import SpecError
from ponderlab.core.halting import logit
from ponderlab.plugins.halting.reference import ScriptedHop, script_linear, ut_act_token
from ponderlab.plugins.halting.ut import UniversalTransformerACT, UTConfig

D64 = torch.float64


# p is computed on the state ENTERING each hop (t2t). Threshold 0.9, cap 3.
#   A: p = 0.5, 0.45     -> still (H=0.5), then 0.95 > 0.9 halts: R = 0.5, N = 2, w = [0.5, 0.5]
#   B: p = 0.95          -> halts at hop 1: R = 1, N = 1, w = [1]
#   C: p = 0.1, 0.2, 0.3 -> never above 0.9; the cap makes hop 3 halt with R = 1 - 0.3 = 0.7
H = [[0.5, 0.45, 0.5], [0.95, 0.5, 0.5], [0.1, 0.2, 0.3]]
ACCUMULATED = [[0.5, 0.5, 0.0], [1.0, 0.0, 0.0], [0.1, 0.2, 0.7]]
# interpolate: y = w s + (1 - w) y, from y = 0:
#   A: 0.5 e2 + 0.5 * (0.5 e1) ; B: e1 ; C: 0.7 e3 + 0.3 * (0.2 e2 + 0.8 * 0.1 e1)
INTERPOLATED = [[0.25, 0.5, 0.0], [1.0, 0.0, 0.0], [0.024, 0.06, 0.7]]


def site(combine: str = "accumulated", cap: int = 3, epsilon: float = 0.1, d_model: int | None = None):
    config = UTConfig(max_hops=cap, epsilon=epsilon, combine=combine)
    return UniversalTransformerACT(config, d_model=d_model or cap + 2, n_layers=1).double()


def scripted(requires_grad: bool = False) -> ScriptedHop:
    rows = [[logit(h) for h in row] + [0.0] for row in H]  # cap 3 + one unused look-ahead column
    controls = torch.tensor([rows], dtype=D64, requires_grad=requires_grad)
    return ScriptedHop(controls, shift=1)  # the state entering hop n carries p_n


@pytest.mark.parametrize("combine, expected", [("accumulated", ACCUMULATED), ("interpolate", INTERPOLATED)])
def test_hand_computed_three_tokens(combine, expected):
    ut = site(combine)
    script_linear(ut.unit.linear, control_index=3)
    hop = scripted()
    out = ut(hop.initial_state(), hop)
    torch.testing.assert_close(out.output[0, :, :3], torch.tensor(expected, dtype=D64))
    torch.testing.assert_close(out.hops[0], torch.tensor([2.0, 1.0, 3.0], dtype=D64))
    torch.testing.assert_close(out.remainder[0], torch.tensor([0.5, 1.0, 0.7], dtype=D64))
    torch.testing.assert_close(out.ponder_cost[0], torch.tensor([2.5, 2.0, 3.7], dtype=D64))
    # Halted positions are frozen: B is not transformed after hop 1, A not after hop 2.
    assert hop.calls[0] is None
    assert hop.calls[1].tolist() == [[True, False, True]]
    assert hop.calls[2].tolist() == [[False, False, True]]


def test_capped_tokens_get_their_remainder():
    ut = site(cap=3)
    script_linear(ut.unit.linear, control_index=3)
    controls = torch.full((2, 4, 4), logit(0.05), dtype=D64)  # never near the threshold
    hop = ScriptedHop(controls, shift=1)
    out = ut(hop.initial_state(), hop)
    assert out.hops.eq(3).all()
    torch.testing.assert_close(out.output[..., :3].sum(-1), torch.ones(2, 4, dtype=D64))
    torch.testing.assert_close(out.remainder, torch.full((2, 4), 0.9, dtype=D64))


def test_halted_state_is_not_the_raw_transformed_state():
    # The output is the weighted combination, not the last state (a known port bug).
    ut = site()
    script_linear(ut.unit.linear, control_index=3)
    hop = scripted()
    out = ut(hop.initial_state(), hop)
    assert out.output[0, 0, 0].item() == pytest.approx(0.5)
    assert out.output[0, 0, 1].item() == pytest.approx(0.5)


def mixing_hop(weight: torch.Tensor):
    """A causal token-mixing hop: s_t <- tanh(W (s_t + mean_{u<=t} s_u)). Frozen tokens keep their state."""

    def hop(state, n, active):
        counts = torch.arange(1, state.shape[1] + 1, dtype=state.dtype).view(1, -1, 1)
        mixed = state + state.cumsum(1) / counts
        new = torch.tanh(mixed @ weight.T)
        return new if active is None else torch.where(active.unsqueeze(-1), new, state)

    return hop


@pytest.mark.parametrize("combine", ["accumulated", "interpolate"])
def test_matches_per_token_reference(combine):
    seen = set()
    for seed in range(4):
        generator = torch.Generator().manual_seed(seed)
        d = 5
        ut = site(combine, cap=5, epsilon=0.2, d_model=d)
        torch.nn.init.normal_(ut.unit.linear.weight, std=1.5, generator=generator)
        torch.nn.init.constant_(ut.unit.linear.bias, -0.3)
        weights = [torch.randn(d, d, generator=generator, dtype=D64) for _ in range(5)]
        state = torch.randn(3, 4, d, generator=generator, dtype=D64)

        def hop(s, n, active, _w=weights):
            new = torch.tanh(s @ _w[n].T)
            return new if active is None else torch.where(active.unsqueeze(-1), new, s)

        out = ut(state, hop)

        def halt(n, s, _unit=ut.unit):
            return float(_unit(s.view(1, 1, -1)).item())

        for b in range(3):
            for t in range(4):
                ref = ut_act_token(
                    state[b, t], lambda n, s, _w=weights: torch.tanh(_w[n] @ s), halt,
                    max_hops=5, threshold=0.8, combine=combine,
                )
                torch.testing.assert_close(out.output[b, t], ref["output"])
                assert out.hops[b, t].item() == ref["hops"]
                assert out.ponder_cost[b, t].item() == pytest.approx(ref["ponder_cost"], abs=1e-12)
        seen |= set(out.hops.flatten().tolist())
    assert len(seen) >= 3


def test_frozen_positions_seen_by_running_ones():
    # With a mixing hop, running tokens read the frozen state of halted ones: compare against a
    # slow loop that applies the hop to the whole sequence and keeps halted rows by hand.
    generator = torch.Generator().manual_seed(11)
    d = 4
    ut = site(cap=4, epsilon=0.2, d_model=d)
    torch.nn.init.normal_(ut.unit.linear.weight, std=2.0, generator=generator)
    hop = mixing_hop(torch.randn(d, d, generator=generator, dtype=D64))
    state = torch.randn(2, 6, d, generator=generator, dtype=D64)
    out = ut(state, hop)
    with torch.no_grad():
        expected = slow_ut_loop(ut, hop, state, cap=4, threshold=0.8)
    torch.testing.assert_close(out.output, expected)
    assert len(set(out.hops.flatten().tolist())) >= 2


def slow_ut_loop(ut, hop, state, cap: int, threshold: float):
    """Per-token Python bookkeeping around whole-sequence hops (halted rows kept by hand)."""
    batch, length = state.shape[:2]
    s = state.clone()
    halting = [[0.0] * length for _ in range(batch)]
    done = [[False] * length for _ in range(batch)]
    y = torch.zeros_like(state)
    for n in range(cap):
        p = ut.unit(s)
        new = hop(s, n, None)
        for b in range(batch):
            for t in range(length):
                if done[b][t]:
                    new[b, t] = s[b, t]
                    continue
                pt = float(p[b, t])
                if halting[b][t] + pt > threshold or n == cap - 1:
                    w = 1.0 - halting[b][t]
                    done[b][t] = True
                else:
                    w = pt
                    halting[b][t] += pt
                y[b, t] = y[b, t] + w * new[b, t]
        s = new
    return y


def test_gradcheck_float64():
    generator = torch.Generator().manual_seed(2)
    d = 4
    ut = site(cap=4, epsilon=0.2, d_model=d)
    torch.nn.init.normal_(ut.unit.linear.weight, std=1.0, generator=generator)
    hop = mixing_hop(torch.randn(d, d, generator=generator, dtype=D64) * 0.8)
    state = torch.randn(1, 3, d, generator=generator, dtype=D64, requires_grad=True)
    weight = ut.unit.linear.weight.detach().clone().requires_grad_()
    bias = ut.unit.linear.bias.detach().clone().requires_grad_()

    def run(x, w, b):
        out = functional_call(ut, {"unit.linear.weight": w, "unit.linear.bias": b}, (x, hop))
        return out.output, out.ponder_cost

    # keep every halting decision away from the threshold, so finite differences see no jump
    with torch.no_grad():
        s, halting = state.detach(), torch.zeros(1, 3, dtype=D64)
        running = torch.ones(1, 3, dtype=torch.bool)
        margins = []
        for n in range(4):
            p = ut.unit(s)
            margins.append((halting + p - 0.8).abs()[running].min().item())
            halts = running & (halting + p > 0.8)
            halting = torch.where(running & ~halts, halting + p, halting)
            s = hop(s, n, None if n == 0 else running)
            running = running & ~halts
            if not running.any():
                break
    assert min(margins) > 1e-3
    assert torch.autograd.gradcheck(run, (state, weight, bias), eps=1e-6, atol=1e-6)


def test_scopes():
    with pytest.raises(SpecError, match="halting.scope"):
        UniversalTransformerACT(UTConfig(scope="depth"), d_model=4, n_layers=2)
    assert UniversalTransformerACT.supported_scopes == {"layer", "model"}
    with pytest.raises(ValueError):
        UTConfig(combine="basic")
    assert UTConfig().time_penalty == 0.01 and UTConfig().halting_bias_init == 1.0


@pytest.mark.parametrize("combine", ["accumulated", "interpolate"])
def test_hop_weights_reproduce_the_output(combine):
    """sum_n hop_weights[n] * s_n is the output; interpolate leaves weight on the zero start (t2t)."""
    torch.manual_seed(0)
    site = UniversalTransformerACT(UTConfig(max_hops=4, combine=combine, halting_bias_init=-0.5),
                                   d_model=6, n_layers=1).double()
    torch.nn.init.normal_(site.unit.linear.weight, std=2.0)
    weights = [torch.randn(6, 6, dtype=torch.float64) * 0.5 for _ in range(4)]
    states = []

    def hop(s, n, active):
        new = torch.tanh(s @ weights[n])
        states.append(new if active is None else torch.where(active.unsqueeze(-1), new, s))
        return states[-1]

    out = site(torch.randn(2, 5, 6, dtype=torch.float64), hop)
    assert len(set(out.hops.flatten().tolist())) > 1
    rebuilt = sum(w.unsqueeze(-1) * s for w, s in zip(out.hop_weights, states, strict=True))
    torch.testing.assert_close(rebuilt, out.output)
    total = torch.stack(out.hop_weights).sum(0)
    if combine == "accumulated":
        torch.testing.assert_close(total, torch.ones_like(total))
    else:
        assert bool((total < 1).any())
