"""The backbone contracts: construction, output shapes, active subset."""

from __future__ import annotations

import torch
from torch import Tensor, nn

from ..early_exit import computes_rows, layer_update
from ..interfaces import Block, BlockContext
from .base import VOCAB, _expect_finite, _expect_shape, _fail, _max_abs, _names, _token_ids


class BackboneChecks:
    """Contracts of backbones (mixed into `Conformance`)."""

    def _check_construction(self) -> None:
        backbone = self._backbone()
        for attribute in ("embedding", "blocks", "norm"):
            if not isinstance(getattr(backbone, attribute, None), nn.Module):
                _fail(f"`self.{attribute}` must be set to an nn.Module in __init__")
        if not isinstance(backbone.blocks, nn.ModuleList) or len(backbone.blocks) == 0:
            _fail("`self.blocks` must be a non-empty nn.ModuleList of the distinct layers")
        not_blocks = [type(b).__name__ for b in backbone.blocks if not isinstance(b, Block)]
        if not_blocks:
            _fail(f"every entry of `self.blocks` must be a ponderlab Block (got {_names(not_blocks)})")
        if backbone.uses_segments:
            size = backbone.segment_size
            if not isinstance(size, int) or size < 1:
                _fail(f"uses_segments is True but segment_size is {size!r} (a positive int is needed)")

    def _check_output_shapes(self) -> None:
        backbone = self._backbone().eval()
        width = backbone.d_model
        base = self._length(backbone)
        for length in (base, base + 3):
            ids = _token_ids(2, length, seed=length)
            with torch.no_grad():
                hidden = backbone.embed(ids)
                _expect_shape(f"embed(input_ids (2, {length}))", hidden, (2, length, width))
                if not hidden.is_floating_point():
                    _fail(f"embed returned {hidden.dtype}, expected a floating dtype")
                if not backbone.uses_segments:
                    for index, block in enumerate(backbone.blocks):
                        for n in (0, 1):
                            out = block(hidden, BlockContext(layer=index, hop=n))
                            _expect_shape(f"blocks[{index}] (hop {n})", out, (2, length, width))
                            _expect_finite(f"blocks[{index}] output", out)
                for scope in self._scopes():
                    out = self._model(seed=0, scope=scope).eval()(ids)
                    _expect_shape(f"logits ({scope} scope)", out.logits, (2, length, VOCAB))
                    _expect_finite(f"logits ({scope} scope)", out.logits)

    def _check_active_subset(self) -> None:
        """With an active mask, the core's layer update (dense, or `forward_rows` on the running
        tokens) gives the full forward's rows at active tokens and keeps the others."""
        backbone = self._backbone().eval()
        if backbone.uses_segments:
            return  # blocks need segment memory; the model-level checks cover them
        length = self._length(backbone)
        generator = torch.Generator().manual_seed(11)
        hidden = torch.randn(2, length, backbone.d_model, generator=generator)  # (B, L, D)
        active = torch.rand(2, length, generator=generator) > 0.5  # (B, L)
        active[0, 0], active[1, -1] = True, False
        nobody = torch.zeros_like(active)  # a GPU loop may queue a hop after every token halted
        for index, block in enumerate(backbone.blocks):
            with torch.no_grad():
                full = block(hidden, BlockContext(layer=index, hop=1))  # (B, L, D)
                if computes_rows(block):
                    self._check_rows(index, block, hidden, active, full)
                for mask, what in ((active, "an active mask"), (nobody, "no active token")):
                    try:
                        update = layer_update(block, hidden, hidden, BlockContext(layer=index, hop=1, active=mask))
                    except Exception as error:  # noqa: BLE001 - any failure is the finding
                        _fail(f"blocks[{index}] fails with {what}: {type(error).__name__}: {error}")
                    _expect_shape(f"blocks[{index}] with {what}", update, tuple(hidden.shape))
                    gap = _max_abs(full[mask] - update[mask])  # 0.0 where no token is active
                    if gap > 1e-5 * max(1.0, _max_abs(full)):
                        _fail(f"blocks[{index}]: the output for active tokens changes by {gap:.2e} "
                              "when an active mask is given")
                    if not torch.equal(update[~mask], hidden[~mask]):
                        _fail(f"blocks[{index}]: the rows of inactive tokens change with {what}")

    @staticmethod
    def _check_rows(index: int, block: Block, hidden: Tensor, active: Tensor, full: Tensor) -> None:
        """forward_rows gives the rows of `full` (the forward), for a subset and for every token."""
        flat = hidden.reshape(-1, hidden.shape[-1])  # (B*L, D)
        full = full.reshape(flat.shape)
        for rows in (active.reshape(-1).nonzero().squeeze(1), torch.arange(len(flat))):
            try:
                packed = block.forward_rows(hidden, rows, flat.index_select(0, rows),
                                            BlockContext(layer=index, hop=1))
            except Exception as error:  # noqa: BLE001 - any failure is the finding
                _fail(f"blocks[{index}].forward_rows fails: {type(error).__name__}: {error}")
            _expect_shape(f"blocks[{index}].forward_rows for {len(rows)} rows", packed,
                          (len(rows), flat.shape[-1]))
            gap = _max_abs(packed - full.index_select(0, rows))
            if gap > 1e-5 * max(1.0, _max_abs(full)):
                _fail(f"blocks[{index}].forward_rows differs from forward at those rows by "
                      f"{gap:.2e} ({len(rows)} of {len(flat)} rows)")
