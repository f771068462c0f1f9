"""Speculative hops (the GPU mode of `RunningTokens`) give exactly the results of exact hops.

The speculative mode queues the next hop before it knows whether any token still
runs and drops that hop afterwards if none did. On the CPU it is off by default;
`hop_policy("speculative")` turns it on here so both paths can be compared.
"""

from __future__ import annotations

import pytest
import torch
from test_halting_graves_threshold import graves_site, positionwise_hop, threshold_site

import ponderlab
from ponderlab.core.early_exit import hop_policy, speculation_mode, where_rows
from ponderlab.core.halting import RunningTokens
from ponderlab.core.registry import get_registry
from ponderlab.plugins.halting.reference import ScriptedHop, script_linear

D64 = torch.float64
VOCAB = 7


def run_site(site, state, hop, policy):
    with hop_policy(policy):
        return site(state, hop)


def test_policy_defaults_to_exact_on_the_cpu_and_is_validated():
    state = torch.zeros(1, 2, 3)
    assert speculation_mode(state) == "exact" and not RunningTokens(state).speculative
    with hop_policy("speculative"):
        assert speculation_mode(state) == "speculative" and RunningTokens(state).speculative
        assert not RunningTokens(state).adaptive
    with hop_policy("exact"):
        assert speculation_mode(state) == "exact"
    with pytest.raises(ValueError, match="unknown hop policy 'fast'"), hop_policy("fast"):
        pass


def test_record_and_keep_hop_in_both_modes():
    state = torch.zeros(1, 3, 2)
    exact = RunningTokens(state)
    assert exact.record(torch.tensor([[True, True, True]])) and exact.active is None  # all run: no mask
    assert exact.record(torch.tensor([[True, False, True]])) and exact.active is not None
    assert not exact.speculated  # the count was read at once
    assert not exact.record(torch.tensor([[False, False, False]]))  # stop now
    with hop_policy("speculative"):
        speculative = RunningTokens(state)
    assert speculative.keep_hop()  # nothing recorded yet
    all_running = torch.tensor([[True, True, True]])
    assert speculative.record(all_running) and speculative.active is all_running  # always the mask
    assert speculative.speculated  # the answer is read by the next keep_hop
    assert speculative.keep_hop() and not speculative.speculated
    assert speculative.record(torch.tensor([[False, False, False]]))  # not read yet: go on ...
    assert not speculative.keep_hop()  # ... and drop the hop queued after it


def test_speculative_loop_drops_the_hop_queued_after_every_token_halted():
    site = graves_site()
    script_linear(site.units[0].linear, control_index=3)
    controls = torch.full((2, 3, 3), 5.0, dtype=D64)  # h = 0.993 >= 0.9 at the first hop
    outputs = {}
    for policy in ("exact", "speculative"):
        hop = ScriptedHop(controls)
        outputs[policy] = (run_site(site, hop.initial_state(), hop, policy), hop.calls)
    (exact, exact_calls), (speculative, speculative_calls) = outputs["exact"], outputs["speculative"]
    assert len(exact_calls) == 1
    assert len(speculative_calls) == 2 and not speculative_calls[1].any()  # queued with every token frozen
    assert speculative.hops.eq(1).all() and len(speculative.hop_weights) == 1
    torch.testing.assert_close(speculative.output, exact.output, rtol=0, atol=0)


def test_the_dense_loop_reads_the_running_count_only_before_the_cap(monkeypatch):
    """At the cap every token halts, so the loop stops without a host read of the running mask."""
    recorded = []
    original = RunningTokens.record

    def counting_record(self, running):
        recorded.append(running.clone())
        return original(self, running)

    monkeypatch.setattr(RunningTokens, "record", counting_record)
    site = graves_site(cap=3)
    script_linear(site.units[0].linear, control_index=3)
    hop = ScriptedHop(torch.full((2, 3, 3), -5.0, dtype=D64))  # h = 0.007: no token halts before the cap
    result = run_site(site, hop.initial_state(), hop, "exact")
    assert result.hops.eq(3).all() and len(hop.calls) == 3
    assert len(recorded) == 2 and all(running.all() for running in recorded)  # after hops 1 and 2 only
    torch.testing.assert_close(sum(result.hop_weights), torch.ones(2, 3, dtype=D64), rtol=0, atol=1e-12)


