"""Model assembly: backbone + ponder sites (by scope) + language-model head.

Scopes (see docs/architecture.md):
  layer  one ponder site per distinct layer; hop n re-applies that layer.
  model  one site around the whole stack; hop n re-applies every layer.
  depth  one site across the distinct layers; hop n applies layer n (early exit).
"""

from __future__ import annotations

from contextlib import nullcontext
from dataclasses import dataclass

import torch
import torch.nn.functional as F
from torch import Tensor, nn

from .config import HaltingConfig
from .early_exit import depth_hop, hop_policy, layer_update, where_rows
from .halting.head import ExitHead, takes_keyword
from .halting.routing import require_routed_blocks, site_mixing
from .halting.units import accumulation_dtype
from .interfaces import (
    IGNORE_INDEX,
    Backbone,
    BlockContext,
    HaltingStats,
    HaltingStrategy,
    PonderOutput,
)
from .segments import StackOutput, padding_mask, run_segments


@dataclass
class ModelOutput:
    """logits (B, L, V); stats of halting; loss = task_loss + stats.regularizer when labels given."""

    logits: Tensor
    stats: HaltingStats
    loss: Tensor | None = None
    task_loss: Tensor | None = None


def masked_mean(values: Tensor, mask: Tensor | None) -> Tensor:
    """Mean of (B, L) values over positions where mask (B, L) is True."""
    if mask is None:
        return values.mean()
    weights = mask.to(values.dtype)
    return (values * weights).sum() / weights.sum().clamp_min(1.0)


def combine_hops(states: list[Tensor], weights: list[Tensor] | None, active: list[Tensor | None]) -> Tensor:
    """One layer's ACT-combined output over the hops of a model-scope loop: (B, L, D).

    With the site's hop weights: sum_n w_n s_n, the same combination as the stack's
    output. Without (the output is each token's last state): each token's output
    from the last hop it took (halted tokens pass through later hops frozen, so
    their later rows hold another layer's state).
    """
    if weights is not None:
        return sum(weight.unsqueeze(-1).to(state.dtype) * state
                   for weight, state in zip(weights, states, strict=True))
    combined = states[0]
    for state, mask in zip(states[1:], active[1:], strict=True):
        combined = state if mask is None else where_rows(mask, state, combined)
    return combined


