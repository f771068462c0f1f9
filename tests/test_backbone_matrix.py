"""Every registered backbone with every registered halting strategy, on tiny configs.

The matrix is built from the registry at collection time, so backbones and
strategies added later are covered automatically. Each (backbone, strategy) pair
runs once, in one of the strategy's `supported_scopes`, rotated so that every
backbone meets every scope it can; memory backbones (`uses_segments`) also run
every supported scope of the strategies in FULL_SCOPE_HALTINGS (halting weights
and per-hop states cross segment boundaries there). Each case: forward, backward,
two optimizer steps, causality, and a checkpoint round trip that must reproduce
the next step.
"""

from __future__ import annotations

import pytest
import torch

import ponderlab
from ponderlab.core.checkpoint import load_checkpoint, save_checkpoint
from ponderlab.core.errors import SpecError
from ponderlab.core.registry import get_registry

VOCAB = 11
BATCH, LENGTH = 2, 8
#: Small values for options a backbone may have (applied where its config has the field).
SMALL = {"d_model": 16, "n_layers": 2, "segment_size": 4, "memory_size": 2, "d_mem": 4, "d_state": 4}
#: Small values for halting options (applied where the config has the field, scopes permitting).
SMALL_HALTING = {"max_hops": 3, "steps": 2}
SCOPES = ("layer", "model", "depth")
FULL_SCOPE_HALTINGS = ("graves", "pondernet")


def _fields(kind: str, name: str) -> dict:
    return get_registry().get(kind, name).cls.config_class.model_fields


def _cases() -> list:
    registry = get_registry()
    backbones = registry.names("backbone")
    haltings = registry.names("halting")
    cases = []
    for i, backbone in enumerate(backbones):
        segments = registry.get("backbone", backbone).cls.uses_segments
        for j, halting in enumerate(haltings):
            scopes = [s for s in SCOPES if s in registry.get("halting", halting).cls.supported_scopes]
            full = segments and halting in FULL_SCOPE_HALTINGS
            chosen = scopes if full else [scopes[(i + j) % len(scopes)]]
            cases += [pytest.param(backbone, halting, s, id=f"{backbone}-{halting}-{s}") for s in chosen]
    return cases


def backbone_options(name: str, n_layers: int) -> dict:
    fields = _fields("backbone", name)
    options = {key: value for key, value in SMALL.items() if key in fields}
    if "n_layers" in fields:
        options["n_layers"] = n_layers
    if "n_heads" in fields:
        options["n_heads"] = 2
    return {"name": name, **options}


def halting_options(name: str, scope: str) -> dict:
    options = {"name": name, "scope": scope}
    if scope != "depth":  # the cap is the number of layers there
        options.update({k: v for k, v in SMALL_HALTING.items() if k in _fields("halting", name)})
    return options


def build(backbone: str, halting: str, scope: str, seed: int):
    """The tiny model; a strategy that refuses two layers in this scope (SpecError) gets one."""
    try:
        return ponderlab.build_model(
            backbone=backbone_options(backbone, 2), halting=halting_options(halting, scope), vocab_size=VOCAB, seed=seed
        )
    except SpecError:
        return ponderlab.build_model(
            backbone=backbone_options(backbone, 1), halting=halting_options(halting, scope), vocab_size=VOCAB, seed=seed
        )


def build_or_refused(backbone: str, halting: str, scope: str, seed: int):
    """The model, or None where a routing strategy refuses a backbone without routed token
    mixing (`forward_routed`): that refusal must be a SpecError naming backbone.name."""
    try:
        return build(backbone, halting, scope, seed)
    except SpecError as error:
        assert error.path == "backbone.name" and "forward_routed" in str(error), error
        return None


def train_step(model, optimizer, batch, seed):
    torch.manual_seed(seed)  # strategies that sample draw the same numbers in every replay
    out = model(batch, labels=batch)
    optimizer.zero_grad(set_to_none=True)
    out.loss.backward()
    optimizer.step()
    return out


@pytest.mark.parametrize(("backbone", "halting", "scope"), _cases())
def test_backbone_halting_matrix(backbone, halting, scope, tmp_path):
    model = build_or_refused(backbone, halting, scope, seed=0)
    if model is None:
        return
    model.train()
    optimizer = torch.optim.AdamW(model.parameters(), lr=1e-2)
    batch = torch.randint(0, VOCAB, (BATCH, LENGTH), generator=torch.Generator().manual_seed(1))

    # forward + backward + optimizer step 1, then a checkpoint, then step 2
    before = [p.detach().clone() for p in model.parameters()]
    torch.manual_seed(11)
    out = model(batch, labels=batch)
    assert out.logits.shape == (BATCH, LENGTH, VOCAB)
    assert out.stats.hops.shape == (BATCH, LENGTH) and bool((out.stats.hops >= 1).all())
    assert torch.isfinite(out.loss)
    optimizer.zero_grad(set_to_none=True)
    out.loss.backward()
    grads = [p.grad for p in model.backbone.blocks.parameters() if p.grad is not None]
    assert grads and all(torch.isfinite(g).all() for g in grads)
    assert any(g.abs().sum() > 0 for g in grads), "no gradient reached the backbone's blocks"
    optimizer.step()
    path = tmp_path / "step_00000001.pt"
    save_checkpoint({"model": model.state_dict(), "optimizer": optimizer.state_dict(), "step": 1}, path)
    last = train_step(model, optimizer, batch, seed=12)
    assert torch.isfinite(last.loss)
    assert any(not torch.equal(a, b) for a, b in zip(before, model.parameters(), strict=True))

    # checkpoint round trip: a fresh model restored from step 1 takes the same step 2
    restored = build(backbone, halting, scope, seed=5).train()
    state = load_checkpoint(path)
    restored.load_state_dict(state["model"])
    restored_optimizer = torch.optim.AdamW(restored.parameters(), lr=1e-2)
    restored_optimizer.load_state_dict(state["optimizer"])
    replay = train_step(restored, restored_optimizer, batch, seed=12)
    torch.testing.assert_close(replay.loss, last.loss)
    for (name, a), b in zip(model.named_parameters(), restored.parameters(), strict=True):
        torch.testing.assert_close(a, b, msg=f"{name} differs after restoring the checkpoint")

    # causality (eval mode): changing token p leaves every earlier position unchanged
    model.eval()
    position = LENGTH - 3
    changed = batch.clone()
    changed[:, position] = (changed[:, position] + 1) % VOCAB
    with torch.no_grad():
        torch.manual_seed(13)
        a = model(batch).logits
        torch.manual_seed(13)
        b = model(changed).logits
    torch.testing.assert_close(a[:, :position], b[:, :position], msg="output depends on a later token")


