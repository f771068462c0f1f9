"""Metrics on scored positions only, plus halting statistics over real tokens."""

from __future__ import annotations

from collections import defaultdict

import torch
import torch.nn.functional as F
from torch import Tensor

from .interfaces import IGNORE_INDEX, HaltingStats

#: Per-sequence counts, in the order of `per_seq` in `update` and of each slice value's list.
SEQUENCE_COUNTS = ("sequences", "exact", "scored", "correct")


class MetricAccumulator:
    """Accumulates loss, token accuracy, exact match and halting stats over batches.

    Token accuracy and loss count scored positions (labels != -100). Exact match
    is per sequence: every scored position right. Hop statistics count real
    (unpadded) tokens. Slice columns split exact match and token accuracy.
    """

    def __init__(self, slice_columns: tuple[str, ...] = ()):
        self.slice_columns = slice_columns
        # Sums over batches: loss, scored, correct, sequences, exact (scored positions and
        # sequences); tokens, hops, layers, ponder_cost, remainder (real tokens).
        self.sums: dict[str, float] = defaultdict(float)
        self.hops_max = 0.0
        self.position_hops = torch.zeros(0)  # (L,) sum of hops per position, L the longest batch
        self.position_count = torch.zeros(0)  # (L,) real tokens per position
        self.hop_histogram: dict[int, int] = defaultdict(int)
        self.slices: dict[str, dict[int, list[int]]] = {
            c: defaultdict(lambda: [0] * len(SEQUENCE_COUNTS)) for c in slice_columns
        }  # value -> [sequences, exact, scored, correct] (SEQUENCE_COUNTS)

    @torch.no_grad()
    def update(self, logits: Tensor, labels: Tensor, stats: HaltingStats, mask: Tensor, batch: dict) -> None:
        scored = labels != IGNORE_INDEX  # (B, L)
        loss = F.cross_entropy(
            logits.flatten(0, 1).float(), labels.flatten(), ignore_index=IGNORE_INDEX, reduction="sum"
        )
        predictions = logits.argmax(-1)  # (B, L)
        right = (predictions == labels) & scored
        per_seq_scored = scored.sum(1)
        per_seq_right = right.sum(1)
        exact = (per_seq_right == per_seq_scored) & (per_seq_scored > 0)
        # (B, 4): each sequence's counts in SEQUENCE_COUNTS order
        per_seq = torch.stack([per_seq_scored > 0, exact, per_seq_scored, per_seq_right], 1)
        sums = self.sums
        sums["loss"] += float(loss)
        for name, count in zip(SEQUENCE_COUNTS, per_seq.sum(0).tolist(), strict=True):
            sums[name] += count

        real = mask.bool()
        hops = stats.hops.float()
        sums["tokens"] += int(real.sum())
        for name in ("hops", "layers", "ponder_cost", "remainder"):
            sums[name] += float(getattr(stats, name).float()[real].sum())
        if real.any():
            self.hops_max = max(self.hops_max, float(hops[real].max()))
        masked = torch.where(real, hops, torch.zeros_like(hops))
        length = hops.shape[1]
        grow = max(0, length - len(self.position_hops))
        self.position_hops = F.pad(self.position_hops, (0, grow))
        self.position_count = F.pad(self.position_count, (0, grow))
        self.position_hops[:length] += masked.sum(0).cpu()
        self.position_count[:length] += real.sum(0).float().cpu()
        for value, count in zip(*torch.unique(torch.round(hops[real]).long(), return_counts=True), strict=True):
            self.hop_histogram[int(value)] += int(count)

        for column in (c for c in self.slice_columns if c in batch):
            for value, counts in zip(batch[column].tolist(), per_seq.tolist(), strict=True):
                entry = self.slices[column][int(value)]
                entry[:] = [total + count for total, count in zip(entry, counts, strict=True)]

    def compute(self) -> dict[str, float]:
        def ratio(a: float, b: float) -> float:
            return a / b if b else float("nan")

        sums = self.sums
        out = {
            "loss": ratio(sums["loss"], sums["scored"]),
            "token_accuracy": ratio(sums["correct"], sums["scored"]),
            "exact_match": ratio(sums["exact"], sums["sequences"]),
            "mean_hops": ratio(sums["hops"], sums["tokens"]),
            "max_hops": self.hops_max,
            "mean_layers": ratio(sums["layers"], sums["tokens"]),
            "ponder_cost": ratio(sums["ponder_cost"], sums["tokens"]),
            "remainder": ratio(sums["remainder"], sums["tokens"]),
            "examples": float(sums["sequences"]),
        }
        for column, values in self.slices.items():
            for value, (seqs, exact, scored, right) in sorted(values.items()):
                out[f"{column}={value}/exact_match"] = ratio(exact, seqs)
                out[f"{column}={value}/token_accuracy"] = ratio(right, scored)
        return out

    def halting_profile(self) -> dict:
        """Per-position mean hops and the hop histogram (for halting.json and plots)."""
        means = (self.position_hops / self.position_count.clamp_min(1)).tolist()
        return {
            "position_mean_hops": [round(m, 6) for m in means],
            "hop_histogram": {str(k): v for k, v in sorted(self.hop_histogram.items())},
        }
