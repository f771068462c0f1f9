"""`seed000_act` (seed 000's ACT_basic): hand-computed cases, the slow per-token reference of
seed000_act_reference.py (act.md section 3), float64 gradients, the init claim, `ut` equivalence,
conformance."""

from __future__ import annotations

import math

import pytest
import torch
from seed000_act_reference import MixingHop, reference_seed_act, table_hop
from torch import Tensor, nn
from torch.func import functional_call

from ponderlab.core.conformance.probes import ProbeBackbone, ProbeBackboneConfig
from ponderlab.core.errors import SpecError
from ponderlab.core.model import PonderModel
from ponderlab.core.spec import validate_spec
from ponderlab.plugins.halting.seed000_act import Seed000ACT, Seed000ACTConfig
from ponderlab.plugins.halting.ut import UniversalTransformerACT, UTConfig
from ponderlab.testing import ContractError, HaltingContract, check_contract, check_plugin

D64 = torch.float64


def site(d_model: int, **options) -> Seed000ACT:
    return Seed000ACT(Seed000ACTConfig(**options), d_model=d_model, n_layers=1).double()


def logit(p: float) -> float:
    return math.log(p / (1.0 - p))


# --------------------------------------------------------------------------- a controlled halting unit


def controlled_unit(strategy: Seed000ACT, control: int) -> None:
    """p = sigmoid(s[control]): the states carry the logit of the halting probability."""
    with torch.no_grad():
        strategy.unit.weight.zero_()
        strategy.unit.weight[0, control] = 1.0
        strategy.unit.bias.zero_()


# --------------------------------------------------------------------------- hand-computed cases

# Three tokens, threshold 0.9, max_hops 3; the state entering hop n carries p_n (coordinate 3):
#   A: p = 0.5, 0.45       -> hop 2: 0.95 > 0.9 halts, R = 0.5, N = 2, w = [0.5, 0.5]
#   B: p = 0.95            -> halts at hop 1, R = 1, N = 1, w = [1]
#   C: p = 0.1, 0.2, 0.3   -> H = 0.6 at the cap: the seed gives no remainder (R = 0, N = 3);
#                             with cap_remainder hop 3 takes R = 1 - 0.3 = 0.7
# Hop n's state is e_n in coordinates 0..2.  Interpolation y = w e_n + (1 - w) y from y = 0:
#   A: 0.5 e2 + 0.5 (0.5 e1);  B: e1;  C: 0.3 e3 + 0.7 (0.2 e2 + 0.8 (0.1 e1)), or 0.7 e3 + 0.3 (...)
P = [[0.5, 0.45, 0.5, 0.5], [0.95, 0.5, 0.5, 0.5], [0.1, 0.2, 0.3, 0.5]]
CASES = {
    "seed": ({}, [[0.25, 0.5, 0.0], [1.0, 0.0, 0.0], [0.056, 0.14, 0.3]], [2, 1, 3], [0.5, 1.0, 0.0]),
    "cap_remainder": ({"cap_remainder": True}, [[0.25, 0.5, 0.0], [1.0, 0.0, 0.0], [0.024, 0.06, 0.7]],
                      [2, 1, 3], [0.5, 1.0, 0.7]),
    "accumulated": ({"combine": "accumulated"}, [[0.5, 0.5, 0.0], [1.0, 0.0, 0.0], [0.1, 0.2, 0.3]],
                    [2, 1, 3], [0.5, 1.0, 0.0]),
    # p from the state each hop produced: A sees 0.45, 0.5 (halts at hop 2 with R = 0.55),
    # B sees 0.5, 0.5 (R = 0.5), C sees 0.2, 0.3, 0.5 (H = 0.5 + 0.5 > 0.9 at hop 3, R = 0.5):
    #   A: 0.55 e2 + 0.45 (0.45 e1); B: 0.5 e2 + 0.5 (0.5 e1); C: 0.5 e3 + 0.5 (0.3 e2 + 0.7 (0.2 e1))
    "produced": ({"probability_from": "produced"}, [[0.2025, 0.55, 0.0], [0.25, 0.5, 0.0], [0.07, 0.15, 0.5]],
                 [2, 2, 3], [0.55, 0.5, 0.5]),
}


def scripted_table() -> Tensor:
    table = torch.zeros(4, 1, 3, 4, dtype=D64)  # (hop, B, L, D): markers 0..2, control 3
    for n in range(4):
        if n:
            table[n, ..., n - 1] = 1.0
        table[n, 0, :, 3] = torch.tensor([logit(row[n]) for row in P], dtype=D64)
    return table


