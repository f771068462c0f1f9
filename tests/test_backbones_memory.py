"""RMT and ARMT: segment recurrence, memory read/write, truncated BPTT, no leaks under ACT."""

from __future__ import annotations

import math

import pytest
import torch

import ponderlab
from ponderlab.core.interfaces import PonderOutput
from ponderlab.core.segments import _concat_sites, run_segments, segment_bounds
from ponderlab.plugins.backbones.armt import VARIANTS, ARMTBackbone, AssociativeMemory, dpfp

VOCAB = 11


def build(name, halting=None, seed=0, **options):
    backbone = {"name": name, "d_model": 16, "n_layers": 2, "memory_size": 3, "segment_size": 4, **options}
    return ponderlab.build_model(backbone=backbone, halting=halting or {"name": "none"}, vocab_size=VOCAB, seed=seed)


def enable_armt_values(model, std=0.3):
    """W_v starts at zero (nothing is stored at init); give it values so memory carries information."""
    torch.manual_seed(1)
    for memory in model.backbone.memories:
        torch.nn.init.normal_(memory.value.weight, std=std)


# --------------------------------------------------------------------------- core/segments.py


def test_segment_bounds():
    assert segment_bounds(10, 4) == [(0, 4), (4, 8), (8, 10)]
    assert segment_bounds(8, 4) == [(0, 4), (4, 8)]
    assert segment_bounds(5, None) == [(0, 5)]


def test_concat_sites_pads_shorter_hop_lists_with_zero_probability():
    def site(length, n_hops, value, aux):
        states = [torch.full((1, length, 2), value + n) for n in range(n_hops)]
        probs = torch.full((1, length, n_hops), 1.0 / n_hops)
        zeros = torch.zeros(1, length)
        return PonderOutput(states[-1], zeros + n_hops, zeros, zeros, states, probs, torch.tensor(aux))

    (joined,) = _concat_sites([[site(3, 2, 0.0, 1.0)], [site(1, 3, 10.0, 5.0)]])
    assert len(joined.hop_states) == 3 and joined.hop_probs.shape == (1, 4, 3)
    torch.testing.assert_close(joined.hop_probs.sum(-1), torch.ones(1, 4))
    torch.testing.assert_close(joined.hop_probs[0, :3, 2], torch.zeros(3))  # padded hop
    torch.testing.assert_close(joined.hop_states[2][0, :3], torch.full((3, 2), 1.0))  # = last real state
    torch.testing.assert_close(joined.aux_loss, torch.tensor((1.0 * 3 + 5.0 * 1) / 4))  # token-weighted


# --------------------------------------------------------------------------- RMT


def test_rmt_wraps_each_segment_with_read_and_write_memory():
    model = build("rmt")
    backbone = model.backbone
    memory = backbone.init_memory(2, torch.device("cpu"), torch.float32)
    segment = torch.randn(2, 4, 16)
    wrapped = backbone.wrap_segment(segment, memory)
    assert wrapped.shape == (2, 3 + 4 + 3, 16)
    torch.testing.assert_close(wrapped[:, :3], memory)
    torch.testing.assert_close(wrapped[:, 7:], memory)
    assert backbone.token_mask(memory, 4, torch.device("cpu")).tolist() == [False] * 3 + [True] * 4 + [False] * 3
    tokens, new_memory = backbone.unwrap_segment(wrapped, memory, 4)
    torch.testing.assert_close(tokens, segment)
    torch.testing.assert_close(new_memory, backbone.norm(memory))


def assert_memory_carries_token_forward(model, x, vocab=VOCAB):
    """Changing token 1 (first segment of 4) leaves logit 0 alone and reaches the later segments."""
    y = x.clone()
    y[:, 1] = (y[:, 1] + 1) % vocab
    with torch.no_grad():
        a, b = model(x).logits, model(y).logits
    torch.testing.assert_close(a[:, :1], b[:, :1])
    assert not torch.allclose(a[:, 4:], b[:, 4:], atol=1e-6)  # later segments see it through memory


def test_rmt_memory_carries_information_forward_only():
    assert_memory_carries_token_forward(build("rmt").eval(), torch.randint(0, VOCAB, (2, 12)))


def segment_gradients(model, length=12, segment=4):
    """Gradient norm reaching each segment's input from a loss on the last segment only."""
    torch.manual_seed(0)
    hidden = torch.randn(2, length, model.backbone.d_model, requires_grad=True)
    stack = run_segments(model, hidden)
    stack.hidden[:, -segment:].pow(2).sum().backward()
    return [float(hidden.grad[:, s : s + segment].abs().sum()) for s in range(0, length, segment)]