def test_matrix_covers_every_backbone_strategy_pair_and_every_scope():
    registry = get_registry()
    cases = {tuple(case.values) for case in _cases()}
    pairs = {(backbone, halting) for backbone, halting, _ in cases}
    assert pairs == {(b, h) for b in registry.names("backbone") for h in registry.names("halting")}
    for halting in registry.names("halting"):
        supported = set(registry.get("halting", halting).cls.supported_scopes) & set(SCOPES)
        assert {scope for _, h, scope in cases if h == halting} == supported, halting


@pytest.mark.parametrize(("backbone", "halting", "scope"), _cases())
def test_backbone_halting_matrix_under_bf16_autocast(backbone, halting, scope):
    """Mixed precision as the trainer uses it on a GPU (here CPU autocast): finite loss,
    gradients and evaluation logits, with the early-exit paths mixing bf16 and float32."""
    model = build_or_refused(backbone, halting, scope, seed=0)
    if model is None:
        return
    batch = torch.randint(0, VOCAB, (BATCH, LENGTH), generator=torch.Generator().manual_seed(1))
    torch.manual_seed(11)
    with torch.autocast("cpu", dtype=torch.bfloat16):
        out = model.train()(batch, labels=batch)
    out.loss.backward()
    assert torch.isfinite(out.loss)
    assert all(torch.isfinite(p.grad).all() for p in model.parameters() if p.grad is not None)
    with torch.no_grad(), torch.autocast("cpu", dtype=torch.bfloat16):
        logits = model.eval()(batch).logits
    assert logits.shape == (BATCH, LENGTH, VOCAB) and bool(torch.isfinite(logits).all())


#: Backbones that compute part of their layer in float32 whatever the model's dtype
#: (Mamba keeps A = -exp(A_log) in float32, as the reference implementation does).
FLOAT32_INSIDE = ("mamba",)
#: Strategies that draw random numbers (PonderNet samples the hop whose output it returns):
#: their GPU run is checked for finiteness, not parity.
SAMPLING_HALTINGS = ("random", "pondernet")


@pytest.mark.gpu
@pytest.mark.parametrize(("backbone", "halting", "scope"), _cases())
def test_backbone_halting_matrix_on_gpu_matches_cpu(backbone, halting, scope):
    """The same float64 model on CUDA and on the CPU: equal logits, hops, loss and gradients
    (training), and equal logits and hops in evaluation, where early exit computes subsets."""
    if build_or_refused(backbone, halting, scope, seed=0) is None:
        return
    cpu = build(backbone, halting, scope, seed=0).double()
    gpu = build(backbone, halting, scope, seed=0).double().cuda()
    batch = torch.randint(0, VOCAB, (BATCH, LENGTH), generator=torch.Generator().manual_seed(1))
    outputs = [model.train()(ids, labels=ids) for model, ids in ((cpu, batch), (gpu, batch.cuda()))]
    for out, model in zip(outputs, (cpu, gpu), strict=True):
        # The model's loss is cross-entropy in float32 (for bf16 training); differentiate a
        # float64 objective instead so the gradients can be compared at float64 precision.
        targets = batch.to(out.logits.device).flatten()
        objective = torch.nn.functional.cross_entropy(out.logits.flatten(0, 1), targets) + out.stats.regularizer
        objective.backward()
        assert torch.isfinite(out.loss) and all(torch.isfinite(p.grad).all() for p in model.parameters()
                                                if p.grad is not None)
    if halting in SAMPLING_HALTINGS:
        return
    close = {"rtol": 1e-5, "atol": 1e-6} if backbone in FLOAT32_INSIDE else {}
    a, b = outputs
    torch.testing.assert_close(b.logits.cpu(), a.logits, **close)
    torch.testing.assert_close(b.stats.hops.cpu(), a.stats.hops)
    torch.testing.assert_close(b.loss.cpu(), a.loss, rtol=1e-5, atol=1e-6)  # float32 cross-entropy
    for (name, p), q in zip(cpu.named_parameters(), gpu.parameters(), strict=True):
        assert (p.grad is None) == (q.grad is None), name
        if p.grad is not None:
            torch.testing.assert_close(q.grad.cpu(), p.grad, msg=name, **close)
    with torch.no_grad():
        a, b = cpu.eval()(batch), gpu.eval()(batch.cuda())
    torch.testing.assert_close(b.logits.cpu(), a.logits, **close)
    torch.testing.assert_close(b.stats.hops.cpu(), a.stats.hops)