@pytest.mark.parametrize("case", list(CASES))
def test_hand_computed_three_tokens(case):
    options, expected, hops, remainder = CASES[case]
    strategy = site(4, max_hops=3, **options)
    controlled_unit(strategy, control=3)
    table = scripted_table()
    out = strategy(table[0], table_hop(table))
    torch.testing.assert_close(out.output[0, :, :3], torch.tensor(expected, dtype=D64))
    torch.testing.assert_close(out.hops[0], torch.tensor(hops, dtype=D64))
    torch.testing.assert_close(out.remainder[0], torch.tensor(remainder, dtype=D64))
    torch.testing.assert_close(out.ponder_cost[0], torch.tensor(remainder, dtype=D64))  # the seed's: R


def mixing_pair(freeze: bool, cap_remainder: bool = False):
    """Two tokens, v = (1, 2); hop: v_t <- v_t + sum_{u<t} v_u + 1, control unchanged.

    Token 0 (p = 0.95) halts at hop 1 with weight 1: y0 = 2. Token 1 (p = 0.25 at every hop)
    never reaches 0.9 and runs the 3 hops. Hop 1: v = (2, 4), y1 = 0.25 * 4 = 1.
    Hop 2: v1 = 4 + 2 + 1 = 7 (token 0's state is 2 either way), y1 = 0.25 * 7 + 0.75 = 2.5;
    token 0 becomes 3, unless frozen (2). Hop 3: v1 = 7 + 3 + 1 = 11 (frozen: 7 + 2 + 1 = 10),
    y1 = 0.25 * 11 + 0.75 * 2.5 = 4.625 (frozen: 4.375); with cap_remainder the last weight is
    R = 1 - 0.5 = 0.5: y1 = 0.5 * 11 + 0.5 * 2.5 = 6.75.
    """
    strategy = site(2, max_hops=3, freeze_halted=freeze, cap_remainder=cap_remainder)
    controlled_unit(strategy, control=1)
    state = torch.tensor([[[1.0, logit(0.95)], [2.0, logit(0.25)]]], dtype=D64)  # (1, 2, 2)
    calls = []

    def hop(state: Tensor, n: int, active: Tensor | None) -> Tensor:
        calls.append(active)
        values = state[..., 0]  # (B, L)
        new = state.clone()
        new[..., 0] = values + values.cumsum(-1) - values + 1.0
        return new if active is None else torch.where(active.unsqueeze(-1), new, state)

    return strategy(state, hop), calls


@pytest.mark.parametrize("freeze, cap_remainder, expected", [
    (False, False, 4.625), (True, False, 4.375), (False, True, 6.75),
])
def test_halted_token_still_transformed_unless_frozen(freeze, cap_remainder, expected):
    out, calls = mixing_pair(freeze, cap_remainder)
    assert out.output[0, 0, 0].item() == pytest.approx(2.0)
    assert out.output[0, 1, 0].item() == pytest.approx(expected)
    assert out.hops[0].tolist() == [1.0, 3.0]
    assert out.remainder[0].tolist() == pytest.approx([1.0, 0.5 if cap_remainder else 0.0])
    assert len(calls) == 3
    if freeze:
        assert calls[0] is None and calls[1].tolist() == [[False, True]]
    else:
        assert calls == [None, None, None]


def test_threshold_is_strict():
    # threshold 0.75; token 0 has p = 0.5, 0.25, 0.5 (exact in binary): H = 0.75 after hop 2 is
    # not > 0.75, so it does not halt there (with >= it would, with R = 0.25).
    # Alone, it stops the loop (the loop runs while some token has H < threshold): N = 2, no
    # remainder. Beside token 1 (p = 0.125 every hop, still running), it takes hop 3 and halts
    # with R = 1 - 0.75 = 0.25.
    strategy = site(1, threshold=0.75)
    controlled_unit(strategy, control=0)
    first = [logit(0.5), logit(0.25), logit(0.5), logit(0.5), 0.0]
    alone = torch.tensor(first, dtype=D64).view(5, 1, 1, 1)
    out = strategy(alone[0], table_hop(alone))
    assert (out.hops.item(), out.remainder.item()) == (2.0, 0.0)
    pair = torch.tensor([first, [logit(0.125)] * 5], dtype=D64).T.reshape(5, 1, 2, 1)
    out = strategy(pair[0], table_hop(pair))
    assert out.hops[0].tolist() == [3.0, 4.0]
    assert out.remainder[0].tolist() == [0.25, 0.0]