@pytest.mark.parametrize("name", ["graves", "threshold"])
def test_speculative_and_exact_loops_agree_with_gradients(name):
    generator = torch.Generator().manual_seed(4)
    site = graves_site(cap=5, epsilon=0.2) if name == "graves" else threshold_site(n_layers=5, threshold=0.8)
    for parameter in site.parameters():
        torch.nn.init.normal_(parameter, std=1.0, generator=generator)
    weights = [torch.randn(site.d_model, site.d_model, generator=generator, dtype=D64) for _ in range(5)]
    hop = positionwise_hop(weights)[0]
    results = {}
    for policy in ("exact", "speculative"):
        state = torch.randn(3, 4, site.d_model, generator=torch.Generator().manual_seed(9), dtype=D64)
        state.requires_grad_()
        out = run_site(site, state, hop, policy)
        (out.output.square().sum() + out.ponder_cost.sum()).backward()
        results[policy] = (out, state.grad)
    (exact, exact_grad), (speculative, speculative_grad) = results["exact"], results["speculative"]
    assert len(set(exact.hops.flatten().tolist())) >= 2  # tokens halt at different hops
    for field in ("output", "hops", "remainder", "ponder_cost"):
        torch.testing.assert_close(getattr(speculative, field), getattr(exact, field), rtol=0, atol=0)
    assert len(speculative.hop_weights) == len(exact.hop_weights)
    torch.testing.assert_close(speculative_grad, exact_grad, rtol=0, atol=0)


SMALL = {"d_model": 16, "n_layers": 3, "segment_size": 4, "memory_size": 2, "d_mem": 4, "d_state": 4, "n_heads": 2}
#: Strategy settings under which every token (ut, graves, threshold, pondernet) or some
#: tokens (random) stop before the cap, so speculative loops queue a hop they then drop.
EARLY_STOP = {
    "graves": {"epsilon": 0.1, "halting_bias_init": 2.5},
    "threshold": {"threshold": 0.9, "halting_bias_init": 2.5},
    "ut": {"epsilon": 0.1, "halting_bias_init": 2.5, "max_hops": 3},
    "ut-interpolate": {"epsilon": 0.1, "halting_bias_init": 2.5, "max_hops": 3, "combine": "interpolate"},
    "pondernet": {"halting_bias_init": 2.5, "max_hops": 3},
    "pondernet-most-likely": {"halting_bias_init": 2.5, "max_hops": 3, "inference": "most_likely"},
    "random": {"mean_hops": 1.5, "max_hops": 3, "distribution": "two_point"},
}


def model_cases() -> list:
    """graves on every backbone (memory backbones in every scope: their hops record
    per-layer outputs, which the model must not let be queued speculatively), and
    every looping strategy on an LSTM, a transformer (subset blocks) and ARMT."""
    cases = []
    registry = get_registry()
    for backbone in registry.names("backbone"):
        segments = registry.get("backbone", backbone).cls.uses_segments
        for scope in ("layer", "model", "depth") if segments else ("depth",):
            cases.append(pytest.param(backbone, "graves", scope, id=f"{backbone}-graves-{scope}"))
    for backbone in ("lstm", "transformer", "armt"):
        for case, scope in (("threshold", "depth"), ("ut", "model"), ("ut-interpolate", "layer"),
                            ("pondernet", "model"), ("pondernet-most-likely", "depth"), ("random", "model")):
            cases.append(pytest.param(backbone, case, scope, id=f"{backbone}-{case}-{scope}"))
    return cases