class PonderModel(nn.Module):
    """A causal language model whose layers ponder according to a halting strategy.

    `packed_inference` (default True): without autograd, depth scope runs on packed
    rows of running tokens where every block computes rows (`ponderlab.core.early_exit`);
    False keeps the dense hops (for comparisons).
    """

    packed_inference: bool = True
    kv_cache: dict | None = None  # keys/values of a "shared_kv" site's first hop, per layer

    def __init__(
        self,
        backbone: Backbone,
        halting_cls: type[HaltingStrategy],
        halting_config: HaltingConfig,
        *,
        vocab_size: int,
    ):
        super().__init__()
        self.backbone = backbone
        self.halting_config = halting_config
        self.scope = getattr(halting_config, "scope", "layer")
        n_layers = len(backbone.blocks)
        n_sites = n_layers if self.scope == "layer" else 1
        self.sites = nn.ModuleList(
            halting_cls(halting_config, d_model=backbone.d_model, n_layers=n_layers)
            for _ in range(n_sites)
        )
        self.head = nn.Linear(backbone.d_model, vocab_size, bias=False)
        backbone.bind_output_head(self.head)
        self.sites_take_mask = takes_keyword(halting_cls, "mask")
        self.sites_take_head = takes_keyword(halting_cls, "head")  # core/halting/head.py
        self.mixing = site_mixing(self.sites[0])  # what routed tokens read (halting.routing)
        require_routed_blocks(halting_config.name, self.mixing, backbone.blocks)

    @property
    def n_layers(self) -> int:
        return len(self.backbone.blocks)

    # ------------------------------------------------------------------ hops
    def _apply_block(
        self, index: int, state: Tensor, n: int, active: Tensor | None, memory: object
    ) -> Tensor:
        """One layer application: memory read, the block, frozen rows for inactive tokens.

        Routing sites (`mixing` other than "all") call the block's `forward_routed`, with
        the keys/values a "shared_kv" site keeps per layer in `self.kv_cache`.
        """
        inputs = self.backbone.read_memory(index, state, memory)
        context = BlockContext(layer=index, hop=n, active=active, memory=memory,
                               mixing=self.mixing, kv_cache=self.kv_cache)
        block = self.backbone.blocks[index]
        if self.mixing == "all":
            return layer_update(block, inputs, state, context)  # (B, L, D)
        routed = active if active is not None else state.new_ones(state.shape[:2], dtype=torch.bool)
        return where_rows(routed, block.forward_routed(inputs, routed, context), state)

    def _ponder(self, site: HaltingStrategy, hidden: Tensor, hop, mask: Tensor | None) -> PonderOutput:
        """Call one ponder site, with the padding mask when there is padding and it takes one,
        and with the output head (`ExitHead`) when it takes one."""
        keywords = {}
        if mask is not None and self.sites_take_mask:
            keywords["mask"] = mask
        if self.sites_take_head:
            keywords["head"] = ExitHead(self.backbone.finalize, self.head)
        return site(hidden, hop, **keywords)

    def run_stack(self, hidden: Tensor, memory: object = None, mask: Tensor | None = None) -> StackOutput:
        """Run every layer under the halting scope; write memory once per layer per segment.

        mask (B, L) bool marks real tokens of a padded batch (None: no padding).
        """
        backbone = self.backbone
        self.kv_cache = {} if self.mixing == "shared_kv" else None  # per layer, this call's
        if self.scope == "layer":
            sites = []
            for index in range(self.n_layers):

                def hop(state, n, active, _index=index, _memory=memory):
                    return self._apply_block(_index, state, n, active, _memory)

                result = self._ponder(self.sites[index], hidden, hop, mask)
                hidden = result.output
                memory = backbone.write_memory(index, hidden, memory)
                sites.append(result)
            return StackOutput(hidden, sites, memory)

        track = memory is not None  # per-layer outputs are needed only for memory writes
        site = self.sites[0]
        layer_outputs: dict[int, list[Tensor]] = {}  # per layer: its output at every hop
        hop_active: list[Tensor | None] = []
        if self.scope == "model":

            def hop(state, n, active):
                hop_active.append(active)
                for index in range(self.n_layers):
                    state = self._apply_block(index, state, n, active, memory)
                    if track:
                        layer_outputs.setdefault(index, []).append(state)
                return state

        else:  # depth: layer n runs once, at hop n

            def dense_hop(state, n, active):
                state = self._apply_block(n, state, 0, active, memory)
                if track:
                    layer_outputs[n] = [state]
                return state

            dense_only = track or backbone.uses_segments or not self.packed_inference
            hop = depth_hop(backbone.blocks, hidden, dense_hop, dense_only=dense_only)

        # Hops that record layer outputs must not be queued speculatively (see core/early_exit/policy.py).
        with hop_policy("exact") if track else nullcontext():
            result = self._ponder(site, hidden, hop, mask)
        for index in sorted(layer_outputs):
            states = layer_outputs[index]
            if self.scope == "model":
                states = [combine_hops(states, result.hop_weights, hop_active)]
            memory = backbone.write_memory(index, states[0], memory)
        return StackOutput(result.output, [result], memory)

    # ------------------------------------------------------------------ forward
    def forward(
        self, input_ids: Tensor, labels: Tensor | None = None, mask: Tensor | None = None
    ) -> ModelOutput:
        """input_ids (B, L), labels (B, L) with IGNORE_INDEX where unscored, mask (B, L) valid."""
        hidden = self.backbone.embed(input_ids)  # (B, L, D)
        padding = padding_mask(mask)  # (B, L) or None
        if self.backbone.uses_segments:
            stack = run_segments(self, hidden, padding)
        else:
            stack = self.run_stack(hidden, mask=padding)
        final = self.backbone.finalize(stack.hidden)
        logits = self.head(final)  # (B, L, V)
        stats = self.aggregate_stats(stack.sites, mask)
        output = ModelOutput(logits=logits, stats=stats)
        if labels is not None:
            output.task_loss = self._task_loss(logits, labels, stack.sites)
            output.loss = output.task_loss + stats.regularizer
        return output

    def _task_loss(self, logits: Tensor, labels: Tensor, sites: list[PonderOutput]) -> Tensor:
        site = sites[0] if len(sites) == 1 else None
        if site is not None and site.hop_states is not None and site.hop_probs is not None:
            # Expected loss over the halting distribution (PonderNet): sum_n p_n * CE_n.
            scored = labels != IGNORE_INDEX  # (B, L)
            total = logits.new_zeros(())
            for n, state in enumerate(site.hop_states):
                hop_logits = self.head(self.backbone.finalize(state))  # (B, L, V)
                ce = F.cross_entropy(
                    hop_logits.flatten(0, 1).to(accumulation_dtype(hop_logits)),
                    labels.flatten().clamp_min(0),
                    reduction="none",
                ).view_as(labels)
                weight = site.hop_probs[..., n]  # (B, L)
                total = total + (weight * ce * scored).sum()
            return total / scored.sum().clamp_min(1)
        return F.cross_entropy(
            logits.flatten(0, 1).to(accumulation_dtype(logits)), labels.flatten(), ignore_index=IGNORE_INDEX
        )

    def aggregate_stats(self, sites: list[PonderOutput], mask: Tensor | None) -> HaltingStats:
        """Combine per-site outputs into per-token statistics and the loss regularizer."""
        site_hops = [s.hops for s in sites]
        hops = torch.stack(site_hops).mean(0)  # (B, L)
        if self.scope == "model":
            layers = sites[0].hops * self.n_layers
        else:
            layers = torch.stack(site_hops).sum(0)
        ponder_cost = torch.stack([s.ponder_cost for s in sites]).sum(0)
        remainder = torch.stack([s.remainder for s in sites]).mean(0)
        regularizer = hops.new_zeros(())
        for site_module, site in zip(self.sites, sites, strict=True):
            weight = site_module.loss_weight()
            if weight:
                regularizer = regularizer + weight * masked_mean(site.ponder_cost, mask)
            if site.aux_loss is not None:
                regularizer = regularizer + site.aux_loss
        return HaltingStats(
            hops=hops,
            layers=layers,
            ponder_cost=ponder_cost,
            remainder=remainder,
            site_hops=site_hops,
            regularizer=regularizer,
        )