def test_padding_halts_after_its_first_hop():
    strategy = site(4, max_hops=3)
    controlled_unit(strategy, control=3)
    table = scripted_table()
    mask = torch.tensor([[True, False, True]])
    out = strategy(table[0], table_hop(table), mask=mask)
    assert out.hops[0].tolist() == [2.0, 1.0, 3.0]
    assert out.remainder[0, 1].item() == 1.0
    torch.testing.assert_close(out.output[0, 1, :3], torch.tensor([1.0, 0.0, 0.0], dtype=D64))


# --------------------------------------------------------------------------- against the reference

OPTION_SETS = [
    {},
    {"freeze_halted": True},
    {"cap_remainder": True},
    {"cap_remainder": True, "freeze_halted": True, "combine": "accumulated"},
    {"combine": "accumulated"},
    {"probability_from": "produced"},
]


def mixed_setup(seed: int = 0, d_model: int = 8, batch: int = 2, length: int = 8, scale: float = 6.0):
    torch.manual_seed(seed)
    hop = MixingHop(d_model).double()
    state = torch.randn(batch, length, d_model, dtype=D64, requires_grad=True)
    return hop, state, scale


@pytest.mark.parametrize("options", OPTION_SETS, ids=lambda o: ",".join(f"{k}={v}" for k, v in o.items()) or "seed")
def test_matches_reference_outputs_hops_remainders_and_gradients(options):
    hop, state, scale = mixed_setup()
    strategy = site(8, **options)
    with torch.no_grad():
        strategy.unit.weight.mul_(scale)  # a spread of hop counts
    states = []  # the state each hop produced, as the strategy saw it

    def recording_hop(state, n, active):
        states.append(hop(state, n, active))
        return states[-1]

    out = strategy(state, recording_hop)
    expected = reference_seed_act(
        state, hop, strategy.unit.weight[0], strategy.unit.bias[0],
        cap_remainder=options.get("cap_remainder", False), freeze=options.get("freeze_halted", False),
        from_entering=options.get("probability_from", "entering") == "entering",
        combine=options.get("combine", "interpolate"),
    )
    assert {1.0, 2.0, 3.0, 4.0} == set(out.hops.flatten().tolist())  # early, usual and capped tokens
    torch.testing.assert_close(out.hops, expected["hops"])
    torch.testing.assert_close(out.remainder, expected["remainder"], rtol=0, atol=1e-12)
    torch.testing.assert_close(out.output, expected["output"], rtol=0, atol=1e-12)
    # hop_weights give the output as sum_n w_n s_n (interpolation: the effective weights)
    combined = sum(w.unsqueeze(-1) * s for w, s in zip(out.hop_weights, states, strict=True))
    torch.testing.assert_close(combined, out.output, rtol=0, atol=1e-12)
    # float64 gradients of one loss through output and remainder
    probe = torch.randn(state.shape, dtype=D64, generator=torch.Generator().manual_seed(5))
    params = [state, strategy.unit.weight, strategy.unit.bias, *hop.parameters()]
    fast = torch.autograd.grad((out.output * probe).sum() + out.remainder.sum(), params)
    slow = torch.autograd.grad((expected["output"] * probe).sum() + expected["remainder"].sum(), params)
    for got, want in zip(fast, slow, strict=True):
        torch.testing.assert_close(got, want, rtol=0, atol=1e-10)


def test_noisy_halting_matches_reference_with_the_same_draws():
    hop, state, _ = mixed_setup(seed=1, scale=1.0)
    strategy = site(8, noisy_halting=True).train()
    torch.manual_seed(7)
    out = strategy(state, hop)
    torch.manual_seed(7)
    noise = [0.1 * torch.randn(state.shape[:-1], dtype=D64) for _ in range(4)]
    expected = reference_seed_act(state, hop, strategy.unit.weight[0], strategy.unit.bias[0], noise=noise)
    torch.testing.assert_close(out.output, expected["output"], rtol=0, atol=1e-12)
    torch.testing.assert_close(out.hops, expected["hops"])
    quiet = site(8, noisy_halting=False).train()
    quiet.load_state_dict(strategy.state_dict())
    assert not torch.allclose(quiet(state, hop).output, out.output)  # the noise did something
    strategy.eval()  # no noise outside training
    torch.testing.assert_close(strategy(state, hop).output, quiet.eval()(state, hop).output, rtol=0, atol=0)