@pytest.mark.parametrize("name", ["rmt", "armt"])
@pytest.mark.parametrize("depth", [None, 1, 2])
def test_truncated_bptt_really_truncates(name, depth):
    model = build(name, bptt_depth=depth)
    if name == "armt":
        enable_armt_values(model)
    grads = segment_gradients(model)  # 3 segments
    reached = 3 if depth is None else depth
    for index, norm in enumerate(grads):
        if index >= 3 - reached:
            assert norm > 0, f"segment {index} should get gradient (depth {depth}): {grads}"
        else:
            assert norm == 0.0, f"segment {index} is beyond the last {depth} segments: {grads}"


def test_memory_and_segment_sizes_are_configurable():
    model = build("rmt", memory_size=5, segment_size=3)
    assert model.backbone.initial_memory.shape == (5, 16) and model.backbone.segment_size == 3
    model = build("armt", memory_size=2, segment_size=6, d_mem=4)
    assert model.backbone.memory_tokens.shape == (2, 16)
    assert model.backbone.memories[0].d_key == 2 * 3 * 4
    out = model(torch.randint(0, VOCAB, (2, 13)))
    assert out.logits.shape == (2, 13, VOCAB) and out.stats.hops.shape == (2, 13)


# --------------------------------------------------------------------------- ARMT formulas


def literal_dpfp(x: list[float], nu: int, normalize: bool = True) -> list[float]:
    doubled = [max(v, 0.0) for v in x] + [max(-v, 0.0) for v in x]
    n = len(doubled)
    features = [doubled[i] * doubled[(i - j) % n] for j in range(1, nu + 1) for i in range(n)]
    if not normalize:
        return features
    norm = math.sqrt(sum(f * f for f in features)) or 1.0
    return [f / max(norm, 1e-12) for f in features]


def literal_dpfp_head(projection, heads, head, nu, normalize):
    size = len(projection) // heads
    return literal_dpfp(projection[head * size : (head + 1) * size], nu, normalize)


def literal_write(memory: AssociativeMemory, written, A, z):
    """The ARMT write formulas, one batch row, head and memory token at a time, in python floats.

    A (B, H, dk, dv) and z (B, H, dk) as lists; None before the first write (v_old 0, gamma 1).
    """
    eps, nu, heads = memory.eps, memory.nu, memory.heads
    Wk, Wv = memory.key.weight.tolist(), memory.value.weight.tolist()
    Wb, bb = memory.beta.weight.tolist(), memory.beta.bias.tolist()
    first = A is None
    dk = memory.d_key // heads
    dv = len(Wv) // heads
    new_A, new_z = [], []
    for b, rows in enumerate(written.tolist()):
        new_A.append([]), new_z.append([])
        for h in range(heads):
            A_bh = [[0.0] * dv for _ in range(dk)] if first else A[b][h]
            z_bh = [0.0] * dk if first else z[b][h]
            delta_A = [[0.0] * dv for _ in range(dk)]
            delta_z = [0.0] * dk
            for m in rows:
                projection = [sum(w * x for w, x in zip(row, m, strict=True)) for row in Wk]
                k = literal_dpfp_head(projection, heads, h, nu, memory.normalize)
                v = [sum(w * x for w, x in zip(row, m, strict=True)) for row in Wv][h * dv : (h + 1) * dv]
                beta = 1.0 / (1.0 + math.exp(-(sum(w * x for w, x in zip(Wb[h], m, strict=True)) + bb[h])))
                kz = sum(ka * za for ka, za in zip(k, z_bh, strict=True))
                if first:
                    v_old, gamma = [0.0] * dv, 1.0
                else:
                    v_old = [sum(k[a] * A_bh[a][c] for a in range(dk)) / (kz + eps) for c in range(dv)]
                    norm = sum(ka * ka for ka in k) + memory.gamma_delta
                    gamma = min(max(1.0 - (kz + eps) / norm, 0.0), 1.0)
                for a in range(dk):
                    for c in range(dv):
                        delta_A[a][c] += beta * k[a] * (v[c] - v_old[c])
                    delta_z[a] += gamma * k[a]
            new_A[b].append([[A_bh[a][c] + delta_A[a][c] for c in range(dv)] for a in range(dk)])
            new_z[b].append([z_bh[a] + delta_z[a] for a in range(dk)])
    return new_A, new_z


def literal_read(memory: AssociativeMemory, hidden, A, z):
    """h + (q A) / (q . z + eps) per head, the heads' outputs side by side."""
    Wq, heads = memory.query.weight.tolist(), memory.heads
    out = []
    for b, rows in enumerate(hidden.tolist()):
        out.append([])
        for x in rows:
            projection = [sum(w * v for w, v in zip(row, x, strict=True)) for row in Wq]
            retrieved = []
            for h in range(heads):
                q = literal_dpfp_head(projection, heads, h, memory.nu, memory.normalize)
                qz = sum(qa * za for qa, za in zip(q, z[b][h], strict=True))
                dv = len(A[b][h][0])
                retrieved += [sum(q[a] * A[b][h][a][c] for a in range(len(q))) / (qz + memory.eps) for c in range(dv)]
            out[-1].append([xv + rv for xv, rv in zip(x, retrieved, strict=True)])
    return torch.tensor(out, dtype=torch.float64)