@pytest.mark.parametrize(("backbone", "case", "scope"), model_cases())
def test_models_give_the_same_results_with_speculative_hops(backbone, case, scope):
    """Equal logits, hops and (training) gradients with exact and speculative hops; PonderNet
    is compared in evaluation, where its loop stops early (training runs every hop)."""
    fields = get_registry().get("backbone", backbone).cls.config_class.model_fields
    options = {"name": backbone, **{k: v for k, v in SMALL.items() if k in fields}}
    name = case.split("-")[0]
    halting = {"name": name, "scope": scope, **EARLY_STOP[case]}
    if scope == "depth":
        halting.pop("max_hops", None)
    elif name == "graves":
        halting["max_hops"] = 3
    training = name != "pondernet"
    batch = torch.randint(0, VOCAB, (2, 12), generator=torch.Generator().manual_seed(2))
    results = {}
    for policy in ("exact", "speculative"):
        model = ponderlab.build_model(backbone=options, halting=halting, vocab_size=VOCAB, seed=0).double()
        model.train(training)
        torch.manual_seed(3)  # sampling strategies draw the same numbers under both policies
        with hop_policy(policy), torch.set_grad_enabled(training):
            out = model(batch, labels=batch)
        if training:
            out.loss.backward()
        grads = {name: p.grad for name, p in model.named_parameters() if p.grad is not None}
        results[policy] = (out, grads)
    (exact, exact_grads), (speculative, speculative_grads) = results["exact"], results["speculative"]
    assert bool((exact.stats.hops < halting.get("max_hops", 3)).all())  # every token stops before the cap
    torch.testing.assert_close(speculative.logits, exact.logits, rtol=0, atol=0)
    torch.testing.assert_close(speculative.stats.hops, exact.stats.hops, rtol=0, atol=0)
    assert speculative_grads.keys() == exact_grads.keys() and (bool(exact_grads) == training)
    for name, grad in exact_grads.items():
        torch.testing.assert_close(speculative_grads[name], grad, rtol=0, atol=0, msg=name)


def test_frozen_rows_keep_the_state_layout():
    """Speculative hops always pass the mask, so every hop freezes rows: the result must keep
    an LSTM's permuted layout (torch.where alone would transpose it, and the next LSTM hop
    would copy it back)."""
    lstm_like = torch.randn(5, 3, 4).transpose(0, 1)  # (B, L, D) view of an (L, B, D) buffer
    other = torch.randn(3, 5, 4)
    mask = torch.rand(3, 5, generator=torch.Generator().manual_seed(0)) > 0.5
    for chosen in (lstm_like, other.clone()):
        kept = where_rows(mask, chosen, other)
        assert kept.stride() == chosen.stride()
        torch.testing.assert_close(kept, torch.where(mask.unsqueeze(-1), chosen, other), rtol=0, atol=0)


@pytest.mark.gpu
def test_cuda_speculates_only_while_the_gpu_is_busy_with_the_last_hop():
    state = torch.zeros(1, 4, 8, device="cuda")
    tokens = RunningTokens(state)
    assert tokens.adaptive
    running = torch.tensor([[True, True, False, True]], device="cuda")
    busy = torch.randn(4096, 4096, device="cuda")

    def slow_hop():  # keeps the GPU busy well past the host's next few calls
        nonlocal busy
        for _ in range(50):
            busy = torch.tanh(busy @ busy)

    assert tokens.keep_hop()  # a hop was queued ...
    torch.cuda.synchronize()  # ... and the GPU has finished it: read the count at once
    assert tokens.record(running) and not tokens.speculated and tokens.active is running
    slow_hop()
    assert tokens.keep_hop()
    assert tokens.record(running) and tokens.speculated  # answer in flight, the loop goes on
    slow_hop()
    assert tokens.keep_hop()  # tokens were running: keep that hop
    assert tokens.record(torch.zeros_like(running)) and tokens.speculated
    slow_hop()
    assert not tokens.keep_hop()  # no token was running: drop the hop queued after the record