def test_gradcheck_float64():
    hop, _, _ = mixed_setup(seed=2, d_model=4, batch=1, length=3)
    strategy = site(4, max_hops=3)
    state = torch.randn(1, 3, 4, dtype=D64, requires_grad=True)

    def run(state, weight):
        out = functional_call(strategy, {"unit.weight": weight}, (state, hop))
        return out.output, out.remainder

    weight = strategy.unit.weight.detach().clone().requires_grad_(True)
    assert torch.autograd.gradcheck(run, (state, weight), eps=1e-6, atol=1e-7)


# --------------------------------------------------------------------------- init, ut, loss, scopes


def test_init_zero_weight_gives_exactly_two_hops_and_pytorch_default_most():
    torch.manual_seed(0)
    d_model = 128
    state = nn.functional.layer_norm(torch.randn(4, 128, d_model, dtype=D64), (d_model,))  # 512 tokens
    hop = MixingHop(d_model).double()
    with torch.no_grad():
        zero = site(d_model, unit_init="zeros")(state, hop)
        default = site(d_model)(state, hop)
    assert zero.hops.eq(2).all()  # p = sigmoid(1) = 0.731 at every hop: 0.731 <= 0.9 < 1.462
    two = float(default.hops.eq(2).double().mean())
    assert 0.9 < two < 1.0, two  # the seed's init: most tokens, not all, take 2 hops


@pytest.mark.parametrize("combine", ["interpolate", "accumulated"])
def test_with_both_corrections_it_is_ut(combine):
    hop, state, scale = mixed_setup(seed=3)
    ours = site(8, threshold=0.99, cap_remainder=True, freeze_halted=True, combine=combine)
    ut = UniversalTransformerACT(UTConfig(epsilon=0.01, combine=combine), d_model=8, n_layers=1).double()
    with torch.no_grad():
        ours.unit.weight.mul_(scale)
        ut.unit.linear.weight.copy_(ours.unit.weight)
        ut.unit.linear.bias.copy_(ours.unit.bias)
    a, b = ours(state, hop), ut(state, hop)
    assert len(set(a.hops.flatten().tolist())) > 2
    torch.testing.assert_close(a.output, b.output, rtol=0, atol=1e-14)
    torch.testing.assert_close(a.hops, b.hops)
    torch.testing.assert_close(a.remainder, b.remainder, rtol=0, atol=1e-14)


def test_loss_adds_tau_times_mean_remainder():
    torch.manual_seed(0)
    backbone = ProbeBackbone(ProbeBackboneConfig(n_layers=2), vocab_size=13)
    for cost, with_hops in (("remainder", False), ("hops_plus_remainder", True)):
        config = Seed000ACTConfig(time_penalty=3e-4, ponder_cost=cost)
        model = PonderModel(backbone, Seed000ACT, config, vocab_size=13)
        ids = torch.randint(0, 13, (2, 5))
        out = model(ids, labels=ids)
        sites = model.run_stack(backbone.embed(ids)).sites
        expected = sum(3e-4 * (s.remainder + (s.hops if with_hops else 0)).mean() for s in sites)
        torch.testing.assert_close(out.stats.regularizer, expected)


def test_depth_scope_is_a_clear_error():
    with pytest.raises(SpecError, match="does not support scope 'depth'") as error:
        Seed000ACT(Seed000ACTConfig(scope="depth"), d_model=4, n_layers=2)
    assert error.value.path == "halting.scope"
    spec = {"task": {"name": "binary_copy", "length": 4}, "backbone": {"name": "transformer"},
            "halting": {"name": "seed000_act", "scope": "depth"}}
    with pytest.raises(SpecError) as error:
        validate_spec(spec)
    assert error.value.path == "halting.scope"


# --------------------------------------------------------------------------- conformance


class TestSeed000ACTConformance(HaltingContract):
    """The kit on the class's conformance_config (accumulated, cap remainder)."""

    plugin = Seed000ACT


SEED_DEFAULTS = {"combine": "interpolate", "cap_remainder": False}


def test_seed_defaults_pass_every_other_contract():
    check_plugin(Seed000ACT, SEED_DEFAULTS, skip=("halting weights",))


def test_seed_defaults_break_only_the_weights_sum_by_design():
    # interpolation leaves weight prod_n (1 - w_n) on the zero start: the weights sum to < 1
    with pytest.raises(ContractError, match="halting weights sum to values in"):
        check_contract(Seed000ACT, "halting weights", SEED_DEFAULTS)