def test_dpfp_matches_literal_definition():
    x = torch.randn(3, 4, dtype=torch.float64)
    expected = torch.tensor([literal_dpfp(row, 3) for row in x.tolist()], dtype=torch.float64)
    torch.testing.assert_close(dpfp(x, 3), expected)
    unnormalised = torch.tensor([literal_dpfp(row, 3, normalize=False) for row in x.tolist()], dtype=torch.float64)
    torch.testing.assert_close(dpfp(x, 3, normalize=False), unnormalised)
    assert dpfp(x, 2).shape == (3, 2 * 2 * 4)


@pytest.mark.parametrize("variant, heads", [("paper", 1), ("seed000", 1), ("seed000", 2)])
def test_associative_write_and_read_match_the_literal_formulas(variant, heads):
    torch.manual_seed(0)
    normalize, gamma_delta = VARIANTS[variant]
    memory = AssociativeMemory(d_model=6, d_mem=2 * heads, nu=3, eps=1e-5, heads=heads, normalize=normalize,
                               gamma_delta=gamma_delta).double()
    for linear in (memory.query, memory.key, memory.value, memory.beta):
        torch.nn.init.normal_(linear.weight, std=0.7)
    torch.nn.init.normal_(memory.beta.bias)
    written = torch.randn(2, 3, 6, dtype=torch.float64)  # B=2, M=3
    # First segment: nothing stored (v_old = 0, gamma = 1).
    A1, z1 = memory.write(written, None)
    expected_A1, expected_z1 = literal_write(memory, written, None, None)
    torch.testing.assert_close(A1, torch.tensor(expected_A1, dtype=torch.float64))
    torch.testing.assert_close(z1, torch.tensor(expected_z1, dtype=torch.float64))
    # Second segment: delta rule against the stored values, gamma from the normaliser.
    written2 = torch.randn(2, 3, 6, dtype=torch.float64)
    A2, z2 = memory.write(written2, (A1, z1))
    expected_A2, expected_z2 = literal_write(memory, written2, A1.tolist(), z1.tolist())
    torch.testing.assert_close(A2, torch.tensor(expected_A2, dtype=torch.float64))
    torch.testing.assert_close(z2, torch.tensor(expected_z2, dtype=torch.float64))
    gammas = (z2 - z1).abs().sum()
    assert gammas > 0  # some key is new (gamma > 0)
    # Read: h + (q A) / (q . z + eps).
    hidden = torch.randn(2, 4, 6, dtype=torch.float64)
    torch.testing.assert_close(memory.read(hidden, (A2, z2)), literal_read(memory, hidden, A2.tolist(), z2.tolist()))
    torch.testing.assert_close(memory.read(hidden, None), hidden)


def test_gamma_carries_no_gradient():
    memory = AssociativeMemory(d_model=4, d_mem=2, nu=3, eps=1e-5).double()
    torch.nn.init.normal_(memory.value.weight)
    A, z = memory.write(torch.randn(1, 2, 4, dtype=torch.float64), None)
    z = z.detach().requires_grad_()
    _, z2 = memory.write(torch.randn(1, 2, 4, dtype=torch.float64), (A.detach(), z))
    (grad,) = torch.autograd.grad(z2.sum(), z)
    torch.testing.assert_close(grad, torch.ones_like(grad))  # only the identity path, not through gamma


# --------------------------------------------------------------------------- ARMT in the model


class CountingARMT(ARMTBackbone):
    """ARMT that counts its memory hook calls per (segment, layer)."""

    def init_memory(self, batch_size, device, dtype):
        self.reads, self.writes = [], []
        return super().init_memory(batch_size, device, dtype)

    def read_memory(self, layer, hidden, memory):
        self.reads.append(layer)
        return super().read_memory(layer, hidden, memory)

    def write_memory(self, layer, hidden, memory):
        self.writes.append(layer)
        return super().write_memory(layer, hidden, memory)


class LeakyARMT(ARMTBackbone):
    """A deliberately wrong ARMT that writes memory on every hop (what the reference code did)."""

    def init_memory(self, batch_size, device, dtype):
        self.live = list(super().init_memory(batch_size, device, dtype))
        return tuple(self.live)

    def read_memory(self, layer, hidden, memory):
        out = self.memories[layer].read(hidden, self.live[layer])
        self.live[layer] = self.memories[layer].write(hidden[:, -self.memory_size :], self.live[layer])
        return out


def swap_backbone(model, cls):
    backbone = model.backbone
    backbone.__class__ = cls
    return model


