"""ARMT writes memory from the memory tokens at the END of a segment, which see the whole segment.

Written from the first positions instead, memory would miss every later token of the segment;
changing a segment's LAST token (seen only by the memory tokens after it) shows the difference.
"""

from __future__ import annotations

import pytest
import torch

import ponderlab

VOCAB, MEMORY, SEGMENT = 11, 3, 4


def armt_model() -> torch.nn.Module:
    """Two layers, 3 memory tokens, segments of 4; W_v given values (it starts at zero, storing nothing)."""
    backbone = {"name": "armt", "d_model": 16, "n_layers": 2, "memory_size": MEMORY, "segment_size": SEGMENT}
    model = ponderlab.build_model(backbone=backbone, halting={"name": "none"}, vocab_size=VOCAB, seed=0)
    generator = torch.Generator().manual_seed(1)
    for memory in model.backbone.memories:
        torch.nn.init.normal_(memory.value.weight, std=0.3, generator=generator)
    return model.eval()


def test_changing_the_last_token_of_a_segment_changes_the_next_segments_memory():
    model = armt_model()
    ids = torch.randint(0, VOCAB, (2, 2 * SEGMENT), generator=torch.Generator().manual_seed(2))
    changed = ids.clone()
    changed[:, SEGMENT - 1] = (changed[:, SEGMENT - 1] + 1) % VOCAB  # last token of segment 1
    with torch.no_grad():
        before, after = model(ids).logits, model(changed).logits
    torch.testing.assert_close(before[:, : SEGMENT - 1], after[:, : SEGMENT - 1])  # causal
    # Segment 2 sees segment 1 only through memory: its logits move with the last token.
    least_moved = float((before[:, SEGMENT:] - after[:, SEGMENT:]).abs().amax(-1).min())
    assert least_moved > 1e-4, f"a segment-2 position's logits moved by only {least_moved}"


@pytest.mark.parametrize("layer", [0, 1])
def test_memory_is_written_from_the_memory_token_positions(layer):
    """The write's input (what the key projection receives) is the layer's output at the last
    `memory_size` positions of the wrapped segment, not at its first positions."""
    model = armt_model()
    memory, block = model.backbone.memories[layer], model.backbone.blocks[layer]
    written, outputs = [], []
    memory.key.register_forward_pre_hook(lambda module, args: written.append(args[0].detach()))
    block.register_forward_hook(lambda module, args, out: outputs.append(out.detach()))
    with torch.no_grad():
        model(torch.randint(0, VOCAB, (2, 2 * SEGMENT), generator=torch.Generator().manual_seed(3)))
    assert len(written) == len(outputs) == 2  # one write per segment (one hop: the block's output)
    for segment_input, segment_output in zip(written, outputs, strict=True):
        assert segment_output.shape[1] == SEGMENT + MEMORY
        torch.testing.assert_close(segment_input, segment_output[:, -MEMORY:])
        assert not torch.allclose(segment_input, segment_output[:, :MEMORY])