@pytest.mark.parametrize("scope", ["layer", "model"])
def test_armt_writes_once_per_layer_per_segment_and_reads_every_hop(scope):
    model = swap_backbone(build("armt", {"name": "constant", "hops": 3, "scope": scope}), CountingARMT)
    model(torch.randint(0, VOCAB, (2, 12)))  # 3 segments, 2 layers, 3 hops each
    backbone = model.backbone
    assert sorted(backbone.writes) == [0, 0, 0, 1, 1, 1]
    assert len(backbone.reads) == 3 * 2 * 3


def leaks_future_tokens(model, position=6, length=8):
    """True if changing token `position` changes any logit before it (same segment of 4..8)."""
    model.eval()
    x = torch.randint(0, VOCAB, (2, length))
    y = x.clone()
    y[:, position] = (y[:, position] + 1) % VOCAB
    with torch.no_grad():
        a, b = model(x).logits, model(y).logits
    return not torch.allclose(a[:, :position], b[:, :position], atol=1e-6)


@pytest.mark.parametrize("scope", ["layer", "model"])
def test_act_around_armt_layers_never_leaks_targets_through_memory(scope):
    halting = {"name": "constant", "hops": 3, "scope": scope}
    model = build("armt", halting)
    enable_armt_values(model)
    assert not leaks_future_tokens(model)
    graves = build("armt", {"name": "graves", "max_hops": 3, "scope": scope})
    enable_armt_values(graves)
    assert not leaks_future_tokens(graves)
    # The check is sensitive: writing on every hop (the reference bug) does leak.
    leaky = swap_backbone(build("armt", halting), LeakyARMT)
    enable_armt_values(leaky)
    assert leaks_future_tokens(leaky)


def test_armt_memory_carries_information_across_segments():
    model = build("armt").eval()
    enable_armt_values(model)
    assert_memory_carries_token_forward(model, torch.randint(0, VOCAB, (2, 12)))


class RecordingARMT(ARMTBackbone):
    """ARMT that records what each memory write received, per segment and layer."""

    def init_memory(self, batch_size, device, dtype):
        self.written = []
        return super().init_memory(batch_size, device, dtype)

    def write_memory(self, layer, hidden, memory):
        self.written.append((layer, hidden.detach().clone()))
        return super().write_memory(layer, hidden, memory)


def record_model_scope(halting):
    """One segment of ARMT under a model-scope site: block outputs per hop and the site's result."""
    model = swap_backbone(build("armt", halting, segment_size=8), RecordingARMT).eval()
    for site in model.sites:  # token-dependent halting
        for module in site.modules():
            if isinstance(module, torch.nn.Linear) and module.out_features == 1:
                torch.nn.init.normal_(module.weight, std=30.0, generator=torch.Generator().manual_seed(1))
    block_outputs = {index: [] for index in range(2)}
    apply_block = model._apply_block  # each layer application, as the core computes it

    def recording(index, *args):
        out = apply_block(index, *args)
        block_outputs[index].append(out.detach())
        return out

    model._apply_block = recording
    results = []
    site = model.sites[0]
    site.register_forward_hook(lambda m, args, out: results.append(out))
    with torch.no_grad():
        model(torch.randint(0, VOCAB, (2, 8), generator=torch.Generator().manual_seed(2)))
    return model.backbone.written, block_outputs, results[0]


def test_model_scope_memory_writes_use_the_act_combined_layer_outputs():
    """act.md 3: written once, after the loop, from sum_n p_n s_n of that layer (not the last hop)."""
    written, outputs, result = record_model_scope({"name": "graves", "scope": "model", "max_hops": 3,
                                                   "halting_bias_init": 0.0})
    assert len(set(result.hops.flatten().tolist())) > 1  # tokens halted at different hops
    assert [layer for layer, _ in written] == [0, 1]
    for layer, hidden in written:
        expected = sum(w.unsqueeze(-1) * s for w, s in zip(result.hop_weights, outputs[layer], strict=True))
        torch.testing.assert_close(hidden, expected)
    torch.testing.assert_close(written[1][1], result.output)  # last layer: the site's own output
    assert not torch.allclose(written[0][1], outputs[0][-1])  # differs from the last hop's output


def test_model_scope_memory_writes_without_weights_take_each_tokens_last_hop():
    written, outputs, result = record_model_scope({"name": "random", "scope": "model", "max_hops": 3,
                                                   "mean_hops": 1.7})
    hops = result.hops.long()  # (B, Lw)
    assert len(set(hops.flatten().tolist())) > 1
    for layer, hidden in written:
        stacked = torch.stack(outputs[layer])  # (N, B, Lw, D): raw block outputs per hop
        index = (hops - 1)[None, ..., None].expand(1, *hidden.shape)
        torch.testing.assert_close(hidden, stacked.gather(0, index)[0])
